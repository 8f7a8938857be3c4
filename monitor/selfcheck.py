"""The vantage's own health: can this prober resolve names, route to its targets, reach a reference endpoint?

When this fails, the verdict for every target here is `vantage_fault`: a prober that cannot resolve or
route must never report the mail server as down. The checks send no traffic to the mail servers: a route
is checked by connecting a UDP socket (which only asks the kernel for a route), names by the system
resolver (the one the probes use), the optional reference endpoint by a TCP connect.
"""

from __future__ import annotations

import asyncio
import socket

from monitor import resources
from monitor.config import Config, SelfcheckSettings
from monitor.errors import LOCAL_RESOURCE_ERRNOS, ProbeError
from monitor.net import is_address
from monitor.result import ProbeContext
from monitor.steps import Reason, Stage

__all__ = ["probe"]


async def probe(ctx: ProbeContext, config: Config, settings: SelfcheckSettings) -> None:
    """Raise a ProbeError naming the first thing this vantage cannot do."""
    loop = asyncio.get_running_loop()
    ctx.step("dns")
    for name in settings.resolve:
        ctx.say(f"resolve {name}")
        try:
            await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            if exc.errno not in (socket.EAI_AGAIN, socket.EAI_FAIL):
                # The resolver answered ("no such name"): it works. A missing record is the zone's fault,
                # and the probes of that target report it; it must not blame this vantage.
                ctx.note(f"{name}: {exc.strerror} (the resolver answered)")
                continue
            raise ProbeError("dns", "timeout", f"this vantage's resolver does not answer for {name}: "
                                               f"{exc.strerror}") from exc
    ctx.step("route")
    free = resources.free_descriptors()
    if free < resources.MIN_FREE:
        # The probes' next sockets would fail with EMFILE: their failures would say nothing about the servers.
        raise ProbeError("connect", "local_resources", f"only {free} of {resources.nofile_limit()} file descriptors "
                                                       "free (RLIMIT_NOFILE)")
    addresses = {t.host for t in config.targets if is_address(t.host)}
    if settings.reference is not None and is_address(settings.reference[0]):
        addresses.add(settings.reference[0])
    for address in sorted(addresses):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((address, 9))  # UDP connect sends nothing: it only asks the kernel for a route
            except OSError as exc:
                _raise_if_local(exc, "connect")
                raise ProbeError("connect", "unreachable", f"this vantage has no route to {address}: "
                                                           f"{exc.strerror}") from exc
    if settings.reference is not None:
        ctx.step("connect")
        host, port = settings.reference
        ctx.say(f"connect {host}:{port}")
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            _raise_if_local(exc, "connect")
            reason: Reason = "refused" if isinstance(exc, ConnectionRefusedError) else "unreachable"
            stage: Stage = "dns" if isinstance(exc, socket.gaierror) else "connect"
            raise ProbeError(stage, reason, f"this vantage cannot reach its reference {host}:{port}: {exc}") from exc
        writer.close()


def _raise_if_local(exc: OSError, stage: Stage) -> None:
    """A failure for lack of local resources is named as such, not as a missing route or endpoint."""
    if exc.errno in LOCAL_RESOURCE_ERRNOS:
        raise ProbeError(stage, "local_resources", f"this vantage ran out of local resources: {exc}") from exc
