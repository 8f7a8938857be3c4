"""Round trips through real MTAs other than Postfix, unpacked from Debian's packages by scripts/other-mtas
(they conflict with Postfix as installed packages): each runs from a private config and spool on its own
loopback port and delivers to the lab's Dovecot over LMTP, so the probe is read back as usual.

Exim looks up its compile-time user (Debian-exim) before reading any config: it runs in a private mount
namespace (`unshare -m`) where /etc/passwd and /etc/group are copies with that user added, so the machine's
own files are never changed. OpenSMTPD needs more private places (see OPENSMTPD_START).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from monitor.config import SmtpSettings, Target
from tests.conftest import Lab
from tests.processes import end_session, wait_listening
from tests.test_roundtrip_lab import roundtrip_target, runner, via

pytestmark = pytest.mark.lab

EXIM_PORT = 10025
OPENSMTPD_PORT = 10026
MTAS = Path(os.environ.get("MAILMON_LAB_DIR", "/var/lib/mailmon-lab")) / "mtas"
EXIM_ROOT = MTAS / "exim4-daemon-light"
OPENSMTPD_ROOT = MTAS / "opensmtpd"
EXIM_CONFIG = """\
primary_hostname = mta.lab.test
exim_path = {exim}
keep_environment =
spool_directory = {run}/spool
log_file_path = {run}/log/%slog
exim_user = root
exim_group = root
daemon_smtp_ports = {port}
local_interfaces = {host}
tls_advertise_hosts =
domainlist local_domains = {domain}
acl_smtp_rcpt = acl_rcpt
begin acl
acl_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted
begin routers
lab:
  driver = accept
  domains = +local_domains
  transport = lmtp
begin transports
lmtp:
  driver = lmtp
  socket = {lmtp}
  # The lab's LMTP socket is Postfix's (mode 0600); root may not deliver (Exim's fixed never_users).
  user = postfix
"""


# OpenSMTPD hard-codes its spool (/var/spool/smtpd), chroot (/var/lib/opensmtpd/empty), control socket
# (/var/run/smtpd.sock), delivery helpers (/usr/libexec/opensmtpd) and users (opensmtpd, opensmtpq): in its
# private mount namespace each of those places is a fresh tmpfs, and /var/lib stays reachable under {run}/varlib.
OPENSMTPD_CONFIG = """\
table vusers {{ "@" = "postfix" }}
listen on {host} port {port}
action "lab" lmtp "{lmtp}" rcpt-to virtual <vusers>
match from any for domain "{domain}" action "lab"
"""
OPENSMTPD_START = """\
set -e
mount --bind {run}/passwd /etc/passwd
mount --bind {run}/group /etc/group
mount -t tmpfs tmpfs /usr/libexec
cp -a {root}/usr/libexec/opensmtpd /usr/libexec/
cp {root}/usr/sbin/smtpd {run}/smtpd
mount --bind /var/lib {run}/varlib
mount -t tmpfs tmpfs /var/lib
mkdir -p /var/lib/opensmtpd/empty
mount -t tmpfs tmpfs /var/spool
mount -t tmpfs tmpfs /run
exec {run}/smtpd -d -f {run}/smtpd.conf
"""


@pytest.fixture(scope="module")
def exim(lab: Lab) -> Iterator[Path]:
    """A running Exim on the lab host's EXIM_PORT; yields its run directory (logs in log/mainlog)."""
    binary = EXIM_ROOT / "usr" / "sbin" / "exim4"
    if not binary.exists():
        pytest.fail(f"{binary} is missing: run scripts/bootstrap (or scripts/other-mtas)")
    run = Path(tempfile.mkdtemp(prefix="mailmon-exim-"))
    for sub in ("spool", "log"):
        (run / sub).mkdir()
    lmtp = Path(lab.env["LAB_DOVECOT_CONFIG"]).parent / "run" / "lmtp-postfix"
    (run / "exim.conf").write_text(EXIM_CONFIG.format(exim=binary, run=run, port=EXIM_PORT, host=lab.host,
                                                      domain=lab.env["LAB_DOMAIN"], lmtp=lmtp))
    user = "Debian-exim:x:64999:64999::/nonexistent:/bin/false\n"
    (run / "passwd").write_text(Path("/etc/passwd").read_text() + user)
    (run / "group").write_text(Path("/etc/group").read_text() + "Debian-exim:x:64999:\n")
    script = (f"mount --bind {run}/passwd /etc/passwd && mount --bind {run}/group /etc/group && "
              f"exec {binary} -C {run}/exim.conf -bdf")
    yield from _serve(lab, run, EXIM_PORT, ["unshare", "-m", "sh", "-c", script])


def _serve(lab: Lab, run: Path, port: int, command: list[str]) -> Iterator[Path]:
    """Run an MTA in a session of its own (its children end with it) while the caller's tests run."""
    out = run / "log" / "daemon.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_listening(lab.host, port, "the MTA", process=proc, log=out)
        yield run
    finally:
        end_session(proc)
        shutil.rmtree(run, ignore_errors=True)


@pytest.fixture(scope="module")
def opensmtpd(lab: Lab) -> Iterator[Path]:
    """A running OpenSMTPD on the lab host's OPENSMTPD_PORT; yields its run directory (its log: log/daemon.out)."""
    if not (OPENSMTPD_ROOT / "usr" / "sbin" / "smtpd").exists():
        pytest.fail(f"{OPENSMTPD_ROOT} is missing: run scripts/bootstrap (or scripts/other-mtas)")
    run = Path(tempfile.mkdtemp(prefix="mailmon-opensmtpd-"))
    run.chmod(0o755)  # the delivery runs as postfix and reaches the LMTP socket through run/varlib
    for sub in ("log", "varlib"):
        (run / sub).mkdir()
    lmtp = Path(lab.env["LAB_DOVECOT_CONFIG"]).parent / "run" / "lmtp-postfix"
    if lmtp.is_relative_to("/var/lib"):  # hidden by the tmpfs on /var/lib, reachable through the bind mount
        lmtp = run / "varlib" / lmtp.relative_to("/var/lib")
    (run / "smtpd.conf").write_text(OPENSMTPD_CONFIG.format(host=lab.host, port=OPENSMTPD_PORT, lmtp=lmtp,
                                                            domain=lab.env["LAB_DOMAIN"]))
    users = "opensmtpd:x:64998:64998::/var/lib/opensmtpd/empty:/bin/false\n" \
            "opensmtpq:x:64997:64997::/var/lib/opensmtpd/empty:/bin/false\n"
    (run / "passwd").write_text(Path("/etc/passwd").read_text() + users)
    (run / "group").write_text(Path("/etc/group").read_text() + "opensmtpd:x:64998:\nopensmtpq:x:64997:\n")
    (run / "start.sh").write_text(OPENSMTPD_START.format(run=run, root=OPENSMTPD_ROOT))
    yield from _serve(lab, run, OPENSMTPD_PORT, ["unshare", "-m", "sh", str(run / "start.sh")])


def _through(lab: Lab, port: int) -> Target:
    """The lab target with its submission sent to another MTA on `port` (plain SMTP, no AUTH, like an MX)."""
    target = roundtrip_target(lab)
    smtp = SmtpSettings(port=port, tls_mode="none", interval=60.0, timeout=10.0, use_auth=False)
    return replace(target, checks=(smtp, *[c for c in target.checks if c.name != "smtp"]))


async def test_round_trip_through_exim_keeps_its_queue_id(lab: Lab, exim: Path) -> None:
    """Through a real Exim the round trip passes, and its queue id is the one Exim logs the message under."""
    target = _through(lab, EXIM_PORT)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript)
    assert result.smtp_reply is not None and result.smtp_reply.startswith("250 OK id="), result.smtp_reply
    assert result.queue_id is not None and re.fullmatch(r"[0-9A-Za-z]{6}-[0-9A-Za-z]{6,11}-[0-9A-Za-z]{2,4}",
                                                        result.queue_id)
    assert f"{result.queue_id} <= " in (exim / "log" / "mainlog").read_text()


async def test_round_trip_through_opensmtpd_keeps_its_queue_id(lab: Lab, opensmtpd: Path) -> None:
    """Through a real OpenSMTPD the round trip passes, and its queue id is the message id OpenSMTPD logs."""
    target = _through(lab, OPENSMTPD_PORT)
    result = await runner().execute(target, via(target, "imap"))
    assert result.ok, f"{result.stage}/{result.reason}: {result.detail}\n" + "\n".join(result.transcript)
    assert result.smtp_reply is not None and result.smtp_reply.endswith("Message accepted for delivery")
    assert result.queue_id is not None and re.fullmatch(r"[0-9a-f]{8}", result.queue_id), result.smtp_reply
    assert f"msgid={result.queue_id} " in (opensmtpd / "log" / "daemon.out").read_text()
