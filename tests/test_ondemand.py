"""monitor/ondemand.py without a server: the deadline rule, target parsing, request parsing and the LRU bound."""

from __future__ import annotations

import pytest

from monitor.config import load_text
from monitor.ondemand import OnDemand, ProbeRefused, deadline, parse_request, split_host_port
from monitor.result import Result

CONFIG = """
vantage: v
targets:
  - {name: t, host: 127.0.0.1, smtp: {port: 25, tls: none, timeout: 8s}}
modules:
  relay: {protocol: smtp, port: 25, tls: none, timeout: 10s}
"""


@pytest.mark.parametrize(("timeout", "header", "offset", "expected"), [
    (10.0, None, 0.5, 10.0),      # no header: the module's timeout
    (10.0, "5", 0.5, 4.5),        # Prometheus's scrape timeout less the offset
    (3.0, "5", 0.5, 3.0),         # the module's, when lower
    (10.0, "5", 1.5, 3.5),        # --probe.timeout-offset
    (30.0, None, 0.5, 19.0),      # the HTTP handler cap
    (10.0, "0.2", 0.5, 0.1),      # never below a floor
])
def test_deadline_is_the_lowest_bound(timeout: float, header: str | None, offset: float, expected: float) -> None:
    assert deadline(timeout, header, offset, 19.0) == pytest.approx(expected)


def test_bad_scrape_timeout_header_is_a_bad_request() -> None:
    with pytest.raises(ProbeRefused) as caught:
        deadline(10.0, "soon", 0.5, 19.0)
    assert caught.value.status == 400


@pytest.mark.parametrize(("text", "expected"), [
    ("mx.example.net", ("mx.example.net", None)), ("mx.example.net:2525", ("mx.example.net", 2525)),
    ("192.0.2.1:25", ("192.0.2.1", 25)), ("[2001:db8::1]:25", ("2001:db8::1", 25)),
    ("2001:db8::1", ("2001:db8::1", None)),
])
def test_split_host_port(text: str, expected: tuple[str, int | None]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["", "a b", "host:0", "host:65536", "host:x", "[::1", "[nope]:25", "http://x/"])
def test_split_host_port_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_configured_target_request_keeps_the_whole_target() -> None:
    config = load_text(CONFIG, "c.yml", {})
    request = parse_request({"target": ["t"], "check": ["smtp"]}, config)
    assert request.module is None and request.check.timeout == 8.0 and request.key == ("", "t", "smtp")


def test_module_request_names_its_target_after_the_parameter() -> None:
    config = load_text(CONFIG, "c.yml", {})
    request = parse_request({"module": ["relay"], "target": ["127.0.0.2:2525"]}, config)
    assert (request.target.name, request.target.host, request.check.port) == ("127.0.0.2:2525", "127.0.0.2", 2525)


def test_repeated_parameter_is_a_bad_request() -> None:
    config = load_text(CONFIG, "c.yml", {})
    with pytest.raises(ProbeRefused) as caught:
        parse_request({"target": ["t", "u"], "check": ["smtp"]}, config)
    assert caught.value.status == 400 and "2 times" in caught.value.reason


def test_least_recently_probed_series_are_dropped_past_the_bound() -> None:
    config = load_text(CONFIG, "c.yml", {})
    on_demand = OnDemand("v", keep=2)
    for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
        request = parse_request({"module": ["relay"], "target": [host]}, config)
        result = Result(target=host, check="smtp", vantage="v", ok=True, started_at=1.0, duration_seconds=0.1,
                        phases={})
        on_demand.record(request, result, vantage_healthy=True)
    assert [row["target"] for row in on_demand.status()] == ["127.0.0.3", "127.0.0.2"]
