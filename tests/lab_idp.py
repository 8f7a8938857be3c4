"""The mail lab's identity provider (scripts/lab/idp.py) as tests see it: its lab controls, its counters, and
mailmon configurations that sign in to the lab through it, one per kind of token source."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from monitor.config import Config
from monitor.result import Result
from monitor.runner import Runner
from tests.conftest import Lab

# The kinds of token source the acceptance matrix covers (a token_command is a token_file by another route).
GRANTS = ("secret", "certificate", "refresh_token", "service_account", "token_file")
MECHANISMS = ("xoauth2", "oauthbearer")
# Every port the lab serves sign-in on, as (check, port, tls mode), in two targets (one check of each kind).
STARTTLS = (("smtp", 587, "starttls"), ("imap", 143, "starttls"), ("pop3", 110, "starttls"))
IMPLICIT = (("smtp", 465, "implicit"), ("imap", 993, "implicit"), ("pop3", 995, "implicit"))
# One check of each kind, for tests that need a sender and a receiver but not every port.
RECEIVE_AND_SEND = (("smtp", 587, "starttls"), ("imap", 993, "implicit"), ("pop3", 995, "implicit"))


class Idp:
    """Talks to the running lab IdP over HTTPS (the lab CA), synchronously: lab calls take milliseconds."""

    def __init__(self, lab: Lab) -> None:
        self.env = lab.env
        self.control_url = lab.env["LAB_IDP_CONTROL_URL"]
        self.token_url = lab.env["LAB_IDP_TOKEN_URL"]
        self.ca = lab.env["LAB_IDP_CA"]
        self._context = ssl.create_default_context(cafile=self.ca)

    def _request(self, url: str, data: bytes | None, content_type: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type} if data else {})
        try:
            with urllib.request.urlopen(request, context=self._context, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def control(self, name: str, **body: Any) -> None:
        """POST /_lab/<name> with a JSON body (reset, fault, inactive, expires_in, delay, revoke, device)."""
        status, document = self._request(f"{self.control_url}/{name}", json.dumps(body).encode(),
                                          "application/json")
        assert status == 200, f"/_lab/{name}: HTTP {status} {document}"

    def stats(self) -> dict[str, Any]:
        return self._request(f"{self.control_url}/stats", None, "")[1]

    def token_requests(self) -> int:
        return int(self.stats()["token_requests_total"])

    def issued(self) -> dict[str, list[str]]:
        """Every access token, refresh token and JWT assertion the IdP issued or received since the last reset."""
        return self._request(f"{self.control_url}/issued", None, "")[1]

    def token(self, **form: str) -> tuple[int, dict[str, Any]]:
        """A token request of the test's own (not mailmon's): RFC 6749 form POST."""
        return self._request(self.token_url, urllib.parse.urlencode(form).encode(),
                             "application/x-www-form-urlencoded")

    def client_secret(self) -> str:
        return Path(self.env["LAB_IDP_CLIENT_SECRET_FILE"]).read_text().strip()

    def app_token(self) -> str:
        """An access token for the lab mailbox from the client_credentials grant."""
        status, document = self.token(grant_type="client_credentials", client_id=self.env["LAB_IDP_CLIENT_ID"],
                                      client_secret=self.client_secret())
        assert status == 200, document
        return str(document["access_token"])

    def secrets(self) -> list[str]:
        """The lab's long-lived secrets mailmon is given: none may ever appear in its output."""
        found = [self.client_secret(), Path(self.env["LAB_IDP_REFRESH_TOKEN_FILE"]).read_text().strip()]
        for name in ("LAB_IDP_CLIENT_KEY_FILE", "LAB_IDP_SERVICE_ACCOUNT_FILE"):
            text = Path(self.env[name]).read_text()
            if name.endswith("ACCOUNT_FILE"):
                text = json.loads(text)["private_key"]
            # Each base64 line of a private key is 64 characters of key material.
            found += [line for line in text.splitlines() if len(line) >= 60 and "-----" not in line]
        return found


def oauth2_block(idp: Idp, grant: str, tmp: Path) -> str:
    """The `oauth2:` flow mapping of a target signing in to the lab with `grant` (files it needs go to `tmp`)."""
    env = idp.env
    common = f"token_url: {idp.token_url}, ca_file: {idp.ca}"
    client = f"client_id: {env['LAB_IDP_CLIENT_ID']}"
    if grant == "secret":
        return (f"{{grant: client_credentials, {common}, {client}, client_secret_file: "
                f"{env['LAB_IDP_CLIENT_SECRET_FILE']}, scope: 'https://outlook.office365.com/.default'}}")
    if grant == "certificate":
        return (f"{{grant: client_credentials, {common}, {client}, client_certificate_file: "
                f"{env['LAB_IDP_CLIENT_CERT_FILE']}, client_key_file: {env['LAB_IDP_CLIENT_KEY_FILE']}}}")
    if grant in ("refresh_token", "refresh_token_public"):
        # A copy: mailmon writes the rotated refresh token back; the lab's file stays the seed /_lab/reset revives.
        copy = tmp / "refresh.token"
        if not copy.exists():
            shutil.copyfile(env["LAB_IDP_REFRESH_TOKEN_FILE"], copy)
            copy.chmod(0o600)
        if grant == "refresh_token_public":  # a public client (device-code sign-in): no secret
            return f"{{grant: refresh_token, {common}, {client}, refresh_token_file: {copy}}}"
        return (f"{{grant: refresh_token, {common}, {client}, client_secret_file: "
                f"{env['LAB_IDP_CLIENT_SECRET_FILE']}, refresh_token_file: {copy}}}")
    if grant == "service_account":
        # token_url comes from the key file's token_uri, as with a real Google key.
        return (f"{{grant: service_account, service_account_file: {env['LAB_IDP_SERVICE_ACCOUNT_FILE']}, "
                f"scope: 'https://mail.google.com/', ca_file: {idp.ca}}}")
    if grant == "token_file":
        path = tmp / "access.token"
        if not path.exists():
            path.write_text(json.dumps({"access_token": idp.app_token(), "expires_in": 3600}) + "\n")
            path.chmod(0o600)
        return f"{{token_file: {path}}}"
    raise ValueError(grant)


def target_yaml(lab: Lab, idp: Idp, name: str, grant: str, mechanism: str, tmp: Path,
                checks: tuple[tuple[str, int, str], ...], timeout: str = "15s") -> str:
    """One target signing in to the lab with `grant` over `mechanism`; `checks` as (check, port, tls mode)."""
    lines = [f"  - name: {name}", f"    host: {lab.host}",
             f"    tls: {{ca_file: {lab.ca}, server_name: {lab.server_name}}}",
             "    auth:", f"      username: {lab.user}", f"      mechanism: {mechanism}",
             f"      oauth2: {oauth2_block(idp, grant, tmp)}"]
    lines += [f"    {check}: {{port: {port}, tls: {tls}, timeout: {timeout}}}" for check, port, tls in checks]
    return "\n".join(lines) + "\n"


def config_yaml(*targets: str, extra: str = "") -> str:
    return "vantage: lab\n" + extra + "targets:\n" + "".join(targets)


async def run_all(config: Config) -> list[Result]:
    """Every check of every target once, all at the same time (as a cycle of the scheduler would)."""
    runner = Runner("lab")
    return list(await asyncio.gather(*(runner.execute(target, check) for target in config.targets
                                       for check in target.checks)))


def failures(results: list[Result]) -> list[str]:
    return [f"{r.target}/{r.check}: {r.stage}/{r.reason}: {r.detail}\n  " + "\n  ".join(r.transcript)
            for r in results if not r.ok]
