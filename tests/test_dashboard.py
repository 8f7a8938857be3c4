"""The Grafana dashboard (grafana/): its JSON follows the current schema and conventions, and every query it runs
returns data from a real Prometheus scraping a real `mailmon run` against the mail lab (with the shipped recording
rules loaded, which are checked on the way)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.verdict import VERDICTS
from tests.conftest import ROOT, Lab
from tests.processes import Monitor, http_get, start_prometheus, wait_for
from tests.tools import tool

DASHBOARD = ROOT / "grafana" / "dashboards" / "mailmon.json"
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "mailmon.yml"
DASHBOARD_PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "mailmon.yml"
RULES_DIR = ROOT / "prometheus" / "rules"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DEPRECATED_PANEL_TYPES = {"graph", "singlestat", "table-old", "grafana-piechart-panel", "grafana-worldmap-panel",
                          "grafana-singlestat-panel", "graph-old"}
ALLOWED_PANEL_TYPES = {"row", "stat", "state-timeline", "timeseries", "table", "bargauge", "status-history", "text"}

# Label sets of the monitor's own series (docs/metrics.md): which filters an expression must apply to each.
VANTAGE_AND_TARGET = ("check_success", "check_duration_seconds", "check_phase_duration_seconds", "check_runs_total",
                      "check_current_failure",
                      "check_failures_total", "check_skipped_total", "check_last_attempt_timestamp_seconds",
                      "check_last_success_timestamp_seconds", "smtp_last_reply_code",
                      "tls_cert_expiry_timestamp_seconds", "roundtrip_seconds_bucket", "roundtrip_seconds_count",
                      "roundtrip_seconds_sum", "roundtrip_late_total", "roundtrip_swept_total", "verdict")
VANTAGE_ONLY = ("selfcheck_success", "selfcheck_failures_total", "selfcheck_last_attempt_timestamp_seconds",
                "scheduler_lag_seconds_bucket", "scheduler_lag_seconds_count", "scheduler_lag_seconds_sum",
                "oauth2_token_expiry_timestamp_seconds", "oauth2_token_requests_total")
NO_LABELS = ("build_info", "config_last_reload_successful", "config_last_reload_success_timestamp_seconds")

# What Grafana puts in for its built-in variables, for a dashboard open over the last few minutes.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000", "__range": "5m",
            "__range_s": "300", "__range_ms": "300000"}
VARIABLE = re.compile(r"\$\{(\w+)(?::[\w-]+)?\}|\$(\w+)")
SELECTOR = re.compile(r"(?<![\w:\"])([a-zA-Z_:][\w:]*)\s*(\{[^{}]*\})?")


# ---------------------------------------------------------------------------------------------------------------
# The dashboard as data


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in all_panels(dashboard) if p.get("type") != "row"]


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str
    panel_json: dict[str, Any]

    def __str__(self) -> str:
        return f"panel {self.panel!r} query {self.ref}"


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [Query(f"{p['id']}: {p.get('title', '')}", t.get("refId", "?"), t.get("expr", ""), p)
            for p in data_panels(dashboard) for t in p.get("targets", [])]


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def fixed_variables(dashboard: dict[str, Any]) -> dict[str, str]:
    """Current values of the variables that are not queries (intervals, custom lists, constants)."""
    return {name: str(v["current"]["value"]) for name, v in variables(dashboard).items()
            if v["type"] in ("interval", "custom", "constant")}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Expand dashboard and built-in variables the way Grafana would before sending the query."""
    known = {**BUILTINS, **fixed_variables(load_dashboard()), **values}

    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in known:
            raise AssertionError(f"unknown variable ${name} in {expr!r}")
        return known[name]
    return VARIABLE.sub(expand, expr)


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric name, matcher block) of every series selector of the monitor's own or recorded series."""
    found = []
    for name, matchers in SELECTOR.findall(expr):
        if name.startswith("mailmon_") or ":" in name:
            found.append((name, matchers))
    return found


def required_filters(name: str) -> tuple[str, ...]:
    if ":" in name:  # a recorded series: its level (before the first colon) names the labels it keeps
        level = name.split(":", 1)[0].split("_")
        return tuple(label for label in ("vantage", "target") if label in level)
    base = name.removeprefix("mailmon_")
    if base in VANTAGE_AND_TARGET:
        return ("vantage", "target")
    if base in VANTAGE_ONLY:
        return ("vantage",)
    assert base in NO_LABELS, f"{name} is not a known mailmon metric (docs/metrics.md)"
    return ()


def value_mappings(mappings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for mapping in mappings:
        if mapping.get("type") == "value":
            merged.update(mapping["options"])
    return merged


def recorded_series() -> set[str]:
    names: set[str] = set()
    for path in sorted(RULES_DIR.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            names.update(rule["record"] for rule in group.get("rules", []) if "record" in rule)
    return names


# ---------------------------------------------------------------------------------------------------------------
# Offline: schema and conventions


def test_dashboard_is_current_schema_json() -> None:
    """Valid JSON, schemaVersion 39 or later, a uid and title, a time range, and no fixed numeric id."""
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 39
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard.get("id") is None, "an exported id clashes on import; leave it null"
    assert dashboard["time"]["from"].startswith("now-")


def test_panels_have_unique_ids_known_types_and_descriptions() -> None:
    """At least 8 data panels, unique ids, no deprecated panel type, a title and description on each."""
    dashboard = load_dashboard()
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    assert len(data_panels(dashboard)) >= 8
    for panel in panels:
        assert panel["type"] not in DEPRECATED_PANEL_TYPES, f"panel {panel['id']} uses deprecated {panel['type']}"
        assert panel["type"] in ALLOWED_PANEL_TYPES, f"panel {panel['id']}: unexpected type {panel['type']}"
        assert panel.get("title"), f"panel {panel['id']} has no title"
    for panel in data_panels(dashboard):
        assert panel.get("description"), f"panel {panel['id']} ({panel['title']}) has no description"
        assert panel.get("targets"), f"panel {panel['id']} ({panel['title']}) has no query"


def test_every_panel_and_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    for panel in data_panels(dashboard):
        assert panel.get("datasource") == DATASOURCE, f"panel {panel['id']} ({panel['title']})"
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, f"panel {panel['id']} query {target.get('refId')}"
            assert target.get("expr", "").strip(), f"panel {panel['id']} query {target.get('refId')} is empty"
    refs = [(p["id"], t["refId"]) for p in data_panels(dashboard) for t in p["targets"]]
    assert len(refs) == len(set(refs)), "duplicate refId within a panel"


def test_variables_datasource_vantage_and_target() -> None:
    """`datasource` picks a Prometheus; `vantage` and `target` are multi-value with All, from mailmon_check_success."""
    found = variables(load_dashboard())
    assert found["datasource"]["type"] == "datasource"
    assert found["datasource"]["query"] == "prometheus"
    for name in ("vantage", "target"):
        variable = found[name]
        assert variable["type"] == "query"
        assert variable["datasource"] == DATASOURCE
        assert variable["multi"] is True and variable["includeAll"] is True
        assert variable["allValue"] == ".*", "All must become a regex matching everything, not a long alternation"
        assert re.fullmatch(rf"label_values\(mailmon_check_success(\{{[^}}]*\}})?, ?{name}\)",
                            variable["definition"]), variable["definition"]
        assert variable["query"]["query"] == variable["definition"]
    for name, variable in found.items():
        if variable["type"] in ("interval", "custom"):
            options = [o["value"] for o in variable["options"]]
            assert variable["current"]["value"] in options, f"${name}: current value is not an option"
            assert variable["query"] == ",".join(options), f"${name}: query and options differ"


def test_expressions_filter_by_vantage_and_target() -> None:
    """Every selector of a series that has vantage/target labels filters by the dashboard's variables."""
    problems = []
    for query in queries(load_dashboard()):
        found = selectors(query.expr)
        assert found, f"{query}: no mailmon series in {query.expr!r}"
        for name, matchers in found:
            for label in required_filters(name):
                if f'{label}=~"${label}"' not in matchers:
                    problems.append(f"{query}: {name}{matchers} lacks {label}=~\"${label}\"")
    assert not problems, "\n".join(problems)


def test_no_hard_coded_instances_hosts_or_datasources() -> None:
    text = DASHBOARD.read_text()
    for pattern in (r"instance\s*=~?\s*\\?\"", r"job\s*=~?\s*\\?\"", r"\b\d{1,3}(\.\d{1,3}){3}\b",
                    r"\blocalhost\b", r"[\w.-]+:\d{2,5}\b(?!\])", r"\"uid\":\s*\"(?!\$\{datasource\}|-- Grafana --|"
                    r"mailmon-overview)"):
        match = re.search(pattern, text)
        assert match is None, f"hard-coded {match.group(0)!r} in the dashboard" if match else ""


def test_grid_positions_are_present_and_do_not_overlap() -> None:
    panels = [p for p in load_dashboard()["panels"]]  # top level; a collapsed row's panels are laid out when opened
    boxes = []
    for panel in panels:
        grid = panel.get("gridPos")
        assert grid and all(isinstance(grid.get(k), int) for k in "xywh"), f"panel {panel['id']}: gridPos {grid}"
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0 and grid["x"] + grid["w"] <= 24
        boxes.append((panel["id"], grid))
    for (a, ga), (b, gb) in combinations(boxes, 2):
        apart = (ga["x"] + ga["w"] <= gb["x"] or gb["x"] + gb["w"] <= ga["x"]
                 or ga["y"] + ga["h"] <= gb["y"] or gb["y"] + gb["h"] <= ga["y"])
        assert apart, f"panels {a} and {b} overlap: {ga} {gb}"


def first_row(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The data panels above the second row header."""
    rows = sorted(p["gridPos"]["y"] for p in dashboard["panels"] if p["type"] == "row")
    end = rows[1] if len(rows) > 1 else float("inf")
    return [p for p in data_panels(dashboard) if p["gridPos"]["y"] < end]


def test_first_row_answers_where_the_fault_is() -> None:
    """The first row shows every verdict in words and colour, and how many vantages fail each check."""
    dashboard = load_dashboard()
    top = first_row(dashboard)
    verdict_panels = [p for p in top if any("mailmon_verdict" in t["expr"] for t in p["targets"])]
    assert verdict_panels, "no verdict panel in the first row"
    table = next((p for p in verdict_panels if p["type"] == "table"), None)
    assert table is not None, "the current verdict is shown as a table of (target, vantage, verdict)"
    by_label = {o["matcher"]["options"]: o for o in table["fieldConfig"]["overrides"]}
    mapped = value_mappings(next(prop["value"] for prop in by_label["verdict"]["properties"]
                                 if prop["id"] == "mappings"))
    assert set(mapped) == set(VERDICTS)
    for verdict, result in mapped.items():
        assert result.get("text") and result.get("color"), f"verdict {verdict} needs words and a colour"
    assert len({mapped[v]["text"] for v in VERDICTS}) == len(VERDICTS)
    # The timeline encodes verdicts as numbers; every code it can produce is mapped back to words and colour.
    timeline = next(p for p in verdict_panels if p["type"] == "state-timeline")
    codes = dict(re.findall(r'verdict="(\w+)"\}\s*\*\s*(\d+)', timeline["targets"][0]["expr"]))
    assert set(codes) == set(VERDICTS) and len(set(codes.values())) == len(VERDICTS)
    timeline_map = value_mappings(timeline["fieldConfig"]["defaults"]["mappings"])
    for verdict, code in codes.items():
        assert timeline_map[code]["text"] == mapped[verdict]["text"], verdict
    assert any(re.search(r"count by \(target, check", t["expr"]) for p in top for t in p["targets"]), \
        "no 'failing from how many vantages' panel per target and check in the first row"


def test_recorded_series_used_by_the_dashboard_are_shipped() -> None:
    """Series the dashboard reads from recording rules are recorded by prometheus/rules/*.yml."""
    used = {name for q in queries(load_dashboard()) for name, _ in selectors(q.expr) if ":" in name}
    assert RULES_DIR.is_dir(), f"{RULES_DIR} does not exist: the dashboard needs the recording rules {sorted(used)}"
    missing = used - recorded_series()
    assert not missing, f"the dashboard reads series no shipped rule records: {sorted(missing)}"


def test_provisioning_files() -> None:
    """A Prometheus data source with its URL from ${PROMETHEUS_URL}, and a file provider for the dashboards."""
    sources = yaml.safe_load(DATASOURCES.read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    assert source["url"] == "${PROMETHEUS_URL}"
    assert "PROMETHEUS_URL=http" in DATASOURCES.read_text(), "document the default URL"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert "grafana/dashboards/mailmon.json" in DASHBOARD_PROVIDERS.read_text()


def test_substitution_leaves_no_variable() -> None:
    for query in queries(load_dashboard()):
        expanded = substitute(query.expr, {"vantage": ".*", "target": ".*"})
        assert "$" not in expanded, f"{query}: {expanded}"


# ---------------------------------------------------------------------------------------------------------------
# Live: a real monitor against the mail lab, scraped by a real Prometheus with the shipped rules


@dataclass
class Stack:
    prometheus: str
    vantage: str
    targets: tuple[str, ...]
    rules_problem: str | None  # why the rules were not loaded, if they were not

    def api(self, path: str, **params: str) -> dict[str, Any]:
        status, body = http_get(f"{self.prometheus}/api/v1/{path}?{urllib.parse.urlencode(params)}")
        data: dict[str, Any] = json.loads(body)
        assert status == 200 or data.get("status") == "error", f"HTTP {status}: {body[:300]!r}"
        return data

    def query(self, expr: str, what: object = "query") -> list[dict[str, Any]]:
        data = self.api("query", query=expr)
        assert data["status"] == "success", f"{what} fails: {data.get('errorType')}: {data.get('error')}\n{expr}"
        result: list[dict[str, Any]] = data["data"]["result"]
        return result


def _monitor_config(lab: Lab, token_file: Path) -> str:
    """The stack's monitor: the lab with round trips, a target with a wrong password, and one whose OAuth2 token
    file does not exist (it fails at stage token: the sign-in panels and the signin_failing rule have data)."""
    return f"""
vantage: ci
defaults: {{interval: 2s, timeout: 2s}}
probe_key: {{file: {lab.env["LAB_PROBE_KEY_FILE"]}}}
changes:
  - calendar: client-updates
    entries:
      - {{name: Patch Tuesday, start: "{time.strftime("%Y-%m-%d %H:%M", time.gmtime(time.time() - 3600))}",
          duration: 1d}}
targets:
{lab.target_yaml("lab", f"password_file: {lab.env['LAB_PASSWORD_FILE']}", "smtp: {port: 587, tls: starttls}",
                 "imap: {port: 993, tls: implicit}", "pop3: {port: 995, tls: implicit}",
                 "roundtrip: {via: [imap, pop3]}")}\
{lab.target_yaml("lab-wrong-password", "password_env: MAILMON_WRONG_PASSWORD", "smtp: {port: 465, tls: implicit}")}\
{lab.target_yaml("lab-signin", f"oauth2: {{token_file: {token_file}}}", "smtp: {port: 465, tls: implicit}")}"""


@pytest.fixture(scope="module")
def stack(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`mailmon run` (2 s interval, round trips, a failing target) scraped every second by a real Prometheus
    under job="mailmon" with prometheus/rules/*.yml loaded; yields once there is enough data for every panel."""
    tool("prometheus", package="the Debian package prometheus")
    promtool = tool("promtool", package="the Debian package prometheus")
    tmp = tmp_path_factory.mktemp("dashboard")
    config = tmp / "mailmon.yaml"
    config.write_text(_monitor_config(lab, tmp / "no-such-token"))
    monitor = Monitor(config, tmp / "mailmon.log", env={"MAILMON_WRONG_PASSWORD": "Wr0ng-Dashboard-Secret"})
    rule_files = sorted(RULES_DIR.glob("*.yml")) if RULES_DIR.is_dir() else []
    rules_problem = None if rule_files else f"no rule files: {RULES_DIR}/*.yml does not exist"
    if rule_files:
        checked = subprocess.run([promtool, "check", "rules", *map(str, rule_files)], capture_output=True,
                                 text=True, timeout=60)
        if checked.returncode != 0:  # load none, so the dashboard's own queries are still tested
            rules_problem = f"promtool check rules failed:\n{checked.stdout}{checked.stderr}"
            rule_files = []
    prometheus, base = start_prometheus(tmp, [monitor.listen], rule_files, None)
    try:
        found = Stack(base, "ci", ("lab", "lab-wrong-password", "lab-signin"), rules_problem)

        def ready() -> bool:
            roundtrips = {s["metric"]["via"] for s in found.query("mailmon_roundtrip_seconds_count > 1")}
            failures = found.query('increase(mailmon_check_failures_total{target="lab-wrong-password"}[1m]) > 0')
            scrapes = found.query('count_over_time(up{job="mailmon"}[1m]) >= 15')
            return roundtrips == {"imap", "pop3"} and bool(failures) and bool(scrapes)

        wait_for(ready, "round trips via imap and pop3, a counted failure and 15 scrapes", 90, every=0.5)
        yield found
    finally:
        prometheus.stop()
        monitor.stop()


def _query_with_retry(stack: Stack, expr: str, what: object, limit: float = 30.0) -> list[dict[str, Any]]:
    """The result once it has a series (recording rules and rate windows fill within seconds), else the empty one."""
    deadline = time.monotonic() + limit
    while True:
        result = stack.query(expr, what)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


def _mapped_values_are_known(query: Query, result: list[dict[str, Any]]) -> None:
    """Values and labels the panel maps to words come out as one of the mapped keys, not as a raw number."""
    defaults = value_mappings(query.panel_json["fieldConfig"]["defaults"].get("mappings", []))
    if defaults and not any(m.get("type") != "value"
                            for m in query.panel_json["fieldConfig"]["defaults"].get("mappings", [])):
        for series in result:
            value = float(series["value"][1])
            shown = str(int(value)) if value.is_integer() else str(value)
            assert shown in defaults, f"{query}: value {shown} of {series['metric']} has no mapping"
    for override in query.panel_json["fieldConfig"].get("overrides", []):
        label = override["matcher"]["options"]
        for prop in override["properties"]:
            mapped = value_mappings(prop["value"]) if prop["id"] == "mappings" else {}
            for series in result:
                if mapped and label in series["metric"] and len(mapped) > 1:
                    assert series["metric"][label] in mapped, f"{query}: {label}={series['metric'][label]} unmapped"


def _live_queries() -> list[Query]:
    """Collected at import; an unreadable dashboard fails test_dashboard_is_current_schema_json instead."""
    try:
        return queries(load_dashboard())
    except (OSError, ValueError, KeyError):
        return []


LIVE_QUERIES = _live_queries()


@pytest.mark.lab
@pytest.mark.prometheus
@pytest.mark.parametrize("query", LIVE_QUERIES, ids=[f"{q.panel}/{q.ref}" for q in LIVE_QUERIES])
@pytest.mark.parametrize("vantage", ["selected", "all"])
def test_panel_query_returns_data(stack: Stack, query: Query, vantage: str) -> None:
    """The query parses in Prometheus and returns at least one series, with one vantage selected and with All."""
    values = {"vantage": stack.vantage if vantage == "selected" else ".*", "target": ".*"}
    expr = substitute(query.expr, values)
    result = _query_with_retry(stack, expr, query)
    assert result, f"{query} returns no series:\n{expr}"
    for series in result:
        if "vantage" in series["metric"]:
            assert series["metric"]["vantage"] == stack.vantage, f"{query}: unexpected {series['metric']}"
    _mapped_values_are_known(query, result)


@pytest.mark.lab
@pytest.mark.prometheus
def test_variable_queries_list_the_vantage_and_targets(stack: Stack) -> None:
    """`label_values(...)` of each query variable, as Grafana runs it, lists what the monitor exports."""
    expected = {"vantage": {stack.vantage}, "target": set(stack.targets)}
    for name, variable in variables(load_dashboard()).items():
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((.+), ?(\w+)\)", variable["definition"])
        assert match, variable["definition"]
        selector = substitute(match.group(1), {"vantage": stack.vantage, "target": ".*"})
        data = stack.api(f"label/{match.group(2)}/values", **{"match[]": selector})
        assert data["status"] == "success", data
        assert set(data["data"]) == expected[name], f"${name}: {data['data']}"


@pytest.mark.lab
@pytest.mark.prometheus
def test_shipped_rules_evaluate_and_record(stack: Stack) -> None:
    """Every rule group of prometheus/rules/*.yml evaluates without error and every recording rule has output."""
    assert stack.rules_problem is None, stack.rules_problem

    def evaluated() -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = stack.api("rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return groups if rules and all(r["health"] != "unknown" for r in rules) else []

    groups = wait_for(evaluated, "every rule to be evaluated once", 30, every=0.5)
    files = {Path(g["file"]).name for g in groups}
    assert files == {p.name for p in RULES_DIR.glob("*.yml")}
    unhealthy = [f"{g['name']}/{r['name']}: {r['health']} {r.get('lastError', '')}"
                 for g in groups for r in g["rules"] if r["health"] != "ok"]
    assert not unhealthy, "\n".join(unhealthy)
    records = sorted({r["name"] for g in groups for r in g["rules"] if r["type"] == "recording"})
    assert set(records) == recorded_series()
    empty = [name for name in records if not _query_with_retry(stack, f'{{__name__="{name}"}}', name, 20)]
    assert not empty, f"recording rules without output: {empty}"


def test_change_window_annotation_uses_the_datasource_and_vantage() -> None:
    """The change-window annotation queries Prometheus through the dashboard's variables."""
    [annotation] = [a for a in load_dashboard()["annotations"]["list"] if a.get("name") == "Change windows"]
    assert annotation["datasource"] == {"type": "prometheus", "uid": "${datasource}"} and annotation["enable"]
    assert 'vantage=~"$vantage"' in annotation["expr"]


def test_change_window_annotation_returns_the_open_window(stack: Stack) -> None:
    """On a real Prometheus the annotation's query returns the window that is open at the monitor."""
    [annotation] = [a for a in load_dashboard()["annotations"]["list"] if a.get("name") == "Change windows"]
    expr = substitute(annotation["expr"], {**fixed_variables(load_dashboard()), "vantage": "ci"})
    found = _query_with_retry(stack, expr, "the change-window annotation")
    assert [(s["metric"]["calendar"], s["metric"]["change"]) for s in found] == [("client-updates", "Patch Tuesday")]


@pytest.mark.lab
@pytest.mark.prometheus
def test_a_target_failing_only_at_sign_in_raises_no_mail_alert(stack: Stack) -> None:
    """End to end with the shipped rules: lab-signin fails only at stage token (its token file is missing), so it is
    `signin_failing`, has no failure scope, and only MailmonSignInFailure is pending for it — while lab-wrong-password
    (rejected at AUTH by the server) does get an outage pending, as before."""
    signin = 'vantage_target_check_via:mailmon_check_success:signin_failing{target="lab-signin"}'
    assert _query_with_retry(stack, signin, "signin_failing")
    assert _query_with_retry(stack, 'ALERTS{alertname="MailmonSignInFailure", target="lab-signin"}', "sign-in alert")
    assert _query_with_retry(stack, 'ALERTS{alertname="MailmonSMTPServerOutage", target="lab-wrong-password"}',
                             "the contrast: a server rejection")
    assert stack.query('target_check_via:mailmon_check_success:failure_scope{target="lab-signin"}') == []
    mail = stack.query('ALERTS{target="lab-signin", alertname!="MailmonSignInFailure"}')
    assert mail == [], [series["metric"] for series in mail]
