"""The shipped Prometheus rules and Alertmanager configuration, checked with the real promtool, amtool and Alertmanager.

promtool comes with the Debian package `prometheus`, amtool and the Alertmanager with `prometheus-alertmanager`.
A missing tool fails these tests (it never skips them): install both packages, as scripts/bootstrap does.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.processes import start_alertmanager
from tests.tools import tool

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "prometheus" / "rules" / "mailmon.rules.yml"
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
AM_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks"
RUNBOOK_BASE = "https://github.com/mailmon/mailmon/blob/main/docs/runbooks/"

# Every alert, and who must get it.
RECEIVERS = {
    "MailmonSMTPServerOutage": "mail-oncall",
    "MailmonReceiveOutage": "mail-oncall",
    "MailmonDeliveryStalled": "mail-oncall",
    "MailmonAuthFailure": "mail-oncall",
    "MailmonCertificateExpiringSoon": "mail-oncall",
    "MailmonCertificateExpired": "mail-oncall",
    "MailmonMailboxNearlyFull": "mail-oncall",
    "MailmonAuthenticationFailing": "mail-oncall",
    "MailmonSiteFault": "site-owners",
    "MailmonVantageDown": "mailmon-owners",
    "MailmonLocalResourcesExhausted": "mailmon-owners",
    # The monitor's sign-in (issue 13): the identity provider or the monitor's own configuration, never mail on-call.
    "MailmonSignInFailure": "mailmon-owners",
    "MailmonOAuth2TokenNotRenewed": "mailmon-owners",
    "MailmonAuthDisabled": "mailmon-owners",
}


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"`{' '.join(done.args)}` exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"


def rules() -> list[dict[str, Any]]:
    with RULES.open() as f:
        return [rule for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def rule_tests() -> list[dict[str, Any]]:
    found = []
    for path in RULE_TESTS:
        with path.open() as f:
            found.extend(yaml.safe_load(f)["tests"])
    return found


# --- promtool -------------------------------------------------------------------------------------------------------

def test_promtool_check_rules() -> None:
    done = run(tool("promtool", package="prometheus"), "check", "rules", str(RULES))
    assert done.returncode == 0, explain(done)
    assert "SUCCESS" in done.stdout + done.stderr, explain(done)


def test_promtool_test_rules() -> None:
    assert RULE_TESTS, "no promtool unit tests in prometheus/tests/"
    done = run(tool("promtool", package="prometheus"), "test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, explain(done)
    assert "FAILED" not in done.stdout + done.stderr, explain(done)


def test_unit_tests_evaluate_recording_rules_before_alerts() -> None:
    with RULES.open() as f:
        groups = [group["name"] for group in yaml.safe_load(f)["groups"]]
    for path in RULE_TESTS:
        with path.open() as f:
            order = yaml.safe_load(f).get("group_eval_order")
        # Without it promtool picks a random group order, and alert timings become flaky.
        assert order == groups, f"{path.name}: group_eval_order must be {groups}"


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for case in rule_tests():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(alerts()) - firing == set(), "alerts without a test where they fire"
    assert set(alerts()) - silent == set(), "alerts without a test where they must not fire"


def test_every_recording_rule_value_is_unit_tested() -> None:
    exprs = " ".join(check["expr"] for case in rule_tests() for check in case.get("promql_expr_test", []))
    untested = [rule["record"] for rule in rules() if "record" in rule and rule["record"] not in exprs]
    assert untested == [], "recording rules without a promql_expr_test"


def test_recording_rule_names_follow_level_metric_operations() -> None:
    for rule in rules():
        if "record" in rule:
            level, metric, operations = rule["record"].split(":")
            assert level and metric.startswith("mailmon_") and operations, rule["record"]


@pytest.mark.parametrize("name", sorted(RECEIVERS))
def test_alert_has_severity_team_annotations_and_runbook(name: str) -> None:
    rule = alerts()[name]
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["labels"]["team"] in ("mail", "network", "mailmon")
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]
    assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"
    assert (RUNBOOKS / f"{name}.md").is_file(), f"docs/runbooks/{name}.md is missing"


def test_every_alert_has_an_expected_receiver() -> None:
    assert set(alerts()) == set(RECEIVERS)


# --- amtool ---------------------------------------------------------------------------------------------------------

def test_amtool_check_config() -> None:
    done = run(tool("amtool", package="prometheus-alertmanager"), "check-config", str(AM_CONFIG))
    assert done.returncode == 0, explain(done)
    assert "SUCCESS" in done.stdout + done.stderr, explain(done)


def route(*labels: str) -> str:
    """The receiver(s) Alertmanager's routing tree picks for an alert with these labels."""
    done = run(tool("amtool", package="prometheus-alertmanager"), "config", "routes", "test",
               f"--config.file={AM_CONFIG}", *labels)
    assert done.returncode == 0, explain(done)
    return done.stdout.strip()


@pytest.mark.parametrize(("name", "receiver"), sorted(RECEIVERS.items()))
def test_alert_routes_to_its_receiver(name: str, receiver: str) -> None:
    static = alerts()[name]["labels"]
    labels = [f"alertname={name}", *(f"{key}={value}" for key, value in static.items()),
              "target=mx", "check=smtp", "vantage=office"]
    assert route(*labels) == receiver


@pytest.mark.parametrize(("labels", "receiver"), [
    # The monitor's and the sites' alerts never reach mail on-call, even mislabelled.
    (("alertname=MailmonVantageDown", "team=mail", "severity=critical"), "mailmon-owners"),
    (("alertname=MailmonLocalResourcesExhausted", "team=mail", "severity=critical"), "mailmon-owners"),
    (("alertname=MailmonSiteFault", "team=mail", "severity=critical"), "site-owners"),
    (("alertname=MailmonSignInFailure", "team=mail", "severity=critical"), "mailmon-owners"),
    (("alertname=MailmonOAuth2TokenNotRenewed", "team=mail", "severity=critical"), "mailmon-owners"),
    (("alertname=MailmonAuthDisabled", "team=mail", "severity=critical"), "mailmon-owners"),
    # Anything unknown goes to the monitor's owners.
    (("alertname=SomethingElse",), "mailmon-owners"),
])
def test_routing_fallbacks(labels: tuple[str, ...], receiver: str) -> None:
    assert route(*labels) == receiver


# --- inhibition, in a real Alertmanager -----------------------------------------------------------------------------

@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    """A private Alertmanager on loopback with the shipped configuration; yields its base URL."""
    tool("prometheus-alertmanager", package="prometheus-alertmanager")  # a clear failure when it is missing
    daemon, url = start_alertmanager(tmp_path, AM_CONFIG)
    try:
        yield url
    finally:
        daemon.stop()


def alert(name: str, **labels: str) -> dict[str, str]:
    return {"alertname": name, **alerts()[name]["labels"], **labels}


# (labels, inhibited?) — each scenario on its own target so the scenarios do not inhibit each other.
INHIBITION_CASES = [
    # A server-side SMTP outage of t1 inhibits t1's per-check alerts, not the other outage nor the certificate.
    (alert("MailmonSMTPServerOutage", target="t1", check="smtp", scope="server"), False),
    (alert("MailmonSiteFault", target="t1", check="imap", vantage="office"), True),
    (alert("MailmonAuthFailure", target="t1", check="pop3", vantage="dc"), True),
    (alert("MailmonDeliveryStalled", target="t1", check="roundtrip", via="imap", scope="server"), True),
    (alert("MailmonReceiveOutage", target="t1", check="imap", scope="server"), False),
    (alert("MailmonCertificateExpired", target="t1", check="smtp"), False),
    # ... and nothing of another target.
    (alert("MailmonSiteFault", target="t2", check="smtp", vantage="office"), False),
    # A receive outage inhibits the same way.
    (alert("MailmonReceiveOutage", target="t3", check="pop3", scope="single_vantage"), False),
    (alert("MailmonDeliveryStalled", target="t3", check="roundtrip", via="pop3", scope="single_vantage"), True),
    # A vantage that is down inhibits its own site faults and auth failures, not another vantage's.
    (alert("MailmonVantageDown", vantage="branch", cause="selfcheck_failing"), False),
    (alert("MailmonSiteFault", target="t4", check="smtp", vantage="branch"), True),
    (alert("MailmonAuthFailure", target="t4", check="imap", vantage="branch"), True),
    (alert("MailmonSiteFault", target="t4", check="pop3", vantage="home"), False),
    # A VantageDown without a vantage (no mailmon instance at all) inhibits nothing, not even alerts without one.
    (alert("MailmonVantageDown", job="mailmon", cause="no_instance"), False),
    (alert("MailmonCertificateExpiringSoon", target="t5", check="imap"), False),
    # An auth failure from one vantage inhibits the site fault of that vantage and check only.
    (alert("MailmonAuthFailure", target="t6", check="smtp", vantage="lab"), False),
    (alert("MailmonSiteFault", target="t6", check="smtp", vantage="lab"), True),
    (alert("MailmonSiteFault", target="t6", check="imap", vantage="lab"), False),
    # An expired certificate inhibits "expires soon" for the same target and check.
    (alert("MailmonCertificateExpired", target="t7", check="imap"), False),
    (alert("MailmonCertificateExpiringSoon", target="t7", check="imap"), True),
    (alert("MailmonCertificateExpiringSoon", target="t7", check="smtp"), False),
    # A server-side outage does not inhibit the monitor's sign-in alerts of the same target (other owners) ...
    (alert("MailmonSMTPServerOutage", target="t8", check="smtp", scope="server"), False),
    (alert("MailmonSignInFailure", target="t8", check="imap", vantage="office"), False),
    (alert("MailmonAuthDisabled", target="t8", check="pop3"), False),
    # ... while a vantage that is down inhibits its own sign-in alerts (vantage "branch" is down above).
    (alert("MailmonSignInFailure", target="t9", check="smtp", vantage="branch"), True),
    (alert("MailmonOAuth2TokenNotRenewed", identity="probe@t9", grant="client_credentials", vantage="branch"), True),
    (alert("MailmonOAuth2TokenNotRenewed", identity="probe@t9", grant="client_credentials", vantage="home"), False),
]


def test_inhibitions(alertmanager: str) -> None:
    body = json.dumps([{"labels": labels} for labels, _ in INHIBITION_CASES]).encode()
    request = urllib.request.Request(f"{alertmanager}/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    expected = {json.dumps(labels, sort_keys=True): inhibited for labels, inhibited in INHIBITION_CASES}
    deadline = time.monotonic() + 15
    while True:
        with urllib.request.urlopen(f"{alertmanager}/api/v2/alerts", timeout=10) as response:
            got = {json.dumps(item["labels"], sort_keys=True): bool(item["status"]["inhibitedBy"])
                   for item in json.load(response)}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    wrong = {labels: f"inhibited={state}, expected {expected.get(labels)}" for labels, state in got.items()
             if expected.get(labels) != state}
    assert set(got) == set(expected)
    assert wrong == {}
