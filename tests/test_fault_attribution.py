"""End to end: injected lab faults drive the local verdict, and Prometheus rules + Alertmanager attribute them.

Real Postfix + Dovecot (the mail lab and its fault switches), real `mailmon run` processes, a real Prometheus
loaded with the shipped rules and a real Alertmanager with the shipped routing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import builders
from tests.conftest import ROOT, Lab
from tests.processes import (
    Monitor,
    WebhookSink,
    fast_rules,
    http_get,
    query,
    start_alertmanager,
    start_prometheus,
    wait_for,
)

pytestmark = [pytest.mark.lab, pytest.mark.prometheus]

INTERVAL = 4.0
# The acceptance bound: the verdict reaches its state within one check interval plus 5 s.
REACT = INTERVAL + 5.0


def _config(tmp: Path, lab: Lab, vantage: str, host: str = "127.0.0.2", smtp_port: int = 587,
            roundtrip: bool = True) -> Path:
    key = tmp / "probe.key"
    key.write_text("fault-attribution-test-key-0123")
    trip = "    roundtrip: {via: [imap], timeout: 3s}\n" if roundtrip else ""
    head = f"\nvantage: {vantage}\ndefaults: {{interval: {INTERVAL:g}s, timeout: 3s}}\nprobe_key: {{file: {key}}}\n"
    return builders.lab_config(tmp, lab, head, f"smtp: {{port: {smtp_port}, tls: starttls}}", *builders.LAB_CHECKS[1:],
                               host=host, tail=trip, name=f"{vantage}.yaml")


@pytest.fixture
def healthy_lab(lab: Lab) -> Iterator[Lab]:
    lab.control("fault", "reset")
    yield lab
    lab.control("fault", "reset")


@pytest.fixture
def vantage(tmp_path: Path, healthy_lab: Lab) -> Iterator[tuple[Monitor, Path]]:
    """One monitor whose name resolution the test controls (its own hosts and resolv.conf files)."""
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.2 mail.lab.test\n")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")  # nothing answers DNS there
    monitor = Monitor(_config(tmp_path, healthy_lab, "office", host="mail.lab.test"), tmp_path / "office.log",
                      hosts=hosts, resolv=resolv)
    try:
        wait_for(lambda: monitor.verdict("lab") == "ok", "the verdict to be ok before the fault", limit=REACT + 5)
        yield monitor, hosts
    finally:
        monitor.stop()


def _expect(monitor: Monitor, verdict: str, what: str, started: float) -> float:
    """Wait for `verdict`; returns the seconds it took from `started`."""
    wait_for(lambda: monitor.verdict("lab") == verdict, f"verdict {verdict} after {what}",
             limit=REACT - (time.monotonic() - started), every=0.1)
    return time.monotonic() - started


@pytest.mark.parametrize(("faults", "expected"), [
    (["smtp"], "smtp_down"),
    (["imap", "pop3"], "receive_down"),
    (["hold"], "delivery_stalled"),
    (["auth"], "auth_failed"),
    (["cert-expired"], "tls_problem"),
])
def test_injected_fault_gives_its_verdict_then_ok(healthy_lab: Lab, vantage: tuple[Monitor, Path],
                                                 faults: list[str], expected: str) -> None:
    """Each lab fault turns the verdict into its own state within an interval + 5 s, and back to ok after repair."""
    monitor, _ = vantage
    started = time.monotonic()
    for fault in faults:
        healthy_lab.control("fault", fault, "on")
    _expect(monitor, expected, "+".join(faults), started)
    repaired = time.monotonic()
    for fault in faults:
        healthy_lab.control("fault", fault, "off")
    # Back to ok needs every check to pass once more; a repaired SMTP service may first be throttled briefly.
    wait_for(lambda: monitor.verdict("lab") == "ok", "the verdict to return to ok", limit=2 * INTERVAL + 10)
    assert time.monotonic() - repaired < 2 * INTERVAL + 10


def test_broken_resolver_is_a_vantage_fault(vantage: tuple[Monitor, Path]) -> None:
    """This vantage's resolver losing the server's name reads as vantage_fault, never as a server outage."""
    monitor, hosts = vantage
    original = hosts.read_text()
    started = time.monotonic()
    hosts.write_text("127.0.0.1 localhost\n")
    seen: set[str] = set()

    def faulted() -> bool:
        verdict = monitor.verdict("lab")
        seen.add(str(verdict))
        return verdict == "vantage_fault"

    wait_for(faulted, "verdict vantage_fault", limit=REACT, every=0.05)
    assert time.monotonic() - started < REACT
    log = monitor.log.name
    assert not seen & {"smtp_down", "receive_down", "unreachable"}, (seen, Path(log).read_text()[-3000:])
    wait_for(lambda: 'mailmon_selfcheck_success{vantage="office"} 0.0' in monitor.metrics(),
             "the selfcheck to fail too", limit=REACT - (time.monotonic() - started))
    hosts.write_text(original)
    wait_for(lambda: monitor.verdict("lab") == "ok", "the verdict to return to ok", limit=2 * INTERVAL + 10)


def _routed_alertmanager(tmp: Path, sink: WebhookSink) -> Path:
    """The shipped Alertmanager config with its webhook receivers pointed at the test's sink, and quick timers."""
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = f"http://127.0.0.1:{sink.port}/{receiver['name']}"
    def quicken(route: dict) -> None:  # type: ignore[type-arg]
        route.update({"group_wait": "1s", "group_interval": "1s"})
        for child in route.get("routes", []):
            quicken(child)
    quicken(config["route"])
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def _active_alerts(alertmanager: str, target: str) -> set[str]:
    alerts = json.loads(http_get(alertmanager + "/api/v2/alerts?active=true&inhibited=false&silenced=false")[1])
    return {a["labels"]["alertname"] for a in alerts if a["labels"].get("target") == target}


def test_prometheus_tells_site_fault_from_server_outage(tmp_path: Path, healthy_lab: Lab) -> None:
    """Two vantages: SMTP broken on one path is a site fault for network owners; down for both pages on-call."""
    sink = WebhookSink()
    east = Monitor(_config(tmp_path, healthy_lab, "east", roundtrip=False), tmp_path / "east.log")
    # West's path to the SMTP port is broken: it reaches a port where nothing listens.
    west = Monitor(_config(tmp_path, healthy_lab, "west", smtp_port=2587, roundtrip=False), tmp_path / "west.log")
    alertmanager, am_url = start_alertmanager(tmp_path, _routed_alertmanager(tmp_path, sink))
    prometheus, prom_url = start_prometheus(tmp_path, [east.listen, west.listen], [fast_rules(tmp_path)],
                                            am_url.removeprefix("http://"))
    try:
        scope = 'target_check_via:mailmon_check_success:failure_scope{target="lab",check="smtp"}'
        wait_for(lambda: [r["metric"]["scope"] for r in query(prom_url, scope)] == ["site"],
                 "Prometheus to call west's SMTP failure a site fault", limit=60)
        wait_for(lambda: _active_alerts(am_url, "lab") == {"MailmonSiteFault"},
                 "Alertmanager to hold exactly MailmonSiteFault", limit=60)
        wait_for(lambda: sink.alert_names("site-owners") == {"MailmonSiteFault"}, "the site owners to be notified")
        assert "mail-oncall" not in sink.received

        healthy_lab.control("fault", "smtp", "on")
        wait_for(lambda: [r["metric"]["scope"] for r in query(prom_url, scope)] == ["server"],
                 "Prometheus to call SMTP failing everywhere a server-side outage", limit=60)
        wait_for(lambda: _active_alerts(am_url, "lab") == {"MailmonSMTPServerOutage"},
                 "Alertmanager to hold exactly MailmonSMTPServerOutage", limit=60)
        wait_for(lambda: sink.alert_names("mail-oncall") == {"MailmonSMTPServerOutage"}, "mail on-call to be paged")
    finally:
        healthy_lab.control("fault", "reset")
        prometheus.stop()
        alertmanager.stop()
        east.stop()
        west.stop()
        sink.stop()
