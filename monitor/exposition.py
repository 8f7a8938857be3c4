"""Prometheus text exposition kept ready to serve: series are rendered when they change, a scrape only joins bytes.

Why not prometheus_client's renderer for the per-check series: it formats every sample at scrape time (12–16 µs
each). A monitor of 5,000 targets exports ~0.8 M samples, so one scrape took ~10 s of interpreter time, holding the
GIL in whatever thread it ran, and starved the probes (bench/scale.py, docs/benchmarks.md). Here each family keeps
one pre-rendered chunk of text per owner (a target's check, or a target): a new result re-renders the few lines of
its own chunks (microseconds, spread over the run), and a scrape is one `bytes.join` over the chunks.

Everything here is changed from the event loop thread only, so it needs no locks. A scrape takes references on the
loop (`parts`, `gzip_snapshot`) and builds its body in a worker thread (`gzip_body`): a chunk is replaced, never
changed, so what the loop took stays consistent.

gzip (Prometheus asks for it) would cost more than the join: ~150 ms of zlib per scrape of 5,000 targets. Most
families hardly change between two scrapes (success, skips, verdicts, current failures, reply codes), so each
family is compressed on its own as a piece of one deflate stream (a full flush makes it independent of what comes
before) and kept until the family's text changes; a scrape compresses only the families that changed and joins the
pieces into one gzip member (RFC 1951/1952), its CRC-32 combined from the families' (`crc32_combine`).

The deflate and CRC-32 are ISA-L's (`isal`), not zlib's: the same formats, but at level 1 ~5x less CPU than zlib's
level 1 and a smaller output. Profiled at 5,000 targets (bench/scale.py, issue 14), the worker spent 110-180 ms of
CPU per scrape (its wall time was its CPU time, not waits for the GIL), nearly all of it zlib compressing the
families that change between scrapes (durations, phases, timestamps, run counts: ~20 MB of text).
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from isal import isal_zlib
from prometheus_client.utils import floatToGoString

__all__ = ["Exposition", "Family", "crc32_combine", "format_value", "label_text"]

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
        # Goes up whenever the family's text changes (not when a run re-renders the same lines): a compressed
        # copy of an older version is stale.
        self.version = 0

    def _put(self, owner: Hashable, text: bytes) -> None:
        if self.chunks.get(owner) != text:
            self.chunks[owner] = text
            self.version += 1

    def set(self, owner: Hashable, samples: Iterable[tuple[str, str, float]]) -> None:
        """Replace the owner's lines with `samples`: (sample name suffix, label text, value) each."""
        name = self.name
        self._put(owner, "".join(
            f"{name}{suffix}{{{labels}}} {format_value(value)}\n" for suffix, labels, value in samples
        ).encode())

    def set_one(self, owner: Hashable, labels: str, value: float) -> None:
        """Replace the owner's lines with one sample (most families have one per owner)."""
        self._put(owner, f"{self.name}{{{labels}}} {format_value(value)}\n".encode())

    def drop(self, owner: Hashable) -> None:
        if self.chunks.pop(owner, None) is not None:
            self.version += 1


@dataclass(frozen=True)
class _Deflated:
    """One family's text as a piece of a raw deflate stream (ends in a full flush, no final block)."""

    version: int
    crc: int
    size: int
    data: bytes


def _deflate(text: bytes, version: int = 0) -> _Deflated:
    # ISA-L level 1: ~10x smaller; both calls let go of the GIL while they work.
    compressor = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -isal_zlib.MAX_WBITS)
    return _Deflated(version, isal_zlib.crc32(text), len(text),
                     compressor.compress(text) + compressor.flush(isal_zlib.Z_FULL_FLUSH))


# CRC-32 of concatenated data from the parts' CRCs (zlib's crc32_combine, which Python's zlib does not expose):
# polynomial arithmetic modulo the CRC polynomial, reflected as zlib computes it.
_POLY = 0xEDB88320


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial."""
    m, product = 1 << 31, 0
    while True:
        if a & m:
            product ^= b
            if a & (m - 1) == 0:
                return product
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1


def _x2n_table() -> list[int]:
    """x^(2^k) modulo the polynomial, k = 0..31."""
    table, p = [], 1 << 30  # x^1
    for _ in range(32):
        table.append(p)
        p = _multmodp(p, p)
    return table


_X2N = _x2n_table()


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from crc32(A), crc32(B) and len(B) (~0.1 ms, whatever the lengths)."""
    p, k, n = 1 << 31, 3, len2  # x^0; multiply crc1 by x^(8 * len2)
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


# gzip member header: deflate, no flags, no mtime, no extra flags, OS unknown (RFC 1952).
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
# An empty final block (fixed Huffman codes), which ends the deflate stream after the flushed pieces.
_FINAL_BLOCK = b"\x03\x00"


class Exposition:
    """Families in a fixed order; `render()` is the body of a scrape (text format 0.0.4)."""

    def __init__(self) -> None:
        self.families: list[Family] = []
        # Each family's latest compressed text; written by the worker threads that build gzip bodies (whole-value
        # assignments, so no lock), read on the loop.
        self._deflated: dict[str, _Deflated] = {}

    def family(self, name: str, kind: str, documentation: str) -> Family:
        family = Family(name, kind, documentation)
        self.families.append(family)
        return family

    def render(self) -> bytes:
        return b"".join(self.parts())

    def versions(self) -> tuple[int, ...]:
        """Every family's version: equal tuples mean the same text (a key for a rendered body)."""
        return tuple(family.version for family in self.families)

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

    def gzip_snapshot(self) -> list[_Deflated | tuple[str, int, list[bytes]]]:
        """What a gzip body needs, taken on the loop: each family's compressed text where it is current, else its
        name, version and pieces (references only) for `gzip_body` to compress."""
        snapshot: list[_Deflated | tuple[str, int, list[bytes]]] = []
        for family in self.families:
            if not family.chunks:
                continue
            cached = self._deflated.get(family.name)
            if cached is not None and cached.version == family.version:
                snapshot.append(cached)
            else:
                snapshot.append((family.name, family.version, [family.header, *family.chunks.values()]))
        return snapshot

    def gzip_body(self, snapshot: list[_Deflated | tuple[str, int, list[bytes]]], tail: bytes = b"") -> bytes:
        """A gzip member (level 1) of the snapshot's text followed by `tail`; meant for a worker thread (deflate and
        bytes.join let go of the GIL). Families compressed here are kept for the next scrape."""
        pieces: list[_Deflated] = []
        for item in snapshot:
            if isinstance(item, _Deflated):
                pieces.append(item)
            else:
                name, version, parts = item
                deflated = self._deflated[name] = _deflate(b"".join(parts), version)
                pieces.append(deflated)
        if tail:
            pieces.append(_deflate(tail))
        crc, size = 0, 0
        for piece in pieces:
            crc = crc32_combine(crc, piece.crc, piece.size) if size else piece.crc
            size += piece.size
        trailer = struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF)
        return b"".join([_GZIP_HEADER, *(piece.data for piece in pieces), _FINAL_BLOCK, trailer])
