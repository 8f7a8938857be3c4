"""GET /probe on a running `mailmon run` against the lab: the same series as scheduled runs, bounded by the scrape
timeout, refusals (400/403/404/503) before any connection, results in the history and /api/status."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Lab, free_port, mailmon_command
from tests.processes import Monitor, http_get, wait_for
from tests.test_web_security import PASSWORD, USER, secured  # noqa: F401 (a fixture)
from tests.test_web_security import _get as web_get
from tests.tools import tool

pytestmark = [pytest.mark.lab, pytest.mark.prometheus]

Series = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def probe(base: str, timeout_header: float | None = None, /, **params: str) -> tuple[int, bytes, float]:
    """GET /probe with `params`; (status, body, seconds taken)."""
    headers = {} if timeout_header is None else {"X-Prometheus-Scrape-Timeout-Seconds": str(timeout_header)}
    request = urllib.request.Request(f"{base}/probe?{urllib.parse.urlencode(params)}", headers=headers)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), time.monotonic() - started


def samples(body: bytes) -> Series:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def of_check(series: Series, check: str, via: str = "") -> Series:
    return {key: value for key, value in series.items()
            if dict(key[1]).get("check") == check and dict(key[1]).get("via") == via}


def _unswept(series: Series) -> Series:
    return {key: value for key, value in series.items() if ("phase", "sweep") not in key[1]}


def _lab_config(lab: Lab, tmp: Path, listen_interval: str = "1h", extra: str = "") -> Path:
    password = tmp / "password"
    password.write_text(lab.password)
    config = tmp / "config.yaml"
    config.write_text(f"""
vantage: ci
defaults: {{interval: {listen_interval}, timeout: 10s}}
probe_key: {{file: {lab.env["LAB_PROBE_KEY_FILE"]}}}
history: {{path: {tmp / "history.sqlite"}}}
targets:
{lab.target_yaml("lab", f"password_file: {password}", "smtp: {port: 587, tls: starttls}",
                 "imap: {port: 993, tls: implicit}", "pop3: {port: 995, tls: implicit}",
                 "smtp_profiles: [{name: outlook, port: 465, tls: implicit, tls_min: '1.2'}]",
                 "roundtrip: {via: [imap, pop3]}")}
modules:
  smtp_relay: {{protocol: smtp, port: 25, tls: none, timeout: 10s}}
  submission:
    protocol: smtp
    port: 587
    tls: starttls
    ca_file: {lab.ca}
    server_name: {lab.server_name}
    auth: {{username: {lab.user}, password_file: {password}}}
    hosts: ['{lab.host.replace(".", chr(92) + ".")}']
  imaps:
    protocol: imap
    tls: implicit
    ca_file: {lab.ca}
    server_name: {lab.server_name}
    auth: {{username: {lab.user}, password_file: {password}}}
    hosts: ['127\\.0\\.0\\.2', 'mail\\.lab\\.test']
  slow_smtp: {{protocol: smtp, tls: none, timeout: 30s}}
{extra}""")
    return config


@pytest.fixture(scope="module")
def monitor(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    tmp = tmp_path_factory.mktemp("probe")
    process = Monitor(_lab_config(lab, tmp), tmp / "mailmon.log")
    try:
        yield process
    finally:
        process.stop()


CHECKS = [("smtp", ""), ("smtp:outlook", ""), ("imap", ""), ("pop3", ""), ("roundtrip", "imap"), ("roundtrip", "pop3")]


@pytest.mark.parametrize(("check", "via"), CHECKS)
def test_probe_answers_the_series_a_scheduled_run_exports(monitor: Monitor, check: str, via: str) -> None:
    """Same names, label sets and values (for the same, successful outcome) as the scheduled run of the check."""
    params = {"target": "lab", "check": check, **({"via": via} if via else {})}
    status, body, _ = probe(monitor.url, **params)
    assert status == 200, body
    answer = samples(body)
    scheduled = wait_for(lambda: (s := of_check(samples(monitor.metrics().encode()), check, via))
                         and s.get(("mailmon_check_runs_total", tuple(sorted(
                             {"check": check, "target": "lab", "vantage": "ci", "via": via}.items())))) and s,
                         f"the scheduled {check} run")
    # A round trip times a `sweep` step only in runs that found leftover probe messages to delete.
    assert set(_unswept(of_check(answer, check, via))) == set(_unswept(scheduled))
    # Nothing of the target's other checks.
    assert {dict(k[1]).get("check") for k in answer} <= {check, None}
    for key, value in scheduled.items():
        if key[0] in ("mailmon_check_success", "mailmon_check_failures_total", "mailmon_smtp_last_reply_code",
                      "mailmon_tls_cert_expiry_timestamp_seconds", "mailmon_roundtrip_late_total"):
            assert answer[key] == value, key
    runs = ("mailmon_check_runs_total", tuple(sorted({"check": check, "target": "lab", "vantage": "ci",
                                                      "via": via}.items())))
    assert answer[runs] >= 1.0  # 1 unless another test probed it before (its counters count on, like run's)
    assert answer[("mailmon_verdict", (("target", "lab"), ("vantage", "ci"), ("verdict", "ok")))] == 1.0


@pytest.mark.parametrize(("params"), [{"target": "lab", "check": "smtp"}, {"target": "lab", "check": "roundtrip",
                                                                             "via": "pop3"},
                                      {"module": "submission", "target": "127.0.0.2:587"},
                                      {"module": "imaps", "target": "127.0.0.2"},
                                      {"module": "smtp_relay", "target": "127.0.0.2"}])
def test_probe_answer_passes_promtool(monitor: Monitor, params: dict[str, str]) -> None:
    status, body, _ = probe(monitor.url, **params)
    assert status == 200
    checked = subprocess.run([tool("promtool", package="the Debian package prometheus"), "check", "metrics"],
                             input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0 and checked.stdout == b"" and checked.stderr == b"", checked


def test_module_probe_labels_series_with_the_target_parameter(monitor: Monitor) -> None:
    status, body, _ = probe(monitor.url, module="imaps", target="127.0.0.2:993")
    assert status == 200
    success = samples(body)[("mailmon_check_success", (("check", "imap"), ("target", "127.0.0.2:993"),
                                                       ("vantage", "ci"), ("via", "")))]
    assert success == 1.0


def test_counters_count_on_across_probes(monitor: Monitor) -> None:
    """increase() in the shipped rules needs counters that keep counting from one scrape to the next."""
    key = ("mailmon_check_runs_total", (("check", "smtp"), ("target", "127.0.0.2:25"), ("vantage", "ci"),
                                        ("via", "")))
    first = samples(probe(monitor.url, module="smtp_relay", target="127.0.0.2:25")[1])[key]
    second = samples(probe(monitor.url, module="smtp_relay", target="127.0.0.2:25")[1])[key]
    assert second == first + 1


def test_closed_port_fails_at_connect_refused(monitor: Monitor, refused_ports: object) -> None:
    port = refused_ports()  # type: ignore[operator]
    status, body, _ = probe(monitor.url, 5, module="smtp_relay", target=f"127.0.0.1:{port}")
    assert status == 200
    key = ("mailmon_check_failures_total", (("check", "smtp"), ("reason", "refused"), ("stage", "connect"),
                                            ("target", f"127.0.0.1:{port}"), ("vantage", "ci"), ("via", "")))
    assert samples(body)[key] == 1.0


@pytest.fixture
def silent_port() -> Iterator[tuple[int, list[socket.socket]]]:
    """A port on 127.0.0.1 that accepts connections and never says a word; yields (port, accepted sockets)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1]), accepted
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def test_silent_peer_answers_within_the_scrape_timeout(monitor: Monitor,
                                                       silent_port: tuple[int, list[socket.socket]]) -> None:
    """The module allows 30 s; the 3 s scrape timeout (less the offset) bounds the wait for the greeting."""
    port, _ = silent_port
    status, body, took = probe(monitor.url, 3, module="slow_smtp", target=f"127.0.0.1:{port}")
    assert status == 200
    assert took < 3.0
    key = ("mailmon_check_failures_total", (("check", "smtp"), ("reason", "timeout"), ("stage", "greeting"),
                                            ("target", f"127.0.0.1:{port}"), ("vantage", "ci"), ("via", "")))
    assert samples(body)[key] == 1.0


def _hostile(behaviour: str) -> tuple[socket.socket, int]:
    """A listener on 127.0.0.1 that treats every connection in one hostile way (its own thread)."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            try:
                if behaviour == "garbage":
                    conn.sendall(b"HELLO \x00\xff this is no SMTP\r\n")
                    conn.recv(1024)
                else:  # drip: a greeting at one byte a second
                    for byte in b"220 slow.test ESMTP\r\n":
                        conn.sendall(bytes([byte]))
                        time.sleep(1)
            except OSError:
                pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return server, int(server.getsockname()[1])


@pytest.mark.parametrize(("behaviour", "stage", "reason"), [("garbage", "greeting", "protocol"),
                                                            ("drip", "greeting", "timeout")])
def test_hostile_peer_answers_within_the_scrape_timeout(monitor: Monitor, behaviour: str, stage: str,
                                                        reason: str) -> None:
    server, port = _hostile(behaviour)
    try:
        status, body, took = probe(monitor.url, 3, module="slow_smtp", target=f"127.0.0.1:{port}")
    finally:
        server.close()
    assert status == 200 and took < 3.0
    key = ("mailmon_check_failures_total", (("check", "smtp"), ("reason", reason), ("stage", stage),
                                            ("target", f"127.0.0.1:{port}"), ("vantage", "ci"), ("via", "")))
    assert samples(body)[key] == 1.0


def test_host_outside_the_allow_list_is_refused_without_connecting(
        monitor: Monitor, silent_port: tuple[int, list[socket.socket]]) -> None:
    """403, and the listener on that host never saw a connection: the credentials never left."""
    port, accepted = silent_port
    status, body, _ = probe(monitor.url, module="submission", target=f"127.0.0.1:{port}")
    assert status == 403
    assert body.count(b"\n") == 1 and b"allow-list" in body
    time.sleep(0.5)
    assert accepted == []


@pytest.mark.parametrize(("params", "status"), [
    ({"target": "lab"}, 400),
    ({"check": "smtp"}, 400),
    ({"target": "lab", "check": "roundtrip"}, 400),  # two round trips: via is needed
    ({"module": "smtp_relay", "target": "bad host!"}, 400),
    ({"module": "smtp_relay", "target": "127.0.0.2:99999"}, 400),
    ({"module": "smtp_relay", "target": "127.0.0.2", "check": "smtp"}, 400),
    ({"target": "lab", "check": "smtp", "colour": "red"}, 400),
    ({"target": "nowhere", "check": "smtp"}, 404),
    ({"target": "lab", "check": "lmtp"}, 404),
    ({"module": "nonesuch", "target": "127.0.0.2"}, 404),
])
def test_bad_requests_get_a_one_line_reason(monitor: Monitor, params: dict[str, str], status: int) -> None:
    got, body, _ = probe(monitor.url, **params)
    assert got == status
    assert body.endswith(b"\n") and body.count(b"\n") == 1 and len(body) < 200


def test_probe_never_changes_scheduled_series(monitor: Monitor) -> None:
    """Every series of the scheduled target (runs, verdict, round-trip late and swept counters ...) stays as it
    was through /probe runs of each of its checks (the schedule's interval is 1 h: no scheduled run meanwhile)."""
    def scheduled() -> Series:
        return {k: v for k, v in samples(monitor.metrics().encode()).items() if ("target", "lab") in k[1]}

    def all_ran() -> bool:
        series = scheduled()
        return all(series.get(("mailmon_check_runs_total", (("check", c), ("target", "lab"), ("vantage", "ci"),
                                                             ("via", v))), 0) >= 1 for c, v in CHECKS)

    wait_for(all_ran, "every scheduled check's first run")
    before = scheduled()
    for check, via in CHECKS:
        assert probe(monitor.url, target="lab", check=check, **({"via": via} if via else {}))[0] == 200
    assert scheduled() == before


def test_probe_results_reach_history_and_status_labelled_on_demand(monitor: Monitor) -> None:
    assert probe(monitor.url, module="smtp_relay", target="127.0.0.2:25")[0] == 200
    status = json.loads(http_get(monitor.url + "/api/status")[1])
    latest = next(r for r in status["on_demand"] if r["target"] == "127.0.0.2:25")
    assert latest["module"] == "smtp_relay" and latest["verdict"] == "ok" and latest["ok"] is True
    assert "127.0.0.2:25" not in {t["target"] for t in status["targets"]}  # the scheduled board is untouched

    def rows() -> list[dict[str, object]]:
        url = monitor.url + "/api/history?" + urllib.parse.urlencode({"target": "127.0.0.2:25"})
        return list(json.loads(http_get(url)[1])["rows"])

    row = wait_for(rows, "the /probe run in the history")[0]
    assert row["verdict"] == "on_demand"
    assert str(row["transcript"]).count("on demand: GET /probe (module smtp_relay)") == 1


def test_probe_counts_requests_by_outcome(monitor: Monitor) -> None:
    def count(outcome: str) -> float:
        return samples(monitor.metrics().encode())[("mailmon_probe_requests_total",
                                                    (("outcome", outcome), ("vantage", "ci")))]

    before = count("not_found")
    probe(monitor.url, module="nonesuch", target="127.0.0.2")
    assert count("not_found") == before + 1


def test_saturated_monitor_answers_503_at_once(lab: Lab, tmp_path: Path,
                                               silent_port: tuple[int, list[socket.socket]]) -> None:
    """With the one slot held by a probe of a silent server, the next /probe is refused fast and counted."""
    port, accepted = silent_port
    config = tmp_path / "config.yaml"
    config.write_text("vantage: ci\nconcurrency: 1\nmodules:\n  slow: {protocol: smtp, tls: none, timeout: 8s}\n")
    monitor = Monitor(config, tmp_path / "mailmon.log")
    try:
        holder = threading.Thread(target=probe, args=(monitor.url,), kwargs={"module": "slow",
                                                                             "target": f"127.0.0.1:{port}"})
        holder.start()
        wait_for(lambda: accepted, "the holding probe to connect (it has the only slot now)")
        status, body, took = probe(monitor.url, module="slow", target="127.0.0.1:1")
        assert status == 503 and b"busy" in body and took < 1.0
        assert body.count(b"\n") == 1
        busy = samples(monitor.metrics().encode())[("mailmon_probe_requests_total",
                                                    (("outcome", "busy"), ("vantage", "ci")))]
        assert busy == 1
        holder.join(timeout=30)
    finally:
        monitor.stop()


def test_login_module_without_hosts_is_a_config_error(lab: Lab, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    (tmp_path / "pw").write_text("secret-password")
    config.write_text(f"vantage: ci\nmodules:\n  sub:\n    protocol: smtp\n"
                      f"    auth: {{username: u@x.test, password_file: {tmp_path / 'pw'}}}\n")
    done = subprocess.run(mailmon_command("validate", "--config", str(config)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert f"{config}:4: modules.sub: a module that logs in needs hosts" in done.stderr
    assert "Traceback" not in done.stderr


def test_never_answering_server_is_recorded_by_prometheus_as_mailmon_failure(
        monitor: Monitor, silent_port: tuple[int, list[socket.socket]], tmp_path: Path) -> None:
    """Prometheus with scrape_timeout 5 s probing a server that never answers: up == 1 and mailmon's timeout
    series, not a scrape timeout."""
    port, _ = silent_port
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "6s", "scrape_timeout": "5s", "evaluation_interval": "1s"},
        "scrape_configs": [{
            "job_name": "mailmon", "metrics_path": "/probe", "params": {"module": ["slow_smtp"]},
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
            "relabel_configs": [
                {"source_labels": ["__address__"], "target_label": "__param_target"},
                {"source_labels": ["__param_target"], "target_label": "instance"},
                {"target_label": "__address__", "replacement": monitor.listen},
            ]}],
    }))
    listen = f"127.0.0.1:{free_port()}"
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen([tool("prometheus", package="the Debian package prometheus"),
                                f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address={listen}"], stdout=log, stderr=log)
    try:
        wait_for(lambda: http_get(f"http://{listen}/-/ready")[0] == 200, "Prometheus to be ready")

        def query(expr: str) -> list[dict[str, object]]:
            url = f"http://{listen}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            return list(json.loads(http_get(url)[1])["data"]["result"])

        timeouts = 'mailmon_check_failures_total{job="mailmon",stage="greeting",reason="timeout"} >= 1'
        wait_for(lambda: query(timeouts), "Prometheus to record mailmon's greeting timeout", limit=60)
        assert [r["value"][1] for r in query('up{job="mailmon"}')] == ["1"]  # type: ignore[index]
        assert query('scrape_duration_seconds{job="mailmon"} < 5')
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()


def test_probe_is_behind_the_web_config_tls_and_basic_auth(secured: tuple[str, Path]) -> None:  # noqa: F811
    """--web.config.file covers /probe as it covers /metrics: HTTPS, and 401 without the right user."""
    url, cert = secured
    context = ssl.create_default_context(cafile=str(cert))
    assert web_get(url + "/probe?target=a&check=smtp", context, None, None)[0] == 401
    status, body = web_get(url + "/probe?target=a&check=smtp", context, USER, PASSWORD)
    assert status == 200 and b'mailmon_check_failures_total{check="smtp",reason="refused",stage="connect"' in body
