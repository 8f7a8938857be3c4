"""JSON bodies encoded piecewise: the same bytes as one `json.dumps`, the large lists split into calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

from monitor.web import jsonbody

_ROW = {"id": 7, "target": "t1", "ok": False, "phases": {"connect": 0.001}, "detail": "é \u2028 \"quoted\"",
        "transcript": ["S: 220 x", "C: QUIT"], "smtp_code": None, "duration_seconds": 1.5e-3}
DOCUMENTS: list[Any] = [
    {"rows": [dict(_ROW, id=i) for i in range(50)], "next_before_id": None, "change_windows": []},
    {"targets": [{"target": f"t{i}", "checks": [{"n": j} for j in range(20)]} for i in range(20)]},
    [list(range(20)) for _ in range(20)],
    {1: "an int key", "a": [1.5, True, None]},
    {"nested": {"deep": list(range(40))}},
    {}, [], "text", 3, None,
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_same_bytes_as_json_dumps(document: Any) -> None:
    assert jsonbody.encode(document) == json.dumps(document).encode()


def test_large_list_is_encoded_item_by_item(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = json.dumps

    def counting(value: Any) -> str:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(json, "dumps", counting)  # the module jsonbody calls it through
    rows = [dict(_ROW, id=i) for i in range(100)]
    jsonbody.encode({"rows": rows})
    assert sum(1 for value in calls if isinstance(value, dict) and "transcript" in value) == 100
