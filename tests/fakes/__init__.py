"""Fake mail servers for peers real servers cannot imitate: silent, slow, rude, broken, hostile.

Everything runs in the test's own event loop on 127.0.0.1 with port 0; TLS material is made at test time.
"""

from tests.fakes.scripts import (
    CLOSE,
    HANG,
    RESET,
    Act,
    ImapScript,
    Pop3Script,
    SmtpScript,
    delay,
    drip,
    perform,
    seq,
)
from tests.fakes.server import Behaviour, Conn, FakeServer
from tests.fakes.tls import SERVER_NAME, TlsMaterial, make_tls_material

__all__ = [
    "CLOSE", "HANG", "RESET", "SERVER_NAME", "Act", "Behaviour", "Conn", "FakeServer", "ImapScript", "Pop3Script",
    "SmtpScript", "TlsMaterial", "delay", "drip", "make_tls_material", "perform", "seq",
]
