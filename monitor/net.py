"""Name resolution and TCP connect as two timed probe steps, giving probes a connected socket; and the small
network helpers the config and the probes share (address literals, HOST:PORT, the EHLO name).

Every protocol library gets a socket we connected ourselves. That makes `dns` and `connect` separate,
timed steps, and a refused port fails at once with `ConnectionRefusedError` instead of hiding inside a
library's connect task until the deadline (aioimaplib does exactly that).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable

from monitor.result import ProbeContext

__all__ = ["SocketFactory", "default_helo_name", "is_address", "open_socket", "parse_listen", "socket_factory"]

# (family, type, proto) -> an unconnected socket. A seam: tests swap in one that fails with EMFILE,
# EADDRNOTAVAIL and the like, which a real kernel gives only when the whole host is exhausted.
SocketFactory = Callable[[int, int, int], socket.socket]
socket_factory: SocketFactory = socket.socket


async def open_socket(ctx: ProbeContext, host: str, port: int, family: int = socket.AF_UNSPEC) -> socket.socket:
    """Resolve `host` and connect to the first address that accepts; raise the last error otherwise.

    `family` (AF_INET, AF_INET6) keeps to one address family: a check bound to IPv6 must fail when IPv6 does,
    not quietly fall back to IPv4. A name without an address of that family fails at `dns` (socket.gaierror)."""
    loop = asyncio.get_running_loop()
    ctx.step("dns")
    if is_address(host):
        # An address needs no resolver: skip the thread pool (about 30x the CPU of resolving it here).
        infos = socket.getaddrinfo(host, port, family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP,
                                   flags=socket.AI_NUMERICHOST)
    else:
        infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    ctx.step("connect")
    last_error: OSError | None = None
    for found_family, kind, proto, _name, address in infos:
        sock = socket_factory(found_family, kind, proto)  # EMFILE, ENFILE, ENOBUFS here are this host's, see errors.py
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise  # cancellation or the deadline: the socket is closed, let it travel
            last_error = exc
            continue
        ctx.note(f"connected to {address[0]!s} port {address[1]!s}")
        return sock
    assert last_error is not None  # getaddrinfo never returns an empty list without raising
    raise last_error


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` → (host, port); ValueError with a plain sentence otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9917 or [::1]:9917)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def is_address(host: str) -> bool:
    """True for an IP address literal (which needs no name resolution)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.cache
def default_helo_name() -> str:
    """The name we announce in EHLO when the config names none; looked up once (it can block on DNS)."""
    return socket.getfqdn() or "mailmon.localdomain"
