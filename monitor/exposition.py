"""Prometheus text exposition kept ready to serve: series are rendered when they change, a scrape only joins bytes.

Why not prometheus_client's renderer for the per-check series: it formats every sample at scrape time (12–16 µs
each). A monitor of 5,000 targets exports ~0.8 M samples, so one scrape took ~10 s of interpreter time, holding the
GIL in whatever thread it ran, and starved the probes (bench/scale.py, docs/benchmarks.md). Here each family keeps
one pre-rendered chunk of text per owner (a target's check, or a target): a new result re-renders the few lines of
its own chunks (microseconds, spread over the run), and a scrape is one `bytes.join` over the chunks.

Everything here is touched from the event loop thread only, so it needs no locks.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

from prometheus_client.utils import floatToGoString

__all__ = ["Exposition", "Family", "format_value", "label_text"]

# Values that most samples carry (zero counters, success 0/1, small counts): formatted once.
_COMMON = {float(i): f"{i}.0" for i in range(1000)}


def format_value(value: float) -> str:
    """A sample value as prometheus_client writes it (`1.0`, `0.25`, `1.7e+09`, `+Inf`)."""
    common = _COMMON.get(value)
    if common is not None:
        return common
    return str(floatToGoString(value))  # type: ignore[no-untyped-call]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_text(names: Sequence[str], values: Sequence[str]) -> str:
    """`a="x",b="y"`: the inside of a sample's braces, values escaped as the text format requires."""
    return ",".join(f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True))


class Family:
    """One metric family: its HELP/TYPE header and one rendered chunk of sample lines per owner."""

    def __init__(self, name: str, kind: str, documentation: str) -> None:
        self.name = name
        doc = documentation.replace("\\", r"\\").replace("\n", r"\n")
        self.header = f"# HELP {name} {doc}\n# TYPE {name} {kind}\n".encode()
        self.chunks: dict[Hashable, bytes] = {}

    def set(self, owner: Hashable, samples: Iterable[tuple[str, str, float]]) -> None:
        """Replace the owner's lines with `samples`: (sample name suffix, label text, value) each."""
        name = self.name
        self.chunks[owner] = "".join(
            f"{name}{suffix}{{{labels}}} {format_value(value)}\n" for suffix, labels, value in samples
        ).encode()

    def set_one(self, owner: Hashable, labels: str, value: float) -> None:
        """Replace the owner's lines with one sample (most families have one per owner)."""
        self.chunks[owner] = f"{self.name}{{{labels}}} {format_value(value)}\n".encode()

    def drop(self, owner: Hashable) -> None:
        self.chunks.pop(owner, None)


class Exposition:
    """Families in a fixed order; `render()` is the body of a scrape (text format 0.0.4)."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def family(self, name: str, kind: str, documentation: str) -> Family:
        family = Family(name, kind, documentation)
        self.families.append(family)
        return family

    def render(self) -> bytes:
        return b"".join(self.parts())

    def parts(self) -> list[bytes]:
        """The pieces `render()` joins. Taking them is cheap (a list of references, ~1 ms per 100k chunks), so the
        event loop takes them and a worker thread joins and compresses: bytes are immutable and a chunk is only
        ever replaced, so the snapshot stays consistent while the loop records new results."""
        parts: list[bytes] = []
        for family in self.families:
            if family.chunks:
                parts.append(family.header)
                parts.extend(family.chunks.values())
        return parts
