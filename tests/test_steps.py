"""The one declaration of steps, stages and reasons (monitor/steps.py) against everything that depends on it."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, cast

import pytest
from prometheus_client import CollectorRegistry

from monitor import steps
from monitor.config import CheckBase, CheckSettings, Target
from monitor.metrics import Metrics
from monitor.result import ProbeContext
from monitor.runner import Runner
from monitor.verdict import classify_result
from tests.builders import result, settings, target
from tests.conftest import ROOT

MONITOR = ROOT / "monitor"


def test_every_step_has_a_stage() -> None:
    """STEP_STAGE maps every step, and only steps, to a stage."""
    assert set(steps.STEP_STAGE) == set(steps.STEPS)
    assert set(steps.STEP_STAGE.values()) <= set(steps.STAGES)


def test_every_stage_some_step_reaches_is_in_the_set() -> None:
    """Every declared kind's steps fail in stages of the closed set, and each listed stage can be produced."""
    produced = {steps.STEP_STAGE[step] for kind in steps.kinds().values() for step, _ in kind.steps}
    produced |= {stage for kind in steps.kinds().values() for stage, _ in kind.extra_failures}
    assert produced == set(steps.STAGES), "a stage no probe produces is a promise the docs must not make"


def _table_cells(path: Path) -> dict[str, str]:
    """The step table of a Markdown file: the first cell's check name to the second cell."""
    cells: dict[str, str] = {}
    for line in path.read_text().splitlines():
        found = re.match(r"^\| `([a-z0-9_]+)`[^|]* \| (.*) \|$", line)
        if found:
            cells[found.group(1)] = found.group(2)
    return cells


@pytest.mark.parametrize("doc", ["README.md", "docs/metrics.md"])
def test_docs_tables_follow_the_declarations(doc: str) -> None:
    """The step tables in the docs are what `python -m monitor.steps` prints for every kind."""
    cells = _table_cells(ROOT / doc)
    for kind in steps.kinds().values():
        assert cells.get(kind.name) == kind.doc_steps(), (doc, kind.name)


def test_readme_lists_the_closed_sets() -> None:
    """The README's stage and reason lists are exactly the sets (they are label values)."""
    text = (ROOT / "README.md").read_text()
    stages = re.search(r"^- stage: `([^`]*)`", text, re.MULTILINE)
    reasons = re.search(r"^- reason: `([^`]*)`", text, re.MULTILINE)
    assert stages is not None and reasons is not None
    assert stages.group(1).split() == list(steps.STAGES)
    assert reasons.group(1).split() == list(steps.REASONS)


def _calls(path: Path, name: str) -> Iterator[ast.Call]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute)
                                                                     and func.attr == name):
                yield node


def _literal(node: ast.expr) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_every_literal_failure_has_a_counter() -> None:
    """Every ProbeError(stage, reason) written out in monitor/ is a pair whose failure counter is pre-created."""
    extra = {pair for kind in steps.kinds().values() for pair in kind.extra_failures}
    missing = []
    for path in MONITOR.rglob("*.py"):
        for call in _calls(path, "ProbeError"):
            stage, reason = (_literal(arg) for arg in call.args[:2])
            known = stage in steps.STAGES and reason is not None
            if known and reason not in steps.reasons_at(stage) and (stage, reason) not in extra:  # type: ignore[arg-type]
                missing.append(f"{path.relative_to(ROOT)}:{call.lineno} {stage}/{reason}")
    assert not missing


@pytest.mark.parametrize("name", ["smtp", "imap", "pop3", "roundtrip"])
def test_a_probe_times_only_steps_its_kind_declares(name: str) -> None:
    """Every `ctx.step("...")` in a probe module is one of the steps its kind declares."""
    declared = {step for step, _ in steps.kind(name).steps}
    timed = {_literal(call.args[0]) for call in _calls(MONITOR / "probes" / f"{name}.py", "step")}
    assert timed - {None} <= declared


@pytest.mark.parametrize("name", ["imap_protocol", "readback", "readback_imap", "readback_pop3", "undelivered"])
def test_a_probe_helper_module_times_no_step(name: str) -> None:
    """The modules a probe's work is split into time no step: each kind's steps are timed in its own module, next to
    its declaration, where the test above checks them."""
    assert not [call.lineno for call in _calls(MONITOR / "probes" / f"{name}.py", "step")]


# --- A new check kind, added through the declaration only ----------------------------------------------------

@pytest.fixture
def fake_kind() -> Iterator[steps.Kind]:
    """A `fake` check kind: greets, maybe logs in, and counts as the receive side."""
    declared = steps.declare(steps.Kind("fake", side="receive", steps=steps.run(
        "dns", "connect", (steps.IMPLICIT_TLS, ("tls",)), "greeting", (steps.TOKEN, ("token",)), "login", "quit")))
    yield declared
    del steps.kinds()["fake"]


@dataclass(frozen=True, kw_only=True)
class FakeSettings(CheckBase):
    """The `fake` kind's settings: the common ones only."""

    name: ClassVar[str] = "fake"
    via: ClassVar[None] = None


def fake_check(tls_mode: str) -> CheckSettings:
    """A `fake` check. A new kind's settings type joins the `CheckSettings` union (monitor/config/kinds.py) when it
    becomes real; until then the cast says that mypy would point there."""
    return cast(CheckSettings, settings(FakeSettings, tls_mode=tls_mode))


def test_a_new_kind_gets_its_phase_and_failure_series(fake_kind: steps.Kind) -> None:
    """Metrics pre-creates the new kind's phases and, with `failure_series: all`, every failure its stages can
    have."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test", failure_series="all")
    metrics.add_target(target("t", fake_check("implicit")))
    phases = {s.labels["phase"] for f in registry.collect() for s in f.samples
              if s.name == "mailmon_check_phase_duration_seconds"}
    assert phases == {"dns", "connect", "tls", "greeting", "login", "quit"}
    failures = {(s.labels["stage"], s.labels["reason"]) for f in registry.collect() for s in f.samples
                if s.name == "mailmon_check_failures_total"}
    assert ("auth", "auth_rejected") in failures and ("token", "timeout") not in failures


async def test_a_new_kind_runs_and_fails_at_its_declared_stage(fake_kind: steps.Kind) -> None:
    """The runner names the failing step's stage; metrics counts it; the verdict reads the declared side."""

    async def probe(ctx: ProbeContext, _target: Target, _check: CheckSettings) -> None:
        ctx.step("greeting")
        raise ConnectionResetError("gone")

    fake = target("t", fake_check("none"))
    got = await Runner("test", probes={"fake": probe}).execute(fake, fake.checks[0])
    assert (got.stage, got.reason) == ("greeting", "reset")
    registry = CollectorRegistry()
    metrics = Metrics(registry, "test")
    metrics.add_target(fake)
    metrics.record(got)
    counted = registry.get_sample_value("mailmon_check_failures_total", {
        "vantage": "test", "target": "t", "check": "fake", "via": "", "stage": "greeting", "reason": "reset"})
    assert counted == 1
    assert classify_result(got).side == "receive"


def test_a_new_kind_gets_a_docs_row(fake_kind: steps.Kind) -> None:
    """The docs table (what the docs must show) has the new kind's row, optional steps in brackets."""
    assert "| `fake` | dns, connect, [tls] (implicit TLS), greeting, [token] (OAuth2), login, quit |" in \
        steps.doc_table().splitlines()


def test_round_trip_sides_follow_its_declaration() -> None:
    """A round trip's failure points at the side of its stage; its success at delivery."""
    assert classify_result(result("t", "roundtrip", stage="fetch", reason="refused")).side == "receive"
    assert classify_result(result("t", "roundtrip", stage="rcpt", reason="reply_5xx")).side == "send"
    assert classify_result(result("t", "roundtrip")).side == "delivery"


def test_selfcheck_route_step_fails_as_connect() -> None:
    """The selfcheck's route lookup is a step of the closed set, failing as `connect`."""
    assert steps.STEP_STAGE["route"] == "connect"
