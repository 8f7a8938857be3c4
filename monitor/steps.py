"""Steps, stages and reasons: the one declaration of what a probe times and where and why it can fail.

Three words, two things:

- a **step** is one timed part of a probe's exchange (`ctx.step("banner")`); its time is the `phase` label of
  `mailmon_check_phase_duration_seconds` (so "phase" and "step" name the same thing);
- a **stage** is where a run failed, the `stage` label; every step belongs to one stage (`STEP_STAGE`);
- a **reason** is why it failed, the `reason` label.

`Step`, `Stage` and `Reason` are closed sets (`Literal`s): mypy rejects `ctx.step("bogus")` or a `ProbeError` with a
stage or reason outside them. They are public label values: add, never rename or remove.

Each probe module declares its check kind next to its code with `declare(Kind(...))`: the steps a run times, in
order, each with the condition under which it runs, which side of the mail flow a failure points at, and failures
beyond those of its steps' stages. The pre-created metric series (`expected_steps`, `possible_failures`), the
verdict's send/receive side and the step tables in README.md and docs/metrics.md (`doc_table`, compared by
tests/test_steps.py) all come from these declarations. `python -m monitor.steps` prints the tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from monitor.config import CheckSettings

__all__ = [
    "ALWAYS",
    "ANYWHERE",
    "AT_STAGE",
    "IMPLICIT_TLS",
    "PASSWORD",
    "REASONS",
    "STAGES",
    "STARTTLS",
    "STEPS",
    "STEP_STAGE",
    "TOKEN",
    "Kind",
    "Reason",
    "Side",
    "Stage",
    "Step",
    "When",
    "declare",
    "doc_table",
    "kind",
    "kinds",
    "reasons_at",
    "run",
]

# The order is that of a session (explain.py ranks how far a check got by it); `token` came last, as an addition.
Stage = Literal[
    "dns", "connect", "tls", "greeting", "ehlo", "auth", "mail_from", "rcpt", "data",
    "select", "fetch", "delivery", "cleanup", "quit",
    # OAuth2 sign-in: getting a token from the identity provider, before AUTH (monitor/signin/).
    "token",
]
# `login` was listed as a stage but never produced: IMAP's LOGIN is the step `login` of stage `auth` on every
# protocol, so a wrong password reads `auth/auth_rejected` whatever the protocol.
Reason = Literal[
    "timeout", "refused", "reset", "unreachable", "tls_handshake", "cert_invalid", "cert_expired",
    "auth_rejected", "reply_4xx", "reply_5xx", "protocol", "not_delivered", "junk", "internal",
    "mailbox_full",
    # The server refuses the login mechanism by policy (Basic authentication switched off), not the credentials.
    "auth_disabled",
    "local_resources",
    # POP3 (RFC 2449/3206): the mailbox is locked by another client ([IN-USE]), or the server allows only one login
    # every so often ([LOGIN-DELAY], CAPA LOGIN-DELAY). Neither is an outage of the server nor a wrong password.
    "mailbox_busy", "login_delay",
    # MX targets (monitor/mx.py): the domain's DNS, and a most preferred MX that fails while a backup works.
    "nxdomain", "no_mx", "mx_unresolvable", "mx_cname", "mx_fallback",
]
Step = Literal[
    "dns", "connect", "tls", "banner", "greeting", "capability", "ehlo", "starttls", "stls", "ehlo_tls",
    "token", "auth", "login", "user", "pass", "mail_from", "rcpt", "rset", "data", "select", "stat", "quit",
    "logout", "readback_open", "delivery", "cleanup", "sweep",
    # The selfcheck's route lookup (monitor/selfcheck.py): a failure there is the vantage's `connect`.
    "route",
]
# Which side of the mail flow a failure points at (the verdict's send/receive/delivery).
Side = Literal["send", "receive", "delivery"]

STAGES: tuple[Stage, ...] = get_args(Stage)
REASONS: tuple[Reason, ...] = get_args(Reason)
STEPS: tuple[Step, ...] = get_args(Step)

# The stage each step fails in: a deadline or an unexpected exception during the step is a failure of this stage.
# Total over `Step` (tests/test_steps.py): a step that is a stage maps to itself.
STEP_STAGE: dict[Step, Stage] = {
    "dns": "dns", "connect": "connect", "tls": "tls", "banner": "greeting", "greeting": "greeting",
    "capability": "greeting", "ehlo": "ehlo", "starttls": "tls", "stls": "tls", "ehlo_tls": "ehlo",
    "token": "token", "auth": "auth", "login": "auth", "user": "auth", "pass": "auth", "mail_from": "mail_from",
    "rcpt": "rcpt", "rset": "quit", "data": "data", "select": "select", "stat": "select", "quit": "quit",
    "logout": "quit", "readback_open": "fetch", "delivery": "delivery", "cleanup": "cleanup", "sweep": "cleanup",
    "route": "connect",
}

# Which reasons can happen at which stage; used to pre-create the failure counters, so it must cover what the
# probes and `errors.classify` can return (tests/test_steps.py checks every literal ProbeError in monitor/).
ANYWHERE: tuple[Reason, ...] = ("timeout", "reset", "protocol", "internal", "local_resources")
_REPLIES: tuple[Reason, ...] = ("reply_4xx", "reply_5xx")
AT_STAGE: dict[Stage, tuple[Reason, ...]] = {
    "dns": ("unreachable",),
    "connect": ("refused", "unreachable"),
    "tls": ("tls_handshake", "cert_invalid", "cert_expired", "reply_4xx", "reply_5xx"),
    "auth": ("auth_rejected", "reply_4xx", "reply_5xx", "auth_disabled"),
    # RFC 3463 X.2.2: the recipient's mailbox is full.
    "rcpt": ("reply_4xx", "reply_5xx", "mailbox_full"),
    "data": ("reply_4xx", "reply_5xx", "mailbox_full"),
    # The identity provider's token endpoint (monitor/signin/endpoint.py): network, TLS, and its HTTP answers.
    "token": ("refused", "unreachable", "tls_handshake", "cert_invalid", "cert_expired", "auth_rejected",
              "reply_4xx", "reply_5xx"),
}


def reasons_at(stage: Stage) -> tuple[Reason, ...]:
    """Every reason a failure at `stage` can have: those possible anywhere, then the stage's own."""
    own = AT_STAGE.get(stage, _REPLIES if stage not in ("dns", "connect") else ())
    return ANYWHERE + tuple(reason for reason in own if reason not in ANYWHERE)


@dataclass(frozen=True)
class When:
    """When a step runs: `doc` says it in the tables; `test` says whether a check's settings make it expected, so
    its phase series is created before the first run (a step that runs only sometimes, such as the sweep, says
    False)."""

    doc: str
    test: Callable[[CheckSettings], bool]


ALWAYS = When("", lambda check: True)
# Conditions more than one probe's steps depend on.
IMPLICIT_TLS = When("implicit TLS", lambda check: check.tls_mode == "implicit")
STARTTLS = When("STARTTLS", lambda check: check.tls_mode == "starttls")
TOKEN = When("OAuth2", lambda check: check.uses_token)
PASSWORD = When("password", lambda check: not check.uses_token)


@dataclass(frozen=True)
class Kind:
    """One check kind's declaration: its steps in order, the side its failures point at, its extra failures.

    `side` is where a failure points; `stage_side` overrides it per stage and `ok_side` says where a success
    counts (the round trip's submission is `send`, its read-back `receive`, a success `delivery`).
    """

    name: str
    steps: tuple[tuple[Step, When], ...]
    side: Side
    ok_side: Side | None = None
    stage_side: dict[Stage, Side] = field(default_factory=dict)
    # (stage, reason) pairs the kind produces beyond `reasons_at` of its steps' stages.
    extra_failures: tuple[tuple[Stage, Reason], ...] = ()

    def expected_steps(self, check: CheckSettings) -> tuple[Step, ...]:
        """The steps a successful run of `check` times, in order."""
        return tuple(step for step, when in self.steps if when.test(check))

    def possible_failures(self, check: CheckSettings) -> list[tuple[Stage, Reason]]:
        """Every (stage, reason) a run of `check` can report."""
        stages = list(dict.fromkeys(STEP_STAGE[step] for step in self.expected_steps(check)))
        if check.tls_mode != "none" and "tls" not in stages:
            stages.append("tls")
        pairs = [(stage, reason) for stage in stages for reason in reasons_at(stage)]
        return pairs + [pair for pair in dict.fromkeys(self.extra_failures) if pair not in pairs]

    def side_of(self, stage: Stage | None) -> Side:
        """The side of the mail flow a result of this kind speaks for (`stage` None: a success)."""
        if stage is None:
            return self.ok_side or self.side
        return self.stage_side.get(stage, self.side)

    def doc_steps(self) -> str:
        """The steps as the docs list them: optional ones in brackets, runs with one condition together."""
        parts: list[str] = []
        for when, group in _runs(self.steps):
            names = ", ".join(group)
            parts.append(names if when is ALWAYS else f"[{names}] ({when.doc})")
        return ", ".join(parts)


def _runs(steps: tuple[tuple[Step, When], ...]) -> Iterator[tuple[When, list[Step]]]:
    """Consecutive steps with the same condition, grouped."""
    group: list[Step] = []
    current: When | None = None
    for step, when in steps:
        if group and when is not current:
            assert current is not None
            yield current, group
            group = []
        current = when
        group.append(step)
    if group:
        assert current is not None
        yield current, group


def run(*parts: Step | tuple[When, tuple[Step, ...]]) -> tuple[tuple[Step, When], ...]:
    """Steps for `Kind.steps`: a bare step always runs, `(when, (steps...))` only under that condition."""
    out: list[tuple[Step, When]] = []
    for part in parts:
        if isinstance(part, tuple):
            when, names = part
            out.extend((name, when) for name in names)
        else:
            out.append((part, ALWAYS))
    return tuple(out)


_KINDS: dict[str, Kind] = {}


def declare(declared: Kind) -> Kind:
    """Register a check kind's declaration (a probe module does this at import); returns it for the module."""
    _KINDS[declared.name] = declared
    return declared


def kinds() -> dict[str, Kind]:
    """Every declared kind by name, the built-in probes' included."""
    # The built-in probes declare their kinds when their modules are imported; whoever asks first imports them.
    import monitor.probes  # noqa: F401  (imported here: the probes import this module)
    return _KINDS


def kind(name: str) -> Kind:
    """The declaration of the check kind `name` (`CheckSettings.name`); KeyError when none is declared."""
    return _KINDS[name] if name in _KINDS else kinds()[name]


def doc_table() -> str:
    """The Markdown rows of the step table in README.md and docs/metrics.md, one row a kind."""
    return "\n".join(f"| `{k.name}` | {k.doc_steps()} |" for k in kinds().values())


if __name__ == "__main__":
    # Run as a script this file is `__main__`, not the module the probes declare into.
    from monitor import steps as declared
    print(declared.doc_table())
