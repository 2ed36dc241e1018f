# TLS termination for the gateway's listener.
#
# Theory of operation
# -------------------
# `server_context` builds one `ssl.SSLContext` for a listener from a
# certificate chain and key in PEM files. Further certificates can be served
# by name (SNI): `sni` maps a server name to its own (cert, key) pair; a
# ClientHello naming one of them switches the connection to that context,
# anything else gets the default certificate. HTTP/1.1 is advertised over
# ALPN so a later HTTP/2 listener can add "h2" in one place.
#
# Invariants
# ----------
# - Contexts are built once, when the listener starts; a handshake only
#   looks a name up in a dict.
# - TLS 1.2 is the floor; a bad file raises `InvalidArgument` naming it.
from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from pathlib import Path

from crossway.core.errors import InvalidArgument

CertPair = tuple[Path, Path]


def server_context(
    *, cert: Path, key: Path, sni: Mapping[str, CertPair] | None = None
) -> ssl.SSLContext:
    """The listener's context; raises InvalidArgument if a file cannot be used."""
    default = _context(cert, key)
    if sni:
        by_name = {name.lower(): _context(c, k) for name, (c, k) in sni.items()}
        default.sni_callback = _chooser(by_name)
    return default


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as error:
        raise InvalidArgument(f"cannot load certificate {cert} / key {key}: {error}") from None
    return context


def _chooser(
    by_name: dict[str, ssl.SSLContext],
) -> Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]:
    def choose(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        context = by_name.get(name.lower()) if name else None
        if context is not None:
            sock.context = context

    return choose
