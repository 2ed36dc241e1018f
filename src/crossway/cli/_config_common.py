"""What the `crossway config` commands share: options, the key's address, the
author-signing client, the one-line failure and the table printer."""

from __future__ import annotations

import getpass
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from crossway.cli._common import fail
from crossway.cli._http import CliFailure, ControlPlane

Namespace = Annotated[
    str, typer.Option("--namespace", "-n", envvar="CROSSWAY_NAMESPACE", help="Environment.")
]
Group = Annotated[str, typer.Option("--group", "-g", help="Group of the key.")]
Key = Annotated[str, typer.Argument(help="key, group/key or namespace/group/key")]
Message = Annotated[str | None, typer.Option("--message", "-m", help="Why (kept in history).")]
AuthorOpt = Annotated[
    str | None,
    typer.Option(
        "--author",
        envvar="CROSSWAY_AUTHOR",
        help="Who (default: your login name).",
        show_default=False,
    ),
]
IfMatch = Annotated[
    int | None, typer.Option("--if-match", help="Only if the entry is at this version.")
]


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    group: str
    key: str

    @property
    def path(self) -> str:
        return f"/v1/config/{self.namespace}/{self.group}/{self.key}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.group}/{self.key}"


def target(key: str, namespace: str, group: str) -> Target:
    """`key`, `group/key` or `namespace/group/key`, the rest from the options."""
    parts = key.split("/")
    if len(parts) > 3 or not all(parts):
        raise CliFailure(f"{key!r} is not key, group/key or namespace/group/key")
    full = [namespace, group][: 3 - len(parts)] + parts
    return Target(*full)


class Api(ControlPlane):
    """The control plane over HTTP, signing changes with an author."""

    def __init__(self, url: str, token: str | None, author: str | None = None) -> None:
        super().__init__(url, token)
        self.author = author or login_name()

    def change_headers(self, message: str | None, if_match: int | None = None) -> dict[str, str]:
        headers = {"X-Crossway-Author": urllib.parse.quote(self.author)}
        if message:
            headers["X-Crossway-Message"] = urllib.parse.quote(message)
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        return headers


def login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


def run(command: str, action: Any) -> None:
    try:
        action()
    except CliFailure as exc:
        fail(f"crossway config {command}", str(exc))
    except OSError as exc:
        fail(f"crossway config {command}", f"{exc.strerror or exc}: {exc.filename or ''}".strip())


def when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(columns: list[str], rows: list[list[str]]) -> None:
    grid = Table(*columns, box=None, header_style="bold")
    for row in rows:
        grid.add_row(*row)
    Console().print(grid)
