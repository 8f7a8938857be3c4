"""The `smtp` check: connect, banner, EHLO, TLS, EHLO again, AUTH, an optional MAIL/RCPT dry run, QUIT.

Built on aiosmtplib, driven step by step (not `send_message`) so each step is timed and a failure names
the step. AUTH is attempted exactly once with one mechanism: aiosmtplib's `login()` retries every
advertised mechanism after a rejection, and each retry deepens the server's auth penalty for our IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import aiosmtplib

from monitor.config import SmtpSettings, Target
from monitor.errors import ProbeError, smtp_reply_reason
from monitor.families import address_family
from monitor.net import default_helo_name, open_socket
from monitor.probes.signin import policy_refusal, sign_in
from monitor.result import ProbeContext
from monitor.signin import Credential
from monitor.signin.sasl import describe_challenge, failure_answer, initial_response
from monitor.steps import IMPLICIT_TLS, STARTTLS, TOKEN, Kind, Reason, Stage, When, declare, run
from monitor.tls import client_context

__all__ = ["probe", "quit_session", "record_reply", "smtp_session"]

# The steps of the `smtp` check in order (monitor/steps.py): its metric series, verdict side and docs rows.
STEPS = declare(Kind("smtp", side="send", steps=run(
    "dns", "connect", (IMPLICIT_TLS, ("tls",)), "banner", "ehlo", (STARTTLS, ("starttls", "ehlo_tls")),
    (TOKEN, ("token",)), (When("with credentials", lambda check: check.use_auth), ("auth",)),
    (When("dry run: mail_from set", lambda check: isinstance(check, SmtpSettings) and bool(check.mail_from)),
     ("mail_from", "rcpt", "rset")), "quit"),
    # An MX target's smtp check (host: {mx: DOMAIN}, monitor/mx.py) also reads the domain's MX records.
    extra_failures=(("dns", "nxdomain"), ("dns", "no_mx"), ("dns", "mx_unresolvable"), ("dns", "mx_cname"))))

# Preference order among the mechanisms a server advertises; PLAIN needs one round trip.
_MECHANISMS = ("plain", "login")
# RFC 4954: 535 is "authentication credentials invalid"; 534/538 are policy rejections of the attempt.
_AUTH_REJECTED = frozenset({535, 534, 538})
# Postfix cuts command lines at 2048 characters (mail-lab-notes.md): a longer `AUTH XOAUTH2 <initial response>`
# fails as "Invalid base64 data". Past this length the response goes after the server's empty 334 instead.
_MAX_AUTH_LINE = 2000


def record_reply(ctx: ProbeContext, response: aiosmtplib.SMTPResponse) -> None:
    """Keep the reply as the last code/text seen and put it in the transcript."""
    ctx.smtp_code = response.code
    ctx.smtp_reply = f"{response.code} {response.message}"
    for line in response.message.splitlines() or [""]:
        ctx.heard(f"{response.code} {line}")


def _rejected(ctx: ProbeContext, stage: Stage, exc: aiosmtplib.SMTPResponseException, what: str = "",
              reason: Reason | None = None) -> ProbeError:
    """Record a reply that aiosmtplib raised instead of returning, and turn it into the failure of `stage`."""
    record_reply(ctx, aiosmtplib.SMTPResponse(exc.code, exc.message))
    return ProbeError(stage, reason or smtp_reply_reason(exc.code, exc.message), f"{what}{exc.code} {exc.message}",
                      smtp_code=exc.code)


def _quick_ack(client: aiosmtplib.SMTP) -> None:
    """Acknowledge the server's next segments at once (Linux TCP_QUICKACK).

    With TLS 1.3 the server sends session tickets right after the handshake; a fast client's EHLO goes out
    before them, so nothing carries the ACK for the tickets, the kernel delays it ~40 ms, and the server's
    Nagle-delayed 250 waits for it. Measured (bench/accuracy_vs_swaks.py): ehlo_tls 44 ms in 39 of 44 runs
    against Postfix, a stall of the prober's own making that would read as a slow server.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = client.transport.get_extra_info("socket") if client.transport is not None else None
    if quickack is not None and sock is not None:
        with contextlib.suppress(OSError):  # not a TCP socket we may tune: the figure is merely less exact
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)


async def _ehlo(ctx: ProbeContext, client: aiosmtplib.SMTP, helo: str, quick_ack: bool = False) -> None:
    ctx.say(f"EHLO {helo}")
    if quick_ack:
        # The kernel leaves quick-ACK mode when we send, so the option must be set after the EHLO went out.
        # aiosmtplib writes the command before its first suspension, and a callback queued now runs once
        # this task suspends: right after the write, before any reply is read. (A Task running ehlo() next
        # to a sleep(0) did the same at the price of a Task and an extra loop turn per probe.)
        asyncio.get_running_loop().call_soon(_quick_ack, client)
    try:
        response = await client.ehlo()
    except aiosmtplib.SMTPResponseException as exc:  # any reply but 250 is raised, not returned
        raise _rejected(ctx, "ehlo", exc) from exc
    _expect(ctx, response, "ehlo", 250)


def _expect(ctx: ProbeContext, response: aiosmtplib.SMTPResponse, stage: Stage, *codes: int) -> None:
    record_reply(ctx, response)
    if response.code not in codes:
        raise ProbeError(stage, smtp_reply_reason(response.code, response.message),
                         f"{response.code} {response.message}",
                         smtp_code=response.code)


async def _command(ctx: ProbeContext, client: aiosmtplib.SMTP, stage: Stage, line: str, *codes: int,
                   shown: str | None = None) -> aiosmtplib.SMTPResponse:
    """Send one command line (transcript shows `shown` instead where the line carries a secret)."""
    ctx.say(shown or line)
    try:
        response = await client.execute_command(*line.encode().split(b" "))
    except aiosmtplib.SMTPResponseException as exc:  # aiosmtplib raises on 421 itself
        raise _rejected(ctx, stage, exc) from exc
    _expect(ctx, response, stage, *codes)
    return response


async def smtp_session(ctx: ProbeContext, target: Target, check: SmtpSettings) -> aiosmtplib.SMTP:
    """Open an SMTP session up to and including AUTH; the caller continues the dialogue and quits.

    Shared by the `smtp` check and the round trip's submission, so both speak exactly the same way.
    """
    sock = await open_socket(ctx, target.host, check.port, address_family(check.ip_family))
    implicit = check.tls_mode == "implicit"
    tls_context = client_context(target.tls.ca_file, check.tls_min, check.tls_max)
    client = aiosmtplib.SMTP(
        hostname=target.server_name, sock=sock, use_tls=implicit, start_tls=False,
        tls_context=tls_context if implicit else None,
        local_hostname=check.helo_name or default_helo_name(),
        timeout=None,  # the runner owns the deadline; a library timeout would only race with it
    )
    try:
        if implicit:
            ctx.step("tls")
            ctx.step_after_handshake = "banner"
        else:
            ctx.step("banner")
        try:
            banner = await client.connect()
        except aiosmtplib.SMTPResponseException as exc:  # a refusing or malformed banner
            raise _rejected(ctx, "greeting", exc) from exc
        except aiosmtplib.SMTPConnectError as exc:
            # Given our socket, aiosmtplib knows no port and says "on port None": name the real one, keep the
            # cause (the TLS or OS error under it) for classification.
            cause = exc.__cause__ or exc
            raise type(exc)(f"Error connecting to {target.host} on port {check.port}: {cause}") from cause
        _expect(ctx, banner, "greeting", 220)
        helo = client.local_hostname or "localhost"
        ctx.step("ehlo")
        await _ehlo(ctx, client, helo)
        if check.tls_mode == "starttls":
            ctx.step("starttls")
            if not client.supports_extension("starttls"):
                raise ProbeError("tls", "protocol", "the server does not offer STARTTLS")
            ctx.say("STARTTLS")
            try:
                response = await client.starttls(server_hostname=target.server_name, tls_context=tls_context)
            except aiosmtplib.SMTPResponseException as exc:
                raise _rejected(ctx, "tls", exc, "STARTTLS refused: ") from exc
            record_reply(ctx, response)
            ctx.step("ehlo_tls")
            await _ehlo(ctx, client, helo, quick_ack=True)
        if check.use_auth and target.auth is not None:
            if target.auth.oauth2 is not None:
                await _authenticate_oauth2(ctx, client, target, check)
            else:
                ctx.step("auth")
                await _authenticate(ctx, client, target, check.auth_mechanism)
    except BaseException:
        client.close()
        raise
    return client


async def _authenticate(ctx: ProbeContext, client: aiosmtplib.SMTP, target: Target, wanted: str | None) -> None:
    assert target.auth is not None
    offered = [m for m in ((wanted,) if wanted else _MECHANISMS) if m in client.server_auth_methods]
    if not offered:
        raise ProbeError("auth", "protocol",
                         f"no usable AUTH mechanism offered (wanted: {wanted or ' or '.join(_MECHANISMS)}; "
                         f"server offers: {', '.join(client.server_auth_methods) or 'none'})")
    mechanism = offered[0]
    ctx.say(f"AUTH {mechanism.upper()} ********")
    method = client.auth_plain if mechanism == "plain" else client.auth_login
    try:
        response = await method(target.auth.username, target.auth.password.reveal())
    except aiosmtplib.SMTPAuthenticationError as exc:
        if policy_refusal(exc.message):
            reason: Reason | None = "auth_disabled"
        else:
            reason = "auth_rejected" if exc.code in _AUTH_REJECTED else None
        raise _rejected(ctx, "auth", exc, reason=reason) from exc
    record_reply(ctx, response)


async def _authenticate_oauth2(ctx: ProbeContext, client: aiosmtplib.SMTP, target: Target,
                               check: SmtpSettings) -> None:
    """AUTH XOAUTH2 / OAUTHBEARER with the identity's token; one mechanism, and one more try only with a renewed
    token when the server rejected one that had not expired (revoked)."""
    auth = target.auth
    assert auth is not None and auth.oauth2 is not None
    mechanism = auth.mechanism or "xoauth2"
    ctx.step("auth")
    if mechanism not in client.server_auth_methods:
        raise ProbeError("auth", "protocol", f"the server does not offer AUTH {mechanism.upper()} (it offers: "
                                             f"{', '.join(client.server_auth_methods).upper() or 'none'})")
    await sign_in(ctx, auth, "auth", lambda token: _sasl(ctx, client, mechanism, token, target.server_name,
                                                         check.port))


async def _execute(ctx: ProbeContext, client: aiosmtplib.SMTP, *args: bytes) -> aiosmtplib.SMTPResponse:
    try:
        return await client.execute_command(*args)
    except aiosmtplib.SMTPResponseException as exc:
        raise _rejected(ctx, "auth", exc) from exc


async def _sasl(ctx: ProbeContext, client: aiosmtplib.SMTP, mechanism: str, token: Credential, host: str,
                port: int) -> ProbeError | None:
    """One SASL exchange; returns the failure (not raised: the caller may renew the token and try again)."""
    name = mechanism.upper()
    response_text = initial_response(mechanism, token.username, token.secret.reveal(), host, port)
    if len(f"AUTH {name} {response_text}") <= _MAX_AUTH_LINE:
        ctx.say(f"AUTH {name} ********")
        response = await _execute(ctx, client, b"AUTH", name.encode(), response_text.encode())
    else:
        ctx.say(f"AUTH {name}")
        response = await _execute(ctx, client, b"AUTH", name.encode())
        record_reply(ctx, response)
        if response.code != 334:
            return _auth_failure(response, name, "")
        ctx.say("********")
        response = await _execute(ctx, client, response_text.encode())
    challenge = ""
    if response.code == 334:
        # The server's error challenge (base64 JSON): answer it as the mechanism says to get the final reply.
        record_reply(ctx, response)
        challenge = describe_challenge(response.message)
        answer = failure_answer(mechanism)
        ctx.say(answer or "(empty line)")
        response = await _execute(ctx, client, answer.encode())
    record_reply(ctx, response)
    if response.code == 235:
        return None
    return _auth_failure(response, name, challenge)


def _auth_failure(response: aiosmtplib.SMTPResponse, name: str, challenge: str) -> ProbeError:
    reason: Reason
    if policy_refusal(response.message):
        reason = "auth_disabled"
    elif response.code in _AUTH_REJECTED:
        reason = "auth_rejected"
    else:
        reason = smtp_reply_reason(response.code, response.message)
    detail = f"AUTH {name}: {response.code} {response.message}" + (f" ({challenge})" if challenge else "")
    return ProbeError("auth", reason, detail, smtp_code=response.code)


async def quit_session(ctx: ProbeContext, client: aiosmtplib.SMTP) -> None:
    ctx.step("quit")
    ctx.say("QUIT")
    try:
        record_reply(ctx, await client.quit())
    finally:
        client.close()


async def probe(ctx: ProbeContext, target: Target, check: SmtpSettings) -> None:
    """Run the `smtp` check once; raises on failure, returns on success."""
    client = await smtp_session(ctx, target, check)
    try:
        if check.mail_from is not None:
            ctx.step("mail_from")
            await _command(ctx, client, "mail_from", f"MAIL FROM:<{check.mail_from}>", 250)
            ctx.step("rcpt")
            for recipient in check.rcpt_to:
                await _command(ctx, client, "rcpt", f"RCPT TO:<{recipient}>", 250, 251)
            ctx.step("rset")
            await _command(ctx, client, "quit", "RSET", 250)
        await quit_session(ctx, client)
    finally:
        client.close()
