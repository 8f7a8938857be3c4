"""The receiving side's judgement of a delivered probe: Authentication-Results (RFC 8601) and the Received chain."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from prometheus_client import CollectorRegistry

from monitor.authres import LoopCollector, auth_note, hop_delays, parse_authentication_results, read_headers
from monitor.result import Result
from tests.conftest import Lab
from tests.fakes.dns_server import DnsServer
from tests.test_roundtrip_lab import clean_inbox, roundtrip_target, runner, via  # noqa: F401  (fixture)


@pytest.mark.parametrize(("values", "expected"), [
    # RFC 8601 appendix B.2: nothing was checked.
    (["example.org 1; none"], {}),
    # B.4-like: SPF and sender-id style, with comments and properties.
    (["example.com; spf=pass smtp.mailfrom=example.net"], {"spf": "pass"}),
    # B.6: several methods, a version, comments (nested ones too) and reasons.
    (["example.com; dkim=pass (good signature) header.d=mail-router.example.net; dkim=fail (bad signature) "
      "header.d=newyork.example.com"], {"dkim": "pass"}),
    (["mx.google.com; dkim=pass header.i=@example.org header.s=s1 header.b=abc; spf=softfail (google.com: domain "
      "of transitioning x@example.org does not designate 1.2.3.4 as permitted sender) smtp.mailfrom=x@example.org; "
      "dmarc=fail (p=REJECT sp=REJECT dis=NONE) header.from=example.org; arc=none"],
     {"dkim": "pass", "spf": "softfail", "dmarc": "fail", "arc": "none"}),
    (["mx.example (comment (nested)) 1; dkim/1=permerror reason=\"bad key\"; x-odd=pass; dmarc=sideways"],
     {"dkim": "permerror", "dmarc": "other"}),
])
def test_parse_authentication_results(values: list[str], expected: dict[str, str]) -> None:
    assert parse_authentication_results(values) == expected


def test_only_the_receivers_headers_count() -> None:
    """Headers are prepended: the receiver's are on top (one per filter, same authserv-id); another server's
    (maybe the sender's own claim) are ignored."""
    values = ["receiver.example; spf=fail smtp.mailfrom=a@b.example", "sender.example; spf=pass; dkim=pass",
              "Receiver.example 1; dkim=pass header.d=b.example; spf=pass"]
    assert parse_authentication_results(values) == {"spf": "fail", "dkim": "pass"}


def test_hop_delays_from_received_timestamps() -> None:
    """Oldest hop first, the first measured from the probe's send time; skew never gives a negative delay."""
    def at(seconds: float) -> str:
        return format_datetime(datetime.fromtimestamp(seconds, UTC))
    received = [f"from b by c with LMTP; {at(1010)}", f"from a by b with ESMTPS; {at(1004)}",
                "from nowhere by a; not a date"]
    assert hop_delays(received, 1000.0) == [4.0, 6.0]
    assert hop_delays([f"x; {at(1000)}"], 1003.0) == [0.0]


def test_collector_state_set_and_histogram() -> None:
    collector = LoopCollector("v")
    registry = CollectorRegistry()
    registry.register(collector)
    collector.record(Result("t", "roundtrip", "v", True, 0, 1, {}, via="imap", auth_results={"dkim": "fail"},
                            hops=2, hop_delays=[0.0, 2.0]))
    labels = {"vantage": "v", "target": "t", "via": "imap"}
    assert registry.get_sample_value("mailmon_roundtrip_auth_result", {**labels, "method": "dkim",
                                                                        "result": "fail"}) == 1
    assert registry.get_sample_value("mailmon_roundtrip_auth_result", {**labels, "method": "dkim",
                                                                        "result": "pass"}) == 0
    assert registry.get_sample_value("mailmon_roundtrip_auth_result", {**labels, "method": "spf",
                                                                        "result": "pass"}) is None
    assert registry.get_sample_value("mailmon_roundtrip_hops", labels) == 2
    assert registry.get_sample_value("mailmon_roundtrip_hop_delay_seconds_bucket", {**labels, "le": "1.0"}) == 1
    assert registry.get_sample_value("mailmon_roundtrip_hop_delay_seconds_count", labels) == 2


def test_bad_result_is_named_in_the_summary_while_delivery_is_ok() -> None:
    ok = Result("t", "roundtrip", "v", True, 0, 1, {}, via="imap", auth_results={"dkim": "fail", "spf": "pass"})
    assert auth_note([ok]) == (" The round trip via IMAP arrived, but the receiver's Authentication-Results say "
                               "DKIM fail: other receivers would junk or reject it.")
    assert auth_note([Result("t", "roundtrip", "v", True, 0, 1, {}, via="imap", auth_results={"spf": "pass"})]) == ""


@pytest.mark.lab
async def test_delivered_probe_reports_its_received_chain(lab: Lab, clean_inbox: None) -> None:  # noqa: F811
    """Through the lab: Postfix's and Dovecot LMTP's Received headers give the hops, one delay per hop."""
    target = roundtrip_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.hops is not None and result.hops >= 2
    assert len(result.hop_delays) == result.hops
    assert all(0 <= d < 60 for d in result.hop_delays)
    assert any(line.endswith(f"{result.hops} Received hops, delays " + ", ".join(f"{d:.0f}s" for d in
                                                                               result.hop_delays))
               for line in result.transcript), result.transcript


def test_read_headers_of_a_block() -> None:
    block = (b"Authentication-Results: mail.lab.test; dkim=pass header.d=a.test\r\n"
             b"Received: from a by b; Thu, 03 Dec 2026 06:00:02 +0000\r\nSubject: x\r\n\r\n")
    results, hops, delays = read_headers(block, datetime(2026, 12, 3, 6, 0, 0, tzinfo=UTC).timestamp())
    assert (results, hops, delays) == ({"dkim": "pass"}, 1, [2.0])


def _signed_target(lab: Lab):  # type: ignore[no-untyped-def]
    """The lab's signed submission port: OpenDKIM signs (d=lab.test), relays to the inbound port, where another
    OpenDKIM verifies and writes Authentication-Results; read back over IMAP."""
    target = roundtrip_target(lab)
    checks = tuple(dataclasses.replace(c, port=int(lab.env["LAB_SIGNED_SUBMISSION_PORT"])) if c.name == "smtp" else c
                   for c in target.checks)
    return dataclasses.replace(target, checks=checks)


def _zone(spf: str) -> str:
    """lab.test as the receiver's resolver sees it: SPF and DMARC records (OpenDKIM reads its key elsewhere)."""
    return f"""$TTL 60
@  SOA ns hostmaster 1 60 60 60 30
@  NS  ns
ns A   127.0.0.3
@  TXT "{spf}"
_dmarc TXT "v=DMARC1; p=reject"
"""


@pytest.fixture
async def lab_dns(lab: Lab) -> AsyncIterator[DnsServer]:
    """The DNS server the lab's SPF policy service asks (127.0.0.3:53): lab.test allows 127.0.0.1 to send."""
    server = DnsServer(_zone("v=spf1 ip4:127.0.0.1 -all"), "lab.test.")
    await server.start(lab.env["LAB_SPF_NAMESERVER"], 53)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def dkim_key_fault(lab: Lab) -> Iterator[None]:
    lab.control("fault", "dkim-key", "on")
    try:
        yield
    finally:
        lab.control("fault", "dkim-key", "off")


@pytest.mark.lab
async def test_signed_probe_is_judged_dkim_and_spf_pass(lab: Lab, clean_inbox: None,  # noqa: F811
                                                       lab_dns: DnsServer) -> None:
    """Real Authentication-Results: OpenDKIM verifying the signature OpenDKIM made, policyd-spf and OpenDMARC asking
    the DNS server for lab.test's SPF and DMARC records: all pass, 4 hops."""
    target = _signed_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "pass", "spf": "pass", "dmarc": "pass"}
    assert {("lab.test.", "TXT"), ("_dmarc.lab.test.", "TXT")} <= set(lab_dns.queries)
    assert result.hops == 4  # submission, inbound (DKIM, SPF), DMARC hop, LMTP
    assert auth_note([result]) == ""


@pytest.mark.lab
async def test_wrong_dkim_key_is_fail_while_delivery_stays_ok(lab: Lab, clean_inbox: None,  # noqa: F811
                                                              dkim_key_fault: None, lab_dns: DnsServer) -> None:
    """The published key is another one: dkim=fail is reported and named, the round trip itself is ok."""
    target = _signed_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "fail", "spf": "pass", "dmarc": "pass"}  # DMARC passes on aligned SPF
    assert "say DKIM fail" in auth_note([result])


@pytest.mark.lab
async def test_dkim_and_spf_failing_is_dmarc_fail_while_delivery_stays_ok(
        lab: Lab, clean_inbox: None, dkim_key_fault: None, lab_dns: DnsServer) -> None:  # noqa: F811
    """Wrong key and an SPF record excluding the sender: DMARC (p=reject) fails too, named; the lab still delivers
    (RejectFailures false), as a lenient receiver would, and the round trip is ok."""
    lab_dns.load(_zone("v=spf1 ip4:192.0.2.1 -all"))
    target = _signed_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "fail", "spf": "fail", "dmarc": "fail"}
    assert "say DKIM fail, DMARC fail, SPF fail" in auth_note([result])


@pytest.mark.lab
async def test_spf_record_excluding_the_sender_is_fail_while_delivery_stays_ok(
        lab: Lab, clean_inbox: None, lab_dns: DnsServer) -> None:  # noqa: F811
    """lab.test's SPF record allows another address only: spf=fail named, dkim still pass, delivered."""
    lab_dns.load(_zone("v=spf1 ip4:192.0.2.1 -all"))
    target = _signed_target(lab)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "pass", "spf": "fail", "dmarc": "pass"}  # DMARC passes on aligned DKIM
    assert "say SPF fail" in auth_note([result])


@pytest.mark.lab
async def test_pop3_read_back_reports_the_same_judgement(lab: Lab, clean_inbox: None,  # noqa: F811
                                                         lab_dns: DnsServer) -> None:
    """Over POP3 the header block comes with the TOP that found the probe: the same results and hops."""
    target = _signed_target(lab)
    result = await runner().execute(target, via(target, "pop3"))
    assert result.ok, result.detail
    assert result.auth_results == {"dkim": "pass", "spf": "pass", "dmarc": "pass"} and result.hops == 4
