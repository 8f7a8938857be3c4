"""MX targets (`host: {mx: DOMAIN}`) against a local authoritative DNS server and the lab's real Postfix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from prometheus_client import CollectorRegistry

import monitor.mx
from monitor.config import Config, ConfigError, load_text
from monitor.mx import MxCollector
from monitor.probes import probes_for
from monitor.result import Result
from monitor.runner import Runner
from monitor.verdict import classify_result, decide
from tests.conftest import Lab
from tests.fakes.dns_server import DnsServer

pytestmark = pytest.mark.lab

ORIGIN = "mx.test."
# 127.0.0.9 has nothing listening (a dead MX: connection refused); the lab's Postfix is on 127.0.0.2.
ZONE = """$TTL 60
@        SOA  ns hostmaster 1 60 60 60 30
@        NS   ns
ns       A    127.0.0.3
two      MX   10 dead
two      MX   20 live
up       MX   10 live
up       MX   20 live2
dead     A    127.0.0.9
live     A    127.0.0.2
live2    A    127.0.0.2
plain    A    127.0.0.2
ghost    MX   10 nowhere
alias    MX   10 www
www      CNAME live
null     MX   0 .
short    1 MX 10 live
"""


@pytest.fixture
def no_mx_cache() -> Iterator[None]:
    monitor.mx._CACHE.clear()
    yield
    monitor.mx._CACHE.clear()


@pytest.fixture
async def dns_server(no_mx_cache: None) -> AsyncIterator[tuple[DnsServer, str]]:
    server = DnsServer(ZONE, ORIGIN)
    host, port = await server.start("127.0.0.3")
    try:
        yield server, f"{host}:{port}"
    finally:
        server.close()


def _config(lab: Lab, domain: str, resolver: str) -> Config:
    return load_text(f"""vantage: test
targets:
  - name: mail
    host: {{mx: {domain}, resolver: "{resolver}"}}
    tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}
    smtp: {{port: 25, tls: starttls, timeout: 10s}}
""", "mx.yaml")


async def _run(lab: Lab, domain: str, resolver: str) -> Result:
    config = _config(lab, domain, resolver)
    target = config.targets[0]
    return await Runner("test", probes=probes_for(config)).execute(target, target.checks[0])


def _hosts_up(result: Result, target: str = "mail", collector: MxCollector | None = None
              ) -> dict[tuple[str, str], float]:
    """mailmon_mx_host_up of a monitor (its collector) that recorded `result`."""
    collector = collector or MxCollector("test")
    collector.record(result.target, result.mx_hosts)
    collector.only = frozenset({target})
    registry = CollectorRegistry()
    registry.register(collector)
    return {(s.labels["mx"], s.labels["preference"]): s.value
            for metric in registry.collect() for s in metric.samples}


async def test_every_mx_up_passes_and_each_host_is_a_series(lab: Lab, dns_server: tuple[DnsServer, str]) -> None:
    result = await _run(lab, "up.mx.test", dns_server[1])
    assert result.ok, result.detail
    assert _hosts_up(result) == {("live.mx.test", "10"): 1.0, ("live2.mx.test", "20"): 1.0}


async def test_dead_primary_with_working_backup_is_mx_fallback(lab: Lab, dns_server: tuple[DnsServer, str]) -> None:
    """MX 10 refuses, MX 20 works: connect/mx_fallback (mail still flows), degraded, never down."""
    result = await _run(lab, "two.mx.test", dns_server[1])
    assert (result.stage, result.reason) == ("connect", "mx_fallback"), result.detail
    assert "dead.mx.test" in result.detail and "live.mx.test" in result.detail
    assert _hosts_up(result) == {("dead.mx.test", "10"): 0.0, ("live.mx.test", "20"): 1.0}
    assert decide([classify_result(result)]) == "degraded"


@pytest.mark.parametrize(("domain", "outcome"), [
    ("nothere.mx.test", ("dns", "nxdomain")),
    ("plain.mx.test", ("dns", "no_mx")),
    ("null.mx.test", ("dns", "no_mx")),
    ("ghost.mx.test", ("dns", "mx_unresolvable")),
    ("alias.mx.test", ("dns", "mx_cname")),
])
async def test_dns_outcomes_are_classified(lab: Lab, dns_server: tuple[DnsServer, str], domain: str,
                                           outcome: tuple[str, str]) -> None:
    """NXDOMAIN, no MX, a null MX, an MX name without address and an MX pointing at a CNAME: each its own
    reason, never internal."""
    result = await _run(lab, domain, dns_server[1])
    assert (result.stage, result.reason) == outcome, result.detail


async def test_mx_cname_still_checks_the_host(lab: Lab, dns_server: tuple[DnsServer, str]) -> None:
    """The alias is followed (as most senders do) and its host checked: the series says it works."""
    result = await _run(lab, "alias.mx.test", dns_server[1])
    assert _hosts_up(result) == {("www.mx.test", "10"): 1.0}


async def test_mx_records_are_re_resolved_after_their_ttl(lab: Lab, dns_server: tuple[DnsServer, str]) -> None:
    """Within the TTL (1 s) a record change is not seen (cached, as a sender's resolver would); after it, it is."""
    server, resolver = dns_server
    assert (await _run(lab, "short.mx.test", resolver)).ok
    server.load(ZONE.replace("short    1 MX 10 live", "short    1 MX 10 dead"))
    asked = len(server.queries)
    assert (await _run(lab, "short.mx.test", resolver)).ok
    assert len(server.queries) == asked  # answered from the cache
    await asyncio.sleep(1.2)
    result = await _run(lab, "short.mx.test", resolver)
    assert (result.stage, result.reason) == ("connect", "refused"), result.detail


@pytest.mark.parametrize(("host", "problem"), [
    ("{mx: example.org, resolver: 'nameserver'}", "mx.yaml:5: targets[0].host.resolver: 'nameserver' is not an IP "
                                                  "address with an optional port (e.g. 127.0.0.53 or [::1]:5353)"),
    ("{resolver: 127.0.0.53}", "mx.yaml:5: targets[0].host: mx is required: the domain whose MX records to check"),
])
def test_bad_mx_host_is_a_config_error(host: str, problem: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_text(f"vantage: v\ntargets:\n  - name: t\n    smtp: {{port: 25}}\n    host: {host}\n", "mx.yaml")
    assert problem in raised.value.problems


def test_mx_target_checks_smtp_only() -> None:
    with pytest.raises(ConfigError) as raised:
        load_text("vantage: v\ntargets:\n  - name: t\n    host: {mx: example.org}\n    auth: {username: u, "
                  "password_env: P}\n    imap: {}\n", "mx.yaml", {"P": "x"})
    assert any("targets[0].imap: needs a host" in p for p in raised.value.problems), raised.value.problems


def _mx_result(target: str, up: dict[tuple[int, str], float]) -> Result:
    return Result(target=target, check="smtp", vantage="test", ok=True, started_at=0.0, duration_seconds=0.0,
                  phases={}, mx_hosts=up)


def test_state_is_per_target() -> None:
    assert ("a.example", "5") not in _hosts_up(_mx_result("other", {(5, "a.example"): 1.0}), "mail")


def test_state_is_per_monitor() -> None:
    """Each monitor (App) has its own MX state: one's runs never show in another's series."""
    _hosts_up(_mx_result("mail", {(5, "a.example"): 1.0}))
    assert _hosts_up(_mx_result("mail", {(7, "b.example"): 0.0})) == {("b.example", "7"): 0.0}
