"""OAuth2 sign-in against the real lab: Postfix and Dovecot validate XOAUTH2/OAUTHBEARER bearer tokens by
introspection at the lab IdP (scripts/lab/idp.py), and mailmon gets them through its real config and probes.

Every grant on every port and mechanism; one token shared by all the checks of an identity; refresh once per
expiry and never concurrently; a revoked token renewed once; refresh-token rotation on disk."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from monitor.config import Config, load_text
from monitor.signin import IDENTITIES
from tests.conftest import ROOT, Lab
from tests.lab_idp import (
    GRANTS,
    IMPLICIT,
    MECHANISMS,
    RECEIVE_AND_SEND,
    STARTTLS,
    Idp,
    config_yaml,
    failures,
    run_all,
    target_yaml,
)

pytestmark = pytest.mark.lab


class FakeClock:
    """Wall time that moves only when told: token lifetimes are crossed without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def load(text: str) -> Config:
    return load_text(text, "oauth2-lab.yml")


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("grant", GRANTS)
async def test_every_port_signs_in_with_a_token(lab: Lab, idp: Idp, tmp_path: Path, grant: str,
                                                mechanism: str) -> None:
    """SMTP 587 (STARTTLS) and 465, IMAP 143 and 993, POP3 110 and 995 accept the grant's token over the
    mechanism, validated by Dovecot at the IdP; the six checks share one token request."""
    config = load(config_yaml(target_yaml(lab, idp, "starttls", grant, mechanism, tmp_path, STARTTLS),
                              target_yaml(lab, idp, "implicit", grant, mechanism, tmp_path, IMPLICIT)))
    before = idp.stats()
    results = await run_all(config)
    assert not failures(results), "\n".join(failures(results))
    after = idp.stats()
    for result in results:
        sent = [line for line in result.transcript if line.startswith("C: ") and mechanism.upper() in line]
        assert sent, f"{result.target}/{result.check} did not use {mechanism}:\n" + "\n".join(result.transcript)
        assert "token" in result.phases
    # The servers really asked the IdP: one introspection per sign-in, each for an active token.
    assert after["introspections_active"] - before["introspections_active"] == 6
    expected = 0 if grant == "token_file" else 1
    assert after["token_requests_total"] - before["token_requests_total"] == expected


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_a_token_as_long_as_entra_ids_signs_in_everywhere(lab: Lab, idp: Idp, tmp_path: Path,
                                                                mechanism: str) -> None:
    """Entra ID's access tokens are JWTs of 1.5-3 KB, not the lab's 43 characters: 3 KB passes on every port
    (Dovecot's login processes take a SASL response up to 8 KB of base64, about a 6 KB token)."""
    idp.control("token_size", bytes=3000)
    config = load(config_yaml(target_yaml(lab, idp, "starttls", "secret", mechanism, tmp_path, STARTTLS),
                              target_yaml(lab, idp, "implicit", "secret", mechanism, tmp_path, IMPLICIT)))
    results = await run_all(config)
    assert not failures(results), "\n".join(failures(results))
    assert len(idp.issued()["access_tokens"][0]) == 3000


async def test_one_token_serves_every_check_of_an_identity(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """3 targets x 3 checks sharing an identity, over 10 cycles: one token request, never two at once (each
    request takes the IdP 0.3 s, so a stampede of nine would overlap there)."""
    idp.control("delay", seconds=0.3)
    config = load(config_yaml(*(target_yaml(lab, idp, f"t{i}", "secret", "xoauth2", tmp_path, RECEIVE_AND_SEND)
                                for i in range(3))))
    for cycle in range(10):
        results = await run_all(config)
        assert not failures(results), f"cycle {cycle}:\n" + "\n".join(failures(results))
    stats = idp.stats()
    assert stats["token_requests_total"] == 1
    assert stats["concurrent_max"] == 1
    assert stats["introspections_active"] == 90


async def test_a_short_lived_token_is_refreshed_once_per_expiry(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """expires_in 5 and a (fake) second between cycles: 10 cycles cross one expiry, so two token requests in
    all, never concurrent. The IdP keeps the tokens valid for introspection longer, so the real time the test
    takes on a loaded machine cannot fail a sign-in."""
    clock = FakeClock()
    IDENTITIES.clock = clock
    idp.control("expires_in", seconds=5, valid_for=600)
    idp.control("delay", seconds=0.3)
    config = load(config_yaml(*(target_yaml(lab, idp, f"t{i}", "secret", "oauthbearer", tmp_path,
                                            RECEIVE_AND_SEND) for i in range(3))))
    seen = []
    for cycle in range(10):
        results = await run_all(config)
        assert not failures(results), f"cycle {cycle}:\n" + "\n".join(failures(results))
        seen.append(idp.token_requests())
        clock.now += 1.0
    # Refreshed 10 % of the lifetime early: at fake second 5 (4.5 is when it is due), not before, not after.
    assert seen == [1] * 5 + [2] * 5
    assert idp.stats()["concurrent_max"] == 1


@pytest.mark.parametrize(("check", "port", "tls"), RECEIVE_AND_SEND)
async def test_a_revoked_token_is_renewed_once_then_passes(lab: Lab, idp: Idp, tmp_path: Path, check: str,
                                                           port: int, tls: str) -> None:
    """The IdP revokes every token (introspection says inactive): the check asks for one new token and passes."""
    config = load(config_yaml(target_yaml(lab, idp, "lab", "secret", "xoauth2", tmp_path, ((check, port, tls),))))
    first = await run_all(config)
    assert not failures(first), failures(first)
    idp.control("revoke")
    second = await run_all(config)
    assert not failures(second), failures(second)
    assert idp.token_requests() == 2
    assert any("renewing it once" in line for line in second[0].transcript)


@pytest.mark.parametrize(("check", "port", "tls"), RECEIVE_AND_SEND)
async def test_a_token_rejected_twice_is_auth_rejected(lab: Lab, idp: Idp, tmp_path: Path, check: str, port: int,
                                                       tls: str) -> None:
    """The renewed token is rejected too: auth/auth_rejected after exactly one renewal, not a loop."""
    config = load(config_yaml(target_yaml(lab, idp, "lab", "secret", "oauthbearer", tmp_path,
                                          ((check, port, tls),))))
    assert not failures(await run_all(config))
    idp.control("inactive", count=2)
    [result] = await run_all(config)
    assert (result.stage, result.reason) == ("auth", "auth_rejected"), result.detail
    assert idp.token_requests() == 2


async def test_a_rotated_refresh_token_is_on_disk_before_it_is_needed(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """The IdP rotates the refresh token on every use (the old one dies at once): mailmon stores the new one
    (0600) before the next refresh, so a restarted monitor signs in with it; the old one is refused."""
    config = load(config_yaml(target_yaml(lab, idp, "lab", "refresh_token", "xoauth2", tmp_path,
                                          (("imap", 993, "implicit"),))))
    stored = tmp_path / "refresh.token"
    seed = stored.read_text().strip()
    assert not failures(await run_all(config))
    rotated = stored.read_text().strip()
    assert rotated != seed and rotated == idp.issued()["refresh_tokens"][-1]
    assert stat.S_IMODE(stored.stat().st_mode) == 0o600
    status, document = idp.token(grant_type="refresh_token", refresh_token=seed,
                                 client_id=idp.env["LAB_IDP_CLIENT_ID"], client_secret=idp.client_secret())
    assert (status, document["error"]) == (400, "invalid_grant")
    IDENTITIES.clear()  # as after a restart: nothing cached, the next check refreshes from the file
    assert not failures(await run_all(config))
    assert stored.read_text().strip() not in (seed, rotated)
    assert idp.token_requests() == 3  # two by mailmon, one by this test


async def test_a_public_client_refreshes_without_a_secret(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """grant refresh_token without a client secret (the public client a device-code sign-in uses) signs in."""
    config = load(config_yaml(target_yaml(lab, idp, "lab", "refresh_token_public", "oauthbearer", tmp_path,
                                          RECEIVE_AND_SEND)))
    results = await run_all(config)
    assert not failures(results), "\n".join(failures(results))
    assert idp.stats()["token_requests"] == {"refresh_token": 1}


ROTATE_FOREVER = """
import asyncio, sys
from monitor.config import load
from monitor.signin.grants import fetch

auth = load(sys.argv[1]).targets[0].auth

async def main() -> None:
    while True:
        await fetch(auth.oauth2, auth.username, 10.0)
        print("rotated", flush=True)

asyncio.run(main())
"""


def test_kill_during_rotation_leaves_a_whole_token(lab: Lab, idp: Idp, tmp_path: Path) -> None:
    """SIGKILL at random moments of a process rotating the refresh token against the IdP as fast as it can:
    the file always holds one whole token the IdP issued (the old or the new one), never an empty or partial one."""
    rng = random.Random(13)
    config_path = tmp_path / "rotate.yml"
    config_path.write_text(config_yaml(target_yaml(lab, idp, "lab", "refresh_token", "xoauth2", tmp_path,
                                                   (("imap", 993, "implicit"),))))
    stored = tmp_path / "refresh.token"
    seed = stored.read_text()
    for _ in range(6):
        idp.control("reset")
        stored.write_text(seed)
        process = subprocess.Popen([sys.executable, "-c", ROTATE_FOREVER, str(config_path)], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first == b"rotated\n", process.stderr.read() if process.stderr else first
        time.sleep(rng.uniform(0.0, 0.3))
        process.kill()
        process.communicate(timeout=10)
        text = stored.read_text()
        assert text.endswith("\n") and text.count("\n") == 1, repr(text)
        assert text.strip() in idp.issued()["refresh_tokens"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".mailmon-")]
    assert all(name.endswith(".tmp") for name in leftovers)
