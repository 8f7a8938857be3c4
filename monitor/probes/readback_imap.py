"""Reading probe messages back over IMAP: new mail by UID range after NOOP, IDLE for the long tail; junk folders,
deleting and sweeping.

It touches nothing but probe messages it proved to be ours: headers are read with BODY.PEEK (no \\Seen), and a
message is deleted by UID with UID EXPUNGE (never a plain EXPUNGE, which would also expunge other messages someone
marked \\Deleted). The reader keeps the contract of `monitor.probes.readback.Readback`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

from monitor.config import ImapSettings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.probe_message import HEADER, ProbeHeader
from monitor.probes.imap import ImapSession
from monitor.probes.readback import SLOW_POLL, Found, SweepReport, is_stale, probe_header, verified
from monitor.result import ProbeContext

__all__ = ["ImapReadback"]

# IDLE is re-entered at least this often, bounding the cost of a notification lost in a race.
_IDLE_SLICE = 10.0
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"UID (\d+)")
_EXISTS_COUNT = re.compile(rb"^(?:\* )?(\d+) EXISTS", re.IGNORECASE)
_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')

# A response's lines as aioimaplib hands them over (untyped there): status and untagged lines as bytes, literals as
# bytearray.
Lines = Sequence[Any]


def _select_counts(lines: Lines) -> tuple[int, int | None]:
    """A SELECT response's EXISTS count and UIDNEXT (None when the server sent none)."""
    exists = 0
    uidnext: int | None = None
    for line in lines:
        if not isinstance(line, bytes):
            continue
        match = _UIDNEXT.search(line)
        if match:
            uidnext = int(match.group(1))
        elif (count := _EXISTS_COUNT.match(line)) is not None:
            exists = int(count.group(1))
    return exists, uidnext


def _search_result(lines: Lines) -> tuple[list[int], bool]:
    """A UID SEARCH response's UIDs, and whether untagged news (`12 EXISTS`) came with it."""
    uids: list[int] = []
    news = False
    for line in lines[:-1]:
        if not isinstance(line, bytes):
            continue
        words = line.split()
        # aioimaplib hands over the SEARCH result without its "SEARCH" word, mixed with any untagged
        # news (`12 EXISTS`, `1 RECENT`): only an all-number line is the result.
        if words and all(word.isdigit() for word in words):
            uids.extend(int(word) for word in words)
        elif line.endswith(b"EXISTS"):
            news = True
    return uids, news


def _probe_headers(lines: Lines) -> dict[int, str | None]:
    """A UID FETCH of the probe header: UID → the header's value (None when absent or repeated)."""
    headers: dict[int, str | None] = {}
    current: int | None = None
    for line in lines:
        if isinstance(line, bytes):
            match = _FETCH_UID.search(line)
            current = int(match.group(1)) if match and b"FETCH" in line else current
        elif current is not None:
            headers[current] = probe_header(line)
    return headers


def _listed(lines: Lines) -> Iterator[tuple[str, bytes]]:
    """A LIST response's folders: (name, flags), the name unquoted."""
    for line in lines[:-1]:
        match = _LIST_LINE.match(line) if isinstance(line, bytes) else None
        if match is None:
            continue
        name = match["name"].decode("utf-8", "replace").strip()
        if name.startswith('"') and name.endswith('"'):
            name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        yield name, match["flags"]


async def _idle(session: ImapSession, timeout: float) -> bool:
    """IDLE until the server reports new mail (True) or `timeout` or the IDLE slice passes (False)."""
    protocol = session.protocol
    assert protocol is not None
    session.ctx.say("IDLE")
    idle = asyncio.ensure_future(protocol.idle())
    acknowledged = asyncio.ensure_future(protocol.wait_for_idle_response())
    news = False
    try:
        await session.watch(asyncio.wait({idle, acknowledged}, return_when=asyncio.FIRST_COMPLETED))
        if not protocol.has_pending_idle_command():
            raise ProbeError("fetch", "protocol", "the server refused IDLE")
        loop = asyncio.get_running_loop()
        until = loop.time() + min(timeout, _IDLE_SLICE)
        while (left := until - loop.time()) > 0:
            try:
                lines = await session.watch(asyncio.wait_for(protocol.idle_queue.get(), left))
            except TimeoutError:
                break
            # Dovecot sends "* OK Still here" to keep IDLE alive; only EXISTS means new mail.
            if any(isinstance(line, bytes) and line.endswith(b"EXISTS") for line in lines):
                news = True
                break
    finally:
        acknowledged.cancel()
        if protocol.has_pending_idle_command():
            protocol.idle_done()
    await session.watch(idle)
    return news


class ImapReadback:
    """IMAP reader: one session, INBOX selected; new mail found by UID range, IDLE for the long tail."""

    def __init__(self, ctx: ProbeContext, target: Target, check: ImapSettings | RoundTripSettings, key: bytes) -> None:
        self.ctx = ctx
        self.check = check
        self.key = key
        self.session = ImapSession(ctx, target, check)
        self.next_uid = 1
        self.folder = check.mailbox
        # Set when the server reported new mail (EXISTS) inside another command's response: IDLE would not
        # report it again, so the next wait must not block.
        self.news = False
        self._opened = False

    async def open(self) -> None:
        self.session.close()
        self.session = ImapSession(self.ctx, self.session.target, self.check)
        await self.session.open()
        # A reopen (the read-back connection dropped during the wait) keeps the first UIDNEXT: the probe may have
        # arrived meanwhile, and starting from the new UIDNEXT would pass over it and report it not delivered.
        kept = self.next_uid if self._opened else None
        await self._select(self.check.mailbox, baseline=True)
        if kept is not None:
            self.next_uid = kept
            self.news = True  # look from the kept UID at once: the new session's NOOP reports nothing older
        self._opened = True
        if "UIDPLUS" not in self._protocol.capabilities:
            # Without UID EXPUNGE, deleting our message would expunge every message flagged \Deleted.
            raise ProbeError("fetch", "protocol", "the server lacks UIDPLUS: probe messages could not be "
                                                  "deleted safely")

    @property
    def _protocol(self):  # type: ignore[no-untyped-def]
        assert self.session.protocol is not None
        return self.session.protocol

    async def _select(self, folder: str, baseline: bool = False) -> None:
        response = await self.session.watch(self._protocol.select(folder))
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"SELECT {folder} failed: {response.result}")
        self.folder = folder
        exists, uidnext = _select_counts(response.lines)
        self._protocol.grew = False  # SELECT's own EXISTS is the baseline, not news
        if uidnext is None and baseline:
            # RFC 3501 allows a SELECT without UIDNEXT (Courier-IMAP sends none): the last message's UID marks the
            # baseline instead, so the first poll does not fetch the header of every message in the mailbox.
            uidnext = await self._last_uid(exists) + 1
        if uidnext is not None:
            self.next_uid = uidnext

    async def _last_uid(self, exists: int) -> int:
        """The UID of message number `exists` (the last one), 0 for an empty mailbox."""
        if exists <= 0:
            return 0
        response = await self.session.watch(self._protocol.fetch(str(exists), "(UID)"))
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"FETCH {exists} (UID) failed: {response.result}")
        uids = [int(match.group(1)) for line in response.lines if isinstance(line, bytes)
                and (match := _FETCH_UID.search(line)) is not None]
        return max(uids, default=0)

    async def _search(self, *criteria: str) -> list[int]:
        response = await self.session.watch(self._protocol.search(*criteria, charset=None, by_uid=True))
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"UID SEARCH failed: {response.result}")
        uids, news = _search_result(response.lines)
        self.news = self.news or news
        return uids

    async def _fetch_headers(self, uid_set: str) -> dict[int, str | None]:
        """The probe header of each message, fetched with BODY.PEEK so nothing gets marked \\Seen."""
        response = await self.session.watch(self._protocol.fetch(
            uid_set, f"(UID BODY.PEEK[HEADER.FIELDS ({HEADER.upper()})])", by_uid=True))
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"UID FETCH failed: {response.result}")
        return _probe_headers(response.lines)

    async def _ours(self, folder: str, *criteria: str) -> list[tuple[int, ProbeHeader]]:
        """Select `folder` and return the messages matching `criteria` whose probe header is signed with our key."""
        await self._select(folder)
        uids = await self._search(*criteria)
        if not uids:
            return []
        headers = await self._fetch_headers(",".join(str(uid) for uid in sorted(uids)))
        return [(uid, header) for uid, value in headers.items() if (header := verified(self.key, value)) is not None]

    async def poll(self, probe_id: str) -> Found | None:
        """One look the RFC way: NOOP lets the server report new mail (`* n EXISTS`, RFC 3501 6.1.2); only then
        are the headers of the messages from `next_uid` on fetched. A repeated UID SEARCH is not enough: some
        servers (Courier-IMAP) show new mail only in answer to NOOP, CHECK or IDLE."""
        protocol = self._protocol
        response = await self.session.watch(protocol.simple_command("NOOP"))
        seen_at = time.perf_counter()
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"NOOP failed: {response.result}")
        if not (protocol.grew or self.news):
            return None
        protocol.grew = self.news = False
        # `n:*` names at least the last message even when n is past it (RFC 3501 6.4.8): keep only the new ones.
        headers = {uid: value for uid, value in (await self._fetch_headers(f"{self.next_uid}:*")).items()
                   if uid >= self.next_uid}
        if not headers:
            return None
        self.next_uid = max(headers) + 1
        for uid, value in headers.items():
            header = verified(self.key, value)
            if header is not None and header.probe_id == probe_id:
                return Found(ref=str(uid), header=header, seen_at=seen_at, folder=self.folder)
        return None

    async def wait_push(self, timeout: float) -> None:
        """IDLE until the server reports new mail or `timeout` passes; a plain sleep without IDLE."""
        protocol = self._protocol
        if self.news or protocol.grew:
            return  # the server reported new mail since the last look: look again instead of idling
        if "IDLE" not in protocol.capabilities:
            await asyncio.sleep(min(timeout, SLOW_POLL))
            return
        if await _idle(self.session, timeout):
            self.news = True  # reported here, so the next NOOP will not report it again

    async def delete(self, found: Found) -> None:
        """Delete exactly the found message, by UID, in the folder it was found in."""
        protocol = self._protocol
        if self.folder != found.folder:
            await self._select(found.folder)
        self.ctx.say(f"UID STORE {found.ref} +FLAGS.SILENT (\\Deleted)")
        stored = await self.session.watch(protocol.store(found.ref, "+FLAGS.SILENT", "(\\Deleted)", by_uid=True))
        if stored.result != "OK":
            raise ProbeError("cleanup", "protocol", f"UID STORE {found.ref} failed: {stored.result}")
        self.ctx.say(f"UID EXPUNGE {found.ref}")
        expunged = await self.session.watch(protocol.expunge(found.ref, by_uid=True))
        if expunged.result != "OK":
            raise ProbeError("cleanup", "protocol", f"UID EXPUNGE {found.ref} failed: {expunged.result}")

    async def _folders(self) -> list[str]:
        """Configured junk folders that exist, plus any folder the server marks \\Junk (RFC 6154)."""
        response = await self.session.watch(self._protocol.simple_command("LIST", '""', '"*"'))
        # Over a submitter's imap block (a bounce search) there are no junk folders to look in: none are configured.
        junk_folders = self.check.junk_folders if isinstance(self.check, RoundTripSettings) else ()
        wanted = {name.lower() for name in junk_folders}
        return [name for name, flags in _listed(response.lines)
                if (name.lower() in wanted or b"\\junk" in flags.lower()) and name != self.check.mailbox]

    async def header_block(self, found: Found) -> bytes | None:
        """The found message's whole header block (BODY.PEEK: not marked \\Seen), for Authentication-Results and
        the Received chain; None when the server sends none."""
        response = await self.session.watch(self._protocol.fetch(found.ref, "(UID BODY.PEEK[HEADER])", by_uid=True))
        if response.result != "OK":
            return None
        return next((bytes(line) for line in response.lines if isinstance(line, bytearray)), None)

    async def quota(self) -> dict[str, tuple[int, int]]:
        """GETQUOTAROOT of the read-back mailbox (RFC 9208), {} when the server has no QUOTA: a probe that never
        arrived in a mailbox at its limit was refused at delivery (LMTP over quota), not lost."""
        self.ctx.quota = {}
        await self.session.quota(self.check.mailbox)
        return dict(self.ctx.quota)

    async def find_in_junk(self, probe_id: str) -> str | None:
        """The junk folder holding the probe message (which is then deleted there), or None."""
        for folder in await self._folders():
            for uid, header in await self._ours(folder, "HEADER", HEADER, f'"id={probe_id}"'):
                if header.probe_id == probe_id:
                    await self.delete(Found(str(uid), header, time.perf_counter(), folder))
                    return folder
        return None

    async def sweep(self, vantage: str, now_ms: int) -> SweepReport:
        report = SweepReport()
        for folder in [self.check.mailbox, *await self._folders()]:
            for uid, header in await self._ours(folder, "HEADER", HEADER, '"v1 id="'):
                if not is_stale(header, vantage, now_ms):
                    continue  # still in flight: never touched (what is not provably ours is never listed)
                await self.delete(Found(str(uid), header, time.perf_counter(), folder))
                report.deleted_one(header, vantage)
        return report

    def close(self) -> None:
        self.session.close()
