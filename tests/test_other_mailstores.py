"""Read-back against real IMAP/POP3 servers other than Dovecot, unpacked from Debian's packages by
scripts/other-mailstores (they conflict with Dovecot as installed packages). Each shows, as measured here, a
behaviour the RFCs allow and Dovecot does not:

- Courier-IMAP 5.0 reports new mail only in answer to NOOP (or CHECK/IDLE), never to a repeated UID SEARCH, and its
  SELECT sends no UIDNEXT. It runs in its pre-authenticated mode (`couriertcpd … imapd MAILDIR`: the `* PREAUTH`
  greeting) on the lab's own Maildir, where Postfix → Dovecot LMTP delivers: the login path is Courier's authlib, not
  what is tested here.
- Cyrus IMAP 3.6 as Debian configures it (`popminpoll: 1`) announces `LOGIN-DELAY 60` in POP3 CAPA and refuses a
  second login within the minute with `-ERR [LOGIN-DELAY]`; without a certificate it offers no STLS. It runs from a
  private mount namespace (its compile-time user `cyrus` added to private copies of /etc/passwd and /etc/group),
  accepts any password (`sasl_pwcheck_method: alwaystrue`, a lab only), and gets mail from an unpacked Exim over LMTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import os
import shutil
import smtplib
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.config import (
    DEFAULT_JUNK_FOLDERS,
    PROTOCOL_KINDS,
    Auth,
    CheckSettings,
    RoundTripSettings,
    Secret,
    SmtpSettings,
    Target,
    TlsSettings,
)
from monitor.probe_message import build_message, new_probe
from monitor.probes.readback_imap import ImapReadback
from monitor.result import ProbeContext
from tests import mailbox
from tests.conftest import Lab
from tests.test_other_mtas import EXIM_CONFIG, EXIM_ROOT, _serve
from tests.test_roundtrip_lab import KEY, runner
from tests.tools import tool

pytestmark = pytest.mark.lab

STORES = Path(os.environ.get("MAILMON_LAB_DIR", "/var/lib/mailmon-lab")) / "mailstores"
COURIER_ROOT = STORES / "courier"
CYRUS_ROOT = STORES / "cyrus"
COURIER_PORT = 10143
CYRUS_IMAP_PORT = 10144
CYRUS_POP3_PORT = 10110
CYRUS_EXIM_PORT = 10027
CYRUS_UID = 64996

# Debian's /etc/courier/imapd, read as the init script does, with the shared-folder index and the trash purge off.
COURIER_START = """\
set -a
. {root}/etc/courier/imapd
IMAP_SHAREDINDEXFILE=/nonexistent
IMAP_EMPTYTRASH=
LD_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu:{root}/usr/lib
set +a
cd {maildir}
exec {setpriv} --reuid={user} --regid={user} --clear-groups {root}/usr/sbin/couriertcpd -address={host} \
  -nodnslookup -noidentlookup -stderr={run}/log/imapd.err {port} {root}/usr/bin/imapd {maildir}
"""
# Debian's imapd.conf in what matters here (popminpoll: 1 is its default), every path private.
CYRUS_IMAPD_CONF = """\
configdirectory: {run}/conf
proc_path: {run}/proc
mboxname_lockpath: {run}/lock
defaultpartition: default
partition-default: {run}/spool
lmtpsocket: {run}/socket/lmtp
idlesocket: {run}/socket/idle
notifysocket: {run}/socket/notify
popminpoll: 1
allowplaintext: yes
sasl_pwcheck_method: alwaystrue
virtdomains: userid
defaultdomain: {domain}
autocreate_quota: 0
autocreate_post: yes
autocreate_users: anyone
lmtp_downcase_rcpt: yes
"""
CYRUS_CONF = """\
START {{
  recover cmd="{bin}/ctl_cyrusdb -C {run}/imapd.conf -r"
}}
SERVICES {{
  imap cmd="{bin}/imapd -C {run}/imapd.conf" listen="{host}:{imap}" prefork=0
  pop3 cmd="{bin}/pop3d -C {run}/imapd.conf" listen="{host}:{pop3}" prefork=0
  lmtp cmd="{bin}/lmtpd -C {run}/imapd.conf" listen="{run}/socket/lmtp" prefork=0
}}
EVENTS {{
}}
"""
CYRUS_START = """\
set -e
{mount} --bind {run}/passwd /etc/passwd
{mount} --bind {run}/group /etc/group
export LD_LIBRARY_PATH={root}/usr/lib/x86_64-linux-gnu
exec {root}/usr/lib/cyrus/bin/master -C {run}/imapd.conf -M {run}/cyrus.conf -p {run}/master.pid
"""


def _require(path: Path) -> None:
    if not path.exists():
        pytest.fail(f"{path} is missing: run scripts/bootstrap (or scripts/other-mailstores)")


@pytest.fixture(scope="module")
def courier(lab: Lab) -> Iterator[int]:
    """Courier-IMAP serving the lab user's Maildir on COURIER_PORT (pre-authenticated); yields the port."""
    _require(COURIER_ROOT / "usr" / "bin" / "imapd")
    run = Path(tempfile.mkdtemp(prefix="mailmon-courier-"))
    run.chmod(0o755)  # Courier runs as the Maildir's owner and writes its log below
    (run / "log").mkdir()
    shutil.chown(run / "log", "mailmonlab", "mailmonlab")
    (run / "start.sh").write_text(COURIER_START.format(root=COURIER_ROOT, maildir=lab.env["LAB_MAILDIR"],
                                                       user="mailmonlab", host=lab.host, port=COURIER_PORT, run=run,
                                                       setpriv=tool("setpriv", package="util-linux")))
    with contextlib.contextmanager(_serve)(lab, run, COURIER_PORT, [tool("sh", package="dash"), str(run / "start.sh")]):
        yield COURIER_PORT


@pytest.fixture(scope="module")
def cyrus(lab: Lab) -> Iterator[Path]:
    """Cyrus IMAP and POP3 on the lab host, fed by an Exim on CYRUS_EXIM_PORT over LMTP; yields its run directory."""
    _require(CYRUS_ROOT / "usr" / "lib" / "cyrus" / "bin" / "master")
    _require(EXIM_ROOT / "usr" / "sbin" / "exim4")
    run = Path(tempfile.mkdtemp(prefix="mailmon-cyrus-"))
    run.chmod(0o755)  # Exim delivers as postfix through run/socket/lmtp
    for sub in ("conf", "proc", "lock", "spool", "socket", "log"):
        (run / sub).mkdir()
    binaries = CYRUS_ROOT / "usr" / "lib" / "cyrus" / "bin"
    (run / "imapd.conf").write_text(CYRUS_IMAPD_CONF.format(run=run, domain=lab.env["LAB_DOMAIN"]))
    (run / "cyrus.conf").write_text(CYRUS_CONF.format(bin=binaries, run=run, host=lab.host, imap=CYRUS_IMAP_PORT,
                                                      pop3=CYRUS_POP3_PORT))
    user = f"cyrus:x:{CYRUS_UID}:{CYRUS_UID}::{run}:/bin/false\n"
    (run / "passwd").write_text(Path("/etc/passwd").read_text() + user)
    (run / "group").write_text(Path("/etc/group").read_text() + f"cyrus:x:{CYRUS_UID}:\n")
    (run / "start.sh").write_text(CYRUS_START.format(run=run, root=CYRUS_ROOT, mount=tool("mount", package="mount")))
    for path in [run, *run.rglob("*")]:
        os.chown(path, CYRUS_UID, CYRUS_UID)
    exim_run = Path(tempfile.mkdtemp(prefix="mailmon-exim-cyrus-"))
    for sub in ("spool", "log"):
        (exim_run / sub).mkdir()
    exim = EXIM_ROOT / "usr" / "sbin" / "exim4"
    (exim_run / "exim.conf").write_text(EXIM_CONFIG.format(exim=exim, run=exim_run, port=CYRUS_EXIM_PORT,
                                                           host=lab.host, domain=lab.env["LAB_DOMAIN"],
                                                           lmtp=run / "socket" / "lmtp"))
    exim_user = "Debian-exim:x:64999:64999::/nonexistent:/bin/false\n"
    (exim_run / "passwd").write_text(Path("/etc/passwd").read_text() + exim_user)
    (exim_run / "group").write_text(Path("/etc/group").read_text() + "Debian-exim:x:64999:\n")
    mount, unshare = tool("mount", package="mount"), tool("unshare", package="util-linux")
    sh = tool("sh", package="dash")
    exim_script = (f"{mount} --bind {exim_run}/passwd /etc/passwd && {mount} --bind {exim_run}/group /etc/group && "
                   f"exec {exim} -C {exim_run}/exim.conf -bdf")
    serve = contextlib.contextmanager(_serve)
    with serve(lab, run, CYRUS_POP3_PORT, [unshare, "-m", sh, str(run / "start.sh")]), \
            serve(lab, exim_run, CYRUS_EXIM_PORT, [unshare, "-m", sh, "-c", exim_script]):
        yield run


def _target(lab: Lab, via: str, port: int, *, submission: int = 587, timeout: float = 20.0) -> Target:
    """A target that submits to `submission` (587: the lab's Postfix, else a plain MX-like port) and reads back
    over `via` on `port` without TLS."""
    if submission == 587:
        smtp = SmtpSettings(port=587, tls_mode="starttls", interval=60.0, timeout=10.0)
    else:
        smtp = SmtpSettings(port=submission, tls_mode="none", interval=60.0, timeout=10.0, use_auth=False)
    trip = RoundTripSettings(port=port, tls_mode="none", interval=120.0, timeout=timeout, via=via, recipient=lab.user,
                             sender=lab.user, junk_folders=DEFAULT_JUNK_FOLDERS)
    check = PROTOCOL_KINDS[via](port=port, tls_mode="none", interval=120.0, timeout=10.0)
    return Target(name="other", host=lab.host, tls=TlsSettings(ca_file=lab.ca, server_name=lab.server_name),
                  auth=Auth(lab.user, Secret(lab.password)), checks=(smtp, check, trip))


def _check(target: Target, name: str, via: str | None = None) -> CheckSettings:
    return next(c for c in target.checks if c.name == name and c.via == via)


def _courier_uids(lab: Lab) -> list[int]:
    client = imaplib.IMAP4(lab.host, COURIER_PORT)  # PREAUTH: already logged in
    try:
        client.select("INBOX")
        _, data = client.uid("SEARCH", "ALL")
        return [int(uid) for uid in data[0].split()]
    finally:
        client.logout()


@pytest.fixture
def clean_inbox(lab: Lab) -> Iterator[None]:
    lab.control("hold", "off")
    mailbox.clear(lab)
    yield
    mailbox.clear(lab)


def _deliver_and_wait(lab: Lab) -> None:
    """Send one message through the lab's Postfix and wait until Dovecot has put it in the Maildir."""
    new = Path(lab.env["LAB_MAILDIR"]) / "new"
    before = set(os.listdir(new))
    with smtplib.SMTP(lab.host, 25, timeout=10) as client:
        client.sendmail(lab.user, [lab.user], f"From: {lab.user}\r\nSubject: plain\r\n\r\nhello\r\n")
    until = time.monotonic() + 20
    while set(os.listdir(new)) == before:
        assert time.monotonic() < until, "the lab did not deliver"
        time.sleep(0.05)


def test_courier_shows_new_mail_only_on_noop(lab: Lab, courier: int, clean_inbox: None) -> None:
    """The measured fact behind item 1: after a delivery Courier's UID SEARCH still shows nothing; NOOP reports it."""
    with socket.create_connection((lab.host, courier), timeout=10) as sock:
        reader = sock.makefile("rb")

        def command(line: bytes) -> list[bytes]:
            sock.sendall(line + b"\r\n")
            tag = line.split(b" ", 1)[0]
            lines = []
            while not (answer := reader.readline()).startswith(tag + b" "):
                lines.append(answer.strip())
            return lines

        assert reader.readline().startswith(b"* PREAUTH")
        command(b"a SELECT INBOX")
        _deliver_and_wait(lab)
        for n in range(3):
            assert command(b"s%d UID SEARCH ALL" % n) == [b"* SEARCH"]
            time.sleep(0.1)
        assert any(line.endswith(b"EXISTS") for line in command(b"n NOOP"))


async def test_roundtrip_finds_mail_on_a_noop_only_server_within_seconds(lab: Lab, courier: int,
                                                                        clean_inbox: None) -> None:
    """Against Courier-IMAP a round trip with a 6 s timeout finds its probe at once (NOOP polling), not never."""
    target = _target(lab, "imap", courier, timeout=6.0)
    result = await runner().execute(target, _check(target, "roundtrip", "imap"))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}"
    assert result.phases["delivery"] < 2.0
    assert all(not m.probe_header for m in mailbox.snapshot(lab).values())


async def test_select_without_uidnext_starts_after_the_last_message(lab: Lab, courier: int, clean_inbox: None) -> None:
    """Courier's SELECT has no UIDNEXT: the read-back takes the last message's UID as its baseline, so its first
    poll does not fetch the header of every message already in the mailbox."""
    mailbox.append_many(lab, [(b"Subject: old %d\r\n\r\nold\r\n" % i, "") for i in range(20)])
    uids = await asyncio.to_thread(_courier_uids, lab)
    assert len(uids) == 20
    target = _target(lab, "imap", courier)
    trip = _check(target, "roundtrip", "imap")
    assert isinstance(trip, RoundTripSettings)
    reader = ImapReadback(ProbeContext(), target, trip, KEY.reveal().encode())
    try:
        await reader.open()
        assert reader.next_uid == max(uids) + 1
        assert await reader.poll("0" * 32) is None
    finally:
        reader.close()


def _cyrus_probe_count(lab: Lab, user: str | None = None) -> int:
    client = imaplib.IMAP4(lab.host, CYRUS_IMAP_PORT)
    try:
        client.login(user or lab.user, "any")
        client.select("INBOX")
        _, data = client.uid("SEARCH", "HEADER", "X-Mailmon-Probe", "v1")
        return len(data[0].split())
    finally:
        client.logout()


async def test_pop3_round_trip_passes_on_a_login_delay_server(lab: Lab, cyrus: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Cyrus announces LOGIN-DELAY 60: the POP3 round trip logs in once (after the submission) and passes, leaving
    no probe behind, where one login per poll got `-ERR [LOGIN-DELAY]` every cycle."""
    target = _target(lab, "pop3", CYRUS_POP3_PORT, submission=CYRUS_EXIM_PORT)
    result = await runner().execute(target, _check(target, "roundtrip", "pop3"))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript[-20:])
    assert "LOGIN-DELAY" in "\n".join(result.transcript)
    assert "LOGIN-DELAY 60" in caplog.text and "cannot log in that rarely" in caplog.text  # said at the start
    assert await asyncio.to_thread(_cyrus_probe_count, lab) == 0


async def test_pop3_login_within_the_login_delay_says_what_would_work(lab: Lab, cyrus: Path) -> None:
    """A POP3 check that would log in sooner than the server's LOGIN-DELAY allows fails at once as `login_delay`
    (not a temporary server error), saying the delay and what interval would work."""
    target = _target(lab, "pop3", CYRUS_POP3_PORT, submission=CYRUS_EXIM_PORT)
    check = _check(target, "pop3")
    first = await runner().execute(target, check)  # the first login of this minute may pass (or wait its turn)
    second = await runner().execute(target, check)
    assert first.ok or first.reason == "login_delay", first.detail
    assert (second.stage, second.reason) == ("auth", "login_delay"), second.detail
    assert "LOGIN-DELAY 60" in second.detail and "interval of at least 120s" in second.detail
    assert second.duration_seconds < check.timeout


async def test_pop3_starttls_against_a_server_without_stls(lab: Lab, cyrus: Path) -> None:
    """Cyrus without a certificate offers no STLS in CAPA: `tls/protocol`, as SMTP and IMAP say for no STARTTLS."""
    target = _target(lab, "pop3", CYRUS_POP3_PORT)
    check = replace(_check(target, "pop3"), tls_mode="starttls")
    result = await runner().execute(replace(target, checks=(check,)), check)
    assert (result.stage, result.reason) == ("tls", "protocol"), result.detail
    assert "STLS" in result.detail



def _cyrus_append(lab: Lab, user: str, raw: bytes) -> None:
    client = imaplib.IMAP4(lab.host, CYRUS_IMAP_PORT)
    try:
        client.login(user, "any")
        assert client.append("INBOX", None, None, raw)[0] == "OK"
    finally:
        client.logout()


async def test_failing_pop3_round_trips_sweep_on_a_login_delay_server(lab: Lab, cyrus: Path) -> None:
    """With a LOGIN-DELAY no login is left for a sweep after a failed round trip: the look itself deletes this
    vantage's stale probes (here the submitted probe never reaches the Cyrus mailbox: not_delivered)."""
    user = "sweeper@lab.test"  # Cyrus counts LOGIN-DELAY per user: this test's logins are its own
    stale = new_probe(KEY.reveal().encode(), "test", "other", "pop3", 1.0, now=time.time() - 120)
    await asyncio.to_thread(_cyrus_append, lab, user, build_message(stale, user, user)[0])
    target = _target(lab, "pop3", CYRUS_POP3_PORT, submission=25, timeout=8.0)  # to the lab's Postfix → Dovecot
    target = replace(target, auth=Auth(user, Secret("any")))
    try:
        result = await runner().execute(target, _check(target, "roundtrip", "pop3"))
    finally:
        await asyncio.to_thread(mailbox.clear, lab)
    assert (result.stage, result.reason) == ("delivery", "not_delivered"), result.detail
    assert result.swept == 1
    assert await asyncio.to_thread(_cyrus_probe_count, lab, user) == 0
