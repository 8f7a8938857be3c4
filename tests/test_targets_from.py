"""`targets_from`: scheduled targets from Prometheus file_sd files (JSON and YAML), followed as they change."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import pytest

from monitor.app import App
from monitor.config import load_text
from monitor.discovery import Discovery
from tests.processes import Monitor, wait_for

CONFIG = """
vantage: v
defaults: {interval: 30s, timeout: 5s}
targets_from: ["sd/*.json", "sd/*.yml"]
modules:
  relay: {protocol: smtp, port: 25, tls: none}
  imaps:
    protocol: imap
    auth: {username: u@x.test, password_env: PW}
    hosts: ['mx[0-9]+\\.example\\.net']
"""


def _config(tmp_path: Path, text: str = CONFIG):  # type: ignore[no-untyped-def]
    (tmp_path / "sd").mkdir(exist_ok=True)
    return load_text(text, str(tmp_path / "config.yaml"), {"PW": "secret-pw"})


def _write(path: Path, groups: object) -> None:
    path.write_text(json.dumps(groups) if path.suffix == ".json" else json.dumps(groups).replace("{", "{ "))
    stamp = path.stat().st_mtime + 1  # a rewrite within the same mtime tick still counts as a change
    os.utime(path, (stamp, stamp))


def test_groups_become_one_check_targets(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write(tmp_path / "sd" / "a.json", [{"targets": ["mx1.example.net:2525", "mx2.example.net"],
                                         "labels": {"module": "relay", "interval": "10s", "site": "ignored"}}])
    targets, problems = Discovery().refresh(config)
    assert problems == []
    assert [(t.name, t.host, t.checks[0].port, t.checks[0].interval) for t in targets] == [
        ("mx1.example.net:2525", "mx1.example.net", 2525, 10.0), ("mx2.example.net", "mx2.example.net", 25, 10.0)]


def test_yaml_files_and_the_name_label(tmp_path: Path) -> None:
    config = _config(tmp_path)
    (tmp_path / "sd" / "b.yml").write_text("- targets: [mx7.example.net]\n  labels: {module: imaps, name: inbox7}\n")
    targets, problems = Discovery().refresh(config)
    assert problems == []
    assert [(t.name, t.host, t.checks[0].name, t.auth is not None) for t in targets] == [
        ("inbox7", "mx7.example.net", "imap", True)]


@pytest.mark.parametrize(("groups", "problem"), [
    ([{"targets": ["evil.example.org"], "labels": {"module": "imaps"}}], "allow-list"),
    ([{"targets": ["mx1.example.net"], "labels": {"module": "nonesuch"}}], "label module"),
    ([{"targets": ["mx1.example.net"], "labels": {"module": "relay", "interval": "soon"}}], "interval"),
    ({"targets": []}, "must be a list"),
    ([{"targets": ["a b"], "labels": {"module": "relay"}}], "HOST:PORT"),
])
def test_a_bad_entry_is_reported_and_keeps_the_last_good_targets(tmp_path: Path, groups: object,
                                                                 problem: str) -> None:
    config = _config(tmp_path)
    path = tmp_path / "sd" / "a.json"
    discovery = Discovery()
    _write(path, [{"targets": ["mx1.example.net"], "labels": {"module": "relay"}}])
    assert [t.name for t in discovery.refresh(config)[0]] == ["mx1.example.net"]
    _write(path, groups)
    targets, problems = discovery.refresh(config)
    assert [t.name for t in targets] == ["mx1.example.net"]
    assert len(problems) == 1 and problem in problems[0] and str(path) in problems[0]


def test_config_needs_no_targets_with_targets_from(tmp_path: Path) -> None:
    assert _config(tmp_path).targets == ()


@pytest.mark.parametrize(("selfcheck", "resolved"), [
    ("", ("mx1.example.net", "mx2.example.net")),  # the default: every target's name, discovered ones too
    ("selfcheck: {resolve: [dns.example.org]}\n", ("dns.example.org",)),  # listed names stay as listed
])
def test_the_selfcheck_resolves_the_discovered_names(tmp_path: Path, selfcheck: str,
                                                     resolved: tuple[str, ...]) -> None:
    """A monitor whose targets all come from files must still check its resolver: else a resolver outage here
    reads as every target's DNS failing (a server-side story) instead of `vantage_fault`."""
    config = _config(tmp_path, CONFIG + selfcheck)
    assert config.selfcheck.resolve == (() if not selfcheck else resolved)
    _write(tmp_path / "sd" / "a.json", [{"targets": ["mx1.example.net", "mx2.example.net", "127.0.0.7"],
                                         "labels": {"module": "relay"}}])
    running = App(config)._discovered(config, force=True)
    assert [t.host for t in running.targets] == ["mx1.example.net", "mx2.example.net", "127.0.0.7"]
    assert running.selfcheck.resolve == resolved


def _smtp_series(monitor: Monitor) -> set[str]:
    return {line.split('target="', 1)[1].split('"', 1)[0] for line in monitor.metrics().splitlines()
            if line.startswith("mailmon_check_success{")}


def test_running_monitor_follows_the_file(tmp_path: Path) -> None:
    """Targets appear and disappear as the file changes, without a reload."""
    config = tmp_path / "config.yaml"
    config.write_text("vantage: v\ndefaults: {interval: 30s, timeout: 2s}\ntargets_from: [sd.json]\n"
                      "modules:\n  relay: {protocol: smtp, port: 1, tls: none}\n")
    sd = tmp_path / "sd.json"
    _write(sd, [{"targets": ["127.0.0.1"], "labels": {"module": "relay"}}])
    monitor = Monitor(config, tmp_path / "mailmon.log")
    try:
        assert _smtp_series(monitor) == {"127.0.0.1"}
        _write(sd, [{"targets": ["127.0.0.1", "127.0.0.1:2"], "labels": {"module": "relay"}}])
        wait_for(lambda: _smtp_series(monitor) == {"127.0.0.1", "127.0.0.1:2"}, "the added target's series")
        _write(sd, [{"targets": ["127.0.0.1:2"], "labels": {"module": "relay"}}])
        wait_for(lambda: _smtp_series(monitor) == {"127.0.0.1:2"}, "the removed target's series to go")
    finally:
        monitor.stop()


def test_reload_reads_the_files_again(tmp_path: Path) -> None:
    """A reload that changes the module the file names re-reads the file with the new module."""
    config = tmp_path / "config.yaml"
    text = ("vantage: v\ndefaults: {{interval: 30s, timeout: 2s}}\ntargets_from: [sd.json]\n"
            "modules:\n  relay: {{protocol: {protocol}, port: 1, tls: none}}\n")
    config.write_text(text.format(protocol="smtp"))
    _write(tmp_path / "sd.json", [{"targets": ["127.0.0.1"], "labels": {"module": "relay"}}])
    monitor = Monitor(config, tmp_path / "mailmon.log")
    try:
        config.write_text(text.replace("port: 1, tls: none", "port: 1, tls: none, helo_name: other.test")
                          .format(protocol="smtp"))
        request = urllib.request.Request(monitor.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        assert _smtp_series(monitor) == {"127.0.0.1"}
    finally:
        monitor.stop()


@pytest.mark.parametrize(("module", "problem"), [
    ("{protocol: smtp, auth: {username: u@x.test, password_env: PW}}",
     "c.yml:4: modules.m: a module that logs in needs hosts"),
    ("{protocol: lmtp}", "c.yml:4: modules.m.protocol: must be one of smtp, imap, pop3, got 'lmtp'"),
    ("{port: 25}", "c.yml:4: modules.m: protocol is required"),
    ("{protocol: imap, hosts: ['x']}", "c.yml:4: modules.m: imap needs credentials"),
    ("{protocol: smtp, hosts: ['(']}", "c.yml:4: modules.m.hosts[0]: '(' is not a regex"),
    ("{protocol: smtp, colour: red}", "c.yml:4: modules.m.colour: unknown key"),
])
def test_module_problems_name_file_and_line(module: str, problem: str) -> None:
    from monitor.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_text(f"vantage: v\nmodules:\n  m:\n    {module}\n", "c.yml", {"PW": "secret-pw"})
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems


def test_bad_file_shows_as_a_failed_reload(tmp_path: Path) -> None:
    """A targets_from file with a bad entry sets mailmon_config_last_reload_successful 0, after a reload too."""
    config = tmp_path / "config.yaml"
    config.write_text("vantage: v\ndefaults: {interval: 30s, timeout: 2s}\ntargets_from: [sd.json]\n"
                      "modules:\n  relay: {protocol: smtp, port: 1, tls: none}\n")
    _write(tmp_path / "sd.json", [{"targets": ["127.0.0.1"], "labels": {"module": "nonesuch"}}])
    monitor = Monitor(config, tmp_path / "mailmon.log")
    try:
        assert "mailmon_config_last_reload_successful 0.0" in monitor.metrics()
        request = urllib.request.Request(monitor.url + "/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        assert "mailmon_config_last_reload_successful 0.0" in monitor.metrics()
        assert b"label module must name one of the config's modules" in (tmp_path / "mailmon.log").read_bytes()
    finally:
        monitor.stop()


def test_duplicate_names_are_reported_once_per_change(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write(tmp_path / "sd" / "a.json", [{"targets": ["mx1.example.net"], "labels": {"module": "relay"}}])
    _write(tmp_path / "sd" / "b.json", [{"targets": ["mx1.example.net"], "labels": {"module": "relay"}}])
    discovery = Discovery()
    targets, problems = discovery.refresh(config)
    assert len(targets) == 1 and len(problems) == 1 and "already defined" in problems[0]
    assert discovery.refresh(config) == (targets, [])


def test_a_bad_new_file_is_reported_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    _write(tmp_path / "sd" / "a.json", {"not": "a list"})
    discovery = Discovery()
    assert len(discovery.refresh(config)[1]) == 1
    assert discovery.refresh(config) == ([], [])
