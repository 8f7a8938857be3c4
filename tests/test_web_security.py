"""HTTP endpoints secured the exporter-toolkit way (TLS + bcrypt basic auth), and live reload of the config."""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests import builders
from tests.conftest import free_port, mailmon_command
from tests.processes import Daemon, http_get, query, wait_for
from tests.tools import tool

pytestmark = pytest.mark.slow  # each test starts a `mailmon run` process

USER, PASSWORD = "prometheus", "scrape-Secret-42"


def _tls_material(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI."""
    cert, key = tmp / "web.pem", tmp / "web.key"
    openssl = tool("openssl", package="the Debian package openssl")
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=mailmon",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def _config(tmp: Path, targets: list[str]) -> Path:
    blocks = "".join(f"""  - name: {name}
    host: 127.0.0.1
    smtp: {{port: {free_port()}, tls: none}}
""" for name in targets)
    return builders.config_file(tmp, f"vantage: web\ndefaults: {{interval: 60s, timeout: 5s}}\ntargets:\n{blocks}")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A monitor serving HTTPS with basic auth; yields (base URL, certificate)."""
    cert, key = _tls_material(tmp_path)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=6)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert.name}\n  key_file: {key.name}\n"
                   f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    listen = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(mailmon_command("run", "--config", str(_config(tmp_path, ["a"])), "--listen", listen,
                                               "--web.config.file", str(web)), stderr=subprocess.DEVNULL)
    context = ssl.create_default_context(cafile=str(cert))
    try:
        wait_for(lambda: _get(f"https://{listen}/-/healthy", context, USER, PASSWORD)[0] == 200, "HTTPS to answer")
        yield f"https://{listen}", cert
    finally:
        process.terminate()
        process.wait(timeout=10)


def _get(url: str, context: ssl.SSLContext, user: str | None, password: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_metrics_over_https_with_the_right_user(secured: tuple[str, Path]) -> None:
    """The configured user gets /metrics over HTTPS."""
    url, cert = secured
    status, body = _get(url + "/metrics", ssl.create_default_context(cafile=str(cert)), USER, PASSWORD)
    assert status == 200 and b"mailmon_check_success" in body


def test_wrong_password_gets_401(secured: tuple[str, Path]) -> None:
    """A wrong password, an unknown user and no credentials at all are all refused with 401."""
    url, cert = secured
    context = ssl.create_default_context(cafile=str(cert))
    assert _get(url + "/metrics", context, USER, "wrong")[0] == 401
    assert _get(url + "/metrics", context, "mallory", PASSWORD)[0] == 401
    assert _get(url + "/metrics", context, None, None)[0] == 401


def test_plain_http_is_refused(secured: tuple[str, Path]) -> None:
    """Plain HTTP to the HTTPS port gets no HTTP answer at all (not even a 401): the connection ends unanswered."""
    url, _ = secured
    host, port = url.removeprefix("https://").rsplit(":", 1)
    answer = b""
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: " + host.encode() + b"\r\nConnection: close\r\n\r\n")
        try:
            while chunk := sock.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert not answer.startswith(b"HTTP/"), answer[:200]
    assert b"mailmon_" not in answer


@pytest.mark.prometheus
def test_prometheus_scrapes_with_tls_and_basic_auth(tmp_path: Path, secured: tuple[str, Path]) -> None:
    """A real Prometheus with the matching scrape config (https, CA, basic auth) scrapes the monitor."""
    url, cert = secured
    listen = f"127.0.0.1:{free_port()}"
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [{
        "job_name": "mailmon", "scheme": "https", "tls_config": {"ca_file": str(cert)},
        "basic_auth": {"username": USER, "password": PASSWORD},
        "static_configs": [{"targets": [url.removeprefix("https://")]}]}]}))
    prometheus_bin = tool("prometheus", package="the Debian package prometheus")
    prometheus = Daemon([prometheus_bin, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                         f"--web.listen-address={listen}"], f"http://{listen}/-/ready", tmp_path / "prom.log")
    try:
        wait_for(lambda: [r["value"][1] for r in query(f"http://{listen}", 'up{job="mailmon"}')] == ["1"],
                 "Prometheus to scrape over HTTPS with basic auth")
    finally:
        prometheus.stop()


def test_bad_web_config_exits_2_with_line(tmp_path: Path) -> None:
    """A web config with an unknown key and a non-bcrypt hash is refused with file:line and exit 2."""
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: plaintext\ntls_server_confg: {}\n")
    done = subprocess.run(mailmon_command("run", "--config", str(_config(tmp_path, ["a"])), "--web.config.file",
                                          str(web)), capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert f"{web}:2: basic_auth_users.alice: is not a bcrypt hash" in done.stderr
    assert f"{web}:3: tls_server_confg: unknown key" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def plain_monitor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    config = _config(tmp_path, ["first"])
    listen = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(mailmon_command("run", "--config", str(config), "--listen", listen),
                               stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: http_get(f"http://{listen}/-/healthy")[0] == 200, "the monitor to start")
        yield process, f"http://{listen}", config
    finally:
        process.terminate()
        process.wait(timeout=10)


def _targets(url: str) -> set[str]:
    body = http_get(url + "/metrics")[1].decode()
    return {line.split('target="', 1)[1].split('"', 1)[0] for line in body.splitlines()
            if line.startswith("mailmon_check_success{")}


def _reload_ok(url: str) -> str:
    body = http_get(url + "/metrics")[1].decode()
    return next(line.rsplit(" ", 1)[1] for line in body.splitlines()
                if line.startswith("mailmon_config_last_reload_successful "))


def test_sighup_adds_a_target_without_restart(tmp_path: Path,
                                              plain_monitor: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    """A target added to the file appears in /metrics after SIGHUP, in the same process."""
    process, url, config = plain_monitor
    assert _targets(url) == {"first"}
    config.write_text(_config(tmp_path, ["first", "second"]).read_text())
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: _targets(url) == {"first", "second"}, "the new target's series")
    assert _reload_ok(url) == "1.0" and process.poll() is None


def test_broken_config_keeps_the_old_targets(plain_monitor: tuple[subprocess.Popen[bytes], str, Path]) -> None:
    """A reload of a broken file keeps the running targets and sets the reload-success gauge to 0."""
    _, url, config = plain_monitor
    config.write_text("vantage: web\ntargets: [oops\n")
    request = urllib.request.Request(url + "/-/reload", method="POST")
    with pytest.raises(urllib.error.HTTPError) as failed:
        urllib.request.urlopen(request, timeout=10)
    assert failed.value.code == 500
    assert _reload_ok(url) == "0.0"
    assert _targets(url) == {"first"}


@pytest.mark.parametrize("broken", ["vantage: web\ntargets: [oops\n",  # not YAML
                                    "vantage: web\ntargets:\n  - name: x\n    host: 127.0.0.1\n"
                                    "    smtp: {port: 70000}\n"],  # YAML, but not a valid config
                         ids=["yaml-error", "invalid-config"])
def test_sighup_with_a_broken_file_keeps_the_old_config_and_says_so(
        tmp_path: Path, plain_monitor: tuple[subprocess.Popen[bytes], str, Path], broken: str) -> None:
    """SIGHUP with a bad file sets the reload gauge to 0 and keeps the targets; a good file afterwards applies."""
    process, url, config = plain_monitor
    assert _reload_ok(url) == "1.0"
    config.write_text(broken)
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: _reload_ok(url) == "0.0", "the reload gauge to drop to 0")
    assert _targets(url) == {"first"}
    config.write_text(_config(tmp_path, ["first", "second"]).read_text())
    process.send_signal(signal.SIGHUP)
    wait_for(lambda: _reload_ok(url) == "1.0", "the reload gauge to return to 1")
    assert _targets(url) == {"first", "second"}
