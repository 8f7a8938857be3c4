"""The metric model: series exist before the first run, results set exactly the right ones, removal cleans up."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry

from monitor.config import (
    PROTOCOL_KINDS,
    CheckSettings,
    ImapSettings,
    Pop3Settings,
    RoundTripSettings,
    SmtpSettings,
    Target,
)
from monitor.errors import REASONS, STAGES
from monitor.metrics import Metrics, expected_phases, possible_failures
from monitor.result import Result, TlsFacts
from monitor.steps import Reason, Stage
from tests import builders

VANTAGE = "test"


def make_target(name: str = "mx1") -> Target:
    return builders.target(name, "smtp", "imap")


def labels(target: str = "mx1", check: str = "smtp", **extra: str) -> dict[str, str]:
    return {"vantage": VANTAGE, "target": target, "check": check, "via": "", **extra}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    """`metrics.failure_series: all`, so every failure counter exists at 0 (the default model: see the tests of
    `on_failure` and `mailmon_check_current_failure` below)."""
    m = Metrics(registry, VANTAGE, failure_series="all")
    m.add_target(make_target())
    return m


def ok_result(check: str = "smtp") -> Result:
    phases = {phase: 0.01 * (i + 1) for i, phase in enumerate(expected_phases(make_target().checks[0]))}
    tls = TlsFacts(version="TLSv1.3", cipher="TLS_AES_256_GCM_SHA384", cert_not_after=1_800_000_000.0)
    return builders.result("mx1", check, vantage=VANTAGE, duration=0.5, phases=phases, smtp_code=221,
                           smtp_reply="221 bye", tls=tls)


def failed_result(stage: Stage = "connect", reason: Reason = "refused") -> Result:
    return builders.result("mx1", "smtp", vantage=VANTAGE, stage=stage, reason=reason, started_at=1_700_000_100.0,
                           duration=0.02, phases={"dns": 0.001, "connect": 0.002}, detail="ConnectionRefusedError")


def failure_counts(registry: CollectorRegistry, target: str = "mx1",
                   check: str = "smtp") -> dict[tuple[str, str], float]:
    """Every failure counter of one check, by (stage, reason)."""
    counts: dict[tuple[str, str], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if (sample.name == "mailmon_check_failures_total" and sample.labels["target"] == target
                    and sample.labels["check"] == check):
                counts[(sample.labels["stage"], sample.labels["reason"])] = sample.value
    return counts


def test_series_exist_before_any_run(registry: CollectorRegistry, metrics: Metrics) -> None:
    """add_target creates success, runs, skipped, phase and every failure series at 0."""
    for check in make_target().checks:
        assert registry.get_sample_value("mailmon_check_success", labels(check=check.name)) == 0.0
        assert registry.get_sample_value("mailmon_check_runs_total", labels(check=check.name)) == 0.0
        assert registry.get_sample_value("mailmon_check_skipped_total", labels(check=check.name)) == 0.0
        for phase in expected_phases(check):
            value = registry.get_sample_value("mailmon_check_phase_duration_seconds",
                                              labels(check=check.name, phase=phase))
            assert value == 0.0, phase
        counts = failure_counts(registry, check=check.name)
        assert set(counts) == set(possible_failures(check))
        assert set(counts.values()) == {0.0}


def test_smtp_reply_code_series_only_for_smtp(registry: CollectorRegistry, metrics: Metrics) -> None:
    """The last SMTP reply code gauge exists for smtp checks and not for imap ones."""
    assert registry.get_sample_value("mailmon_smtp_last_reply_code", labels(check="smtp")) == 0.0
    assert registry.get_sample_value("mailmon_smtp_last_reply_code", labels(check="imap")) is None


def test_ok_result_sets_success_and_timings(registry: CollectorRegistry, metrics: Metrics) -> None:
    """A successful run sets success 1, counts the run, and publishes times, reply code and cert expiry."""
    result = ok_result()
    metrics.record(result)
    value = registry.get_sample_value
    assert value("mailmon_check_success", labels()) == 1.0
    assert value("mailmon_check_runs_total", labels()) == 1.0
    assert value("mailmon_check_duration_seconds", labels()) == 0.5
    assert value("mailmon_check_last_attempt_timestamp_seconds", labels()) == 1_700_000_000.0
    assert value("mailmon_check_last_success_timestamp_seconds", labels()) == 1_700_000_000.0
    assert value("mailmon_smtp_last_reply_code", labels()) == 221.0
    assert value("mailmon_tls_cert_expiry_timestamp_seconds", labels()) == 1_800_000_000.0
    for phase, seconds in result.phases.items():
        assert value("mailmon_check_phase_duration_seconds", labels(phase=phase)) == seconds
    assert set(failure_counts(registry).values()) == {0.0}
    assert value("mailmon_check_success", labels(check="imap")) == 0.0  # the other check is untouched


def test_failed_result_counts_exactly_its_stage_and_reason(registry: CollectorRegistry, metrics: Metrics) -> None:
    """A failed run sets success 0 and increments the one (stage, reason) counter and no other."""
    metrics.record(ok_result())
    metrics.record(failed_result("connect", "refused"))
    assert registry.get_sample_value("mailmon_check_success", labels()) == 0.0
    assert registry.get_sample_value("mailmon_check_runs_total", labels()) == 2.0
    # The last success stays at the successful run's start, the last attempt moves on.
    assert registry.get_sample_value("mailmon_check_last_success_timestamp_seconds", labels()) == 1_700_000_000.0
    assert registry.get_sample_value("mailmon_check_last_attempt_timestamp_seconds", labels()) == 1_700_000_100.0
    counts = failure_counts(registry)
    assert counts.pop(("connect", "refused")) == 1.0
    assert set(counts.values()) == {0.0}


def test_failed_result_zeroes_phases_not_reached(registry: CollectorRegistry, metrics: Metrics) -> None:
    """Steps a failed run never reached read 0, not the time left over from an earlier successful run."""
    metrics.record(ok_result())
    metrics.record(failed_result())
    phases = expected_phases(make_target().checks[0])
    for phase in phases:
        want = {"dns": 0.001, "connect": 0.002}.get(phase, 0.0)
        assert registry.get_sample_value("mailmon_check_phase_duration_seconds", labels(phase=phase)) == want, phase


def test_repeated_failures_accumulate(registry: CollectorRegistry, metrics: Metrics) -> None:
    """Each failed run adds one to its own counter."""
    for _ in range(3):
        metrics.record(failed_result("auth", "auth_rejected"))
    metrics.record(failed_result("connect", "timeout"))
    counts = failure_counts(registry)
    assert counts[("auth", "auth_rejected")] == 3.0
    assert counts[("connect", "timeout")] == 1.0


def test_skips_are_counted(registry: CollectorRegistry, metrics: Metrics) -> None:
    """record_skip increments the skipped counter of that check only."""
    imap = make_target().checks[1]
    metrics.record_skip("mx1", imap)
    metrics.record_skip("mx1", imap)
    assert registry.get_sample_value("mailmon_check_skipped_total", labels(check="imap")) == 2.0
    assert registry.get_sample_value("mailmon_check_skipped_total", labels(check="smtp")) == 0.0


@pytest.mark.parametrize("check", [
    SmtpSettings(port=1, tls_mode=mode, interval=60.0, timeout=15.0, use_auth=use_auth,
                 mail_from="a@example.test" if dry_run else None, rcpt_to=("b@example.test",) if dry_run else ())
    for mode, use_auth, dry_run in itertools.product(("starttls", "implicit", "none"), (True, False), (True, False))
] + [
    kind(port=1, tls_mode=mode, interval=60.0, timeout=15.0, use_auth=use_auth)
    for kind, mode, use_auth in itertools.product((ImapSettings, Pop3Settings), ("starttls", "implicit", "none"),
                                                  (True, False))
] + [
    RoundTripSettings(port=993, tls_mode="implicit", interval=60.0, timeout=60.0, via=via,
                      recipient="probe@example.test", sender="probe@example.test")
    for via in ("imap", "pop3")
], ids=lambda c: f"{c.key}-{c.tls_mode}-auth{int(c.use_auth)}-dry{int(getattr(c, 'mail_from', None) is not None)}")
def test_possible_failures_are_in_the_closed_sets(check: CheckSettings) -> None:
    """Every pre-created (stage, reason) pair uses a known stage and a known reason, once."""
    pairs = possible_failures(check)
    assert pairs
    assert len(pairs) == len(set(pairs))
    for stage, reason in pairs:
        assert stage in STAGES, stage
        assert reason in REASONS, reason


def test_possible_failures_cover_the_steps_of_the_check() -> None:
    """An authenticating STARTTLS smtp check with a dry run can fail in each of its stages."""
    check = SmtpSettings(port=587, tls_mode="starttls", interval=60.0, timeout=15.0, mail_from="a@example.test",
                         rcpt_to=("b@example.test",))
    pairs = set(possible_failures(check))
    for pair in [("dns", "unreachable"), ("connect", "refused"), ("tls", "cert_expired"), ("greeting", "reply_4xx"),
                 ("ehlo", "reply_5xx"), ("auth", "auth_rejected"), ("mail_from", "reply_5xx"), ("rcpt", "reply_5xx"),
                 ("quit", "timeout")]:
        assert pair in pairs, pair


def test_remove_target_drops_its_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    """remove_target deletes every series of the target and leaves other targets' series alone."""
    metrics.add_target(make_target("other"))
    metrics.record(ok_result())
    metrics.record(failed_result())
    metrics.remove_target(make_target())
    left = {(s.name, s.labels.get("target")) for family in registry.collect() for s in family.samples
            if "target" in s.labels}
    assert {target for _, target in left} == {"other"}
    assert registry.get_sample_value("mailmon_check_success", labels(target="other")) == 0.0


def test_target_can_be_added_again_after_removal(registry: CollectorRegistry, metrics: Metrics) -> None:
    """A removed and re-added target starts from fresh zeroed series."""
    metrics.record(failed_result())
    metrics.remove_target(make_target())
    metrics.add_target(make_target())
    assert registry.get_sample_value("mailmon_check_runs_total", labels()) == 0.0
    assert set(failure_counts(registry).values()) == {0.0}


def test_by_default_a_failure_counter_appears_with_its_first_failure() -> None:
    """The default (`metrics.failure_series: on_failure`): no zero failure counters up front, the failing pair
    appears at 1."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    metrics.add_target(make_target())
    assert failure_counts(registry) == {}
    assert registry.get_sample_value("mailmon_check_success", labels()) == 0.0  # the other series still exist
    metrics.record(failed_result("connect", "refused"))
    metrics.record(failed_result("connect", "refused"))
    metrics.record(failed_result("tls", "cert_expired"))
    assert failure_counts(registry) == {("connect", "refused"): 2.0, ("tls", "cert_expired"): 1.0}
    assert failure_counts(registry, check="imap") == {}


def current_failures(registry: CollectorRegistry, check: str = "smtp") -> dict[tuple[str, str], float]:
    """The check's mailmon_check_current_failure series, by (stage, reason)."""
    return {(s.labels["stage"], s.labels["reason"]): s.value
            for family in registry.collect() for s in family.samples
            if s.name == "mailmon_check_current_failure" and s.labels["target"] == "mx1"
            and s.labels["check"] == check}


def test_current_failure_is_one_empty_series_at_0_before_the_first_run() -> None:
    registry = CollectorRegistry()
    Metrics(registry, VANTAGE).add_target(make_target())
    assert current_failures(registry) == {("", ""): 0.0}
    assert current_failures(registry, check="imap") == {("", ""): 0.0}


def test_current_failure_carries_the_last_runs_stage_and_reason() -> None:
    """One series per check: the failure of the last run at 1, so a pair's first failure is visible although its
    counter only appears then; it follows the failure as it changes."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    metrics.add_target(make_target())
    metrics.record(failed_result("connect", "refused"))
    assert current_failures(registry) == {("connect", "refused"): 1.0}
    metrics.record(failed_result("tls", "cert_expired"))
    assert current_failures(registry) == {("tls", "cert_expired"): 1.0}
    assert current_failures(registry, check="imap") == {("", ""): 0.0}


def test_current_failure_reads_0_with_no_stage_after_a_success() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    metrics.add_target(make_target())
    metrics.record(failed_result("connect", "refused"))
    metrics.record(ok_result())
    assert current_failures(registry) == {("", ""): 0.0}


def test_current_failure_in_all_mode_too(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.record(failed_result("auth", "auth_rejected"))
    assert current_failures(registry) == {("auth", "auth_rejected"): 1.0}


def test_remove_target_drops_its_current_failure(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.record(failed_result())
    metrics.remove_target(make_target())
    assert current_failures(registry) == {}


def test_at_most_20_series_per_check_by_default() -> None:
    """Issue 14's budget at the scale benchmark's shape (smtp, imap, pop3 with logins, `tls: none`), after a
    failure of each check: every series of a target, its verdict state set included, over its checks."""
    from monitor.config import Auth, Secret, TlsSettings  # here: merges cleanly with builders-based imports

    registry = CollectorRegistry()
    metrics = Metrics(registry, VANTAGE)
    checks = tuple(PROTOCOL_KINDS[name](port=port, tls_mode="none", interval=60.0, timeout=15.0, use_auth=True)
                   for name, port in (("smtp", 25), ("imap", 143), ("pop3", 110)))
    metrics.add_target(Target(name="mx1", host="mail.example.test", tls=TlsSettings(), auth=Auth("u", Secret("p")),
                              checks=checks))
    for check in ("smtp", "imap", "pop3"):
        metrics.record(Result(target="mx1", check=check, vantage=VANTAGE, ok=False, started_at=1.0,
                              duration_seconds=0.1, phases={"dns": 0.001}, stage="connect", reason="refused"))
    per_target = sum(1 for family in registry.collect() for s in family.samples if s.labels.get("target") == "mx1")
    assert per_target / len(checks) <= 20
