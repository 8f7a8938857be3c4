"""Builders for the values tests make again and again: a check's settings, a target, a result, a config file.

Each takes every field as a keyword with a plain default, so a test names only what it is about. Lab-aimed
targets and config blocks stay with the lab (`tests.conftest.Lab.target`, `Lab.target_yaml`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from monitor.config import KINDS, Auth, CheckBase, CheckSettings, Secret, Target, TlsSettings
from monitor.result import Result, TlsFacts
from monitor.steps import Reason, Stage

if TYPE_CHECKING:
    from tests.conftest import Lab

__all__ = ["LAB_CHECKS", "check", "config_file", "lab_config", "result", "settings", "target"]

# The tests' fixed instant (2023-11-14): results that need no real time say when they ran with this.
T0 = 1_700_000_000.0
_DEFAULT_TLS = {"smtp": "starttls", "imap": "implicit", "pop3": "implicit", "roundtrip": "starttls"}
_DEFAULT_PORT = {"none": 25, "starttls": 587, "implicit": 993}
_AUTH = Auth("u", Secret("p"))
S = TypeVar("S", bound=CheckBase)


def check(name: str = "smtp", *, tls_mode: str | None = None, port: int | None = None, interval: float = 60.0,
          timeout: float = 15.0, **fields: Any) -> CheckSettings:
    """A check's settings of the kind `name`: its usual TLS mode and a plausible port unless given; any other field
    by keyword (a round trip needs `via` and `recipient`)."""
    return settings(KINDS[name], tls_mode=tls_mode, port=port, interval=interval, timeout=timeout, **fields)


def settings(kind: type[S], *, tls_mode: str | None = None, port: int | None = None, interval: float = 60.0,
             timeout: float = 15.0, **fields: Any) -> S:
    """`check` typed by its kind (`settings(RoundTripSettings, via="imap", recipient=...)`), for a test that hands
    it to that kind's probe."""
    mode = tls_mode or _DEFAULT_TLS.get(kind.name, "none")
    return kind(port=port or _DEFAULT_PORT[mode], tls_mode=mode, interval=interval, timeout=timeout, **fields)


def target(name: str = "mx1", *checks: CheckSettings | str, host: str = "mail.example.test",
           auth: Auth | None = _AUTH, tls: TlsSettings | None = None) -> Target:
    """A target with `checks` (a bare name is `check(name)`; none: one smtp check)."""
    built = tuple(check(c) if isinstance(c, str) else c for c in checks) or (check(),)
    return Target(name=name, host=host, tls=tls or TlsSettings(), auth=auth, checks=built)


def result(target: str = "mx1", check: str = "smtp", *, stage: Stage | None = None, reason: Reason | None = None,
           ok: bool | None = None, vantage: str = "test", started_at: float = T0, duration: float = 0.1,
           phases: dict[str, float] | None = None, tls: TlsFacts | None = None, **fields: Any) -> Result:
    """A result: ok unless a stage or `ok=False` says it failed (at `connect` and of `timeout` unless given)."""
    failed = stage is not None if ok is None else not ok
    return Result(target=target, check=check, vantage=vantage, ok=not failed, started_at=started_at,
                  duration_seconds=duration, phases={} if phases is None else phases,
                  stage=(stage or "connect") if failed else None, reason=(reason or "timeout") if failed else None,
                  tls=tls or TlsFacts(), **fields)


# The lab target's usual checks in a config file: submission with STARTTLS, IMAPS and POP3S.
LAB_CHECKS = ("smtp: {port: 587, tls: starttls}", "imap: {port: 993, tls: implicit}",
              "pop3: {port: 995, tls: implicit}")


def lab_config(directory: Path, lab: Lab, head: str, *checks: str, name: str = "config.yaml",
               password: str | None = None, host: str | None = None, tail: str = "") -> Path:
    """A config file for a monitor aimed at the lab: `head` (vantage, defaults, ...), then `targets:` with the lab
    target (`checks`, default LAB_CHECKS) logging in with `password` (the lab's) from the file `password`, then
    `tail`."""
    secret = directory / "password"
    secret.write_text(lab.password if password is None else password)
    target = lab.target_yaml("lab", f"password_file: {secret}", *(checks or LAB_CHECKS), host=host)
    return config_file(directory, f"{head}targets:\n{target}{tail}", name)


def config_file(directory: Path, text: str, name: str = "config.yaml", *, secrets: dict[str, str] | None = None,
                ) -> Path:
    """Write a config file (and the secret files it names, `{file name: content}`) into `directory`."""
    for file_name, content in (secrets or {}).items():
        (directory / file_name).write_text(content)
    path = directory / name
    path.write_text(text)
    return path
