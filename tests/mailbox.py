"""An independent look into the lab mailbox (stdlib imaplib, not our code): what is there, with which flags."""

from __future__ import annotations

import imaplib
import re
import ssl
from dataclasses import dataclass

from tests.conftest import Lab

_ITEM = re.compile(rb"UID (\d+) FLAGS \(([^)]*)\)")


@dataclass(frozen=True)
class Message:
    uid: int
    flags: frozenset[str]
    probe_header: str | None


def _connect(lab: Lab, user: str | None = None, password: str | None = None) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=lab.ca)
    client = imaplib.IMAP4_SSL(lab.host, 993, ssl_context=context, timeout=30)
    client.sock.settimeout(30)
    # imaplib checks the name against `host`; the lab certificate names mail.lab.test and 127.0.0.2.
    client.login(user or lab.user, password or lab.password)
    return client


def snapshot(lab: Lab, folder: str = "INBOX") -> dict[int, Message]:
    """Every message in the folder: UID, permanent flags (\\Recent is per session and left out), probe header."""
    client = _connect(lab)
    try:
        client.select(folder, readonly=True)  # EXAMINE: this look changes nothing
        typ, data = client.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (X-MAILMON-PROBE)])")
        assert typ == "OK"
        messages: dict[int, Message] = {}
        for item in data:
            if not isinstance(item, tuple):
                continue
            match = _ITEM.search(item[0])
            if match is None:
                continue
            flags = frozenset(f for f in match.group(2).decode().split() if f != "\\Recent")
            header = item[1].decode().partition(":")[2].strip() or None
            uid = int(match.group(1))
            messages[uid] = Message(uid, flags, " ".join(header.split()) if header else None)
        return messages
    finally:
        client.logout()


def append(lab: Lab, raw: bytes, flags: str = "", folder: str = "INBOX") -> None:
    """Put a message straight into the mailbox (IMAP APPEND), bypassing SMTP."""
    client = _connect(lab)
    try:
        typ, _ = client.append(folder, f"({flags})" if flags else None, None, raw)
        assert typ == "OK"
    finally:
        client.logout()


def append_many(lab: Lab, items: list[tuple[bytes, str]], folder: str = "INBOX") -> None:
    client = _connect(lab)
    try:
        for raw, flags in items:
            typ, _ = client.append(folder, f"({flags})" if flags else None, None, raw)
            assert typ == "OK"
    finally:
        client.logout()


def clear(lab: Lab, folder: str = "INBOX") -> None:
    """Empty the folder (test set-up only: the monitor itself never does this)."""
    client = _connect(lab)
    try:
        client.select(folder)
        client.uid("STORE", "1:*", "+FLAGS.SILENT", r"(\Deleted)")
        client.expunge()
    finally:
        client.logout()


def create_folder(lab: Lab, folder: str) -> None:
    client = _connect(lab)
    try:
        client.create(folder)
    finally:
        client.logout()
