"""The mail lab's fault switches (`scripts/mail-lab fault NAME on|off`) against the real daemons.

Each test switches its fault on, looks at the effect right away (the switch must only return once the fault is in
effect) with independent stdlib clients connecting from 127.0.0.1 to the lab on 127.0.0.2, switches it off in a
`finally`, and checks the lab is back to normal.  The faults disturb whoever else uses the lab meanwhile, so each
test keeps its fault on for as short a time as it can.
"""

from __future__ import annotations

import contextlib
import imaplib
import json
import poplib
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import MAIL_LAB, Lab

pytestmark = pytest.mark.lab

FAULTS = ("smtp", "imap", "pop3", "hold", "auth", "cert-expired", "quota-late", "ipv6", "dkim-key")
SMTP_PORTS = (25, 587, 465)
IMAP_PORTS = (143, 993)
POP3_PORTS = (110, 995)
TIMEOUT = 10.0
X509_V_ERR_CERT_HAS_EXPIRED = 10


# ------------------------------------------------------------------ mail-lab


def mail_lab(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run mail-lab the way tests and the monitor's harness do (captured output: must not hang)."""
    done = subprocess.run([str(MAIL_LAB), *args], capture_output=True, text=True, timeout=60)
    if check:
        assert done.returncode == 0, f"mail-lab {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}"
    return done


def fault_status() -> dict[str, str]:
    lines = mail_lab("fault", "status").stdout.splitlines()
    status = dict(line.split(" ", 1) for line in lines)
    assert list(status) == list(FAULTS), lines
    return status


@contextlib.contextmanager
def fault_on(*names: str) -> Iterator[None]:
    """The faults on for the body of the with block; off again whatever happens."""
    try:
        for name in names:
            mail_lab("fault", name, "on")
        yield
    finally:
        for name in reversed(names):
            mail_lab("fault", name, "off")


@pytest.fixture(autouse=True)
def faults_off(lab: Lab) -> Iterator[None]:
    """Every test starts and ends with every fault off (a leftover is reset, and fails the test that left it)."""
    if set(fault_status().values()) != {"off"}:
        mail_lab("fault", "reset")
    # Others share the lab (a test of theirs may have stopped a daemon for a moment): start from all ports up.
    wait_for(lambda: mail_lab("status", check=False).returncode == 0, "every lab port to answer", limit=30.0)
    yield
    left = {name: state for name, state in fault_status().items() if state != "off"}
    if left:
        mail_lab("fault", "reset")
    assert not left, f"faults left on: {left}"


# ------------------------------------------------------------------ clients


def context(lab: Lab) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=lab.ca)


def other_user(lab: Lab) -> tuple[str, str]:
    return lab.env["LAB_OTHER_USER"], Path(lab.env["LAB_OTHER_PASSWORD_FILE"]).read_text()


def refused(lab: Lab, port: int) -> bool:
    try:
        socket.create_connection((lab.host, port), timeout=3).close()
    except ConnectionRefusedError:
        return True
    return False


def imap_login(lab: Lab, user: str, password: str) -> None:
    """LOGIN on 993; raises imaplib.IMAP4.error on NO."""
    client = imaplib.IMAP4_SSL(lab.host, 993, ssl_context=context(lab), timeout=TIMEOUT)
    try:
        client.login(user, password)
        client.logout()
    finally:
        with contextlib.suppress(OSError):
            client.shutdown()


def pop3_login(lab: Lab, user: str, password: str) -> None:
    """USER/PASS on 995; raises poplib.error_proto on -ERR."""
    client = poplib.POP3_SSL(lab.host, 995, context=context(lab), timeout=TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
        client.quit()
    finally:
        with contextlib.suppress(OSError):
            client.close()


def smtp_session(lab: Lab, user: str, password: str) -> smtplib.SMTP:
    """587, STARTTLS, AUTH PLAIN (one mechanism only: smtplib.login would try LOGIN after a 535 too)."""
    smtp = smtplib.SMTP(lab.host, 587, timeout=TIMEOUT)
    try:
        smtp.starttls(context=context(lab))
        smtp.ehlo()
        smtp.user, smtp.password = user, password
        smtp.auth("PLAIN", smtp.auth_plain)
    except BaseException:
        smtp.close()
        raise
    return smtp


def smtp_auth(lab: Lab, user: str, password: str) -> None:
    """SMTP AUTH on 587; raises smtplib.SMTPAuthenticationError on 535."""
    smtp_session(lab, user, password).quit()


def submit(lab: Lab, recipient: str) -> str:
    """Send a tagged message through 587 as the probe user; returns the tag (also its envelope sender)."""
    tag = f"fault-test-{uuid.uuid4().hex}"
    message = EmailMessage()
    message["From"] = lab.user
    message["To"] = recipient
    message["Subject"] = f"mail-lab fault test {tag}"
    message["Message-ID"] = f"<{tag}@lab.test>"
    message.set_content(f"{tag}\n")
    smtp = smtp_session(lab, lab.user, lab.password)
    try:
        smtp.send_message(message, from_addr=f"{tag}@lab.test", to_addrs=[recipient])
    finally:
        smtp.quit()
    return tag


def maildir_files(maildir: Path, tag: str) -> list[Path]:
    return [f for sub in ("new", "cur") for f in (maildir / sub).iterdir() if tag.encode() in f.read_bytes()]


def queued(lab: Lab, tag: str) -> list[dict[str, object]]:
    """Queue entries (postqueue -j) whose envelope sender is the tag's."""
    out = subprocess.run(["postqueue", "-c", lab.env["LAB_POSTFIX_CONFIG_DIR"], "-j"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    return [e for e in entries if e.get("sender") == f"{tag}@lab.test"]


def wait_for(condition: Callable[[], object], what: str, limit: float = 20.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {limit:.0f}s waiting for {what}"
        time.sleep(0.1)


def tls_verify_code(lab: Lab, port: int) -> int | None:
    """Verify code of the TLS handshake (implicit TLS on 465/993/995, STARTTLS on 25/587/143/110); None if OK."""
    ctx = context(lab)
    try:
        if port in (465, 993, 995):
            with socket.create_connection((lab.host, port), timeout=TIMEOUT) as sock, \
                    ctx.wrap_socket(sock, server_hostname=lab.server_name):
                pass
        elif port in (25, 587):
            with smtplib.SMTP(lab.host, port, timeout=TIMEOUT) as smtp:
                smtp.starttls(context=ctx)
        elif port == 143:
            imap = imaplib.IMAP4(lab.host, port, timeout=TIMEOUT)
            try:
                imap.starttls(ssl_context=ctx)
            finally:
                with contextlib.suppress(OSError):  # a failed handshake has closed the socket already
                    imap.shutdown()
        elif port == 110:
            pop = poplib.POP3(lab.host, port, timeout=TIMEOUT)
            try:
                pop.stls(context=ctx)
            finally:
                with contextlib.suppress(OSError):
                    pop.close()
        else:
            raise AssertionError(f"no TLS on port {port}")
    except ssl.SSLCertVerificationError as exc:
        return exc.verify_code
    return None


def assert_lab_normal(lab: Lab) -> None:
    """Every port answers, the probe user logs in everywhere, the good certificate verifies."""
    closed = [port for port in (*SMTP_PORTS, *IMAP_PORTS, *POP3_PORTS) if refused(lab, port)]
    assert closed == [], f"ports still refused: {closed}"
    imap_login(lab, lab.user, lab.password)
    pop3_login(lab, lab.user, lab.password)
    smtp_auth(lab, lab.user, lab.password)
    assert tls_verify_code(lab, 993) is None
    assert set(fault_status().values()) == {"off"}
    assert mail_lab("status", check=False).returncode == 0


# -------------------------------------------------------------------- tests


def test_fault_status_lists_every_fault(lab: Lab) -> None:
    """`fault status` prints one `NAME on|off` line per fault; `hold status` agrees."""
    assert fault_status() == dict.fromkeys(FAULTS, "off")
    assert mail_lab("hold", "status").stdout == "off\n"


def test_unknown_fault_or_state_is_a_usage_error(lab: Lab) -> None:
    for args in (("fault", "disk", "on"), ("fault", "smtp", "maybe"), ("fault", "smtp"), ("fault",)):
        done = mail_lab(*args, check=False)
        assert done.returncode == 2, (args, done)
    assert fault_status() == dict.fromkeys(FAULTS, "off")


def _open_on(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=3).close()
    except ConnectionRefusedError:
        return False
    return True


def test_ipv6_fault_closes_only_the_ipv6_listeners(lab: Lab) -> None:
    """ipv6: every port refuses on ::1 and still answers on 127.0.0.2; off opens ::1 again."""
    if lab.env.get("LAB_IPV6") != "1":
        pytest.skip("this machine's loopback has no ::1: the lab is IPv4-only")
    ports = SMTP_PORTS + IMAP_PORTS + POP3_PORTS
    assert all(_open_on(lab.env["LAB_HOST6"], port) for port in ports)
    with fault_on("ipv6"):
        assert fault_status()["ipv6"] == "on"
        assert not any(_open_on(lab.env["LAB_HOST6"], port) for port in ports)
        assert all(_open_on(lab.host, port) for port in ports)
    assert all(_open_on(lab.env["LAB_HOST6"], port) for port in ports)
    assert_lab_normal(lab)


def test_smtp_fault_closes_only_smtp(lab: Lab) -> None:
    """smtp: 25/587/465 refuse connections, IMAP and POP3 logins keep working."""
    try:
        mail_lab("fault", "smtp", "on")
        assert fault_status()["smtp"] == "on"
        assert [refused(lab, port) for port in SMTP_PORTS] == [True] * 3
        imap_login(lab, lab.user, lab.password)
        pop3_login(lab, lab.user, lab.password)
        status = mail_lab("status", check=False)
        assert status.returncode == 3
        assert f"smtp {lab.host}:25 down (fault smtp)" in status.stdout.splitlines()
        mail_lab("fault", "smtp", "on")  # idempotent
        assert refused(lab, 587)
    finally:
        mail_lab("fault", "smtp", "off")
    assert_lab_normal(lab)


@pytest.mark.parametrize(("name", "ports", "other_login"),
                         [("imap", IMAP_PORTS, pop3_login), ("pop3", POP3_PORTS, imap_login)])
def test_receive_protocol_fault_closes_only_that_protocol(
        lab: Lab, name: str, ports: tuple[int, int], other_login: Callable[[Lab, str, str], None]) -> None:
    """imap/pop3: that protocol's ports refuse; the other protocol and SMTP AUTH keep working."""
    try:
        mail_lab("fault", name, "on")
        assert fault_status()[name] == "on"
        assert [refused(lab, port) for port in ports] == [True, True]
        other_login(lab, lab.user, lab.password)
        smtp_auth(lab, lab.user, lab.password)
        assert not refused(lab, 25)
    finally:
        mail_lab("fault", name, "off")
    assert_lab_normal(lab)


def test_imap_and_pop3_faults_leave_sending_and_delivery(lab: Lab) -> None:
    """imap + pop3 on = receive down: every IMAP/POP3 port refuses, yet SMTP AUTH works and LMTP still delivers."""
    other, _ = other_user(lab)
    maildir = Path(lab.env["LAB_OTHER_MAILDIR"])
    with fault_on("imap", "pop3"):
        assert {fault_status()[name] for name in ("imap", "pop3")} == {"on"}
        assert [refused(lab, port) for port in (*IMAP_PORTS, *POP3_PORTS)] == [True] * 4
        tag = submit(lab, other)
        wait_for(lambda: maildir_files(maildir, tag), "delivery into the Maildir while IMAP and POP3 are down")
    for path in maildir_files(maildir, tag):
        path.unlink()
    assert_lab_normal(lab)


def test_auth_fault_rejects_the_probe_user_everywhere(lab: Lab) -> None:
    """auth: IMAP NO, POP3 -ERR, SMTP AUTH 535 for the probe user with its unchanged password file; other works."""
    password_file = Path(lab.env["LAB_PASSWORD_FILE"])
    before = password_file.read_bytes()
    other, other_password = other_user(lab)
    try:
        mail_lab("fault", "auth", "on")
        assert fault_status()["auth"] == "on"
        assert password_file.read_bytes() == before
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap_login(lab, lab.user, lab.password)
        with pytest.raises(poplib.error_proto, match="-ERR"):
            pop3_login(lab, lab.user, lab.password)
        with pytest.raises(smtplib.SMTPAuthenticationError) as rejected:
            smtp_auth(lab, lab.user, lab.password)
        assert rejected.value.smtp_code == 535
        imap_login(lab, other, other_password)
        pop3_login(lab, other, other_password)
        smtp_auth(lab, other, other_password)
    finally:
        mail_lab("fault", "auth", "off")
    assert password_file.read_bytes() == before
    assert_lab_normal(lab)


def test_cert_expired_fault_fails_verification_with_code_10(lab: Lab) -> None:
    """cert-expired: every TLS entry point (implicit and STARTTLS) serves an expired lab-CA certificate."""
    ports = (993, 995, 465, 587, 143, 110, 25)
    try:
        mail_lab("fault", "cert-expired", "on")
        assert fault_status()["cert-expired"] == "on"
        assert {port: tls_verify_code(lab, port) for port in ports} == dict.fromkeys(ports, X509_V_ERR_CERT_HAS_EXPIRED)
        # What is served is exactly the lab's expired certificate (same names, lab CA, past notAfter).
        with socket.create_connection((lab.host, 993), timeout=TIMEOUT) as sock:
            no_verify = ssl.create_default_context()
            no_verify.check_hostname = False
            no_verify.verify_mode = ssl.CERT_NONE
            with no_verify.wrap_socket(sock) as tls:
                served = tls.getpeercert(binary_form=True)
        expired = ssl.PEM_cert_to_DER_cert(Path(lab.env["LAB_EXPIRED_CERT"]).read_text())
        assert served == expired
    finally:
        mail_lab("fault", "cert-expired", "off")
    assert {port: tls_verify_code(lab, port) for port in ports} == dict.fromkeys(ports)
    assert_lab_normal(lab)


def test_hold_fault_keeps_mail_in_the_hold_queue_until_off(lab: Lab) -> None:
    """hold: a submitted message sits in the hold queue, not in the Maildir; after off it is delivered."""
    other, _ = other_user(lab)
    maildir = Path(lab.env["LAB_OTHER_MAILDIR"])
    tag = ""
    try:
        mail_lab("fault", "hold", "on")
        assert fault_status()["hold"] == "on"
        assert mail_lab("hold", "status").stdout == "on\n"
        tag = submit(lab, other)
        entries = queued(lab, tag)
        assert [e["queue_name"] for e in entries] == ["hold"], entries
        time.sleep(1.0)
        assert maildir_files(maildir, tag) == []
        assert [e["queue_name"] for e in queued(lab, tag)] == ["hold"]
    finally:
        mail_lab("hold", "off")  # the old spelling is an alias
    wait_for(lambda: maildir_files(maildir, tag), "the released message to be delivered")
    assert queued(lab, tag) == []
    for path in maildir_files(maildir, tag):
        path.unlink()
    assert_lab_normal(lab)


def test_switches_are_idempotent_and_reset_turns_everything_off(lab: Lab) -> None:
    """off when off and on when on are no-ops; `fault reset` turns several faults off at once."""
    for name in FAULTS:
        mail_lab("fault", name, "off")
    assert fault_status() == dict.fromkeys(FAULTS, "off")
    try:
        for _ in range(2):
            mail_lab("fault", "hold", "on")
            mail_lab("fault", "auth", "on")
        assert fault_status() == {**dict.fromkeys(FAULTS, "off"), "hold": "on", "auth": "on"}
    finally:
        mail_lab("fault", "reset")
    assert fault_status() == dict.fromkeys(FAULTS, "off")
    assert_lab_normal(lab)
