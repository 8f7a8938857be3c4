"""A small authoritative DNS server (UDP) for MX tests, built on dnspython's message and zone code.

It serves one zone from zone-file text and answers as an authoritative server does (RFC 1034 4.3.2, RFC 2308):
the records of the asked type, with the AA flag; a CNAME at the name is returned and followed inside the zone;
a name outside the zone is REFUSED; a missing name is NXDOMAIN and an existing name without the type NOERROR with no
answer (NODATA), both with the zone's SOA in the authority section for negative caching. `zone_text` may be
replaced while it runs (record changes, TTLs).
"""

from __future__ import annotations

import asyncio
import contextlib

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

__all__ = ["DnsServer"]

_MAX_CHAIN = 8


class DnsServer(asyncio.DatagramProtocol):
    def __init__(self, zone_text: str, origin: str) -> None:
        self.origin = dns.name.from_text(origin)
        self.zone = dns.zone.from_text(zone_text, origin=self.origin, relativize=False)
        self.transport: asyncio.DatagramTransport | None = None
        self.queries: list[tuple[str, str]] = []

    def load(self, zone_text: str) -> None:
        self.zone = dns.zone.from_text(zone_text, origin=self.origin, relativize=False)

    async def start(self, host: str = "127.0.0.3", port: int = 0) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self.transport = transport
        address: tuple[str, int] = transport.get_extra_info("sockname")
        return address[0], address[1]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(dns.exception.DNSException):
            query = dns.message.from_wire(data)
            assert self.transport is not None
            self.transport.sendto(self.answer(query).to_wire(), addr)

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        question = query.question[0]
        self.queries.append((question.name.to_text(), dns.rdatatype.to_text(question.rdtype)))
        if not question.name.is_subdomain(self.origin):
            response.set_rcode(dns.rcode.REFUSED)
            return response
        response.flags |= dns.flags.AA
        name = question.name
        for _ in range(_MAX_CHAIN):
            node = self.zone.get_node(name)
            if node is None:
                if name == question.name:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                self._soa(response)
                return response
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is not None and question.rdtype != dns.rdatatype.CNAME:
                response.answer.append(dns.rrset.from_rdata_list(name, cname.ttl, list(cname)))
                name = cname[0].target
                if not name.is_subdomain(self.origin):
                    return response  # the resolver goes on elsewhere
                continue
            found = node.get_rdataset(dns.rdataclass.IN, question.rdtype)
            if found is None:
                self._soa(response)  # NODATA
            else:
                response.answer.append(dns.rrset.from_rdata_list(name, found.ttl, list(found)))
            return response
        return response

    def _soa(self, response: dns.message.Message) -> None:
        soa = self.zone.get_rdataset(self.origin, dns.rdatatype.SOA)
        if soa is not None:
            response.authority.append(dns.rrset.from_rdata_list(self.origin, soa.ttl, list(soa)))
