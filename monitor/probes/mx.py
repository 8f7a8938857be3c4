"""The `smtp` check of an MX target: every MX host of the domain, in preference order (see monitor/mx.py)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from monitor.config import SmtpSettings, Target
from monitor.errors import ProbeError, classify
from monitor.mx import MxHost, resolve_mx
from monitor.probes import smtp
from monitor.result import ProbeContext

__all__ = ["probe", "smtp_or_mx"]

# At most this many addresses of one MX host are tried (a sender tries more, but a check must stay bounded).
_ADDRESSES_PER_HOST = 2


def _family_ok(address: str, ip_family: str | None) -> bool:
    if ip_family is None:
        return True
    return (":" in address) == (ip_family == "ipv6")


async def _try_host(ctx: ProbeContext, target: Target, check: SmtpSettings, host: MxHost,
                    budget: float) -> tuple[ProbeContext | None, ProbeError | None]:
    """The smtp check against one MX host (its first addresses), within `budget` seconds."""
    addresses = [a for a in host.addresses if _family_ok(a, check.ip_family)][:_ADDRESSES_PER_HOST]
    if not addresses:
        problem = host.problem or f"{host.name} has no {check.ip_family} address"
        return None, ProbeError("dns", "mx_unresolvable", problem)
    failure: ProbeError | None = None
    for address in addresses:
        sub = ProbeContext()
        sub.deadline = sub.started + budget
        # Connect to the address, verify the certificate for the MX name (what a sender using DANE/MTA-STS checks).
        mx_target = replace(target, host=address, mx=None,
                            tls=replace(target.tls, server_name=target.tls.server_name or host.name))
        try:
            await asyncio.wait_for(smtp.probe(sub, mx_target, check), budget)
        except TimeoutError:
            failure = ProbeError(sub.stage, "timeout", f"MX {host.name} ({address}): no progress within "
                                                       f"{budget:.1f}s (during {sub.current_step})")
        except Exception as exc:  # classified like any probe failure, never `internal` for a server's doing
            stage, reason = classify(exc, sub.stage)
            failure = ProbeError(stage, reason, f"MX {host.name} ({address}): {exc}")
        else:
            sub.done()
            ctx.note(f"MX {host.preference} {host.name} ({address}): ok")
            return sub, None
        finally:
            ctx.transcript.extend("   " + line for line in sub.transcript[-10:])
        ctx.note(f"MX {host.preference} {host.name} ({address}): {failure.stage}/{failure.reason}")
    return None, failure


async def probe(ctx: ProbeContext, target: Target, check: SmtpSettings) -> None:
    """Resolve the MX records, then the smtp check against each MX host, most preferred first."""
    assert target.mx is not None
    ctx.step("dns")
    answer = await resolve_mx(target.mx)
    for host in answer.hosts:
        alias = f" (alias of {host.cname})" if host.cname else ""
        ctx.note(f"MX {host.preference} {host.name}{alias}: {', '.join(host.addresses) or host.problem}")
    if answer.failure is not None:
        ctx.mx_hosts = {(h.preference, h.name): 0.0 for h in answer.hosts}
        raise answer.failure
    ctx.step("connect")
    up: dict[tuple[int, str], float] = {}
    failures: list[tuple[MxHost, ProbeError]] = []
    passed: list[tuple[MxHost, ProbeContext]] = []
    for index, host in enumerate(answer.hosts):
        left = max(0.5, (ctx.deadline or time.perf_counter() + 30) - time.perf_counter() - 0.2)
        # The most preferred host gets the larger share: it is the one senders use.
        budget = left / (len(answer.hosts) - index) if index else left / max(1, min(2, len(answer.hosts)))
        sub, failure = await _try_host(ctx, target, check, host, budget)
        up[(host.preference, host.name)] = 1.0 if sub is not None else 0.0
        if sub is not None:
            passed.append((host, sub))
        elif failure is not None:
            failures.append((host, failure))
    ctx.mx_hosts = up  # mailmon_mx_host_up, set by the recorder from the Result
    if passed:
        # The phases of the host that worked first are the check's timing (dns of MX included).
        ctx.phases.update({name: seconds for name, seconds in passed[0][1].phases.items() if name != "dns"})
    primary = answer.hosts[0]
    if not passed:
        host, failure = failures[0]
        others = "; ".join(f"{h.name}: {f.stage}/{f.reason}" for h, f in failures[1:])
        raise ProbeError(failure.stage, failure.reason, f"no MX host of {target.mx.domain} works: {failure.detail}"
                         + (f"; also {others}" if others else ""))
    if passed[0][0] is not primary:
        primary_failure = next(f for h, f in failures if h is primary)
        raise ProbeError(primary_failure.stage, "mx_fallback",
                         f"the most preferred MX {primary.name} (preference {primary.preference}) fails "
                         f"({primary_failure.stage}/{primary_failure.reason}: {primary_failure.detail}); mail goes "
                         f"through {passed[0][0].name} (preference {passed[0][0].preference})")
    aliases = [h for h in answer.hosts if h.cname]
    if aliases:
        raise ProbeError("dns", "mx_cname", "; ".join(f"MX {h.name} is an alias (CNAME) of {h.cname}: RFC 2181 "
                                                      "10.3 forbids it and strict senders refuse it"
                                                      for h in aliases))


async def smtp_or_mx(ctx: ProbeContext, target: Target, check: SmtpSettings) -> None:
    """The `smtp` probe: the MX walk for an MX target, the plain smtp check otherwise."""
    if target.mx is not None:
        await probe(ctx, target, check)
    else:
        await smtp.probe(ctx, target, check)


