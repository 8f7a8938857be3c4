#!/usr/bin/env python3
"""Smoke-test a running mail lab (scripts/mail-lab) with real protocol clients.

Usage: scripts/lab/smoke.py [--control]     (reads `scripts/mail-lab env`)

Checks submission (587 STARTTLS + AUTH, 465 implicit TLS), port 25 without
AUTH (lab.test accepted, elsewhere rejected at RCPT), delivery into the
Maildir, IMAP 993/143 and POP3 995/110 logins, refusal of plaintext logins
before STARTTLS/STLS, fast wrong-password failures and IMAP IDLE, and bearer
tokens from the lab identity provider (XOAUTH2 on 993 and 587, a rejected token).

--control also exercises the control subcommands (disruptive: run it only
when nothing else uses the lab): `stop postfix` leaves IMAP/POP3 up,
`stop dovecot` really ends SMTP AUTH, stop/start round trips, and
`hold on|off`.  Every mail-lab call goes through
subprocess.run(capture_output=True, timeout=60), which would hang if a
daemon kept the caller's pipes open.

Exit status 0 when every check passes.  Stdlib only.
"""

from __future__ import annotations

import base64
import contextlib
import imaplib
import json
import os
import poplib
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIL_LAB = HERE.parent / "mail-lab"

FAILED: list[str] = []


def lab_env() -> dict[str, str]:
    out = subprocess.run([str(MAIL_LAB), "env"], capture_output=True, text=True, check=True, timeout=30).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mail_lab(*args: str) -> str:
    """Run a mail-lab subcommand the way tests do; fail on non-zero exit."""
    t0 = time.monotonic()
    done = subprocess.run([str(MAIL_LAB), *args], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"mail-lab {' '.join(args)} -> {done.returncode}: {done.stdout}{done.stderr}")
    return f"`mail-lab {' '.join(args)}` {time.monotonic() - t0:.2f}s"


def check(name: str, fn) -> None:
    t0 = time.monotonic()
    try:
        detail = fn()
    except Exception as exc:  # report every failure
        FAILED.append(name)
        print(f"FAIL {name}: {type(exc).__name__}: {exc}")
        return
    print(f"ok   {name} ({(time.monotonic() - t0) * 1000:.0f} ms){': ' + detail if detail else ''}")


def main() -> int:
    env = lab_env()
    host = env["LAB_HOST"]
    sni = env["LAB_TLS_SERVER_NAME"]
    user = env["LAB_USER"]
    password = Path(env["LAB_PASSWORD_FILE"]).read_text()
    maildir = Path(env["LAB_MAILDIR"])
    ctx = ssl.create_default_context(cafile=env["LAB_CA"])
    port = {k[4:-5].lower(): int(v) for k, v in env.items() if k.startswith("LAB_") and k.endswith("_PORT")}

    def message(tag: str) -> str:
        return f"From: {user}\r\nTo: {user}\r\nSubject: smoke {tag}\r\nX-Smoke: {tag}\r\n\r\nsmoke test {tag}\r\n"

    def wait_delivered(tag: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sub in ("new", "cur"):
                for f in (maildir / sub).iterdir():
                    try:
                        if f"X-Smoke: {tag}" in f.read_text(errors="replace"):
                            return f"delivered to {sub}/{f.name[:24]}..."
                    except FileNotFoundError:
                        pass
            time.sleep(0.05)
        raise AssertionError(f"message {tag} not in {maildir}")

    def auth_login(smtp: smtplib.SMTP, pw: str) -> None:
        # exactly one AUTH attempt (smtplib.login() would try a second mechanism)
        smtp.user, smtp.password = user, pw
        code, resp = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, resp)

    def tls_names():
        names = []
        for name in (sni, host):  # DNS SAN and IP SAN
            with (
                socket.create_connection((host, port["imaps"]), timeout=10) as raw,
                ctx.wrap_socket(raw, server_hostname=name) as tls,
            ):
                names.append(f"{name} ok ({tls.version()})")
        return ", ".join(names)

    def submission_587():
        tag = uuid.uuid4().hex
        with smtplib.SMTP(host, port["submission"], timeout=10) as s:
            s.ehlo()
            assert "auth" not in s.esmtp_features, "AUTH offered before STARTTLS"
            s.starttls(context=ctx)
            s.ehlo()
            assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
            auth_login(s, password)
            s.sendmail(user, [user], message(tag))
        return wait_delivered(tag)

    def submissions_465():
        tag = uuid.uuid4().hex
        with smtplib.SMTP_SSL(host, port["submissions"], timeout=10, context=ctx) as s:
            s.ehlo()
            auth_login(s, password)
            s.sendmail(user, [user], message(tag))
        return wait_delivered(tag)

    def submission_requires_tls():
        with smtplib.SMTP(host, port["submission"], timeout=10) as s:
            s.ehlo()
            s.mail(user)
            code, _ = s.rcpt(user)
            assert code >= 500, f"RCPT without TLS/AUTH got {code}"
        return f"RCPT without TLS+AUTH -> {code}"

    def submission_requires_auth():
        with smtplib.SMTP(host, port["submission"], timeout=10) as s:
            s.starttls(context=ctx)
            s.ehlo()
            s.mail(user)
            code, _ = s.rcpt(user)
            assert code >= 500, f"RCPT without AUTH got {code}"
        return f"RCPT after TLS without AUTH -> {code}"

    def smtp_25_local():
        tag = uuid.uuid4().hex
        with smtplib.SMTP(host, port["smtp"], timeout=10) as s:
            s.ehlo()
            assert "auth" not in s.esmtp_features, "AUTH offered on port 25"
            assert "starttls" in s.esmtp_features
            s.sendmail("someone@example.com", [user], message(tag))
        return wait_delivered(tag)

    def smtp_25_relay_rejected():
        with smtplib.SMTP(host, port["smtp"], timeout=10) as s:
            s.ehlo()
            s.mail(user)
            code, resp = s.rcpt("someone@example.com")
            assert code >= 500, f"RCPT to example.com got {code}"
        return f"RCPT someone@example.com -> {code} {resp.decode()[:40]}"

    def submission_wrong_password():
        t0 = time.monotonic()
        with smtplib.SMTP(host, port["submission"], timeout=10) as s:
            s.starttls(context=ctx)
            s.ehlo()
            try:
                auth_login(s, password + "x")
            except smtplib.SMTPAuthenticationError as exc:
                code = exc.smtp_code
            else:
                raise AssertionError("wrong password accepted")
        took = time.monotonic() - t0
        assert took < 1.5, f"wrong password took {took:.2f}s"
        return f"{code} in {took * 1000:.0f} ms"

    def imaps_993():
        with imaplib.IMAP4_SSL(host, port["imaps"], ssl_context=ctx, timeout=10) as m:
            m.login(user, password)
            typ, data = m.select("INBOX", readonly=True)
            assert typ == "OK"
            return f"INBOX has {int(data[0])} messages"

    def imap_143_starttls():
        with imaplib.IMAP4(host, port["imap"], timeout=10) as m:
            assert "LOGINDISABLED" in m.capabilities, m.capabilities
            try:
                m.login(user, password)
            except imaplib.IMAP4.error as exc:
                refused = str(exc)
            else:
                raise AssertionError("plaintext LOGIN accepted before STARTTLS")
        with imaplib.IMAP4(host, port["imap"], timeout=10) as m:
            m.starttls(ssl_context=ctx)
            m.login(user, password)
            m.select("INBOX", readonly=True)
        return f"plaintext refused ({refused[:50]}), STARTTLS login ok"

    def imap_wrong_password():
        t0 = time.monotonic()
        with imaplib.IMAP4_SSL(host, port["imaps"], ssl_context=ctx, timeout=10) as m:
            try:
                m.login(user, "wrong-" + password)
            except imaplib.IMAP4.error:
                pass
            else:
                raise AssertionError("wrong password accepted")
        took = time.monotonic() - t0
        assert took < 1.5, f"wrong password took {took:.2f}s"
        return f"refused in {took * 1000:.0f} ms"

    def pop3s_995():
        p = poplib.POP3_SSL(host, port["pop3s"], context=ctx, timeout=10)
        try:
            p.user(user)
            p.pass_(password)
            count, _size = p.stat()
        finally:
            p.quit()
        return f"{count} messages"

    def pop3_110_stls():
        p = poplib.POP3(host, port["pop3"], timeout=10)
        try:
            try:
                p.user(user)
                p.pass_(password)
            except poplib.error_proto as exc:
                refused = str(exc)
            else:
                raise AssertionError("plaintext USER/PASS accepted before STLS")
        finally:
            p.close()
        p = poplib.POP3(host, port["pop3"], timeout=10)
        try:
            p.stls(context=ctx)
            p.user(user)
            p.pass_(password)
            p.stat()
        finally:
            p.quit()
        return f"plaintext refused ({refused[:50]}), STLS login ok"

    def imap_idle():
        tag = uuid.uuid4().hex
        m = imaplib.IMAP4_SSL(host, port["imaps"], ssl_context=ctx, timeout=10)
        try:
            m.login(user, password)
            m.select("INBOX")
            m.send(b"I1 IDLE\r\n")
            line = m.readline()
            assert line.startswith(b"+"), line
            t0 = time.monotonic()
            with smtplib.SMTP(host, port["smtp"], timeout=10) as s:
                s.sendmail(user, [user], message(tag))
            while True:
                line = m.readline()
                if b"EXISTS" in line:
                    break
                assert line, "connection closed during IDLE"
            took = time.monotonic() - t0
            m.send(b"DONE\r\n")
            while not m.readline().startswith(b"I1 "):
                pass
            m.logout()
        finally:
            with contextlib.suppress(OSError):
                m.shutdown()
        return f"EXISTS {took * 1000:.0f} ms after submit"

    def ports_state() -> dict[str, bool]:
        out = subprocess.run([str(MAIL_LAB), "status"], capture_output=True, text=True, timeout=30).stdout
        return {line.split()[0]: line.split()[2] == "up" for line in out.splitlines()}

    def control_stop_postfix():
        took = mail_lab("stop", "postfix")
        st = ports_state()
        assert not any(st[n] for n in ("smtp", "submission", "submissions")), st
        assert all(st[n] for n in ("imap", "imaps", "pop3", "pop3s")), st
        imaps_993()
        pop3s_995()
        took2 = mail_lab("start", "postfix")
        assert all(ports_state().values())
        return f"{took}: SMTP ports refused, IMAP/POP3 logins ok; {took2}"

    def control_stop_dovecot():
        took = mail_lab("stop", "dovecot")
        procs = subprocess.run(["pgrep", "-f", "dovecot-mailmon-lab/"], capture_output=True, text=True).stdout.split()
        assert not procs, f"Dovecot processes left: {procs}"
        try:
            with smtplib.SMTP(host, port["submission"], timeout=10) as s:
                s.starttls(context=ctx)
                s.ehlo()
                auth_login(s, password)
        except (smtplib.SMTPException, OSError) as exc:
            result = type(exc).__name__
        else:
            raise AssertionError("SMTP AUTH worked while Dovecot was down")
        took2 = mail_lab("start", "dovecot")
        deadline = time.monotonic() + 5  # Postfix throttles submission for service_throttle_time
        while True:
            try:
                with smtplib.SMTP(host, port["submission"], timeout=10) as s:
                    s.starttls(context=ctx)
                    s.ehlo()
                    auth_login(s, password)
                break
            except (smtplib.SMTPException, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        return f"{took}: no processes left, AUTH -> {result}; {took2}"

    def control_stop_start():
        took = mail_lab("stop")
        assert not any(ports_state().values())
        took2 = mail_lab("start")
        assert all(ports_state().values())
        return f"{took}, {took2}"

    def control_hold():
        tag = uuid.uuid4().hex
        took = mail_lab("hold", "on")
        try:
            with smtplib.SMTP(host, port["smtp"], timeout=10) as s:
                s.sendmail(user, [user], message(tag))
            time.sleep(1.0)
            queue = subprocess.run(
                ["postqueue", "-c", env["LAB_POSTFIX_CONFIG_DIR"], "-j"], capture_output=True, text=True, timeout=30
            ).stdout
            held = [json.loads(line)["queue_name"] for line in queue.splitlines() if line.strip()]
            assert "hold" in held, f"queue: {held}"
            try:
                wait_delivered(tag, timeout=0.1)
            except AssertionError:
                pass
            else:
                raise AssertionError("held message was delivered")
        finally:
            took2 = mail_lab("hold", "off")
        return f"{took}: queued in hold, not delivered; {took2}: {wait_delivered(tag)}"

    def idp_token() -> str:
        form = {"grant_type": "client_credentials", "client_id": env["LAB_IDP_CLIENT_ID"],
                "client_secret": Path(env["LAB_IDP_CLIENT_SECRET_FILE"]).read_text().strip()}
        request = urllib.request.Request(env["LAB_IDP_TOKEN_URL"], data=urllib.parse.urlencode(form).encode())
        with urllib.request.urlopen(request, context=ctx, timeout=10) as reply:
            return str(json.load(reply)["access_token"])

    def xoauth2(token: str) -> bytes:
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()

    def imaps_993_xoauth2():
        with imaplib.IMAP4_SSL(host, port["imaps"], ssl_context=ctx, timeout=10) as m:
            typ, _ = m.authenticate("XOAUTH2", lambda challenge: xoauth2(idp_token()))
            assert typ == "OK"
        with imaplib.IMAP4_SSL(host, port["imaps"], ssl_context=ctx, timeout=10) as m:
            try:
                m.authenticate("XOAUTH2", lambda challenge: b"" if challenge else xoauth2("not-a-token"))
            except imaplib.IMAP4.error as exc:
                return f"token accepted; a wrong one refused ({str(exc)[:40]})"
        raise AssertionError("a wrong token was accepted")

    def submission_587_xoauth2():
        tag = uuid.uuid4().hex
        with smtplib.SMTP(host, port["submission"], timeout=10) as s:
            s.starttls(context=ctx)
            s.ehlo()
            assert "XOAUTH2" in s.esmtp_features["auth"], s.esmtp_features["auth"]
            token = idp_token()
            code, resp = s.docmd("AUTH", "XOAUTH2 " + base64.b64encode(xoauth2(token)).decode())
            assert code == 235, (code, resp)
            s.sendmail(user, [user], message(tag))
        return wait_delivered(tag)

    checks = [
        ("tls certificate verifies for both names", tls_names),
        ("smtp 587 STARTTLS+AUTH LOGIN delivers", submission_587),
        ("smtp 465 implicit TLS+AUTH delivers", submissions_465),
        ("smtp 587 refuses RCPT without TLS/AUTH", submission_requires_tls),
        ("smtp 587 refuses RCPT without AUTH", submission_requires_auth),
        ("smtp 587 wrong password fails fast", submission_wrong_password),
        ("smtp 25 no AUTH delivers to lab.test", smtp_25_local),
        ("smtp 25 rejects other domains at RCPT", smtp_25_relay_rejected),
        ("imap 993 login", imaps_993),
        ("imap 143 STARTTLS only", imap_143_starttls),
        ("imap wrong password fails fast", imap_wrong_password),
        ("pop3 995 login", pop3s_995),
        ("pop3 110 STLS only", pop3_110_stls),
        ("imap IDLE sees new mail", imap_idle),
        ("imap 993 XOAUTH2 with an IdP token", imaps_993_xoauth2),
        ("smtp 587 XOAUTH2 with an IdP token delivers", submission_587_xoauth2),
    ]
    if "--control" in sys.argv[1:]:
        checks += [
            ("control: stop postfix", control_stop_postfix),
            ("control: stop dovecot", control_stop_dovecot),
            ("control: stop + start", control_stop_start),
            ("control: hold on/off", control_hold),
            ("smtp 587 after control checks", submission_587),
        ]
    for name, fn in checks:
        check(name, fn)
    print("ALL OK" if not FAILED else f"{len(FAILED)} FAILED: {', '.join(FAILED)}")
    return 1 if FAILED else 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main())
