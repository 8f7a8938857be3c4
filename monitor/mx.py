"""MX targets (`host: {mx: DOMAIN}`): the domain's MX records, resolved as mail from the internet resolves them.

"Check the domain, not a host": the `smtp` check of an MX target looks up the domain's MX records with the
configured resolver (or the system's), tries every MX host in preference order, and says what a sender would meet:

- `dns/nxdomain`: the domain does not exist; `dns/no_mx`: it has no MX records (or a null MX, RFC 7505);
- `dns/mx_unresolvable`: no MX name has an address;
- `<stage>/mx_fallback`: the most preferred MX fails (at `<stage>`) but a less preferred one works: mail still
  flows, through the backup;
- `dns/mx_cname`: the mail works, but an MX name is an alias (CNAME), which RFC 2181 §10.3 forbids and strict
  senders refuse;
- otherwise the most preferred MX's own failure when none works.

Answers are cached for their TTL (bounded: at least `_MIN_TTL`, at most `_MAX_TTL`), so a record change is seen
at the next run after the old record's TTL ran out, as a sender's resolver would see it. Each MX host's outcome is
also its own series (`mailmon_mx_host_up{mx, preference}`, see `MxCollector`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.resolver
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor.errors import ProbeError

__all__ = ["MxAnswer", "MxCollector", "MxHost", "MxSpec", "MxState", "resolve_mx"]

_MIN_TTL = 1.0
_MAX_TTL = 3600.0
_NEGATIVE_TTL = 30.0
_QUERY_TIMEOUT = 5.0


@dataclass(frozen=True)
class MxSpec:
    """`host: {mx: DOMAIN, resolver: ADDRESS[:PORT]}`: whose MX records, asked of which resolver (None: system's)."""

    domain: str
    resolver: tuple[str, int] | None = None


@dataclass(frozen=True)
class MxHost:
    """One MX record with what its name resolved to (over the same resolver)."""

    preference: int
    name: str
    addresses: tuple[str, ...]
    # The MX name is an alias: its addresses came through this CNAME target.
    cname: str | None = None
    # Why it has no addresses (NXDOMAIN, no A/AAAA), when it has none.
    problem: str | None = None


@dataclass
class MxAnswer:
    hosts: list[MxHost]
    expires: float
    failure: ProbeError | None = None


def _resolver(spec: MxSpec) -> dns.asyncresolver.Resolver:
    if spec.resolver is None:
        return dns.asyncresolver.Resolver()
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [spec.resolver[0]]
    resolver.port = spec.resolver[1]
    resolver.timeout = resolver.lifetime = _QUERY_TIMEOUT
    return resolver


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str) -> MxHost:
    """A and AAAA of an MX name; notes a CNAME on the way (the resolver follows it, as senders' do)."""
    found: list[str] = []
    cname: str | None = None
    problems: list[str] = []
    for rdtype in ("A", "AAAA"):
        try:
            answer = await resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return MxHost(0, name, (), problem=f"{name} does not exist (NXDOMAIN)")
        except dns.resolver.NoAnswer:
            continue
        except dns.exception.Timeout:
            problems.append(f"no answer for {name} {rdtype} within {_QUERY_TIMEOUT:.0f}s")
            continue
        except dns.exception.DNSException as exc:
            problems.append(f"{name} {rdtype}: {exc}")
            continue
        if answer.canonical_name != dns.name.from_text(name):
            cname = answer.canonical_name.to_text(omit_final_dot=True)
        found.extend(rdata.to_text() for rdata in answer)
    problem = None if found else ("; ".join(problems) or f"{name} has no address (no A or AAAA record)")
    return MxHost(0, name, tuple(found), cname=cname, problem=problem)


async def _lookup(spec: MxSpec) -> MxAnswer:
    resolver = _resolver(spec)
    now = time.monotonic()
    try:
        answer = await resolver.resolve(spec.domain, "MX", search=False)
    except dns.resolver.NXDOMAIN:
        return MxAnswer([], now + _NEGATIVE_TTL, ProbeError("dns", "nxdomain", f"{spec.domain} does not exist "
                                                                                "(NXDOMAIN)"))
    except dns.resolver.NoAnswer:
        return MxAnswer([], now + _NEGATIVE_TTL, ProbeError("dns", "no_mx", f"{spec.domain} has no MX records"))
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        # Not cached: the resolver's trouble says nothing about the domain's records.
        return MxAnswer([], now, ProbeError("dns", "timeout", f"MX of {spec.domain}: {exc}"))
    records = sorted((rdata.preference, rdata.exchange.to_text(omit_final_dot=True)) for rdata in answer)
    ttl = min(max(float(answer.rrset.ttl if answer.rrset is not None else _MIN_TTL), _MIN_TTL), _MAX_TTL)
    if records == [(0, "")] or all(name in ("", ".") for _, name in records):
        return MxAnswer([], now + ttl, ProbeError("dns", "no_mx", f"{spec.domain} has a null MX (RFC 7505): it "
                                                                   "accepts no mail"))
    hosts = []
    for preference, name in records:
        host = await _addresses(resolver, name)
        hosts.append(MxHost(preference, name, host.addresses, host.cname, host.problem))
    if not any(host.addresses for host in hosts):
        names = "; ".join(host.problem or host.name for host in hosts)
        return MxAnswer(hosts, now + ttl, ProbeError("dns", "mx_unresolvable", f"no MX host of {spec.domain} "
                                                                                f"resolves: {names}"))
    return MxAnswer(hosts, now + ttl)


_CACHE: dict[MxSpec, MxAnswer] = {}


async def resolve_mx(spec: MxSpec) -> MxAnswer:
    """The domain's MX hosts in preference order, from the cache while the answer's TTL lasts."""
    cached = _CACHE.get(spec)
    if cached is not None and time.monotonic() < cached.expires:
        return cached
    answer = await _lookup(spec)
    _CACHE[spec] = answer
    return answer


@dataclass
class _TargetState:
    # (preference, mx name) -> 1 up / 0 down, of the latest run.
    up: dict[tuple[int, str], float] = field(default_factory=dict)


class MxState:
    """The latest per-MX outcome of each MX target, for `MxCollector` (bounded: the domain's MX records).

    One per monitor (its `MxCollector` holds it): the probe puts the outcomes on the Result and the monitor's
    recorder sets them here, so two monitors in one process (tests) never see each other's."""

    def __init__(self) -> None:
        self.targets: dict[str, _TargetState] = {}

    def set(self, target: str, up: dict[tuple[int, str], float]) -> None:
        self.targets[target] = _TargetState(dict(up))


class MxCollector(Collector):
    """`mailmon_mx_host_up{vantage, target, mx, preference}`: 1 when that MX host passed the smtp check."""

    def __init__(self, vantage: str, state: MxState | None = None) -> None:
        self.vantage = vantage
        self.state = state if state is not None else MxState()
        # The MX targets of the loaded configuration (App sets it on load and reload): removed ones drop out.
        self.only: frozenset[str] = frozenset()

    def record(self, target: str, up: dict[tuple[int, str], float] | None) -> None:
        """An MX target's run: each MX host's outcome (`Result.mx_hosts`; None: not an MX run, nothing to set)."""
        if up is not None:
            self.state.set(target, up)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("mailmon_mx_host_up", "Each MX host of an MX target (host: {mx: DOMAIN}) in the "
                                   "latest run: 1 passed the smtp check, 0 failed or has no address.",
                                   labels=("vantage", "target", "mx", "preference"))
        for target, state in sorted(self.state.targets.items()):
            if target not in self.only:
                continue
            for (preference, name), value in sorted(state.up.items()):
                family.add_metric((self.vantage, target, name, str(preference)), value)
        yield family
