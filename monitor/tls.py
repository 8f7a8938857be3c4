"""TLS client contexts that report, per probe, when the handshake finished and what it negotiated.

asyncio performs TLS handshakes inside the transport, so neither aiosmtplib nor aioimaplib can tell us
when the handshake ended (implicit TLS on port 465 reads the banner in the same call). The standard
library lets a context choose its `SSLObject` class: ours tells the probe that owns the running task,
found through a context variable, the moment `do_handshake()` succeeds.
"""

from __future__ import annotations

import contextvars
import functools
import ssl
import warnings
from collections.abc import Callable

from monitor.result import TlsFacts

__all__ = ["client_context", "facts_of", "handshake_observer"]

# Set by the runner to the current probe's callback; protocol callbacks run in the context of the task
# that created the transport, so the hook below sees the probe that is connecting.
handshake_observer: contextvars.ContextVar[Callable[[TlsFacts], None] | None] = contextvars.ContextVar(
    "handshake_observer", default=None)


class _ObservedSSLObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        observer = handshake_observer.get()
        if observer is not None:
            observer(facts_of(self))


def facts_of(tls: ssl.SSLObject | ssl.SSLSocket) -> TlsFacts:
    """Version, cipher and certificate expiry of an established connection."""
    cipher = tls.cipher()
    der = tls.getpeercert(binary_form=True)
    return TlsFacts(
        version=tls.version(),
        cipher=cipher[0] if cipher else None,
        cert_not_after=_not_after(der, tls) if der else None,
    )


# A monitor sees the same few certificates on every probe. Decoding one into a dict and parsing its date
# (`strptime`) cost ~14 us per handshake; the DER bytes are a cheap key. This caches only what the bytes say:
# OpenSSL still verifies the chain, the name and the validity period on every handshake.
_NOT_AFTER: dict[bytes, float | None] = {}
_NOT_AFTER_MAX = 256


def _not_after(der: bytes, tls: ssl.SSLObject | ssl.SSLSocket) -> float | None:
    """The expiry of the peer certificate `der` (the one `tls` holds), decoded once per distinct certificate."""
    try:
        return _NOT_AFTER[der]
    except KeyError:
        pass
    cert = tls.getpeercert()  # a dict only for verified peers; we never skip verification
    value = cert.get("notAfter") if cert else None
    not_after = float(ssl.cert_time_to_seconds(value)) if isinstance(value, str) else None
    if len(_NOT_AFTER) >= _NOT_AFTER_MAX:  # renewed certificates pile up in a long run: start afresh
        _NOT_AFTER.clear()
    _NOT_AFTER[der] = not_after
    return not_after


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    _VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2,
                 "1.3": ssl.TLSVersion.TLSv1_3}


@functools.lru_cache(maxsize=256)
def client_context(ca_file: str | None, tls_min: str | None = None, tls_max: str | None = None) -> ssl.SSLContext:
    """A verifying client context (system store or `ca_file`), shared by every probe that uses it.

    Building a context loads the CA store, which costs milliseconds: cache one per CA file (and TLS version
    range of a client profile) rather than build one per probe. Contexts are not changed after creation,
    so sharing is safe.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    with warnings.catch_warnings():
        # Python deprecates TLS 1.0/1.1; imitating an old client is exactly what a profile is for.
        warnings.simplefilter("ignore", DeprecationWarning)
        if tls_min is not None:
            if _VERSIONS[tls_min] < ssl.TLSVersion.TLSv1_2:
                # Old protocols are only allowed at OpenSSL security level 0.
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = _VERSIONS[tls_min]
        if tls_max is not None:
            context.maximum_version = _VERSIONS[tls_max]
    context.sslobject_class = _ObservedSSLObject
    return context
