"""The event loop mailmon runs on: uvloop when it is installed (`pip install mailmon[uvloop]`), else asyncio's.

Why an optional C event loop: per SMTP STARTTLS probe about half of mailmon's CPU is the interpreter, and a
good part of that is asyncio's pure-Python loop and TLS transport (`asyncio/sslproto.py`). uvloop implements
both in C/Cython; bench/cost_vs_blackbox.py measured 4-12 % less CPU per probe with it (same probe, same
checks, same TLS verification). It stays optional: asyncio's loop is the reference and needs nothing extra.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["CHOICES", "EventLoopError", "loop_factory", "run"]

CHOICES = ("auto", "asyncio", "uvloop")

T = TypeVar("T")


class EventLoopError(Exception):
    """The event loop asked for cannot be had (uvloop requested but not installed)."""


def loop_factory(choice: str = "auto") -> Callable[[], asyncio.AbstractEventLoop] | None:
    """A factory for the chosen loop, or None for asyncio's default.

    `auto` takes uvloop when it can be imported and asyncio's loop otherwise; `uvloop` insists on it.
    """
    if choice not in CHOICES:
        raise ValueError(f"unknown event loop {choice!r}: one of {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        # Imported by name: it is an optional dependency, absent from most environments (and from mypy's).
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        if choice == "uvloop":
            raise EventLoopError("--event-loop uvloop: uvloop is not installed (pip install mailmon[uvloop])") from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T], choice: str = "auto") -> T:
    """Run `main` to completion on a new loop of the chosen kind, like `asyncio.run`."""
    try:
        factory = loop_factory(choice)
    except BaseException:
        main.close()  # never awaited: close it so Python does not warn about it
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
