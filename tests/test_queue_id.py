"""Queue ids in the final DATA replies of each MTA family, as their documentation and real transcripts show them."""

from __future__ import annotations

import pytest

from monitor.queue_id import parse_queue_id


@pytest.mark.parametrize(("reply", "queue_id"), [
    ("2.0.0 Ok: queued as 4B0F2C1234", "4B0F2C1234"),                                     # Postfix
    ("2.0.0 Ok: queued as 4dM1yK6Q1Wz9sVb", "4dM1yK6Q1Wz9sVb"),                           # Postfix long ids
    ("OK id=1xYo2w-0006hN-0p", "1xYo2w-0006hN-0p"),                                       # Exim up to 4.96
    ("OK id=1rZ1vS-00000000Bfz-1Y1x", "1rZ1vS-00000000Bfz-1Y1x"),                         # Exim 4.97 and later
    ("2.0.0 f9b5723e Message accepted for delivery", "f9b5723e"),                         # OpenSMTPD
    ("2.0.0: f9b5723e Message accepted for delivery", "f9b5723e"),                        # OpenSMTPD, older
    ("2.0.0 wB2K3a1A012345 Message accepted for delivery", "wB2K3a1A012345"),             # Sendmail
    ("2.6.0 <a1b2@example.com> [InternalId=20203526392, Hostname=EXCH01.example.com] 1452 bytes in 0.112, "
     "12.577 KB/sec Queued mail for delivery", "20203526392"),                            # Exchange
    ("2.6.0 <a1b2@example.com> [InternalId=1322849100049, Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com] "
     "10834 bytes in 0.061, 172.547 KB/sec Queued mail for delivery -> 250 2.1.5", "1322849100049"),  # Microsoft 365
    ("2.0.0 OK  1700000000 d9443c01a7336-1dbbfa1d5a9si12345678plb.12 - gsmtp",
     "d9443c01a7336-1dbbfa1d5a9si12345678plb.12"),                                         # Gmail
    ("ok 1700000000 qp 12345", "12345"),                                                  # qmail
])
def test_queue_id_of_each_mta(reply: str, queue_id: str) -> None:
    """Each documented reply format yields its queue id."""
    assert parse_queue_id(reply) == queue_id


@pytest.mark.parametrize("reply", ["2.0.0 Ok", "OK", "2.0.0 Message accepted", "Ok: queued", ""])
def test_reply_without_a_queue_id_gives_none(reply: str) -> None:
    """A reply that names no queue id leaves it empty rather than guessing a word."""
    assert parse_queue_id(reply) is None
