from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from crossway.balance import Endpoint
from crossway.core.clock import SystemClock
from crossway.core.errors import InvalidArgument
from crossway.proxy.clusters import Clusters
from crossway.proxy.gateway import Gateway
from crossway.proxy.routes.config import GatewayConfig
from crossway.proxy.routes.model import decode_route
from crossway.proxy.server import ProxyServer
from crossway.proxy.tls import server_context
from crossway.proxy.upstream import UpstreamPool

from .upstreams import uvicorn_upstream

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def make_cert(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}"),
            *("-addext", f"subjectAltName=DNS:{name},IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def route_to(port: int) -> Gateway:
    doc = '{"match": {"path_prefix": "/"}, "backends": [{"service": "svc"}]}'
    clusters = Clusters(clock=SystemClock())
    clusters.update("svc", [Endpoint("e", "127.0.0.1", port)])
    return Gateway(GatewayConfig({"r": decode_route(doc)}), clusters=clusters, pool=UpstreamPool())


async def test_tls_is_terminated_and_the_upstream_hears_https(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path, "localhost")
    async with uvicorn_upstream() as up:
        gw = route_to(up)
        server = ProxyServer(gw)
        port = await server.start("127.0.0.1", 0, tls=server_context(cert=cert, key=key))
        trust = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trust) as client:
            answer = await client.get(f"https://127.0.0.1:{port}/headers")
        await server.stop()
        gw.pool.close()
    assert answer.status_code == 200
    assert "x-forwarded-proto: https" in answer.text.split("\n")


async def test_sni_picks_the_certificate_by_name(tmp_path: Path) -> None:
    default = make_cert(tmp_path, "default.test")
    other = make_cert(tmp_path, "other.test")
    tls = server_context(cert=default[0], key=default[1], sni={"other.test": other})
    server = ProxyServer(route_to(1))
    port = await server.start("127.0.0.1", 0, tls=tls)
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE

    async def served_cert(name: str) -> bytes:
        _, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname=name
        )
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return bytes(der)

    def der_of(path: Path) -> bytes:
        return ssl.PEM_cert_to_DER_cert(path.read_text())

    assert await served_cert("other.test") == der_of(other[0])
    assert await served_cert("unknown.test") == der_of(default[0])
    await server.stop()


def test_a_bad_certificate_file_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(InvalidArgument, match=r"bogus\.pem"):
        server_context(cert=bogus, key=bogus)
