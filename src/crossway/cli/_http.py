"""The control plane over HTTP, for CLI commands.

Every command that talks to a control plane takes `--url` (`CROSSWAY_URL`,
default http://127.0.0.1:7700) and `--token` (`CROSSWAY_TOKEN`), and turns
every failure — unreachable server, error status, unexpected body — into a
`CliFailure` whose text is one readable line (the server's own error message
when it sent one).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

import httpx2
import typer

from crossway.cli._common import fail

DEFAULT_URL = "http://127.0.0.1:7700"

Url = Annotated[
    str,
    typer.Option("--url", envvar="CROSSWAY_URL", help="The control plane's address."),
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="CROSSWAY_TOKEN",
        help="Bearer token (prefer the environment variable).",
        show_default=False,
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


class CliFailure(Exception):
    """A failure to report on one line."""


class ControlPlane:
    """A synchronous client of one control plane; close it (or use `with`)."""

    def __init__(self, url: str, token: str | None, *, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.http = httpx2.Client(base_url=self.url, headers=headers, timeout=timeout)

    def call(
        self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx2.Response:
        """The response; `CliFailure` for an error status not in `accept`."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            raise CliFailure(
                f"cannot reach the control plane at {self.url} ({exc}); "
                "is `crossway server` running? (--url / CROSSWAY_URL)"
            ) from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise CliFailure(error_text(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise CliFailure(f"the control plane answered {path} with non-JSON") from None

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def error_text(response: httpx2.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"the control plane answered {response.status_code}: {response.text[:200]}"


def run(command: str, action: Callable[[], None]) -> None:
    """Run `action`, turning a `CliFailure` into the one-line error and exit 1."""
    try:
        action()
    except CliFailure as exc:
        fail(command, str(exc))


def echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False))
