"""Config fuzzing: random and mutated YAML never escapes as anything but a ConfigError (CLI: exit 2, no traceback)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.config import Config, ConfigError, load_text
from tests.conftest import mailmon_command

pytestmark = pytest.mark.slow  # hypothesis runs hundreds of examples, some through `mailmon validate`

VALID = """vantage: office
listen: 127.0.0.1:9917
defaults: {interval: 60s, timeout: 15s}
probe_key: {env: KEY}
selfcheck: {interval: 30s, resolve: [example.test], reference: 127.0.0.1:9}
targets:
  - name: lab
    host: 127.0.0.2
    tls: {server_name: mail.lab.test}
    auth: {username: probe@lab.test, password_env: PASSWORD}
    smtp: {port: 587, tls: starttls}
    smtp_profiles: [{name: old, tls_max: "1.2", auth_mechanism: login}]
    imap: {port: 993, tls: implicit}
    pop3: {port: 995}
    roundtrip: {via: [imap, pop3], timeout: 30s}
"""
ENVIRON = {"KEY": "k" * 32, "PASSWORD": "secret"}

# Fragments that YAML and our schema both find interesting.
TOKENS = ["vantage:", "targets:", "- ", "name:", "host:", "smtp:", "imap:", "pop3:", "roundtrip:", "port:", "tls:",
          "interval:", "timeout:", "15s", "0s", "-1", "99999", "{", "}", "[", "]", ":", ",", "&a", "*a",
          "!!python/object", "!!binary", "~", "null", "yes", "1e400", "'", '"', "\t", "\n", "  ", "---", "...",
          "%YAML 1.1", "\x00", "é"]


def _load(text: str) -> None:
    try:
        result = load_text(text, "fuzz.yaml", environ=ENVIRON)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p.startswith("fuzz.yaml") for p in exc.problems)
    else:
        assert isinstance(result, Config)


def test_the_seed_is_valid() -> None:
    """The document the mutations start from is itself a valid config."""
    assert load_text(VALID, "fuzz.yaml", environ=ENVIRON).targets[0].name == "lab"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(TOKENS) | st.text(max_size=8), max_size=60).map("".join))
def test_random_token_soup(text: str) -> None:
    """Random sequences of YAML-ish tokens load or fail with ConfigError, nothing else."""
    _load(text)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_mutated_valid_config(data: st.DataObject) -> None:
    """A valid config with random lines dropped, duplicated or edited loads or fails with ConfigError."""
    lines = VALID.splitlines()
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "edit", "insert"]))
        if action == "drop" and len(lines) > 1:
            del lines[index]
        elif action == "dup":
            lines.insert(index, lines[index])
        elif action == "edit":
            line = lines[index]
            at = data.draw(st.integers(0, len(line)))
            lines[index] = line[:at] + data.draw(st.sampled_from(TOKENS) | st.text(max_size=4)) + line[at + 1:]
        else:
            lines.insert(index, data.draw(st.sampled_from(TOKENS)) + data.draw(st.text(max_size=10)))
    _load("\n".join(lines))


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=10),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.sampled_from(["vantage", "targets", "name", "host", "smtp", "port", "tls",
                                                       "auth", "roundtrip", "via", "x"]) | st.text(max_size=5),
                                      children, max_size=5),
                    max_leaves=25))
def test_random_yaml_structures(document: object) -> None:
    """Any YAML data structure (wrong types everywhere) loads or fails with ConfigError."""
    _load(yaml.safe_dump(document, allow_unicode=True))


def test_cli_never_shows_a_traceback(tmp_path: Path) -> None:
    """A handful of hostile files through the real command: exit 2 and plain problem lines only."""
    samples = ["\x00\x01\x02", "a: [", "!!python/object/apply:os.system ['true']", "targets: *nope",
               "vantage: v\ntargets:\n  - name: t\n    host: h\n    smtp: {port: 1e400}\n", "- - - -", "? ? ?"]
    for index, text in enumerate(samples):
        path = tmp_path / f"sample{index}.yaml"
        path.write_bytes(text.encode())
        done = subprocess.run(mailmon_command("validate", "--config", str(path)), capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 2, (text, done.stderr)
        assert "Traceback" not in done.stderr and str(path) in done.stderr, (text, done.stderr)
