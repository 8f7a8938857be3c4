"""This process's descriptor budget: how many it may open, how many are open, and the share the probes keep.

A monitor that runs out of descriptors fails its probes with EMFILE; before issue 18 that read as a server
outage. The HTTP side is therefore capped below RLIMIT_NOFILE with a reserve for the probes, and the selfcheck
fails when the free descriptors fall below what the next probes need.
"""

from __future__ import annotations

import os
import resource

__all__ = ["DEFAULT_MAX_CONNECTIONS", "MIN_FREE", "free_descriptors", "http_connection_cap", "nofile_limit",
           "open_descriptors", "probe_reserve"]

# Prometheus (an HA pair), a few browsers, `diagnose` and a container healthcheck need a handful. Each slow reader
# of /metrics holds one rendered body (~2 MB at 100 targets): the cap bounds that memory too (bench/http_overload.py).
DEFAULT_MAX_CONNECTIONS = 32
# Below this many free descriptors the next probes may fail to open sockets: the selfcheck says so.
MIN_FREE = 16
# Per concurrent probe: a round trip holds an SMTP and a read-back socket, plus slack for a TLS/resolver thread.
_PER_PROBE = 4
# The process's own: stdio, the listening sockets, SQLite (database, WAL, shared memory), the event loop's.
_BASE = 64


def nofile_limit() -> int:
    """The soft RLIMIT_NOFILE (a large number stands in for "unlimited")."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def open_descriptors() -> int:
    """Descriptors this process has open now (Linux /proc; 0 where that is not available)."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # listdir's own descriptor is in the listing
    except OSError:
        return 0


def free_descriptors() -> int:
    return nofile_limit() - open_descriptors()


def probe_reserve(concurrency: int) -> int:
    """Descriptors kept for the probes and the process itself, never given to HTTP clients."""
    return _BASE + _PER_PROBE * concurrency


def http_connection_cap(configured: int, concurrency: int, limit: int | None = None) -> tuple[int, bool]:
    """The HTTP connection cap to use, and whether `configured` had to be lowered to fit RLIMIT_NOFILE."""
    room = (nofile_limit() if limit is None else limit) - probe_reserve(concurrency)
    cap = max(1, min(configured, room))
    return cap, cap < configured
