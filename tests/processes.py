"""Real processes for end-to-end tests: mailmon instances, Prometheus, Alertmanager, a webhook sink."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT, free_port, mailmon_command
from tests.tools import tool


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(predicate: Callable[[], Any], what: str, limit: float = 30.0, every: float = 0.2) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` (and the last value) at `limit`."""
    deadline = time.monotonic() + limit
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except (OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {limit:.0f}s waiting for {what} (last: {last!r})")


def wait_listening(host: str, port: int, what: str, limit: float = 20.0,
                   process: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Wait until something accepts TCP connections on host:port; fail at once if `process` exits (with the tail
    of its `log`), or after `limit` seconds."""
    until = time.monotonic() + limit
    while time.monotonic() < until:
        if process is not None and process.poll() is not None:
            said = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise AssertionError(f"{what} exited ({process.returncode}): {said}")
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"{what} does not listen on {host}:{port}")


def end_session(process: subprocess.Popen[bytes]) -> None:
    """Stop a daemon started in a session of its own (`start_new_session=True`) with all its children: SIGTERM to
    the group, SIGKILL after 10 s."""
    with contextlib.suppress(ProcessLookupError):  # it may have exited already
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def terminate(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class Monitor:
    """A `mailmon run` process; `wrap` runs it inside a private mount namespace with its own hosts/resolv files."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None,
                 hosts: Path | None = None, resolv: Path | None = None, prefix: Sequence[str] = (),
                 args: Sequence[str] = ()) -> None:
        self.listen = f"127.0.0.1:{free_port()}"
        # `prefix` runs it under a wrapper that execs it, e.g. `prlimit --nofile=1024` (the pid stays mailmon's).
        command = [*prefix, *mailmon_command("run", "--config", str(config), "--listen", self.listen),
                   *args]
        if hosts is not None or resolv is not None:
            # A vantage with its own resolver view: glibc re-reads these files on every lookup, so a test can
            # break or repair this vantage's name resolution without touching the machine's.
            mounts = " && ".join(f"mount --bind {src} {dst}" for src, dst in ((hosts, "/etc/hosts"),
                                                                               (resolv, "/etc/resolv.conf")) if src)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f"{mounts} && exec \"$0\" \"$@\"", *command]
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, stderr=self.log, stdout=self.log,
                                        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})})
        wait_for(lambda: http_get(self.url + "/-/healthy")[0] == 200, f"mailmon at {self.listen} to start")

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def metrics(self) -> str:
        return http_get(self.url + "/metrics")[1].decode()

    def verdict(self, target: str) -> str | None:
        for line in self.metrics().splitlines():
            if line.startswith("mailmon_verdict{") and f'target="{target}"' in line and line.endswith(" 1.0"):
                return line.split('verdict="', 1)[1].split('"', 1)[0]
        return None

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


class Daemon:
    """A Prometheus-ecosystem server process with an HTTP readiness endpoint."""

    def __init__(self, command: list[str], ready_url: str, log: Path) -> None:
        self.log = log.open("wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log)
        try:
            wait_for(lambda: http_get(ready_url)[0] == 200, f"{command[0]} to be ready")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{log.name}:\n{log.read_text(errors='replace')[-4000:]}") from None

    def stop(self) -> None:
        terminate(self.process)
        self.log.close()


def fast_rules(tmp: Path) -> Path:
    """The shipped rules with every alert's `for:` cut to 5 s, so a test sees firing alerts in seconds."""
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "mailmon.rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = "5s"
    path = tmp / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    return path


def start_prometheus(tmp: Path, scrape: list[str], rule_files: list[Path],
                     alertmanager: str | None) -> tuple[Daemon, str]:
    listen = f"127.0.0.1:{free_port()}"
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [{"job_name": "mailmon", "static_configs": [{"targets": scrape}]}],
    }
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))
    prometheus = tool("prometheus", package="the Debian package prometheus")
    daemon = Daemon([prometheus, f"--config.file={path}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                     f"--web.listen-address={listen}"], f"http://{listen}/-/ready", tmp / "prometheus.log")
    return daemon, f"http://{listen}"


def start_alertmanager(tmp: Path, config: Path) -> tuple[Daemon, str]:
    listen = f"127.0.0.1:{free_port()}"
    alertmanager = tool("prometheus-alertmanager", package="the Debian package prometheus-alertmanager")
    daemon = Daemon([alertmanager, f"--config.file={config}", f"--storage.path={tmp / 'am'}",
                     f"--web.listen-address={listen}", "--cluster.listen-address="],
                    f"http://{listen}/-/ready", tmp / "alertmanager.log")
    return daemon, f"http://{listen}"


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(http_get(url)[1])
    assert body["status"] == "success", body
    return list(body["data"]["result"])


class WebhookSink:
    """Collects Alertmanager webhook notifications by receiver path."""

    def __init__(self) -> None:
        self.received: dict[str, list[dict[str, Any]]] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.received.setdefault(self.path.strip("/"), []).append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alert_names(self, receiver: str) -> set[str]:
        return {alert["labels"]["alertname"] for note in self.received.get(receiver, []) for alert in note["alerts"]
                if alert["status"] == "firing"}

    def stop(self) -> None:
        self.server.shutdown()
