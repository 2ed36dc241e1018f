"""`crossway gateway`: run the API gateway.

    crossway gateway --control-plane http://127.0.0.1:7700
    crossway gateway --config gateway.yaml [--port 7780] [--admin-port 7790] [--workers N]
    crossway gateway --config gateway.yaml --tls-cert cert.pem --tls-key key.pem
    crossway gateway --control-plane URL --access-log sample:0.1 [--no-telemetry]
    crossway gateway --config gateway.yaml --redis-url redis://127.0.0.1:6379/0

Routes come from the control plane (`PUT /v1/routes/{name}`, followed live)
or from a YAML file with the same schema; endpoints come from the control
plane's discovery. With both flags the file gives the routes and the control
plane the endpoints. With a control plane the gateway pushes golden signals
and spans to it (`--no-telemetry` turns that off); `--access-log` writes
JSON lines on stdout (`off`, `full`, or `sample:R`). `--workers N` runs N
processes sharing the port (SO_REUSEPORT); the admin port is served by the
first. `--redis-url` (or `redis_url:` in the file) is the Redis that routes'
global rate limits count on. A bad config file is one line on stderr naming
the file, line and field, and exit status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from crossway.cli._common import fail, fail_unexpected
from crossway.core.durations import parse_duration
from crossway.core.errors import CrosswayError
from crossway.proxy.run import GatewaySettings, run_gateway

COMMAND = "crossway gateway"


def register(app: typer.Typer) -> None:
    app.command("gateway")(gateway)


def gateway(
    control_plane: Annotated[
        str | None,
        typer.Option("--control-plane", envvar="CROSSWAY_CONTROL_PLANE", help="Control plane URL."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", envvar="CROSSWAY_GATEWAY_CONFIG", help="Routes YAML file."),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", envvar="CROSSWAY_GATEWAY_HOST", help="Proxy address.")
    ] = "0.0.0.0",
    port: Annotated[
        int, typer.Option("--port", envvar="CROSSWAY_GATEWAY_PORT", help="Proxy port.")
    ] = 7780,
    admin_port: Annotated[
        int,
        typer.Option("--admin-port", envvar="CROSSWAY_ADMIN_PORT", help="Admin port (loopback)."),
    ] = 7790,
    workers: Annotated[
        int,
        typer.Option("--workers", envvar="CROSSWAY_WORKERS", min=1, help="Processes to run."),
    ] = 1,
    tls_cert: Annotated[
        Path | None,
        typer.Option("--tls-cert", envvar="CROSSWAY_TLS_CERT", help="PEM certificate chain."),
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", envvar="CROSSWAY_TLS_KEY", help="PEM private key.")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="CROSSWAY_TOKEN", help="Control plane token.")
    ] = None,
    telemetry: Annotated[
        bool,
        typer.Option(
            "--telemetry/--no-telemetry",
            envvar="CROSSWAY_TELEMETRY",
            help="Push golden signals and spans to the control plane.",
        ),
    ] = True,
    access_log: Annotated[
        str | None,
        typer.Option(
            "--access-log",
            envvar="CROSSWAY_GATEWAY_ACCESS_LOG",
            help="Access log on stdout: off, full or sample:R (default: the file's, else off).",
        ),
    ] = None,
    stats_interval: Annotated[
        str,
        typer.Option(
            "--stats-interval", envvar="CROSSWAY_STATS_INTERVAL", help="Golden-signal push period."
        ),
    ] = "10s",
    trace_sample_rate: Annotated[
        float,
        typer.Option(
            "--trace-sample-rate",
            envvar="CROSSWAY_TRACE_SAMPLE_RATE",
            help="Share of new traces recorded (a client's decision is kept).",
        ),
    ] = 1.0,
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            envvar="CROSSWAY_GATEWAY_REDIS_URL",
            help="Redis for global rate limits (redis://host:6379/0).",
        ),
    ] = None,
) -> None:
    """Run the API gateway (HTTP/1.1 reverse proxy with routes from the control plane)."""
    if control_plane is None and config is None:
        fail(COMMAND, "give --control-plane URL or --config FILE")
    settings = GatewaySettings(
        control_plane=control_plane,
        config_path=config,
        token=token,
        host=host,
        port=port,
        admin_port=admin_port,
        workers=workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
        telemetry=telemetry,
        stats_interval=_interval(stats_interval),
        trace_sample_rate=trace_sample_rate,
        access_log=access_log,
        redis_url=redis_url,
    )
    try:
        run_gateway(settings)
    except CrosswayError as exc:
        fail(COMMAND, exc.message)
    except OSError as exc:
        fail(COMMAND, f"cannot listen: {exc.strerror or exc}")
    except Exception as exc:
        fail_unexpected(COMMAND, exc)


def _interval(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(COMMAND, f"--stats-interval: {exc}")
