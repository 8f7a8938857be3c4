#!/usr/bin/python3
"""The mail lab's identity provider: a small OAuth2 authorization server for mailmon's sign-in tests.

Runs on Debian's python3 with python3-cryptography and python3-jwt (not the project's venv: the lab is
infrastructure, like Postfix and Dovecot). Started and stopped by `scripts/mail-lab start|stop`; `init` makes its
secrets (0600 files under $MAILMON_LAB_DIR/idp/). It follows the RFCs the real providers follow, so that mailmon
is tested against the protocol:

- RFC 6749: POST /token, form-encoded; client authentication by client_secret_basic, client_secret_post or
  (RFC 7523) private_key_jwt; error bodies {"error", "error_description"} with 400, and `invalid_client` with 401
  and WWW-Authenticate; `Cache-Control: no-store`. Grants client_credentials and refresh_token (rotated on every
  use: the old refresh token stops working once the new one is issued).
- RFC 7523: the jwt-bearer grant with a Google-style service-account key file (iss = client_email, sub = the
  mailbox to impersonate, aud = token_uri, scope), and client assertions signed with the lab client certificate.
- RFC 8628: POST /devicecode and the device_code grant, whose polls answer as the lab's device script says
  (authorization_pending, slow_down, access_denied, expired_token, approve).
- RFC 7662: POST /introspect for Dovecot (client id/secret by Basic or in the form), answering `active` and
  `username`.

Lab control for tests, under /_lab/ (JSON in, JSON out): reset, fault (the next N token requests answer 500,
invalid_client, invalid_grant, hang, or are refused by a connection reset), inactive (the next N introspections
say inactive), expires_in, revoke, device (the script), delay (each token request takes this long, to make
concurrency visible), stats (token requests by grant, the most in flight at once), issued (every secret issued,
for tests that scan output for them).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import datetime
import hashlib
import json
import os
import secrets
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

CLIENT_ID = "mailmon-lab"                  # the monitor's app registration (secret or certificate)
DOVECOT_CLIENT_ID = "dovecot-lab"          # the resource server that introspects tokens
LAB_USERS = ("probe@lab.test", "other@lab.test", "full@lab.test")
CLIENT_MAILBOX = "probe@lab.test"          # the mailbox app-only (client_credentials) tokens are good for
SERVICE_ACCOUNT_EMAIL = "mailmon-probe@mailmon-lab.iam.gserviceaccount.com"
GOOGLE_MAIL_SCOPE = "https://mail.google.com/"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
CLIENT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEFAULT_EXPIRES_IN = 3600
ASSERTION_MAX_LIFETIME = 3600              # Google: at most one hour between iat and exp
CLOCK_SKEW = 60
FAULTS = ("500", "invalid_client", "invalid_grant", "hang", "timeout", "refuse")
DEVICE_STEPS = ("authorization_pending", "slow_down", "access_denied", "expired_token", "approve")
MAX_BODY = 64 * 1024

# Files under the IdP directory (`init` writes them, mode 0600).
FILES = {
    "client_secret": "client.secret",
    "client_cert": "client.pem",
    "client_key": "client.key",
    "dovecot_secret": "dovecot.secret",
    "service_account": "service-account.json",
    "refresh_token": "refresh.token",
}


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error reply."""

    def __init__(self, error: str, description: str, status: int = 400, basic: bool = False) -> None:
        super().__init__(error)
        self.error = error
        self.description = description
        self.status = status
        self.basic = basic


# ------------------------------------------------------------------ state


class State:
    """Everything the IdP knows: issued tokens, lab settings, faults and counters. One lock guards it all."""

    def __init__(self, directory: str, token_url: str) -> None:
        self.directory = directory
        self.token_url = token_url
        self.lock = threading.Lock()
        self.released = threading.Event()  # set by reset: hung requests give up
        self.client_secret = _read(directory, "client_secret")
        self.dovecot_secret = _read(directory, "dovecot_secret")
        cert = x509.load_pem_x509_certificate(_read(directory, "client_cert").encode())
        # PEM public keys: what PyJWT verifies with, whatever kind of key the file holds.
        self.client_public_key = cert.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo)
        der = cert.public_bytes(serialization.Encoding.DER)
        self.client_x5t = base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")
        account = json.loads(_read(directory, "service_account"))
        self.account_email = account["client_email"]
        self.account_key_id = account["private_key_id"]
        self.account_public_key = serialization.load_pem_private_key(
            account["private_key"].encode(), password=None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.released.set()
            self.released = threading.Event()
            self.access: dict[str, dict[str, Any]] = {}    # access token -> {username, client_id, exp, scope, active}
            self.refresh: dict[str, dict[str, Any]] = {}   # refresh token -> {username, client_id, active}
            self.devices: dict[str, dict[str, Any]] = {}   # device code -> {script, expires, username, done}
            self.used_jti: set[str] = set()
            self.faults: list[str] = []
            self.inactive = 0
            self.expires_in = DEFAULT_EXPIRES_IN
            self.valid_for: int | None = None   # how long tokens pass introspection (None: expires_in)
            self.assertions: list[str] = []     # every JWT received, for tests that scan output for secrets
            self.delay = 0.0
            self.token_bytes = 43               # access token length (Entra ID's JWTs are 1.5-3 KB)
            self.hang_seconds = 60.0
            self.device_script: list[str] = []
            self.device_user = CLIENT_MAILBOX
            self.device_interval = 5
            self.device_expires_in = 900
            self.stats: dict[str, Any] = {"token_requests": {}, "token_requests_total": 0, "concurrent": 0,
                                          "concurrent_max": 0, "introspections": 0, "introspections_active": 0,
                                          "device_authorizations": 0, "errors": {}}
            self.issued_refresh_ever: list[str] = []
            # The refresh token `mailmon-lab env` hands to tests is valid again after every reset.
            seed = _read(self.directory, "refresh_token")
            self.refresh[seed] = {"username": CLIENT_MAILBOX, "client_id": CLIENT_ID, "active": True}
            self.issued_refresh_ever.append(seed)

    def issue(self, username: str, client_id: str, scope: str, with_refresh: bool) -> dict[str, Any]:
        """A token reply (RFC 6749 5.1); the lock is held by the caller."""
        access = secrets.token_urlsafe(max(32, self.token_bytes))[:max(self.token_bytes, 16)]
        expires_in = self.expires_in
        valid_for = self.valid_for if self.valid_for is not None else expires_in
        self.access[access] = {"username": username, "client_id": client_id, "scope": scope,
                               "exp": int(time.time()) + valid_for, "iat": int(time.time()), "active": True}
        reply: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in}
        if scope:
            reply["scope"] = scope
        if with_refresh:
            refresh = secrets.token_urlsafe(32)
            self.refresh[refresh] = {"username": username, "client_id": client_id, "active": True}
            self.issued_refresh_ever.append(refresh)
            reply["refresh_token"] = refresh
        return reply


def _read(directory: str, key: str) -> str:
    with open(os.path.join(directory, FILES[key]), encoding="utf-8") as handle:
        return handle.read().strip() if key.endswith(("secret", "token")) else handle.read()


# ----------------------------------------------------------------- server


class Handler(BaseHTTPRequestHandler):
    """One HTTP/1.1 request; every answer is JSON."""

    server_version = "mailmon-lab-idp/1"
    protocol_version = "HTTP/1.1"
    state: State

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only (paths carry no secrets here); never bodies or headers.
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {self.address_string()} "
                         f"{format % args}\n")

    def note(self, text: str) -> None:
        sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {text}\n")

    # -- plumbing

    def send_json(self, status: int, document: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Pragma", "no-cache")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, error: OAuthError) -> None:
        headers = {}
        if error.status == 401:
            # RFC 6749 5.2: a client that used the Authorization header MUST get 401 with WWW-Authenticate;
            # a 401 always carries the challenge (RFC 9110 15.5.2).
            headers["WWW-Authenticate"] = 'Basic realm="mailmon-lab", charset="UTF-8"'
        with self.state.lock:
            errors = self.state.stats["errors"]
            errors[error.error] = errors.get(error.error, 0) + 1
        self.send_json(error.status, {"error": error.error, "error_description": error.description}, headers)

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise OAuthError("invalid_request", "request body too large")
        return self.rfile.read(length) if length else b""

    def read_form(self) -> dict[str, str]:
        """RFC 6749 3.2: application/x-www-form-urlencoded; a parameter sent without a value is omitted; none
        may be repeated."""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        body = self.read_body()
        if content_type != "application/x-www-form-urlencoded":
            raise OAuthError("invalid_request", "the request must be application/x-www-form-urlencoded")
        try:
            pairs = urllib.parse.parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise OAuthError("invalid_request", "the request body is not UTF-8") from None
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise OAuthError("invalid_request", f"parameter {key} is repeated")
            if value != "":
                form[key] = value
        return form

    def read_json(self) -> dict[str, Any]:
        body = self.read_body()
        if not body:
            return {}
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError("a JSON object, please")
        return document

    def basic_credentials(self) -> tuple[str, str] | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_client", f"unsupported authentication scheme {scheme[:20]}", 401, True)
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError("invalid_client", "malformed Basic credentials", 401, True) from None
        if not sep:
            raise OAuthError("invalid_client", "malformed Basic credentials", 401, True)
        # RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
        return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

    # -- routing

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_lab/stats":
            with self.state.lock:
                self.send_json(200, json.loads(json.dumps(self.state.stats)))
        elif path == "/_lab/issued":
            with self.state.lock:
                self.send_json(200, {"access_tokens": list(self.state.access),
                                     "refresh_tokens": list(self.state.issued_refresh_ever),
                                     "assertions": list(self.state.assertions)})
        elif path in ("/token", "/devicecode", "/introspect"):
            self.send_json(405, {"error": "invalid_request", "error_description": "use POST"}, {"Allow": "POST"})
        else:
            self.send_json(404, {"error": "not_found", "error_description": f"no such endpoint {path[:60]}"})

    def do_POST(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/token":
                self.token()
            elif path == "/devicecode":
                self.send_json(200, self.device_authorization(self.read_form()))
            elif path == "/introspect":
                self.send_json(200, self.introspect(self.read_form()))
            elif path.startswith("/_lab/"):
                self.lab(path[len("/_lab/"):])
            else:
                self.read_body()
                self.send_json(404, {"error": "not_found", "error_description": f"no such endpoint {path[:60]}"})
        except OAuthError as error:
            self.note(f"{path}: {error.error}: {error.description}")
            self.send_error_json(error)

    # -- token endpoint

    def token(self) -> None:
        state = self.state
        with state.lock:
            state.stats["concurrent"] += 1
            state.stats["concurrent_max"] = max(state.stats["concurrent_max"], state.stats["concurrent"])
            fault = state.faults.pop(0) if state.faults else None
            delay = state.delay
            released = state.released
        try:
            form = self.read_form()
            grant = form.get("grant_type", "(none)")
            with state.lock:
                counts = state.stats["token_requests"]
                name = {JWT_BEARER: "jwt_bearer", DEVICE_CODE: "device_code"}.get(grant, grant)
                counts[name] = counts.get(name, 0) + 1
                state.stats["token_requests_total"] += 1
            if delay:
                released.wait(delay)
            if fault is not None:
                self.fault(fault, released)
                return
            reply = self.grant(form)
            self.send_json(200, reply)
            self.note(f"/token: {grant}: issued (expires_in {reply['expires_in']})")
        finally:
            with state.lock:
                state.stats["concurrent"] -= 1

    def fault(self, fault: str, released: threading.Event) -> None:
        self.note(f"/token: lab fault {fault}")
        if fault == "500":
            self.send_json(500, {"error": "server_error", "error_description": "lab fault: the token service "
                                                                               "failed (HTTP 500)"})
        elif fault == "invalid_client":
            raise OAuthError("invalid_client", "lab fault: client authentication failed", 401)
        elif fault == "invalid_grant":
            raise OAuthError("invalid_grant", "lab fault: the grant is invalid, expired or revoked")
        elif fault in ("hang", "timeout"):
            released.wait(self.state.hang_seconds)
            self.close_connection = True
        elif fault == "refuse":
            # A connection reset with nothing answered (SO_LINGER 0 makes close() send RST).
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            raise ConnectionAbortedError("lab fault refuse")

    def client(self, form: dict[str, str], required: bool = True) -> str | None:
        """Authenticate the client (RFC 6749 2.3, RFC 7523 2.2); exactly one method. Returns its id."""
        basic = self.basic_credentials()
        methods = [m for m, used in (("client_secret_basic", basic is not None),
                                     ("client_secret_post", "client_secret" in form),
                                     ("private_key_jwt", "client_assertion" in form)) if used]
        if len(methods) > 1:
            raise OAuthError("invalid_request", f"more than one client authentication method ({', '.join(methods)})")
        if not methods:
            if required:
                raise OAuthError("invalid_client", "client authentication is required", 401)
            return form.get("client_id")
        method = methods[0]
        if method == "client_secret_basic":
            assert basic is not None
            client_id, secret = basic
            if "client_id" in form and form["client_id"] != client_id:
                raise OAuthError("invalid_request", "client_id in the body differs from the Basic credentials")
            if client_id != CLIENT_ID or not secrets.compare_digest(secret, self.state.client_secret):
                raise OAuthError("invalid_client", "client authentication failed", 401, True)
            return client_id
        if method == "client_secret_post":
            client_id = form.get("client_id", "")
            if client_id != CLIENT_ID or not secrets.compare_digest(form["client_secret"], self.state.client_secret):
                raise OAuthError("invalid_client", "client authentication failed", 401)
            return client_id
        return self.client_assertion(form)

    def client_assertion(self, form: dict[str, str]) -> str:
        """RFC 7523 3: a JWT signed with the client certificate's key; iss = sub = client_id, aud = the token
        endpoint, exp in the future, jti used once."""
        if form.get("client_assertion_type") != CLIENT_ASSERTION:
            raise OAuthError("invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION}")
        assertion = form["client_assertion"]
        with self.state.lock:
            self.state.assertions.append(assertion)
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.state.client_public_key, algorithms=["RS256", "PS256", "ES256"],
                                audience=self.state.token_url, leeway=CLOCK_SKEW,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"client assertion rejected: {exc}", 401) from None
        if claims["iss"] != CLIENT_ID or claims["sub"] != CLIENT_ID:
            raise OAuthError("invalid_client", "client assertion: iss and sub must be the client_id", 401)
        if form.get("client_id", CLIENT_ID) != CLIENT_ID:
            raise OAuthError("invalid_client", "client_id differs from the assertion's subject", 401)
        if "x5t" in header and header["x5t"] != self.state.client_x5t:
            raise OAuthError("invalid_client", "client assertion: x5t names another certificate", 401)
        with self.state.lock:
            if claims["jti"] in self.state.used_jti:
                raise OAuthError("invalid_client", "client assertion: jti was used before (replay)", 401)
            self.state.used_jti.add(claims["jti"])
        return CLIENT_ID

    def grant(self, form: dict[str, str]) -> dict[str, Any]:
        grant = form.get("grant_type")
        if grant is None:
            raise OAuthError("invalid_request", "grant_type is missing")
        if grant == "client_credentials":
            self.client(form)
            with self.state.lock:
                return self.state.issue(CLIENT_MAILBOX, CLIENT_ID, form.get("scope", ""), with_refresh=False)
        if grant == "refresh_token":
            return self.refresh_grant(form)
        if grant == JWT_BEARER:
            return self.jwt_bearer(form)
        if grant == DEVICE_CODE:
            return self.device_grant(form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant[:60]} is not supported")

    def refresh_grant(self, form: dict[str, str]) -> dict[str, Any]:
        # The lab app registration also allows public-client flows (Entra's "Allow public client flows", as a
        # device-code sign-in on a monitoring host uses): a client that sends credentials must pass them, one
        # that sends none names itself with client_id (RFC 6749 6 and 3.2.1).
        client_id = self.client(form, required=False)
        if client_id is None:
            raise OAuthError("invalid_request", "client_id is missing")
        token = form.get("refresh_token")
        if token is None:
            raise OAuthError("invalid_request", "refresh_token is missing")
        with self.state.lock:
            record = self.state.refresh.get(token)
            if record is None or not record["active"]:
                raise OAuthError("invalid_grant", "the refresh token is invalid, expired or revoked")
            if record["client_id"] != client_id:
                raise OAuthError("invalid_grant", "the refresh token was issued to another client")
            # Rotation: the old refresh token ends the moment its successor is issued.
            record["active"] = False
            return self.state.issue(record["username"], client_id, form.get("scope", ""), with_refresh=True)

    def jwt_bearer(self, form: dict[str, str]) -> dict[str, Any]:
        """RFC 7523 2.1 with Google's service-account rules: iss = client_email, kid = private_key_id,
        aud = token_uri, sub = the mailbox (domain-wide delegation), scope in the claims."""
        assertion = form.get("assertion")
        if assertion is None:
            raise OAuthError("invalid_request", "assertion is missing")
        with self.state.lock:
            self.state.assertions.append(assertion)
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, self.state.account_public_key, algorithms=["RS256"],
                                audience=self.state.token_url, leeway=CLOCK_SKEW,
                                options={"require": ["iss", "aud", "exp", "iat"]})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_grant", f"invalid JWT: {exc}") from None
        if claims["iss"] != self.state.account_email:
            raise OAuthError("invalid_grant", "invalid JWT: unknown issuer")
        if header.get("kid") not in (None, self.state.account_key_id):
            raise OAuthError("invalid_grant", "invalid JWT signature: unknown key id")
        if claims["exp"] - claims["iat"] > ASSERTION_MAX_LIFETIME:
            raise OAuthError("invalid_grant", "invalid JWT: exp and iat are more than one hour apart")
        scope = claims.get("scope") or form.get("scope")
        if not scope:
            raise OAuthError("invalid_scope", "invalid_scope: no scope requested")
        if GOOGLE_MAIL_SCOPE not in str(scope).split():
            raise OAuthError("invalid_scope", f"the mailbox needs scope {GOOGLE_MAIL_SCOPE}")
        subject = claims.get("sub")
        if subject is None:
            raise OAuthError("unauthorized_client", "a service account token for mail needs sub (the mailbox)")
        if subject not in LAB_USERS:
            raise OAuthError("invalid_grant", "invalid email or User ID")
        with self.state.lock:
            return self.state.issue(subject, self.state.account_email, str(scope), with_refresh=False)

    # -- device authorization (RFC 8628)

    def device_authorization(self, form: dict[str, str]) -> dict[str, Any]:
        client_id = self.client(form, required=False)
        if client_id is None:
            raise OAuthError("invalid_request", "client_id is missing")
        if client_id != CLIENT_ID:
            raise OAuthError("invalid_client", "unknown client", 401)
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        base = self.state.token_url.rsplit("/", 1)[0]
        with self.state.lock:
            self.state.devices[device_code] = {
                "script": list(self.state.device_script), "username": self.state.device_user,
                "expires": time.time() + self.state.device_expires_in, "done": False, "client_id": client_id,
                "scope": form.get("scope", "")}
            self.state.stats["device_authorizations"] += 1
            return {"device_code": device_code, "user_code": user_code, "verification_uri": f"{base}/device",
                    "verification_uri_complete": f"{base}/device?user_code={user_code}",
                    "expires_in": self.state.device_expires_in, "interval": self.state.device_interval,
                    "message": f"To sign in, open {base}/device and enter the code {user_code}."}

    def device_grant(self, form: dict[str, str]) -> dict[str, Any]:
        client_id = self.client(form, required=False)
        code = form.get("device_code")
        if code is None:
            raise OAuthError("invalid_request", "device_code is missing")
        with self.state.lock:
            device = self.state.devices.get(code)
            if device is None or device["done"]:
                raise OAuthError("invalid_grant", "unknown or used device_code")
            if client_id != device["client_id"]:
                raise OAuthError("invalid_grant", "the device_code was issued to another client")
            step = device["script"].pop(0) if device["script"] else "approve"
            if time.time() >= device["expires"]:
                step = "expired_token"
            if step == "approve":
                device["done"] = True
                return self.state.issue(device["username"], device["client_id"], device["scope"], with_refresh=True)
            if step in ("access_denied", "expired_token"):
                device["done"] = True
        descriptions = {"authorization_pending": "the user has not finished signing in yet",
                        "slow_down": "polling too fast: add 5 seconds to the interval",
                        "access_denied": "the user declined the sign-in",
                        "expired_token": "the device code expired: start again"}
        raise OAuthError(step, descriptions[step])

    # -- introspection (RFC 7662)

    def introspect(self, form: dict[str, str]) -> dict[str, Any]:
        basic = self.basic_credentials()
        if basic is not None:
            client_id, secret, how = basic[0], basic[1], "basic"
        else:
            client_id, secret, how = form.get("client_id", ""), form.get("client_secret", ""), "post"
        how += f": {', '.join(sorted(form))}"  # which fields the resource server sent (names only)
        if client_id != DOVECOT_CLIENT_ID or not secrets.compare_digest(secret, self.state.dovecot_secret):
            raise OAuthError("invalid_client", "introspection needs the resource server's client credentials", 401,
                             basic is not None)
        token = form.get("token")
        if token is None:
            raise OAuthError("invalid_request", "token is missing")
        with self.state.lock:
            state = self.state
            state.stats["introspections"] += 1
            state.stats["introspection_client_auth"] = how
            record = state.access.get(token)
            forced_inactive = state.inactive > 0
            if forced_inactive:
                state.inactive -= 1
            if record is None or not record["active"] or record["exp"] <= time.time() or forced_inactive:
                self.note(f"/introspect ({how}): inactive")
                return {"active": False}  # RFC 7662 2.2: nothing more about an inactive token
            state.stats["introspections_active"] += 1
        self.note(f"/introspect ({how}): active for {record['username']}")
        return {"active": True, "username": record["username"], "sub": record["username"],
                "client_id": record["client_id"], "scope": record["scope"], "token_type": "Bearer",
                "exp": record["exp"], "iat": record["iat"], "iss": self.state.token_url.rsplit("/", 1)[0]}

    # -- lab control

    def lab(self, name: str) -> None:
        try:
            document = self.read_json()
        except ValueError as exc:
            self.send_json(400, {"error": "invalid_request", "error_description": f"lab: {exc}"})
            return
        state = self.state
        if name == "reset":
            state.reset()
        elif name == "fault":
            fault = str(document.get("fault", ""))
            count = int(document.get("count", 1))
            if fault not in FAULTS:
                self.send_json(400, {"error": "invalid_request", "error_description": f"fault: one of {FAULTS}"})
                return
            with state.lock:
                state.faults = [fault] * count
                state.hang_seconds = float(document.get("seconds", state.hang_seconds))
        elif name == "inactive":
            with state.lock:
                state.inactive = int(document.get("count", 1))
        elif name == "expires_in":
            # `valid_for`: a token may pass introspection longer than the expires_in it was issued with (real
            # providers allow minutes of clock skew), so a test on a fake clock is not raced by the real one.
            with state.lock:
                state.expires_in = int(document["seconds"])
                valid_for = document.get("valid_for")
                state.valid_for = int(valid_for) if valid_for is not None else None
        elif name == "token_size":
            with state.lock:
                state.token_bytes = int(document["bytes"])
        elif name == "delay":
            with state.lock:
                state.delay = float(document["seconds"])
        elif name == "revoke":
            with state.lock:
                for record in state.access.values():
                    record["active"] = False
                if document.get("refresh"):
                    for record in state.refresh.values():
                        record["active"] = False
        elif name == "device":
            script = [str(step) for step in document.get("script", [])]
            if any(step not in DEVICE_STEPS for step in script):
                self.send_json(400, {"error": "invalid_request", "error_description": f"steps: {DEVICE_STEPS}"})
                return
            with state.lock:
                state.device_script = script
                state.device_user = str(document.get("username", state.device_user))
                state.device_interval = int(document.get("interval", state.device_interval))
                state.device_expires_in = int(document.get("expires_in", state.device_expires_in))
        else:
            self.send_json(404, {"error": "not_found", "error_description": f"no lab control {name[:40]}"})
            return
        self.note(f"/_lab/{name} {json.dumps(document)[:200]}")
        self.send_json(200, {"ok": True})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request: Any, client_address: Any) -> None:
        kind = sys.exc_info()[0]
        if kind is not None and issubclass(kind, (OSError, ValueError)):
            return  # a lab fault, or a client that went away
        super().handle_error(request, client_address)


def serve(args: argparse.Namespace) -> None:
    token_url = f"https://{args.host}:{args.port}/token"
    Handler.state = State(args.dir, token_url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(args.cert, args.key)
    server = Server((args.host, args.port), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    # The handshake happens in the handler thread (do_handshake_on_connect on first read), and a client that
    # never speaks must not hold a thread forever.
    Handler.timeout = 30
    if args.pid_file:
        with open(args.pid_file + ".tmp", "w") as handle:
            handle.write(f"{os.getpid()}\n")
        os.replace(args.pid_file + ".tmp", args.pid_file)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} listening on {token_url}", file=sys.stderr,
          flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        if args.pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(args.pid_file)


# ------------------------------------------------------------------- init


def _write_private(path: str, data: bytes) -> None:
    """Create `path` 0600 from the start (never readable by others, not even briefly), atomically."""
    temporary = path + ".tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def init(args: argparse.Namespace) -> None:
    """Create the IdP's secrets once (keep existing ones unless --force): client secret, client certificate
    (signed by the lab CA) and key, Dovecot's introspection secret, a service-account key file, a refresh token."""
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    os.chmod(args.dir, 0o700)

    def path(key: str) -> str:
        return os.path.join(args.dir, FILES[key])

    def missing(key: str) -> bool:
        return args.force or not os.path.exists(path(key)) or os.path.getsize(path(key)) == 0

    for key in ("client_secret", "dovecot_secret", "refresh_token"):
        if missing(key):
            _write_private(path(key), secrets.token_urlsafe(32).encode() + b"\n")
            print(f"idp: generated {path(key)}")
    if missing("client_cert") or missing("client_key"):
        with open(args.ca_key, "rb") as handle:
            ca_key = serialization.load_pem_private_key(handle.read(), password=None)
        with open(args.ca_cert, "rb") as handle:
            ca_cert = x509.load_pem_x509_certificate(handle.read())
        client_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailmon lab"),
                                         x509.NameAttribute(NameOID.COMMON_NAME, CLIENT_ID)]))
                .issuer_name(ca_cert.subject).public_key(client_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=730))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        _write_private(path("client_key"), client_key.private_bytes(serialization.Encoding.PEM,
                                                             serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
        _write_private(path("client_cert"), cert.public_bytes(serialization.Encoding.PEM))
        print(f"idp: generated {path('client_cert')} and {path('client_key')}")
    if missing("service_account"):
        account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        base = f"https://{args.host}:{args.port}"
        # Google's service-account key file format (IAM > Service accounts > Keys > Add key > JSON).
        document = {
            "type": "service_account",
            "project_id": "mailmon-lab",
            "private_key_id": secrets.token_hex(20),
            "private_key": account_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()).decode(),
            "client_email": SERVICE_ACCOUNT_EMAIL,
            "client_id": str(secrets.randbelow(10**21 - 10**20) + 10**20),
            "auth_uri": f"{base}/auth",
            "token_uri": f"{base}/token",
            "auth_provider_x509_cert_url": f"{base}/certs",
            "client_x509_cert_url": f"{base}/certs/{urllib.parse.quote(SERVICE_ACCOUNT_EMAIL)}",
            "universe_domain": "googleapis.com",
        }
        _write_private(path("service_account"), (json.dumps(document, indent=2) + "\n").encode())
        print(f"idp: generated {path('service_account')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("serve", "init"))
    parser.add_argument("--dir", required=True, help="the IdP's directory (secrets)")
    parser.add_argument("--host", default="127.0.0.2")
    parser.add_argument("--port", type=int, default=9443)
    parser.add_argument("--cert", help="TLS server certificate (serve)")
    parser.add_argument("--key", help="TLS server key (serve)")
    parser.add_argument("--pid-file")
    parser.add_argument("--ca-cert", help="lab CA certificate (init: signs the client certificate)")
    parser.add_argument("--ca-key", help="lab CA key (init)")
    parser.add_argument("--force", action="store_true", help="init: replace existing secrets")
    args = parser.parse_args()
    if args.command == "init":
        init(args)
    else:
        serve(args)


if __name__ == "__main__":
    main()
