"""The container image's HEALTHCHECK: GET /-/healthy on the address `mailmon run` actually listens on.

The address is the one the running monitor was given: its `--listen` flag, else the `listen` key of its `--config`
file, else mailmon's default; HTTPS when its `--web.config.file` sets up TLS. The monitor is PID 1 in the container;
another PID can be given as the first argument. A wildcard address (0.0.0.0, ::) is asked on loopback. Exit 0
healthy, 1 not (the reason on stderr, one line: a health check's output is kept in the container's state).
Standard library and PyYAML only (the image has both); imports nothing of mailmon, so that it answers even when
the monitor's own modules would not load.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request

import yaml

DEFAULT_LISTEN = "0.0.0.0:9917"  # monitor/config.py's DEFAULT_LISTEN
TIMEOUT = 4.0  # below the HEALTHCHECK's --timeout=5s, so a slow answer is reported, not killed


def command_line(pid: str) -> list[str]:
    """The process's arguments, from /proc."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        return [arg.decode(errors="replace") for arg in handle.read().split(b"\0") if arg]


def option(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` (the last one wins, as with argparse)."""
    value = None
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            value = args[index + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def yaml_key(path: str | None, key: str) -> object:
    """A top-level key of a YAML file (None when absent or unreadable: the monitor reports its own config errors)."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def url(args: list[str]) -> str:
    """The health URL of the monitor started with `args`."""
    listen = option(args, "--listen") or yaml_key(option(args, "--config"), "listen") or DEFAULT_LISTEN
    host, _, port = str(listen).rpartition(":")
    host = host.strip("[]")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    scheme = "https" if yaml_key(option(args, "--web.config.file"), "tls_server_config") else "http"
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}/-/healthy"


def main(argv: list[str]) -> int:
    """Probe once; 0 healthy, 1 not."""
    pid = argv[1] if len(argv) > 1 else "1"
    try:
        target = url(command_line(pid))
    except OSError as exc:
        print(f"healthcheck: cannot read the monitor's command line (PID {pid}): {exc.strerror}", file=sys.stderr)
        return 1
    # Liveness, not identity: the monitor's own certificate may name a host this loopback URL does not.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(target, timeout=TIMEOUT, context=context) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code  # 401: basic auth is on, and the server that asks for it is up
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {target}: {getattr(exc, 'reason', exc)}", file=sys.stderr)
        return 1
    if status in (200, 401):
        return 0
    print(f"healthcheck: {target}: HTTP {status}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
