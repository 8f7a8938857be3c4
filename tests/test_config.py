"""Configuration loading: every bad config names file, line, path and problem; good ones get the right defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

import pytest

from monitor.config import (
    CHECK_NAMES,
    DEFAULT_LISTEN,
    CheckBase,
    CheckSettings,
    Config,
    ConfigError,
    ImapSettings,
    Secret,
    SmtpSettings,
    load,
    load_text,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path("tests") / "configs"  # relative to ROOT, so the expected lines read like the ones users see
PASSWORD_ENV = {"MAILMON_TEST_PASSWORD": "pw-from-env"}

# file -> the exact problem lines, in file order; `{file}` stands for the path given to the loader and
# `{checks}` for the check names (the list grows with new check kinds).
INVALID = [
    ("invalid-keys-unknown-typo.yml",
     ["{file}:3: defaults.intervall: unknown key (allowed here: interval, timeout)"]),
    ("invalid-duration-space.yml",
     ["{file}:3: defaults.interval: '15 s' is not a duration: write a number and a unit, e.g. 500ms, 15s, 2m, 1h"]),
    ("invalid-duration-no-unit.yml",
     ["{file}:5: targets[0].interval: '15' is not a duration: write a number and a unit, e.g. 500ms, 15s, 2m, 1h"]),
    ("invalid-duration-zero.yml",
     ["{file}:6: targets[0].smtp.timeout: must be longer than zero"]),
    ("invalid-port-out-of-range.yml",
     ["{file}:7: targets[0].smtp.port: must be an integer between 1 and 65535, got '70000'"]),
    ("invalid-port-quoted-string.yml",
     ["{file}:6: targets[0].smtp.port: must be an integer between 1 and 65535, got '587' "
      "(a quoted string: remove the quotes)"]),
    ("invalid-tls-mode-ssl.yml",
     ["{file}:6: targets[0].smtp.tls: must be one of starttls, implicit, none, got 'ssl'"]),
    ("invalid-tls-ca-file-not-pem.yml",
     ["{file}:7: targets[0].tls.ca_file: CA file 'tests/configs/invalid-tls-ca-file-not-pem.yml' "
      "holds no usable certificate (NO_CERTIFICATE_OR_CRL_FOUND)"]),
    ("invalid-targets-duplicate-name.yml",
     ["{file}:9: targets[2].name: duplicate target name 'mx1' (first at targets[0])"]),
    ("invalid-yaml-duplicate-key.yml",
     ["{file}:5: targets[0].host: duplicate key"]),
    ("invalid-history-max-size-under-writer-floor.yml",
     ["{file}:4: history.max_size: must be at least 512KiB, got 307200 bytes"]),
    ("invalid-vantage-missing.yml",
     ["{file}:1: vantage: is required (it labels every series of this monitor)"]),
    ("invalid-targets-missing.yml",
     ["{file}:1: targets: is required: list at least one target"]),
    ("invalid-targets-empty-list.yml",
     ["{file}:2: targets: must be a non-empty list of targets"]),
    ("invalid-target-no-checks.yml",
     ["{file}:3: targets[0]: no checks: add at least one of {checks}"]),
    ("invalid-target-empty-mapping.yml",
     ["{file}:3: targets[0]: name is required",
      "{file}:3: targets[0]: host is required",
      "{file}:3: targets[0]: no checks: add at least one of {checks}"]),
    ("invalid-auth-imap-without-auth.yml",
     ["{file}:5: targets[0].imap: imap needs credentials: add an auth block to the target"]),
    ("invalid-auth-imap-auth-off.yml",
     ["{file}:9: targets[0].imap.auth: the imap check always logs in: auth cannot be off"]),
    ("invalid-auth-password-env-unset.yml",
     ["{file}:7: targets[0].auth.password_env: environment variable MAILMON_TEST_UNSET_PASSWORD is not set"]),
    ("invalid-auth-password-file-missing.yml",
     ["{file}:7: targets[0].auth.password_file: cannot read password file '/nonexistent/mailmon-test/password': "
      "No such file or directory"]),
    ("invalid-auth-both-passwords.yml",
     ["{file}:6: targets[0].auth: give exactly one of password_env, password_file or oauth2"]),
    ("invalid-auth-list-for-mapping.yml",
     ["{file}:6: targets[0].auth: must be a mapping with keys username, password_env, password_file, oauth2, "
      "mechanism"]),
    ("invalid-timing-check-timeout-over-interval.yml",
     ["{file}:7: targets[0].smtp.timeout: timeout (45s) must not be longer than interval (30s)"]),
    ("invalid-timing-defaults-timeout-over-interval.yml",
     ["{file}:4: defaults.timeout: timeout (20s) must not be longer than interval (10s)"]),
    ("invalid-yaml-syntax.yml",
     ["{file}:5: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow sequence started on line 4)"]),
    ("invalid-yaml-empty-file.yml",
     ["{file}: the file is empty"]),
    ("invalid-yaml-top-level-list.yml",
     ["{file}:1: the top level must be a mapping with keys vantage, listen, defaults, concurrency, probe_key, "
      "selfcheck, history, metrics, targets, changes, modules, targets_from"]),
    ("invalid-metrics-failure-series.yml",
     ["{file}:3: metrics.failure_series: must be one of all, on_failure, got 'lazy'"]),
    ("invalid-oauth2-two-grants.yml",
     ["{file}:9: targets[0].auth.oauth2: give exactly one of grant (client_credentials, refresh_token, "
      "service_account), token_file or token_command"]),
    ("invalid-oauth2-missing-client-id.yml",
     ["{file}:9: targets[0].auth.oauth2: grant client_credentials needs client_id (the application (client) ID)"]),
    ("invalid-oauth2-unreadable-key.yml",
     ["{file}:12: targets[0].auth.oauth2.client_certificate_file: cannot read certificate file "
      "'/nonexistent/mailmon-test/client.pem': No such file or directory"]),
    ("invalid-oauth2-microsoft-without-tenant.yml",
     ["{file}:10: targets[0].auth.oauth2.provider: provider microsoft needs tenant (the directory (tenant) ID or "
      "primary domain), or an explicit token_url"]),
    ("invalid-oauth2-password-too.yml",
     ["{file}:7: targets[0].auth.password_env: give either a password or oauth2, not both"]),
    ("invalid-oauth2-secret-env-unset.yml",
     ["{file}:12: targets[0].auth.oauth2.client_secret_env: environment variable MAILMON_TEST_UNSET_SECRET "
      "is not set"]),
    ("invalid-oauth2-http-token-url.yml",
     ["{file}:10: targets[0].auth.oauth2.token_url: 'http://idp.example.test/token' is not an https:// URL "
      "(tokens and client secrets travel over it)"]),
    ("invalid-oauth2-key-for-other-grant.yml",
     ["{file}:14: targets[0].auth.oauth2.refresh_token_file: does not apply to grant client_credentials (it is for "
      "grant refresh_token)"]),
    ("invalid-oauth2-mechanism.yml",
     ["{file}:7: targets[0].auth.mechanism: must be one of xoauth2, oauthbearer, got 'plain'"]),
    ("invalid-oauth2-service-account-not-json.yml",
     ["{file}:10: targets[0].auth.oauth2.service_account_file: is not a JSON service account key file"]),
    ("invalid-smtp-mail-from-without-rcpt-to.yml",
     ["{file}:6: targets[0].smtp: mail_from and rcpt_to go together (the MAIL/RCPT dry run needs both)"]),
    ("invalid-many-problems.yml",
     ["{file}:2: listen: 'localhost' is not HOST:PORT (e.g. 127.0.0.1:9917 or [::1]:9917)",
      "{file}:4: defaults.interval: '1 minute' is not a duration: write a number and a unit, e.g. 500ms, 15s, 2m, 1h",
      "{file}:9: targets[0].smtp.port: must be an integer between 1 and 65535, got '0'",
      "{file}:10: targets[0].smtp.tls: must be one of starttls, implicit, none, got 'ssl'",
      "{file}:11: targets[1]: host is required",
      "{file}:12: targets[1].hots: unknown key (allowed here: name, host, tls, auth, interval, timeout, {checks}, "
      "smtp_profiles, ip_family)",
      "{file}:13: targets[1].pop3: pop3 needs credentials: add an auth block to the target",
      "{file}:14: targets[2]: no checks: add at least one of {checks}",
      "{file}:14: targets[2].name: duplicate target name 'mx1' (first at targets[0])"]),
]


def expected(name: str, lines: list[str]) -> list[str]:
    path = str(CONFIGS / name)
    return [line.replace("{file}", path).replace("{checks}", ", ".join(CHECK_NAMES)) for line in lines]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m monitor ARGS` from the repository root, with a controlled environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("MAILMON_TEST_")}
    return subprocess.run([sys.executable, "-m", "monitor", *args], cwd=ROOT, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=60)


def load_valid(name: str) -> Config:
    return load(str(CONFIGS / name), environ=PASSWORD_ENV)


S = TypeVar("S", bound=CheckBase)


def check_of(config: Config, target: str, check: str) -> CheckSettings:
    found = config.target(target)
    assert found is not None, f"no target {target!r}"
    return next(c for c in found.checks if c.name == check)


def settings_of(config: Config, target: str, kind: type[S]) -> S:
    """The target's first check of the settings type `kind`."""
    found = config.target(target)
    assert found is not None, f"no target {target!r}"
    settings = found.first(kind)
    assert settings is not None, f"target {target!r} has no {kind.name} check"
    return settings


@pytest.fixture(autouse=True)
def _at_repository_root(monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative paths in configs and expectations resolve against the repository root, as for the CLI."""
    monkeypatch.chdir(ROOT)


def test_every_invalid_config_file_is_in_the_table() -> None:
    """No invalid-*.yml file sits in tests/configs without an expectation."""
    on_disk = {p.name for p in (ROOT / CONFIGS).glob("invalid-*.yml")}
    assert on_disk == {name for name, _ in INVALID}


@pytest.mark.parametrize(("name", "lines"), INVALID, ids=[name for name, _ in INVALID])
def test_load_reports_exact_problems(name: str, lines: list[str]) -> None:
    """`load` raises ConfigError whose problems are exactly the expected lines, in file order."""
    with pytest.raises(ConfigError) as caught:
        load(str(CONFIGS / name), environ=PASSWORD_ENV)
    assert caught.value.problems == expected(name, lines)


@pytest.mark.slow  # a `mailmon` process per run
@pytest.mark.parametrize(("name", "lines"), INVALID, ids=[name for name, _ in INVALID])
def test_validate_command_reports_exact_problems(name: str, lines: list[str]) -> None:
    """`mailmon validate` exits 2 and prints every problem line on stderr, with no traceback."""
    done = run_cli("validate", "--config", str(CONFIGS / name), env=PASSWORD_ENV)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert done.stdout == ""
    err = done.stderr.splitlines()
    count = len(lines)
    assert err[0] == f"mailmon: configuration is not valid ({count} problem{'s' if count != 1 else ''}):"
    assert err[1:] == ["  " + line for line in expected(name, lines)]


def test_all_problems_are_reported_at_once() -> None:
    """A config with many faults reports each of them, each on its own line."""
    with pytest.raises(ConfigError) as caught:
        load(str(CONFIGS / "invalid-many-problems.yml"))
    problems = caught.value.problems
    assert len(problems) == 9
    line_numbers = [int(p.split(":")[1]) for p in problems]
    assert line_numbers == [2, 4, 9, 10, 11, 12, 13, 14, 14]


@pytest.mark.slow  # a `mailmon` process per run
def test_unreadable_config_file_is_a_config_error() -> None:
    """A config path that does not exist gives one plain problem, and the CLI exits 2 without a traceback."""
    with pytest.raises(ConfigError) as caught:
        load("tests/configs/no-such-file.yml")
    assert caught.value.problems == ["tests/configs/no-such-file.yml: cannot read the config file: "
                                     "No such file or directory"]
    done = run_cli("validate", "--config", "tests/configs/no-such-file.yml")
    assert done.returncode == 2
    assert "Traceback" not in done.stdout + done.stderr


def test_non_utf8_config_file_is_a_config_error(tmp_path: Path) -> None:
    """A config file that is not UTF-8 text gives one plain problem."""
    path = tmp_path / "latin1.yml"
    path.write_bytes("vantage: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert caught.value.problems == [f"{path}: the config file is not UTF-8 text"]


def test_control_character_is_reported_with_its_line() -> None:
    """A NUL byte in the text is a YAML error on the line it sits on."""
    with pytest.raises(ConfigError) as caught:
        load_text("vantage: test\ntargets: \x00\n", "c.yml")
    assert caught.value.problems == ["c.yml:2: not valid YAML: character #x0000: special characters are not allowed"]


@pytest.mark.slow
def test_deeply_nested_yaml_is_a_config_error() -> None:
    """Pathological nesting is reported as a problem, not a RecursionError."""
    with pytest.raises(ConfigError) as caught:
        load_text("vantage: " + "[" * 20000 + "]" * 20000 + "\n", "deep.yml")
    assert caught.value.problems == ["deep.yml: not valid YAML: nested too deeply"]


def test_only_unknown_top_level_keys_still_reports_what_is_missing() -> None:
    """A top level with nothing but a typo also reports the missing vantage and targets."""
    with pytest.raises(ConfigError) as caught:
        load_text("vantge: test\n", "c.yml")
    assert caught.value.problems == [
        "c.yml:1: vantge: unknown key (allowed here: vantage, listen, defaults, concurrency, probe_key, selfcheck, "
        "history, metrics, targets, changes, modules, targets_from)",
        "c.yml:1: vantage: is required (it labels every series of this monitor)",
        "c.yml:1: targets: is required: list at least one target",
    ]


def test_timeout_over_interval_in_defaults_is_reported_once_for_all_targets() -> None:
    """Inherited timings are judged where they are set, not once per check that inherits them."""
    text = "vantage: v\ndefaults:\n  interval: 10s\n  timeout: 20s\ntargets:\n" + "".join(
        f"  - name: t{i}\n    host: h{i}\n    smtp:\n" for i in range(50))
    with pytest.raises(ConfigError) as caught:
        load_text(text, "c.yml")
    assert caught.value.problems == ["c.yml:4: defaults.timeout: timeout (20s) must not be longer than interval (10s)"]


def test_timeout_over_interval_at_target_level() -> None:
    """A target interval shorter than the inherited timeout is reported at the target's interval."""
    text = "vantage: v\ntargets:\n  - name: a\n    host: h\n    interval: 10s\n    smtp:\n"
    with pytest.raises(ConfigError) as caught:
        load_text(text, "c.yml")
    assert caught.value.problems == ["c.yml:5: targets[0].interval: timeout (15s) must not be longer than interval "
                                     "(10s)"]


def test_check_override_can_repair_inherited_timing() -> None:
    """A check that sets a longer interval than the target's timeout is fine."""
    text = "vantage: v\ntargets:\n  - name: a\n    host: h\n    timeout: 30s\n    smtp:\n      interval: 1m\n"
    config = load_text(text, "c.yml")
    assert check_of(config, "a", "smtp").timeout == 30.0


def test_minimal_config_gets_defaults() -> None:
    """The smallest valid config gets the default listen address, timings, concurrency, TLS mode and port."""
    config = load_valid("valid-minimal.yml")
    assert config.vantage == "test"
    assert config.listen == DEFAULT_LISTEN == "127.0.0.1:9917"
    assert (config.interval, config.timeout, config.concurrency) == (60.0, 15.0, 64)
    assert config.failure_series == "on_failure"
    assert config.source == str(CONFIGS / "valid-minimal.yml")
    [target] = config.targets
    assert (target.name, target.host, target.auth) == ("mx1", "mx1.example.test", None)
    assert target.server_name == "mx1.example.test"
    assert target.tls.ca_file is None
    assert target.checks == (SmtpSettings(port=587, tls_mode="starttls", interval=60.0, timeout=15.0, use_auth=False),)


@pytest.mark.parametrize(("target", "check", "tls_mode", "port"), [
    ("submission", "smtp", "starttls", 587),
    ("smtps", "smtp", "implicit", 465),
    ("mx", "smtp", "none", 25),
    ("mailbox", "imap", "implicit", 993),
    ("mailbox", "pop3", "implicit", 995),
    ("mailbox-plain", "imap", "starttls", 143),
    ("mailbox-plain", "pop3", "starttls", 1110),
])
def test_port_defaults_follow_the_tls_mode(target: str, check: str, tls_mode: str, port: int) -> None:
    """A check without `port` gets the well-known port of its protocol and TLS mode; an explicit port wins."""
    settings = check_of(load_valid("valid-full.yml"), target, check)
    assert (settings.tls_mode, settings.port) == (tls_mode, port)


def test_pop3_starttls_default_port_is_110() -> None:
    """POP3 with STARTTLS and no port uses 110."""
    text = ("vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            "      password_env: P\n    pop3:\n      tls: starttls\n")
    assert check_of(load_text(text, "c.yml", environ={"P": "x"}), "a", "pop3").port == 110


@pytest.mark.parametrize(("target", "check", "interval", "timeout"), [
    ("submission", "smtp", 120.0, 20.0),  # from defaults
    ("smtps", "smtp", 30.0, 20.0),        # target interval, defaults timeout
    ("mailbox", "imap", 120.0, 5.0),      # target timeout
    ("mailbox", "pop3", 600.0, 60.0),     # check overrides both
])
def test_interval_and_timeout_are_inherited_and_overridden(target: str, check: str, interval: float,
                                                           timeout: float) -> None:
    """Each check takes interval/timeout from itself, else its target, else `defaults`."""
    settings = check_of(load_valid("valid-full.yml"), target, check)
    assert (settings.interval, settings.timeout) == (interval, timeout)


def test_full_config_top_level_settings() -> None:
    """listen, concurrency, defaults, TLS server name, mailbox, HELO name and recipients are read as written."""
    config = load_valid("valid-full.yml")
    assert (config.vantage, config.listen, config.concurrency) == ("dc1", "[::1]:9920", 8)
    assert config.failure_series == "all"
    assert (config.interval, config.timeout) == (120.0, 20.0)
    assert [t.name for t in config.targets] == ["submission", "smtps", "mx", "mailbox", "mailbox-plain"]
    smtps = config.target("smtps")
    assert smtps is not None and smtps.server_name == "mail.example.test"
    assert settings_of(config, "mailbox", ImapSettings).mailbox == "Probes"
    assert settings_of(config, "mailbox-plain", ImapSettings).mailbox == "INBOX"
    mx = settings_of(config, "mx", SmtpSettings)
    assert mx.helo_name == "monitor.example.test"
    assert mx.mail_from == "probe@example.test"
    assert mx.rcpt_to == ("postmaster@example.test", "abuse@example.test")


def test_password_from_environment() -> None:
    """password_env reads the password from the given environment, and auth is on for the target's checks."""
    config = load_valid("valid-full.yml")
    target = config.target("submission")
    assert target is not None and target.auth is not None
    assert target.auth.username == "probe@example.test"
    assert target.auth.password.reveal() == "pw-from-env"
    assert check_of(config, "submission", "smtp").use_auth is True


def test_password_from_file_strips_one_trailing_newline(tmp_path: Path) -> None:
    """password_file content loses exactly one trailing newline (an editor's), nothing more."""
    secret = tmp_path / "password"
    secret.write_text("  s3cret \n\n")
    text = (f"vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            f"      password_file: {secret}\n    imap:\n")
    target = load_text(text, "c.yml", environ={}).targets[0]
    assert target.auth is not None
    assert target.auth.password.reveal() == "  s3cret \n"


def test_password_file_with_crlf_is_stripped(tmp_path: Path) -> None:
    """A Windows line ending after the password is removed as a whole."""
    secret = tmp_path / "password"
    secret.write_bytes(b"s3cret\r\n")
    text = (f"vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            f"      password_file: {secret}\n    imap:\n")
    target = load_text(text, "c.yml", environ={}).targets[0]
    assert target.auth is not None and target.auth.password.reveal() == "s3cret"


def test_empty_password_is_rejected(tmp_path: Path) -> None:
    """A password file holding only a newline is reported, not used as an empty password."""
    secret = tmp_path / "password"
    secret.write_text("\n")
    text = (f"vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            f"      password_file: {secret}\n    imap:\n")
    with pytest.raises(ConfigError) as caught:
        load_text(text, "c.yml", environ={})
    assert caught.value.problems == ["c.yml:7: targets[0].auth.password_file: the password is empty"]


def test_environ_argument_is_the_only_source_of_env_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an explicit environ, the process environment is not consulted."""
    monkeypatch.setenv("MAILMON_TEST_PASSWORD", "from-process")
    text = ("vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            "      password_env: MAILMON_TEST_PASSWORD\n    imap:\n")
    with pytest.raises(ConfigError):
        load_text(text, "c.yml", environ={})
    target = load_text(text, "c.yml").targets[0]
    assert target.auth is not None and target.auth.password.reveal() == "from-process"


def test_secret_never_shows_the_password() -> None:
    """repr, str, f-strings and the repr of the config holding it all hide the password."""
    config = load_valid("valid-full.yml")
    target = config.target("submission")
    assert target is not None and target.auth is not None
    secret = target.auth.password
    for shown in (repr(secret), str(secret), f"{secret}", repr(target.auth), repr(target), repr(config)):
        assert "pw-from-env" not in shown
    assert "********" in repr(secret)
    assert secret == Secret("pw-from-env") and secret != Secret("other")


def test_smtp_without_auth_block_is_an_mx_check() -> None:
    """An smtp check with `tls: none` and no auth block probes port 25 without AUTH."""
    config = load_valid("valid-mx-no-auth.yml")
    [target] = config.targets
    assert target.auth is None
    assert target.checks == (SmtpSettings(port=25, tls_mode="none", interval=60.0, timeout=15.0, use_auth=False),)


def test_smtp_auth_can_be_turned_off_per_check() -> None:
    """`auth: false` on an smtp check skips AUTH even though the target has credentials."""
    text = ("vantage: v\ntargets:\n  - name: a\n    host: h\n    auth:\n      username: u\n"
            "      password_env: P\n    smtp:\n      auth: false\n")
    assert check_of(load_text(text, "c.yml", environ={"P": "x"}), "a", "smtp").use_auth is False


@pytest.mark.slow
def test_five_thousand_targets_load() -> None:
    """A generated config with 5,000 targets loads completely."""
    text = "vantage: big\ntargets:\n" + "".join(
        f"  - name: mx{i}\n    host: mx{i}.example.test\n    smtp:\n      tls: none\n" for i in range(5000))
    config = load_text(text, "big.yml", environ={})
    assert len(config.targets) == 5000
    assert len({t.name for t in config.targets}) == 5000
    assert config.targets[-1].checks[0].port == 25


@pytest.mark.slow  # a `mailmon` process per run
def test_validate_command_accepts_a_good_config() -> None:
    """`mailmon validate` on a valid config exits 0 and summarises it on stdout."""
    done = run_cli("validate", "--config", str(CONFIGS / "valid-full.yml"), env=PASSWORD_ENV)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{CONFIGS / 'valid-full.yml'}: OK (5 targets, 7 checks, vantage dc1)\n"
    assert "Traceback" not in done.stderr


@pytest.mark.slow  # a `mailmon` process per run
def test_validate_warns_about_a_login_timeout_too_short_for_delayed_failures() -> None:
    """`validate` warns (exit 0) about a check that logs in with a timeout below common failed-login delays."""
    done = run_cli("validate", "--config", str(CONFIGS / "valid-full.yml"), env=PASSWORD_ENV)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if ": warning: " in line]
    assert warnings == [
        f"{CONFIGS / 'valid-full.yml'}: warning: target mailbox, check imap: timeout 5s is too short for servers "
        "that delay failed logins (3-5 s is common, Dovecot up to 15 s): a wrong password would end as "
        "auth/timeout; 10s covers common delays, 20s Dovecot's maximum"]


@pytest.mark.slow  # a `mailmon` process per run
def test_no_login_timeout_warning_for_a_check_without_login(tmp_path: Path) -> None:
    """A short timeout on a check that does not log in (an MX on port 25) is not warned about."""
    path = tmp_path / "mx.yml"
    path.write_text("vantage: v\ntargets:\n  - name: mx\n    host: mx.example.test\n    timeout: 2s\n"
                    "    smtp:\n      tls: none\n")
    done = run_cli("validate", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr
