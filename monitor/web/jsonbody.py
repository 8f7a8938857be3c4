"""JSON response bodies encoded a piece at a time, so the event loop gets the GIL back between the pieces.

`json.dumps` of a document is one call into C that holds the GIL until it returns: a 1,000-row history page is
~15 ms of it (bench/http_overload.py's history flood saw the loop wait that long, in the web pool's threads'
turn, whatever `sys.setswitchinterval` says). Encoding the members of large lists one by one gives the interpreter
a switch point between them; the bytes are the same as `json.dumps(document).encode()`.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["encode"]

# Lists at least this long are encoded item by item (a small list costs less in one call than in pieces).
_PIECEWISE = 16


def encode(document: Any) -> bytes:
    """`json.dumps(document).encode()`, with the large lists in dicts and lists of the top two levels split."""
    return _dumps(document, 2).encode()


def _dumps(value: Any, depth: int) -> str:
    if depth > 0 and isinstance(value, dict) and all(isinstance(key, str) for key in value):
        # Other key types are json.dumps's to convert: such dicts go to it whole.
        return "{" + ", ".join(f"{json.dumps(key)}: {_dumps(item, depth - 1)}" for key, item in value.items()) + "}"
    if depth > 0 and isinstance(value, list) and len(value) >= _PIECEWISE:
        return "[" + ", ".join(_dumps(item, depth - 1) for item in value) + "]"
    return json.dumps(value)
