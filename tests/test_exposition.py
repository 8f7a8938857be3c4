"""The pre-rendered exposition: what a scrape returns is what prometheus_client would write, and never stale."""

from __future__ import annotations

import zlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from monitor.config import Target
from monitor.exposition import Exposition, crc32_combine, format_value
from monitor.metrics import ROUNDTRIP_BUCKETS, Metrics
from monitor.result import Result, TlsFacts
from tests import builders

# Every character the text format must escape in a label value.
AWKWARD = 'mx "one"\\two\nthree'
VANTAGE = 'site "a"'


def target(name: str = AWKWARD) -> Target:
    return builders.target(name, "smtp", builders.check("roundtrip", timeout=30.0, via="imap",
                                                        recipient="probe@lab.test"))


def result(check: str = "smtp", ok: bool = True, via: str | None = None, **phases: float) -> Result:
    return builders.result(AWKWARD, check, vantage=VANTAGE, via=via, ok=ok, started_at=1_700_000_000.5,
                           duration=0.123456789, phases=phases or {"dns": 0.0001, "connect": 0.00025}, stage="auth",
                           reason="auth_rejected", smtp_code=235, tls=TlsFacts(cert_not_after=1_800_000_000.0))


def lines(text: bytes) -> set[bytes]:
    return {line for line in text.split(b"\n") if line and not line.startswith(b"#")}


def test_lines_are_byte_for_byte_what_prometheus_client_writes() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.record(result(ok=False))
    metrics.record(result(dns=0.0001, connect=0.25, ehlo=3e-7))
    metrics.record(result(check="roundtrip", via="imap", delivery=0.3))
    metrics.set_verdict(AWKWARD, "auth_failed")

    reference = CollectorRegistry()
    names = ("vantage", "target", "check", "via")
    phase = Gauge("mailmon_check_phase_duration_seconds", "x", (*names, "phase"), registry=reference)
    phase.labels(VANTAGE, AWKWARD, "smtp", "", "dns").set(0.0001)
    phase.labels(VANTAGE, AWKWARD, "smtp", "", "ehlo").set(3e-7)
    Counter("mailmon_check_failures_total", "x", (*names, "stage", "reason"), registry=reference).labels(
        VANTAGE, AWKWARD, "smtp", "", "auth", "auth_rejected").inc()
    Gauge("mailmon_check_last_success_timestamp_seconds", "x", names, registry=reference).labels(
        VANTAGE, AWKWARD, "smtp", "").set(1_700_000_000.5)
    Gauge("mailmon_check_duration_seconds", "x", names, registry=reference).labels(
        VANTAGE, AWKWARD, "smtp", "").set(0.123456789)
    Gauge("mailmon_verdict", "x", ("vantage", "target", "verdict"), registry=reference).labels(
        VANTAGE, AWKWARD, "auth_failed").set(1)
    Histogram("mailmon_roundtrip_seconds", "x", ("vantage", "target", "via"), buckets=ROUNDTRIP_BUCKETS,
              registry=reference).labels(VANTAGE, AWKWARD, "imap").observe(0.3)

    missing = lines(generate_latest(reference)) - lines(metrics.exposition())
    assert not missing


def test_awkward_label_values_parse_back_unchanged() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.record(result())
    seen = {(s.labels["vantage"], s.labels["target"])
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples if "target" in s.labels}
    assert seen == {(VANTAGE, AWKWARD)}


def test_a_scrape_sees_the_latest_result_at_once() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    metrics.add_target(target())
    labels = {"vantage": VANTAGE, "target": AWKWARD, "check": "smtp", "via": ""}
    metrics.record(result())
    assert registry.get_sample_value("mailmon_check_success", labels) == 1.0
    metrics.record(result(ok=False))
    assert registry.get_sample_value("mailmon_check_success", labels) == 0.0
    assert registry.get_sample_value("mailmon_check_runs_total", labels) == 2.0
    assert registry.get_sample_value("mailmon_check_failures_total",
                                     {**labels, "stage": "auth", "reason": "auth_rejected"}) == 1.0


def test_adding_a_target_again_keeps_its_values() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    metrics.add_target(target())
    metrics.record(result())
    metrics.add_target(target())
    labels = {"vantage": VANTAGE, "target": AWKWARD, "check": "smtp", "via": ""}
    assert registry.get_sample_value("mailmon_check_runs_total", labels) == 1.0


def test_removing_a_target_drops_every_series_it_had_even_unforeseen_ones() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.add_target(target("other"))
    # A (stage, reason) and a phase the check's model does not list: their series appear when they happen ...
    metrics.record(result(ok=False, surprise=0.5))
    metrics.record_late(AWKWARD, "imap")
    metrics.record_swept(AWKWARD, 2)
    metrics.remove_target(target())
    # ... and go with the target.
    text = metrics.exposition().decode()
    assert 'target="other"' in text
    assert "two\\n" not in text and "surprise" not in text


def test_families_are_grouped_under_one_header_each() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    for name in ("a", "b", "c"):
        metrics.add_target(target(name))
    text = metrics.exposition().decode()
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(types) == len(set(types))
    # The parser would split a family whose samples were not contiguous.
    parsed = [f.name for f in text_string_to_metric_families(text)]
    assert len(parsed) == len(set(parsed))


def test_an_empty_family_writes_no_header() -> None:
    exposition = Exposition()
    family = exposition.family("x_total", "counter", "help")
    assert exposition.render() == b""
    family.set("k", [("", 'a="1"', 2.0)])
    assert exposition.render() == b'# HELP x_total help\n# TYPE x_total counter\nx_total{a="1"} 2.0\n'
    family.drop("k")
    assert exposition.render() == b""


def test_values_format_as_prometheus_client_does() -> None:
    from prometheus_client.utils import floatToGoString

    for value in (0.0, 1.0, 999.0, 1000.0, 0.25, 1e-7, 1_700_000_000.5, 1.8e9, float("inf"), -2.0):
        assert format_value(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def test_parts_taken_before_a_result_join_to_the_scrape_of_that_moment() -> None:
    """`/metrics` takes the pieces on the loop and joins them in a thread while results keep arriving: the pieces
    are the exposition of the moment they were taken, not a mix with later results."""
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.record(result(ok=False))
    before = metrics.exposition()
    parts = metrics.exposition_parts()
    metrics.record(result())
    metrics.set_verdict(AWKWARD, "ok")
    assert b"".join(parts) == before
    assert metrics.exposition() != before


def test_crc32_combine_is_the_crc_of_the_concatenation() -> None:
    first, second = b"mailmon_check_success 1.0\n" * 300, AWKWARD.encode() * 7
    assert crc32_combine(zlib.crc32(first), zlib.crc32(second), len(second)) == zlib.crc32(first + second)


def gunzip_one_member(body: bytes) -> bytes:
    """The body as a single gzip member must hold all of it (clients that stop after the first member exist)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    text = inflater.decompress(body)
    assert inflater.eof and not inflater.unused_data
    return text


def test_gzip_scrape_is_one_member_with_the_whole_exposition() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.record(result(ok=False))
    assert gunzip_one_member(metrics.scrape(compress=True)()) == metrics.exposition()


def test_gzip_scrape_after_changes_is_the_new_exposition() -> None:
    """Families compressed for an earlier scrape are reused only while their text is unchanged."""
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    metrics.scrape(compress=True)()
    metrics.record(result())
    metrics.set_verdict(AWKWARD, "ok")
    assert gunzip_one_member(metrics.scrape(compress=True)()) == metrics.exposition()
    metrics.remove_target(target())
    assert gunzip_one_member(metrics.scrape(compress=True)()) == metrics.exposition()


def test_plain_scrape_is_the_exposition() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    assert metrics.scrape(compress=False)() == metrics.exposition()


def test_scrape_serves_the_tail_after_the_exposition() -> None:
    metrics = Metrics(CollectorRegistry(), VANTAGE)
    metrics.add_target(target())
    tail = b"# TYPE other_total counter\nother_total 1.0\n"
    assert metrics.scrape(compress=False, tail=tail)() == metrics.exposition() + tail
    assert gunzip_one_member(metrics.scrape(compress=True, tail=tail)()) == metrics.exposition() + tail
