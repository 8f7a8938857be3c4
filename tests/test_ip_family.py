"""Address families (`ip_family`): a dual-stack lab where only IPv6 breaks must show IPv6 failing, IPv4 passing."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import ConfigError, load_text
from monitor.metrics import Metrics
from monitor.result import Result
from monitor.verdict import classify_result, decide, describe
from tests.conftest import ROOT, Lab

_TARGET = """vantage: v
probe_key: {{env: K}}
targets:
  - name: t
    host: mail.example.test
    auth: {{username: u, password_env: P}}
{extra}"""


def _load(extra: str):  # type: ignore[no-untyped-def]
    return load_text(_TARGET.format(extra=extra), "f.yaml", {"P": "x", "K": "a probe key of sixteen characters"})


def test_both_makes_one_check_per_family() -> None:
    """`ip_family: both` on the target: every check twice, ipv4 then ipv6, with keys of their own."""
    target = _load("    ip_family: both\n    imap: {}\n    pop3: {}\n").targets[0]
    assert [c.key for c in target.checks] == ["imap@ipv4", "imap@ipv6", "pop3@ipv4", "pop3@ipv6"]


def test_a_check_setting_overrides_the_target() -> None:
    """The check's own ip_family wins over the target's; a check without either keeps connecting over any."""
    target = _load("    ip_family: ipv4\n    imap: {ip_family: ipv6}\n    pop3: {}\n").targets[0]
    assert [c.key for c in target.checks] == ["imap@ipv6", "pop3@ipv4"]
    plain = _load("    imap: {}\n").targets[0]
    assert [(c.key, c.ip_family) for c in plain.checks] == [("imap", None)]


def test_roundtrip_takes_ip_family() -> None:
    target = _load("    smtp: {}\n    imap: {}\n    roundtrip: {via: imap, ip_family: both}\n").targets[0]
    assert [c.key for c in target.checks if c.name == "roundtrip"] == ["roundtrip:imap@ipv4", "roundtrip:imap@ipv6"]


def test_unknown_family_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as raised:
        _load("    imap: {ip_family: ip6}\n")
    assert raised.value.problems == ["f.yaml:7: targets[0].imap.ip_family: must be one of both, ipv4, ipv6, got 'ip6'"]


def test_each_family_is_its_own_series_with_a_label() -> None:
    """The ip_family label tells the two series apart; a failure of one leaves the other's success at 1."""
    config = _load("    ip_family: both\n    imap: {}\n")
    registry = CollectorRegistry()
    metrics = Metrics(registry, "v")
    metrics.add_target(config.targets[0])
    metrics.record(Result("t", "imap", "v", True, 0.0, 0.1, {}, ip_family="ipv4"))
    metrics.record(Result("t", "imap", "v", False, 0.0, 0.1, {}, stage="connect", reason="refused", ip_family="ipv6"))
    labels = {"vantage": "v", "target": "t", "check": "imap", "via": ""}
    assert registry.get_sample_value("mailmon_check_success", {**labels, "ip_family": "ipv4"}) == 1
    assert registry.get_sample_value("mailmon_check_success", {**labels, "ip_family": "ipv6"}) == 0
    assert registry.get_sample_value("mailmon_check_success", labels) is None


def test_summary_names_the_failing_family() -> None:
    ok = Result("t", "imap", "v", True, 0.0, 0.1, {}, ip_family="ipv4")
    bad = Result("t", "imap", "v", False, 0.0, 0.1, {}, stage="connect", reason="refused", ip_family="ipv6")
    results = [ok, bad]
    summary = describe(decide([classify_result(r) for r in results]), results, "v")
    assert "IMAP over IPv6 fails at connect (refused)" in summary and "IMAP over IPv4 work" in summary


# ----------------------------------------------------------------------------------------------- lab


@pytest.fixture
def hosts_file(tmp_path: Path, lab: Lab) -> Path:
    """An /etc/hosts where the lab's name has an IPv4 and an IPv6 address, like a dual-stack server's."""
    if lab.env.get("LAB_IPV6") != "1":
        pytest.skip("this machine's loopback has no ::1: the lab is IPv4-only")
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{lab.host} {lab.server_name}\n{lab.env['LAB_HOST6']} {lab.server_name}\n")
    return hosts


def _check_both(lab: Lab, tmp_path: Path, hosts: Path) -> list[Result]:
    """`mailmon check --json` for imap+smtp with ip_family both, in a mount namespace seeing `hosts` as /etc/hosts
    (the real resolver path, getaddrinfo, without touching the machine's file)."""
    config = tmp_path / "both.yaml"
    config.write_text(f"""vantage: test
targets:
  - name: lab
    host: {lab.server_name}
    ip_family: both
    tls: {{ca_file: {lab.ca}}}
    auth: {{username: {lab.user}, password_file: {lab.env["LAB_PASSWORD_FILE"]}}}
    imap: {{port: 993, tls: implicit}}
    smtp: {{port: 587, tls: starttls}}
""")
    script = 'mount --bind "$1" /etc/hosts && exec "$2" -m monitor check --config "$3" --json'
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(hosts),
                           sys.executable, str(config)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout, done.stderr
    results = []
    for line in done.stdout.splitlines():
        row = json.loads(line)
        results.append(Result(row["target"], row["check"], row["vantage"], row["ok"], row["started_at"],
                              row["duration_seconds"], row["phases"], stage=row["stage"], reason=row["reason"],
                              detail=row["detail"], via=row["via"], ip_family=row.get("ip_family")))
    return results


@pytest.fixture
def ipv6_down(lab: Lab) -> Iterator[None]:
    lab.control("fault", "ipv6", "on")
    try:
        yield
    finally:
        lab.control("fault", "ipv6", "off")


@pytest.mark.lab
def test_both_families_pass_on_a_dual_stack_lab(lab: Lab, tmp_path: Path, hosts_file: Path) -> None:
    results = _check_both(lab, tmp_path, hosts_file)
    assert sorted((r.key, r.ok) for r in results) == [("imap@ipv4", True), ("imap@ipv6", True),
                                                      ("smtp@ipv4", True), ("smtp@ipv6", True)], \
        [r.detail for r in results]


@pytest.mark.lab
def test_ipv6_listener_down_fails_ipv6_only(lab: Lab, tmp_path: Path, hosts_file: Path, ipv6_down: None) -> None:
    """Only the ::1 listeners stopped: every ipv6 check fails at connect (refused, no fallback to IPv4), every
    ipv4 check passes, and the verdict summary names IPv6."""
    results = _check_both(lab, tmp_path, hosts_file)
    outcome = {r.key: (r.stage, r.reason) if not r.ok else "ok" for r in results}
    assert outcome == {"imap@ipv4": "ok", "smtp@ipv4": "ok",
                       "imap@ipv6": ("connect", "refused"), "smtp@ipv6": ("connect", "refused")}
    summary = describe(decide([classify_result(r) for r in results]), results, "test")
    assert "IMAP over IPv6 fails at connect (refused)" in summary, summary
    assert "SMTP over IPv6 fails" in summary and "over IPv4 work" in summary, summary
