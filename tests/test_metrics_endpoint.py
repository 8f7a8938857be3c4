"""/metrics of a running monitor: gzip when the scraper asks for it (Prometheus does), plain text otherwise."""

from __future__ import annotations

import gzip
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor.web.routes import accepts_gzip
from tests.conftest import free_port, mailmon_command
from tests.processes import wait_for


@pytest.fixture
def monitor_url(tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "config.yaml"
    config.write_text(f"vantage: v\ndefaults: {{interval: 1s, timeout: 1s}}\ntargets:\n  - name: closed\n"
                      f"    host: 127.0.0.1\n    smtp: {{port: {free_port()}, tls: none}}\n")
    url = f"http://127.0.0.1:{free_port()}/metrics"
    process = subprocess.Popen(mailmon_command("run", "--config", str(config), "--listen", url.split("/")[2]),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(url)[0] == 200, "the monitor to serve /metrics")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def get(url: str, accept_encoding: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept-Encoding": accept_encoding} if accept_encoding else {})
    with urllib.request.urlopen(request, timeout=5) as response:  # urllib never decompresses by itself
        return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()


def series(text: bytes) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items())))
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}


def test_gzip_is_served_when_asked_and_carries_the_same_series(monitor_url: str) -> None:
    _, plain_headers, plain = get(monitor_url)
    _, headers, packed = get(monitor_url, "gzip")
    assert "content-encoding" not in plain_headers
    assert headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert int(headers["content-length"]) == len(packed) < len(plain)
    assert series(gzip.decompress(packed)) == series(plain)  # the values move on (runs every second), the series not


def test_no_gzip_for_a_scraper_that_refuses_it(monitor_url: str) -> None:
    _, headers, body = get(monitor_url, "gzip;q=0, identity")
    assert "content-encoding" not in headers
    assert body.startswith(b"# HELP ")


@pytest.mark.parametrize(("header", "allowed"), [
    ("gzip", True), ("GZIP", True), ("deflate, gzip;q=1.0, *;q=0.5", True), ("*", True), ("br, gzip; q=0.2", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("gzip;q=0.0", False), ("gzip;q=x", False),
    ("x-gzip", False), ("deflate", False),
])
def test_accept_encoding_is_read_as_http_says(header: str, allowed: bool) -> None:
    assert accepts_gzip(header) is allowed
