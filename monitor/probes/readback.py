"""Reading probe messages back: over IMAP (poll, then IDLE) and POP3 (UIDL/TOP), finding, deleting, sweeping.

Both readers share one contract. `open()` logs in and records what is already there; `poll()` looks once
for the probe message among what arrived since; `wait_push()` waits cheaply for news; `delete()` removes
exactly the message found; `sweep()` removes the monitor's own stale probe messages. They touch nothing
else: IMAP reads headers with BODY.PEEK (no \\Seen), deletes by UID with UID EXPUNGE (never a plain
EXPUNGE, which would also expunge other messages someone marked \\Deleted); POP3 reads headers with TOP and
marks with DELE only the message it proved to be ours.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import Protocol

from monitor.config import ImapSettings, RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.probe_message import HEADER, ProbeHeader, verify
from monitor.probes.imap import ImapSession
from monitor.probes.pop3 import LOGINS, Pop3Session
from monitor.result import ProbeContext
from monitor.steps import Stage

__all__ = ["Found", "ImapReadback", "Pop3Readback", "Readback", "SweepReport", "is_stale"]

# A message of another vantage is left alone until this long after its own deadline: it may still be in
# flight for that monitor, whose clock may also differ from ours.
OTHER_VANTAGE_GRACE_MS = 10 * 60 * 1000
# IDLE is re-entered at least this often, bounding the cost of a notification lost in a race.
_IDLE_SLICE = 10.0
_POP3_SLOW_POLL = 1.0
# With a POP3 LOGIN-DELAY the read-back has one login per round trip: it comes this long after acceptance.
_LOGIN_DELAY_FIRST_LOOK = 1.0
_KNOWN_CACHE_LIMIT = 100_000
_UIDNEXT = re.compile(rb"\[UIDNEXT (\d+)\]")
_FETCH_UID = re.compile(rb"UID (\d+)")
_EXISTS_COUNT = re.compile(rb"^(?:\* )?(\d+) EXISTS", re.IGNORECASE)
_LIST_LINE = re.compile(rb'^\((?P<flags>[^)]*)\) (?:"(?:[^"\\]|\\.)*"|NIL) (?P<name>.+)$')


@dataclass
class Found:
    """A probe message located in a mailbox: where, what it says, and when the poll that saw it returned."""

    ref: str
    header: ProbeHeader
    seen_at: float
    folder: str
    # The whole header block when the look already fetched it (POP3's TOP), for Authentication-Results.
    block: bytes | None = None


@dataclass
class SweepReport:
    deleted: int = 0
    late: list[ProbeHeader] = field(default_factory=list)


def is_stale(header: ProbeHeader, vantage: str, now_ms: int) -> bool:
    """True when a verified probe message may be deleted by the sweeper of `vantage`.

    Our own messages are stale once their deadline passed (no round trip of ours waits for them any more).
    Another vantage's messages get a grace period on top, so a monitor never removes a message that a
    peer sharing the mailbox is still waiting for.
    """
    if header.vantage == vantage:
        return now_ms > header.deadline_ms
    return now_ms > header.deadline_ms + OTHER_VANTAGE_GRACE_MS


def _probe_header(raw: bytes | bytearray) -> str | None:
    """The X-Mailmon-Probe value of a header block, or None when absent or present more than once."""
    values = BytesHeaderParser().parsebytes(bytes(raw)).get_all(HEADER) or []
    return str(values[0]) if len(values) == 1 else None


class Readback(Protocol):
    async def open(self) -> None: ...
    async def poll(self, probe_id: str) -> Found | None: ...
    async def wait_push(self, timeout: float) -> None: ...
    async def delete(self, found: Found) -> None: ...
    async def find_in_junk(self, probe_id: str) -> str | None: ...
    async def quota(self) -> dict[str, tuple[int, int]]: ...
    async def header_block(self, found: Found) -> bytes | None: ...
    async def sweep(self, vantage: str, now_ms: int) -> SweepReport: ...
    def close(self) -> None: ...


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
        exists = 0
        uidnext: int | None = None
        for line in response.lines:
            if not isinstance(line, bytes):
                continue
            match = _UIDNEXT.search(line)
            if match:
                uidnext = int(match.group(1))
            elif (count := _EXISTS_COUNT.match(line)) is not None:
                exists = int(count.group(1))
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
        uids: list[int] = []
        for line in response.lines[:-1]:
            if not isinstance(line, bytes):
                continue
            words = line.split()
            # aioimaplib hands over the SEARCH result without its "SEARCH" word, mixed with any untagged
            # news (`12 EXISTS`, `1 RECENT`): only an all-number line is the result.
            if words and all(word.isdigit() for word in words):
                uids.extend(int(word) for word in words)
            elif line.endswith(b"EXISTS"):
                self.news = True
        return uids

    async def _headers(self, uids: list[int]) -> dict[int, str | None]:
        """The probe header of each message, fetched with BODY.PEEK so nothing gets marked \\Seen."""
        if not uids:
            return {}
        return await self._fetch_headers(",".join(str(uid) for uid in sorted(uids)))

    async def _fetch_headers(self, uid_set: str) -> dict[int, str | None]:
        response = await self.session.watch(self._protocol.fetch(
            uid_set, f"(UID BODY.PEEK[HEADER.FIELDS ({HEADER.upper()})])", by_uid=True))
        if response.result != "OK":
            raise ProbeError("fetch", "protocol", f"UID FETCH failed: {response.result}")
        headers: dict[int, str | None] = {}
        current: int | None = None
        for line in response.lines:
            if isinstance(line, bytes):
                match = _FETCH_UID.search(line)
                current = int(match.group(1)) if match and b"FETCH" in line else current
            elif current is not None:
                headers[current] = _probe_header(line)
        return headers

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
            header = verify(self.key, value) if value else None
            if header is not None and header.probe_id == probe_id:
                return Found(ref=str(uid), header=header, seen_at=seen_at, folder=self.folder)
        return None

    async def wait_push(self, timeout: float) -> None:
        """IDLE until the server reports new mail or `timeout` passes; a plain sleep without IDLE."""
        protocol = self._protocol
        if self.news or protocol.grew:
            return  # the server reported new mail since the last look: look again instead of idling
        if "IDLE" not in protocol.capabilities:
            await asyncio.sleep(min(timeout, _POP3_SLOW_POLL))
            return
        self.ctx.say("IDLE")
        idle = asyncio.ensure_future(protocol.idle())
        acknowledged = asyncio.ensure_future(protocol.wait_for_idle_response())
        try:
            await self.session.watch(asyncio.wait({idle, acknowledged}, return_when=asyncio.FIRST_COMPLETED))
            if not protocol.has_pending_idle_command():
                raise ProbeError("fetch", "protocol", "the server refused IDLE")
            loop = asyncio.get_running_loop()
            until = loop.time() + min(timeout, _IDLE_SLICE)
            while (left := until - loop.time()) > 0:
                try:
                    lines = await self.session.watch(asyncio.wait_for(protocol.idle_queue.get(), left))
                except TimeoutError:
                    break
                # Dovecot sends "* OK Still here" to keep IDLE alive; only EXISTS means new mail.
                if any(isinstance(line, bytes) and line.endswith(b"EXISTS") for line in lines):
                    self.news = True  # reported here, so the next NOOP will not report it again
                    break
        finally:
            acknowledged.cancel()
            if protocol.has_pending_idle_command():
                protocol.idle_done()
        await self.session.watch(idle)

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
        found: list[str] = []
        for line in response.lines[:-1]:
            match = _LIST_LINE.match(line) if isinstance(line, bytes) else None
            if match is None:
                continue
            name = match["name"].decode("utf-8", "replace").strip()
            if name.startswith('"') and name.endswith('"'):
                name = name[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            if (name.lower() in wanted or b"\\junk" in match["flags"].lower()) and name != self.check.mailbox:
                found.append(name)
        return found

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
            await self._select(folder)
            uids = await self._search("HEADER", HEADER, f'"id={probe_id}"')
            for uid, value in (await self._headers(uids)).items():
                header = verify(self.key, value) if value else None
                if header is not None and header.probe_id == probe_id:
                    await self.delete(Found(str(uid), header, time.perf_counter(), folder))
                    return folder
        return None

    async def sweep(self, vantage: str, now_ms: int) -> SweepReport:
        report = SweepReport()
        for folder in [self.check.mailbox, *await self._folders()]:
            await self._select(folder)
            uids = await self._search("HEADER", HEADER, '"v1 id="')
            for uid, value in (await self._headers(uids)).items():
                header = verify(self.key, value) if value else None
                if header is None or not is_stale(header, vantage, now_ms):
                    continue  # not provably ours, or still in flight: never touched
                await self.delete(Found(str(uid), header, time.perf_counter(), folder))
                report.deleted += 1
                if header.vantage == vantage:
                    report.late.append(header)
        return report

    def close(self) -> None:
        self.session.close()


class Pop3Readback:
    """POP3 reader: a POP3 session sees the mailbox as it was at login, so each poll is a fresh login.

    A server with LOGIN-DELAY (RFC 2449) allows one login per mailbox every so often: then the read-back
    does not log in to open (CAPA alone says the delay, and the probe is found by its signed id, not by what
    was there before), looks once a second after acceptance and then once per delay, and deletes, sweeps and
    quits in the session that found the message, so one round trip costs one login.
    """

    def __init__(self, ctx: ProbeContext, target: Target, check: RoundTripSettings, key: bytes,
                 known_plain: set[str] | None = None) -> None:
        self.ctx = ctx
        self.target = target
        self.check = check
        self.key = key
        self.baseline: set[str] = set()
        self.last_block: bytes | None = None
        self.session: Pop3Session | None = None
        self._opened = False
        user = target.auth.username if target.auth else ""
        self.mailbox = (target.host, check.port, user)
        # UIDLs known not to be probe messages in this mailbox: the sweeper then TOPs only new messages. The owner
        # (the round trip) keeps the set across runs; without one, this reader starts from nothing.
        self._known = set() if known_plain is None else known_plain
        # With a LOGIN-DELAY: no login before this (monotonic) time; None until the first poll plans one.
        self._not_before: float | None = None
        # Logins that looked for the probe (not the opening one): none means the round trip never could look.
        self.looks = 0
        # Whose stale probes a look may delete (set by the round trip), and what looks deleted so far.
        self.vantage: str | None = None
        self._swept = SweepReport()

    @property
    def login_delay(self) -> float:
        return LOGINS.delay(self.mailbox)

    async def _login(self, ctx: ProbeContext, *, unless_delayed: bool = False) -> tuple[Pop3Session, float,
                                                                                     dict[str, int]] | None:
        """Log in and list the maildrop; with `unless_delayed`, stop after CAPA (None) when the server has a
        LOGIN-DELAY, so that its one allowed login is kept for looking after the submission."""
        session = Pop3Session(ctx, self.target, self.check)
        try:
            await session.connect()
            if unless_delayed and self.login_delay:
                await session.quit()
                session.close()
                ctx.note(f"LOGIN-DELAY {self.login_delay:.0f}s: the read-back logs in once, after the submission")
                return None
            await session.login()
            logged_in = time.perf_counter()  # the maildrop snapshot is taken at login
            self.looks += 1
            listing = await self._listing(session, "fetch")
        except BaseException:
            session.close()
            raise
        return session, logged_in, listing

    async def _session(self, ctx: ProbeContext) -> tuple[Pop3Session, float, dict[str, int]]:
        opened = await self._login(ctx)
        assert opened is not None
        return opened

    async def open(self) -> None:
        opened = await self._login(self.ctx, unless_delayed=True)
        if opened is None:
            self._opened = True
            return
        session, _, listing = opened
        self.looks = 0  # opening is not looking for the probe
        try:
            if not self._opened:
                # Only the first login says what was there before the probe. A reopen (a dropped connection
                # during the wait) must not add a probe that arrived meanwhile to what is ignored.
                self.baseline = set(listing)
                self._opened = True
            await session.quit()
        finally:
            session.close()

    def _may_login(self) -> bool:
        """With a LOGIN-DELAY: whether the planned look is due (the first one a moment after acceptance)."""
        if not self.login_delay:
            return True
        now = time.monotonic()
        if self._not_before is None:
            # Loopback delivery takes milliseconds and a busy server seconds: one look a second after the
            # acceptance finds most probes in the round trip's only login.
            self._not_before = max(now + _LOGIN_DELAY_FIRST_LOOK, LOGINS.allowed_at(self.mailbox))
        return now >= self._not_before

    def next_look_in(self) -> float:
        """Seconds until the next look may log in (0: now)."""
        if not self.login_delay or self._not_before is None:
            return 0.0
        return max(0.0, self._not_before - time.monotonic())

    async def _top(self, session: Pop3Session, number: int) -> str | None:
        """The probe header of message `number`; None when it has none or was expunged meanwhile. The whole header
        block is kept in `self.last_block` (the probe's Authentication-Results and Received chain)."""
        try:
            await session.command(f"TOP {number} 0", "fetch")
        except ProbeError:
            # Another session (an IMAP reader, a peer monitor) removed it after our login: not ours to judge.
            return None
        lines = await session.multiline("fetch", max_lines=10_000)
        self.last_block = "\r\n".join(lines).encode("utf-8", "replace") + b"\r\n\r\n"
        return _probe_header(self.last_block)

    async def poll(self, probe_id: str) -> Found | None:
        if not self._may_login():
            return None
        session, seen_at, listing = await self._session(ProbeContext())
        self._not_before = LOGINS.allowed_at(self.mailbox)
        keep_open = False
        try:
            for uidl, number in listing.items():
                if uidl in self.baseline or (self.login_delay and uidl in self._known):
                    continue
                value = await self._top(session, number)
                header = verify(self.key, value) if value else None
                if header is not None and header.probe_id == probe_id:
                    self.session, keep_open = session, True
                    return Found(ref=f"{number} {uidl}", header=header, seen_at=seen_at, folder="INBOX",
                                 block=self.last_block)
                self.baseline.add(uidl)
                if header is None and len(self._known) < _KNOWN_CACHE_LIMIT:
                    self._known.add(uidl)
                elif header is not None and self.login_delay and self.vantage is not None and is_stale(
                        header, self.vantage, int(time.time() * 1000)):
                    # With a LOGIN-DELAY no other login may sweep: this look sweeps, and its QUIT commits the DELE.
                    await session.command(f"DELE {number}", "cleanup")
                    self._swept.deleted += 1
                    if header.vantage == self.vantage:
                        self._swept.late.append(header)
            await session.quit()
            return None
        finally:
            if not keep_open:
                session.close()

    async def wait_push(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, max(_POP3_SLOW_POLL, self.next_look_in())))

    async def delete(self, found: Found) -> None:
        """DELE the found message in the session that found it, and QUIT to commit exactly that deletion.

        With a LOGIN-DELAY the session stays open for the sweep (which QUITs): another login would be refused."""
        session = self.session
        assert session is not None
        number = found.ref.split(" ", 1)[0]
        committed = False
        try:
            await session.command(f"DELE {number}", "cleanup")
            if self.login_delay:
                committed = True  # handed on to the sweep, whose QUIT commits both
                return
            await session.command("QUIT", "cleanup", rejected="protocol")
        finally:
            if not committed:
                session.close()
                self.session = None

    async def find_in_junk(self, probe_id: str) -> str | None:
        return None  # POP3 sees only the inbox

    async def quota(self) -> dict[str, tuple[int, int]]:
        return {}  # POP3 has no quota command

    async def header_block(self, found: Found) -> bytes | None:
        return found.block  # TOP n 0 already gave the whole header block

    async def sweep(self, vantage: str, now_ms: int) -> SweepReport:
        report, self._swept = self._swept, SweepReport()  # what this run's looks already deleted
        session = self.session
        if session is not None:
            # The session that found (and DELEd) the probe: its UIDL listing still numbers the messages.
            listing = await self._listing(session, "cleanup")
        elif self.login_delay and LOGINS.wait(self.mailbox) > 0:
            self.ctx.note("no sweep login: the server's LOGIN-DELAY allows none yet (this run's looks swept)")
            return report
        else:
            session, _, listing = await self._session(ProbeContext())
        self.session = None
        try:
            for uidl, number in listing.items():
                if uidl in self._known:
                    continue
                value = await self._top(session, number)
                header = verify(self.key, value) if value else None
                if header is None:
                    if len(self._known) < _KNOWN_CACHE_LIMIT:
                        self._known.add(uidl)
                    continue
                if is_stale(header, vantage, now_ms):
                    await session.command(f"DELE {number}", "cleanup")
                    report.deleted += 1
                    if header.vantage == vantage:
                        report.late.append(header)
            await session.command("QUIT", "cleanup", rejected="protocol")
        finally:
            session.close()
        return report

    @staticmethod
    async def _listing(session: Pop3Session, stage: Stage) -> dict[str, int]:
        """UIDL → message number of an open session (RFC 1939: messages marked deleted are not listed)."""
        await session.command("UIDL", stage)
        listing = {}
        for line in await session.multiline(stage):
            number, _, uidl = line.partition(" ")
            if number.isdigit() and uidl:
                listing[uidl.strip()] = int(number)
        return listing

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
