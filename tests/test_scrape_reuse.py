"""A scrape while nothing changed is answered with the last body (issue 18's burst of scrapers), never a stale one."""

from __future__ import annotations

import gzip

from prometheus_client import CollectorRegistry

from monitor.metrics import Metrics
from monitor.ondemand import OnDemand
from tests import builders

TARGET = "mx.example"


def monitor() -> Metrics:
    metrics = Metrics(CollectorRegistry(), "v")
    metrics.add_target(builders.target(TARGET, "smtp"))
    return metrics


def test_an_unchanged_monitor_is_answered_with_the_last_body() -> None:
    metrics = monitor()
    body = metrics.scrape(compress=False)()
    assert metrics.last_body(False) is body


def test_each_encoding_keeps_its_own_body() -> None:
    metrics = monitor()
    plain, packed = metrics.scrape(compress=False)(), metrics.scrape(compress=True)()
    assert metrics.last_body(False) is plain and metrics.last_body(True) is packed
    assert gzip.decompress(packed) == plain


def test_nothing_is_kept_before_the_first_scrape() -> None:
    assert monitor().last_body(False) is None


def test_a_new_result_shows_in_the_next_scrape() -> None:
    metrics = monitor()
    metrics.scrape(compress=False)()
    metrics.record(builders.result(TARGET, "smtp", vantage="v", ok=True, started_at=1_700_000_123.0))
    assert metrics.last_body(False) is None
    assert b"1.700000123e+09" in metrics.scrape(compress=False)()


def test_a_process_series_change_shows_in_the_next_scrape() -> None:
    metrics = monitor()
    metrics.scrape(compress=True)()
    metrics.record_http_rejected()
    assert metrics.last_body(True) is None
    assert b"mailmon_http_connections_rejected_total 1.0" in gzip.decompress(metrics.scrape(compress=True)())


def test_a_changed_tail_shows_in_the_next_scrape() -> None:
    metrics, on_demand = monitor(), OnDemand("v")
    metrics.scrape(compress=False, tail=on_demand.exposition())()
    on_demand.count("busy")
    assert metrics.last_body(False, on_demand.exposition()) is None
    assert b'outcome="busy",vantage="v"} 1.0' in metrics.scrape(compress=False, tail=on_demand.exposition())()


def test_a_body_taken_before_a_change_is_not_kept_as_current() -> None:
    """The snapshot's key is taken with its parts, on the loop: a change while a worker joins leaves no stale body."""
    metrics = monitor()
    build = metrics.scrape(compress=False)
    metrics.set_verdict(TARGET, "ok")
    build()
    assert metrics.last_body(False) is None
