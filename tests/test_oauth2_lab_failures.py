"""Identity-provider failures against the real lab: the IdP down, answering 500, invalid_client, invalid_grant,
hanging or resetting is stage `token` with the provider's own words, verdict `signin_failed` (never a mail
server outage); and no secret, token or assertion ever shows in what mailmon writes or serves."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.config import load_text
from monitor.verdict import classify_result, decide
from tests.conftest import ROOT, Lab
from tests.lab_idp import GRANTS, RECEIVE_AND_SEND, Idp, config_yaml, run_all, target_yaml
from tests.processes import Monitor, http_get, wait_for

pytestmark = pytest.mark.lab




# fault -> (reason, words of the provider that must reach `detail`)
FAULTS = {
    "500": ("reply_5xx", "HTTP 500: server_error: lab fault: the token service failed"),
    "invalid_client": ("auth_rejected", "HTTP 401: invalid_client: lab fault: client authentication failed"),
    "invalid_grant": ("auth_rejected", "HTTP 400: invalid_grant: lab fault: the grant is invalid"),
    "hang": ("timeout", "no answer within"),
    "refuse": ("reset", "token endpoint https://127.0.0.2:9443/token"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_identity_provider_failure_is_signin_failed(lab: Lab, idp: Idp, tmp_path: Path, fault: str) -> None:
    """Every check of the target fails at stage `token` with the reason and the provider's words; the verdict
    is signin_failed, not smtp_down / receive_down / unreachable."""
    reason, words = FAULTS[fault]
    grant = "refresh_token" if fault == "invalid_grant" else "secret"
    config = load_text(config_yaml(target_yaml(lab, idp, "lab", grant, "xoauth2", tmp_path, RECEIVE_AND_SEND,
                                               timeout="3s")), "oauth2-lab.yml")
    idp.control("fault", fault=fault, count=10, seconds=10)
    results = await run_all(config)
    for result in results:
        assert (result.stage, result.reason) == ("token", reason), result.detail
        assert words in (result.detail or ""), result.detail
    assert idp.token_requests() == 1  # the three checks waited for the same request
    assert decide(classify_result(r) for r in results) == "signin_failed"


async def test_identity_provider_down_is_signin_failed(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """The IdP stopped (connection refused): token/refused, verdict signin_failed; the mail servers stay fine."""
    config = load_text(config_yaml(target_yaml(lab, idp, "lab", "certificate", "oauthbearer", tmp_path,
                                               RECEIVE_AND_SEND)), "oauth2-lab.yml")
    lab.control("stop", "idp")
    try:
        results = await run_all(config)
    finally:
        lab.control("start", "idp")
    for result in results:
        assert (result.stage, result.reason) == ("token", "refused"), result.detail
        assert "127.0.0.2:9443" in (result.detail or "")
    assert decide(classify_result(r) for r in results) == "signin_failed"


def _leak_forms(secret: str) -> list[str]:
    """The secret itself and the middle of its base64 at each of the three alignments (a SASL initial
    response carries the token base64-encoded after a prefix of any length)."""
    forms = [secret]
    for shift in range(3):
        encoded = base64.b64encode(b"\x00" * shift + secret.encode()).decode()
        forms.append(encoded[4:-4])
    return [form for form in forms if len(form) >= 16]


def _leaks(text: str, secrets: list[str]) -> list[str]:
    return [secret[:6] + "..." for secret in secrets if any(form in text for form in _leak_forms(secret))]


def test_no_secret_reaches_logs_metrics_history_status_or_check_output(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """A monitor at debug level signs in with every grant, has its tokens revoked (renewals), then meets an IdP
    answering invalid_client: the targets read signin_failed, and neither the debug log, /metrics, /api/status,
    /api/history, the status page, the history file nor `check --json` output holds a client secret, private
    key, access token, refresh token or assertion."""
    db = tmp_path / "history.sqlite"
    targets = [target_yaml(lab, idp, grant, grant, "xoauth2" if i % 2 else "oauthbearer", tmp_path,
                           (("imap", 993, "implicit"), ("smtp", 587, "starttls")), timeout="4s")
               for i, grant in enumerate(GRANTS)]
    config = tmp_path / "config.yaml"
    config.write_text(config_yaml(*targets, extra=f"defaults: {{interval: 4s, timeout: 4s}}\n"
                                                  f"history: {{path: {db}}}\n"))
    needs_idp = [grant for grant in GRANTS if grant != "token_file"]
    monitor = Monitor(config, tmp_path / "monitor.log", args=("--log.level", "debug"))
    try:
        wait_for(lambda: all(monitor.verdict(grant) == "ok" for grant in GRANTS), "every grant to sign in", 30)
        requests = idp.token_requests()
        idp.control("revoke")
        wait_for(lambda: idp.token_requests() >= requests + len(needs_idp), "renewals after the revocation", 30)
        idp.control("fault", fault="invalid_client", count=100000)
        idp.control("revoke")
        wait_for(lambda: all(monitor.verdict(grant) == "signin_failed" for grant in needs_idp),
                 "signin_failed for every grant that asks the IdP", 30)
        time.sleep(0.5)  # the journal commits at least every 0.2 s
        served = {path: http_get(monitor.url + path)[1].decode(errors="replace")
                  for path in ("/metrics", "/api/status", "/api/history", "/")}
    finally:
        monitor.stop()
    assert 'stage="token"' in served["/metrics"]
    issued = idp.issued()
    # A fresh start for `check`: the IdP forgets what it issued, so the files get the seed and a new token.
    idp.control("reset")
    shutil.copyfile(idp.env["LAB_IDP_REFRESH_TOKEN_FILE"], tmp_path / "refresh.token")
    (tmp_path / "access.token").write_text(json.dumps({"access_token": idp.app_token(), "expires_in": 3600}))
    check = subprocess.run([sys.executable, "-m", "monitor", "check", "--config", str(config), "--json",
                            "--log.level", "debug"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert [json.loads(line)["ok"] for line in check.stdout.splitlines()] == [True] * (2 * len(GRANTS)), \
        check.stdout + check.stderr[-3000:]
    issued_after = idp.issued()
    secrets = idp.secrets() + [value for document in (issued, issued_after) for values in document.values()
                               for value in values]
    assert len(secrets) > 20
    places = {"debug log": (tmp_path / "monitor.log").read_text(errors="replace"),
              "history files": "".join(path.read_bytes().decode("latin-1") for path in tmp_path.glob("history*")),
              "check --json": check.stdout, "check debug log": check.stderr, **served}
    assert "DEBUG" in places["debug log"].upper() and places["check --json"]
    for place, text in places.items():
        assert not _leaks(text, secrets), f"{place} holds {_leaks(text, secrets)}"
