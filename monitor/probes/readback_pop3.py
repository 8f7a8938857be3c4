"""Reading probe messages back over POP3: a fresh login per look, UIDL to find what is new, TOP for its header.

A POP3 session sees the maildrop as it was at login, so each look logs in again. Headers are read with TOP, and
DELE marks only a message proved to be ours; the QUIT that ends the session commits the deletions (RFC 1939). With a
server's LOGIN-DELAY (RFC 2449) the looks are planned by `_LookPlan`, so a round trip costs one login. The reader keeps
the contract of `monitor.probes.readback.Readback`.
"""

from __future__ import annotations

import asyncio
import time

from monitor.config import RoundTripSettings, Target
from monitor.errors import ProbeError
from monitor.probes.pop3 import LOGINS, Pop3Session
from monitor.probes.readback import SLOW_POLL, Found, SweepReport, is_stale, probe_header, verified
from monitor.result import ProbeContext
from monitor.steps import Stage

__all__ = ["Pop3Readback"]

# With a POP3 LOGIN-DELAY the read-back has one login per round trip: it comes this long after acceptance.
_LOGIN_DELAY_FIRST_LOOK = 1.0
_KNOWN_CACHE_LIMIT = 100_000

Mailbox = tuple[str, int, str]


async def _listing(session: Pop3Session, stage: Stage) -> dict[str, int]:
    """UIDL → message number of an open session (RFC 1939: messages marked deleted are not listed)."""
    await session.command("UIDL", stage)
    listing = {}
    for line in await session.multiline(stage):
        number, _, uidl = line.partition(" ")
        if number.isdigit() and uidl:
            listing[uidl.strip()] = int(number)
    return listing


class _LookPlan:
    """When the read-back may log in to look, under the server's LOGIN-DELAY (always, without one)."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        # No login before this (monotonic) time; None until the first look plans one.
        self.not_before: float | None = None

    @property
    def delay(self) -> float:
        return LOGINS.delay(self.mailbox)

    def due(self) -> bool:
        """Whether the planned look is due (the first one a moment after acceptance)."""
        if not self.delay:
            return True
        now = time.monotonic()
        if self.not_before is None:
            # Loopback delivery takes milliseconds and a busy server seconds: one look a second after the
            # acceptance finds most probes in the round trip's only login.
            self.not_before = max(now + _LOGIN_DELAY_FIRST_LOOK, LOGINS.allowed_at(self.mailbox))
        return now >= self.not_before

    def looked(self) -> None:
        """A look logged in: the next one waits for the server's delay."""
        self.not_before = LOGINS.allowed_at(self.mailbox)

    def next_in(self) -> float:
        """Seconds until the next look may log in (0: now)."""
        if not self.delay or self.not_before is None:
            return 0.0
        return max(0.0, self.not_before - time.monotonic())


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
        self._plan = _LookPlan(self.mailbox)
        # Logins that looked for the probe (not the opening one): none means the round trip never could look.
        self.looks = 0
        # Whose stale probes a look may delete (set by the round trip), and what looks deleted so far.
        self.vantage: str | None = None
        self._swept = SweepReport()

    @property
    def login_delay(self) -> float:
        return self._plan.delay

    def next_look_in(self) -> float:
        """Seconds until the next look may log in (0: now)."""
        return self._plan.next_in()

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
            listing = await _listing(session, "fetch")
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
        return probe_header(self.last_block)

    def _plain(self, uidl: str) -> None:
        """Remember a message that is no probe of anyone's, so later looks and sweeps skip its TOP."""
        if len(self._known) < _KNOWN_CACHE_LIMIT:
            self._known.add(uidl)

    async def poll(self, probe_id: str) -> Found | None:
        if not self._plan.due():
            return None
        session, seen_at, listing = await self._session(ProbeContext())
        self._plan.looked()
        keep_open = False
        try:
            for uidl, number in listing.items():
                if uidl in self.baseline or (self.login_delay and uidl in self._known):
                    continue
                header = verified(self.key, await self._top(session, number))
                if header is not None and header.probe_id == probe_id:
                    self.session, keep_open = session, True
                    return Found(ref=f"{number} {uidl}", header=header, seen_at=seen_at, folder="INBOX",
                                 block=self.last_block)
                self.baseline.add(uidl)
                if header is None:
                    self._plain(uidl)
                elif self.login_delay and self.vantage is not None and is_stale(
                        header, self.vantage, int(time.time() * 1000)):
                    # With a LOGIN-DELAY no other login may sweep: this look sweeps, and its QUIT commits the DELE.
                    await session.command(f"DELE {number}", "cleanup")
                    self._swept.deleted_one(header, self.vantage)
            await session.quit()
            return None
        finally:
            if not keep_open:
                session.close()

    async def wait_push(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, max(SLOW_POLL, self.next_look_in())))

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
            listing = await _listing(session, "cleanup")
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
                header = verified(self.key, await self._top(session, number))
                if header is None:
                    self._plain(uidl)
                elif is_stale(header, vantage, now_ms):
                    await session.command(f"DELE {number}", "cleanup")
                    report.deleted_one(header, vantage)
            await session.command("QUIT", "cleanup", rejected="protocol")
        finally:
            session.close()
        return report

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None
