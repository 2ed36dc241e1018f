"""The `crossway` command: a typer app, and `main()`, the console script.

EXTENSION POINT — adding a sub-command:

- a single command: in `crossway/cli/<name>.py` define
  `def register(app: typer.Typer) -> None` that does `@app.command("name")`;
- a group (`crossway config get|put|history`): define `app = typer.Typer()`
  there and `register` does `app.add_typer(group, name="config")`;

then add the module's `register` to `COMMANDS` at the bottom of this file.
Every option takes its value from a `CROSSWAY_<OPTION>` environment variable
too (`envvar=`), and failures go through `crossway.cli._common.fail` (one
line on stderr, non-zero exit, never a traceback).

`main()` runs click in non-standalone mode so that usage errors (a bad flag
value, an unknown option) are printed by us on one line instead of in a
multi-line box.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from crossway import __version__
from crossway.cli import config as config_cli
from crossway.cli import coord as coord_cli
from crossway.cli import gateway as gateway_cli
from crossway.cli import registry as registry_cli
from crossway.cli import stats as stats_cli
from crossway.cli import trace as trace_cli
from crossway.cli import up as up_cli
from crossway.cli._common import EXIT_INTERRUPTED, fail, fail_unexpected, usage_error
from crossway.core.durations import parse_duration
from crossway.core.errors import CrosswayError, InvalidArgument
from crossway.server.logs import default_log_format
from crossway.server.run import run_server
from crossway.server.settings import DEFAULT_PORT, ServerSettings, parse_endpoints

app = typer.Typer(
    name="crossway",
    help="Crossway: service registry, configuration, coordination and traffic for Python.",
    add_completion=False,
    pretty_exceptions_enable=False,
)


class StoreKind(enum.StrEnum):
    sqlite = "sqlite"
    memory = "memory"
    etcd = "etcd"


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class LogFormat(enum.StrEnum):
    json = "json"
    text = "text"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"crossway {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Crossway: service registry, configuration, coordination and traffic for Python."""
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())


@app.command("server")
def server(
    data_dir: Annotated[
        Path,
        typer.Option(envvar="CROSSWAY_DATA_DIR", help="Directory of the sqlite store."),
    ] = Path(".crossway"),
    port: Annotated[
        int,
        typer.Option(envvar="CROSSWAY_PORT", min=0, max=65535, help="HTTP port (0: any free one)."),
    ] = DEFAULT_PORT,
    bind: Annotated[
        str,
        typer.Option(envvar="CROSSWAY_BIND", help="Address to listen on."),
    ] = "127.0.0.1",
    store: Annotated[
        StoreKind,
        typer.Option(envvar="CROSSWAY_STORE", help="Where state lives (memory: gone on exit)."),
    ] = StoreKind.sqlite,
    etcd_endpoints: Annotated[
        str,
        typer.Option(envvar="CROSSWAY_ETCD_ENDPOINTS", help="Comma-separated etcd URLs."),
    ] = "http://127.0.0.1:2379",
    token: Annotated[
        str | None,
        typer.Option(
            envvar="CROSSWAY_TOKEN",
            help="Require 'Authorization: Bearer TOKEN' (prefer the environment variable).",
            show_default=False,
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            envvar="CROSSWAY_INSECURE",
            help="Allow a non-loopback --bind without a token.",
        ),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option(envvar="CROSSWAY_LOG_LEVEL", help="Least severe level logged.")
    ] = LogLevel.info,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            envvar="CROSSWAY_LOG_FORMAT",
            help="json or text  [default: text at a terminal, else json]",
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        str,
        typer.Option(
            envvar="CROSSWAY_SHUTDOWN_GRACE", help="Time in-flight requests get on shutdown."
        ),
    ] = "10s",
    store_timeout: Annotated[
        str,
        typer.Option(
            envvar="CROSSWAY_STORE_TIMEOUT", help="How long start-up waits for the store to answer."
        ),
    ] = "10s",
) -> None:
    """Run the control plane: HTTP API, health probes and metrics on one port."""
    command = "crossway server"
    try:
        settings = ServerSettings(
            data_dir=data_dir,
            port=port,
            bind=bind,
            store=store.value,
            etcd_endpoints=parse_endpoints(etcd_endpoints),
            token=token,
            insecure=insecure,
            log_level=log_level.value,
            log_format=log_format.value if log_format else default_log_format(),
            shutdown_grace=_duration("--shutdown-grace", shutdown_grace),
            store_timeout=_duration("--store-timeout", store_timeout),
        )
        run_server(settings)
    except CrosswayError as exc:
        fail(command, exc.message)
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except (typer.Exit, typer.TyperException):
        raise
    except Exception as exc:
        fail_unexpected(command, exc)


def _duration(flag: str, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise InvalidArgument(f"{flag}: {exc}") from None


Register = Callable[[typer.Typer], None]

COMMANDS: tuple[Register, ...] = (
    gateway_cli.register,
    registry_cli.register,
    config_cli.register,
    coord_cli.register,
    trace_cli.register,
    stats_cli.register,
    up_cli.register,
)
"""Sub-command modules' `register` functions (see the module header)."""

for _register in COMMANDS:
    _register(app)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The `crossway` console script: run the command line, exit with its status."""
    command = typer.main.get_command(app)
    args = list(argv) if argv is not None else None
    try:
        result = command.main(args=args, prog_name="crossway", standalone_mode=False)
    except typer.TyperException as exc:
        sys.exit(usage_error(exc))
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
