"""The device-code dialogue (monitor/signin/device.py) against a fake endpoint, for what the lab IdP does not do:
Google's pre-RFC field name `verification_url`, and a token reply without a refresh token."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from monitor.signin.device import DEVICE_CODE_GRANT, DeviceLoginError, login
from monitor.signin.settings import OAuth2Settings
from tests.fakes.token_endpoint import Reply, TokenEndpoint, ok


def settings(url: str, tmp_path: Path) -> OAuth2Settings:
    return OAuth2Settings(grant="refresh_token", token_url=url, device_url=url, scope="https://mail.google.com/",
                          client_id="app", refresh_token_file=str(tmp_path / "refresh.token"))


async def no_wait(seconds: float) -> None:
    return None


def answer(token_reply: Reply) -> TokenEndpoint:
    """One URL for both endpoints: a form without grant_type is the device authorization request."""
    def reply(form: dict[str, str]) -> Reply:
        if "grant_type" not in form:
            return Reply(200, {"device_code": "dc-1", "user_code": "WXYZ-1234", "expires_in": 1800, "interval": 5,
                               "verification_url": "https://www.google.com/device"})
        assert form["grant_type"] == DEVICE_CODE_GRANT and form["device_code"] == "dc-1"
        return token_reply
    return TokenEndpoint(reply)


async def test_google_verification_url_is_shown(tmp_path: Path) -> None:
    """Google names the field verification_url: it is printed like verification_uri."""
    async with answer(ok("access", refresh_token="refresh-1")) as idp:
        out = io.StringIO()
        stored = await login(settings(idp.url, tmp_path), "probe@example.com", out, sleep=no_wait)
    assert "open https://www.google.com/device " in out.getvalue() and "WXYZ-1234" in out.getvalue()
    assert Path(stored).read_text() == "refresh-1\n"


async def test_a_token_without_refresh_token_is_not_stored(tmp_path: Path) -> None:
    """No offline access granted: a clear message, nothing written."""
    async with answer(ok("access")) as idp:
        with pytest.raises(DeviceLoginError, match="no refresh token"):
            await login(settings(idp.url, tmp_path), "probe@example.com", io.StringIO(), sleep=no_wait)
    assert not (tmp_path / "refresh.token").exists()
