"""What a user's mail client said, translated into the protocol and step it failed at (client_errors.yaml).

Support hears "0x800CCC13" or "the connection to the outgoing server failed". Each names a step a client failed
at; mailmon knows whether that same step works from known-good clients right now. This module only finds the
table entry: by code, or by a vendor message text contained in what the user reported. Nothing is guessed: text
that matches no entry exactly enough is "unknown".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from monitor.errors import STAGES

__all__ = ["SESSION", "ClientError", "lookup", "table"]

# `step: session`: somewhere after connecting; only a whole successful check vouches for it.
SESSION = "session"
_PROTOCOLS = ("smtp", "imap", "pop3")
_CODE = re.compile(r"0x[0-9a-f]{8}", re.IGNORECASE)
# A quoted message shorter than this is too generic to name one entry ("failed", "error").
_MIN_QUOTE = 24


@dataclass(frozen=True)
class ClientError:
    """One entry of the table."""

    id: str
    client: str
    protocols: tuple[str, ...]
    step: str
    meaning: str
    causes: tuple[str, ...]
    source: str
    codes: tuple[str, ...] = ()
    messages: tuple[tuple[str, str], ...] = ()  # (language, text)
    text_source: str = ""

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "client": self.client, "codes": list(self.codes), "protocols": list(self.protocols),
                "step": self.step, "meaning": self.meaning, "causes": list(self.causes), "source": self.source}


@functools.cache
def table() -> tuple[ClientError, ...]:
    """The packaged table, checked once: a broken entry is a bug of ours and fails loudly."""
    raw = yaml.safe_load(resources.files("monitor").joinpath("client_errors.yaml").read_text(encoding="utf-8"))
    entries = tuple(_entry(item) for item in raw)
    ids = [e.id for e in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("client_errors.yaml: duplicate ids")
    return entries


def _entry(item: dict[str, Any]) -> ClientError:
    protocols = tuple(item["protocols"])
    step = item["step"]
    if not set(protocols) <= set(_PROTOCOLS) or (step != SESSION and step not in STAGES):
        raise ValueError(f"client_errors.yaml: {item['id']}: unknown protocol or step")
    messages = tuple((language, " ".join(str(text).split()))
                     for language, texts in (item.get("messages") or {}).items() for text in texts)
    if not item.get("codes") and not messages:
        raise ValueError(f"client_errors.yaml: {item['id']}: neither codes nor messages")
    return ClientError(id=item["id"], client=item["client"], protocols=protocols, step=step,
                       meaning=item["meaning"], causes=tuple(item["causes"]), source=" ".join(item["source"].split()),
                       codes=tuple(c.upper().replace("0X", "0x") for c in item.get("codes", ())), messages=messages,
                       text_source=" ".join(str(item.get("text_source", "")).split()))


def _normal(text: str) -> str:
    """Compared text: Unicode-normalised (full-width forms), case-folded, quotes and spaces evened out."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[\"'“”‘’«»「」『』]", "", text)
    return " ".join(text.split())


def _fragments(message: str) -> list[str]:
    """A vendor text's literal pieces around its {host} placeholders, normalised."""
    return [piece for piece in (_normal(part) for part in message.split("{host}")) if piece]


def _text_matches(reported: str, message: str) -> bool:
    """The user quoted the vendor text: every literal piece of it appears in order, or the user's quote is a long
    enough piece of it."""
    if len(reported) >= _MIN_QUOTE and any(reported in piece for piece in _fragments(message)):
        return True
    position = 0
    for piece in _fragments(message):
        found = reported.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def lookup(reported: str) -> list[ClientError]:
    """The entries a user's report names: by error code when it holds one, else by vendor message text."""
    codes = {match.group(0).lower() for match in _CODE.finditer(reported)}
    if codes:
        return [entry for entry in table() if codes & {code.lower() for code in entry.codes}]
    text = _normal(reported)
    if not text:
        return []
    return [entry for entry in table() if any(_text_matches(text, message) for _, message in entry.messages)]
