"""The redaction safety net: credentials a client line of a transcript could carry, replaced by `********`.

The probes never record secrets (they write `AUTH PLAIN ********`, `PASS ********`, `LOGIN user ********`);
these rules apply the same again to whatever text reaches storage or output, so a probe that forgets cannot leak.
They are pattern-based (docs/history.md, "Redaction"): the standard SMTP/IMAP/POP3 credential exchanges, not a
password a server echoes back in free text. Used by the history (monitor/history) on every stored row.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["REDACTED", "redact", "redact_lines"]

REDACTED = "********"

# A bare SASL response or literal: one base64-looking token of 4 characters or more, padding included (the base64
# of a 1-character password is `cA==`), possibly cut by the transcript's line limit, which appends `... [N chars]`
# (monitor/result.py): an OAuth2 token's base64 is longer than that limit.
_B64_TOKEN = re.compile(r"(?=[A-Za-z0-9+/=]{4})[A-Za-z0-9+/]{2,}={0,2}(?:\.\.\. \[\d+ chars\])?")
# C: [tag] AUTH|AUTHENTICATE <mech> <initial response>  ->  the initial response goes
_AUTH_LINE = re.compile(r"^(C: (?:\S+ )?(?:AUTH|AUTHENTICATE) \S+ ).*\S.*$", re.IGNORECASE)
# C: PASS <password>  (POP3)
_PASS_LINE = re.compile(r"^(C: (?:\S+ )?PASS ).*\S.*$", re.IGNORECASE)
# C: [tag] LOGIN <user> <password>  (IMAP; the user may be quoted or a literal)
_LOGIN_LINE = re.compile(r'^(C: (?:\S+ )?LOGIN (?:"(?:[^"\\]|\\.)*"|\{\d+\+?\}|\S+) ).*\S.*$', re.IGNORECASE)
# A server line inviting a SASL response or an IMAP literal: SMTP 334, IMAP/POP3 "+".
_CONTINUATION = re.compile(r"^S: (?:334(?:[ -]|$)|\+(?: |$))")


def redact_lines(lines: Iterable[str]) -> list[str]:
    """Transcript lines with any credential a client line could carry replaced by `********`.

    Rules (defence in depth: the probes redact before recording): everything after `AUTH <mech> ` or
    `AUTHENTICATE <mech> ` on a `C: ` line; the argument of `PASS`; everything after the user of `LOGIN`;
    and a `C: ` line that is one bare base64-looking token (4+ characters, perhaps cut short) right after a
    server `334` or `+` continuation line (SASL PLAIN/LOGIN exchanges, IMAP literals), `-- ` note lines in
    between ignored.
    """
    out: list[str] = []
    after_continuation = False
    for line in lines:
        if line.startswith("C: "):
            redacted = _redact_client_line(line)
            if redacted == line and after_continuation and _B64_TOKEN.fullmatch(line[3:].strip()):
                redacted = "C: " + REDACTED
            out.append(redacted)
            after_continuation = False
        else:
            if line.startswith("S: "):
                after_continuation = _CONTINUATION.match(line) is not None
            out.append(line)
    return out


def _redact_client_line(line: str) -> str:
    for pattern in (_AUTH_LINE, _PASS_LINE, _LOGIN_LINE):
        match = pattern.match(line)
        if match is not None:
            return match.group(1) + REDACTED
    return line


def redact(text: str) -> str:
    """`redact_lines` over a (possibly multi-line) text: the transcript rules applied line by line."""
    return "\n".join(redact_lines(text.split("\n")))
