"""The `tls` block of a target (and a module"s ca_file / server_name): the CA bundle is proved usable here,
with file:line, rather than failing every probe at run time."""

from __future__ import annotations

import ssl

import yaml

from monitor.config.auth import whose
from monitor.config.model import TlsSettings
from monitor.config.reader import YamlReader, get

__all__ = ["ca_file_problem", "load_tls", "load_tls_entries"]


def load_tls(reader: YamlReader, node: yaml.Node, path: str) -> TlsSettings:
    return load_tls_entries(reader, reader.mapping(node, path, ("ca_file", "server_name")), path)


def ca_file_problem(ca_file: str) -> str | None:
    """Why `ca_file` cannot serve as a CA bundle, or None. Caught here, a bad bundle would otherwise fail
    every probe at run time as a TLS error, blaming the server for a fault of the monitor's own setup."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_file)
    except ssl.SSLError as exc:
        return f"CA file {ca_file!r} holds no usable certificate ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read CA file {ca_file!r}: {exc.strerror}{whose(exc)}"
    return None



def load_tls_entries(reader: YamlReader, entries: dict[str, tuple[yaml.Node, yaml.Node]], path: str) -> TlsSettings:
    """ca_file and server_name given beside other keys (a module's), checked as a target's `tls` block is."""
    ca_file = get(reader, entries, "ca_file", path, reader.string, None)
    if ca_file is not None:
        if ca_file not in reader.ca_files:
            reader.ca_files[ca_file] = ca_file_problem(ca_file)
        problem = reader.ca_files[ca_file]
        if problem is not None:
            reader.problem(entries["ca_file"][1], f"{path}.ca_file", problem)
    return TlsSettings(ca_file=ca_file, server_name=get(reader, entries, "server_name", path, reader.string, None))
