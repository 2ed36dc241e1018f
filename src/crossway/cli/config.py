"""`crossway config …`: read, write, edit, review and move configuration.

    crossway config get orders.yaml -n prod            raw content to stdout
    crossway config set orders.yaml ./orders.yaml      publish (stdin when FILE is - or absent)
    crossway config set orders.yaml f --beta canary    gray release to labelled instances
    crossway config edit orders.yaml                   $EDITOR, saved with If-Match
    crossway config history | diff | rollback | promote | abandon | delete | ls
    crossway config import DIR --namespace prod        a directory or git working tree, atomically
    crossway config export --namespace prod DIR        the same layout back

KEY is `key`, `group/key` or `namespace/group/key`; the namespace and group
otherwise come from -n/-g (`CROSSWAY_NAMESPACE`, default "default";
`DEFAULT_GROUP`). Every command talks to the control plane over HTTP at
`--url` (`CROSSWAY_URL`, default http://127.0.0.1:7700) and sends
`Authorization: Bearer $CROSSWAY_TOKEN` when set. Changes are signed with
`--author` (`CROSSWAY_AUTHOR`, default the login name). Failures are one
line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import httpx2
import typer

from crossway.cli import config_transfer
from crossway.cli._common import one_line
from crossway.cli._config_common import (
    Api,
    AuthorOpt,
    Group,
    IfMatch,
    Key,
    Message,
    Namespace,
    Target,
    run,
    table,
    target,
    when,
)
from crossway.cli._http import DEFAULT_URL, CliFailure, Json, Token, Url, echo_json
from crossway.config.formats import format_of_extension
from crossway.config.model import DEFAULT_GROUP, DEFAULT_NAMESPACE

app = typer.Typer(
    name="config",
    help="Configuration: get, set, edit, history, diff, rollback, gray release, import, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(root: typer.Typer) -> None:
    """Add `crossway config` to the root command."""
    root.add_typer(app, name="config")


# Reading.


@app.command("get")
def get(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    version: Annotated[int | None, typer.Option(help="An older version.")] = None,
    labels: Annotated[str | None, typer.Option(help="Labels, e.g. zone=eu-1,canary=true.")] = None,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Print an entry's content (what an instance with LABELS receives)."""

    def action() -> None:
        where = target(key, namespace, group)
        params: dict[str, Any] = {"version": version} if version is not None else {}
        headers = {"X-Crossway-Labels": labels} if labels else {}
        response = Api(url, token).call("GET", where.path, params=params, headers=headers)
        if json:
            echo_json(_described(where, response))
        else:
            sys.stdout.write(response.text)

    run("get", action)


def _described(where: Target, response: httpx2.Response) -> dict[str, Any]:
    h = response.headers
    return {
        **{"namespace": where.namespace, "group": where.group, "key": where.key},
        "version": int(h["x-crossway-version"]),
        "format": h["x-crossway-format"],
        "md5": h["etag"].strip('"'),
        "index": int(h["x-crossway-index"]),
        "beta": h.get("x-crossway-beta") == "true",
        "content": response.text,
    }


@app.command("ls")
def ls(
    group: Annotated[str | None, typer.Argument(help="List this group's keys.")] = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """List the groups of a namespace, or the keys of one group."""

    def action() -> None:
        path = f"/v1/config/{namespace}" + (f"/{group}" if group else "")
        rows = Api(url, token).call("GET", path).json()
        if json:
            echo_json(rows)
        elif group is None:
            table(["group", "keys"], [[r["group"], str(r["keys"])] for r in rows])
        else:
            table(["key", "version", "format", "modified", "beta"], [_key_row(r) for r in rows])

    run("ls", action)


def _key_row(row: dict[str, Any]) -> list[str]:
    modified = when(row["modified"]) if row.get("modified") else "-"
    beta = row.get("beta_selector") or ("yes" if row.get("beta") else "")
    return [row["key"], str(row["version"]), row.get("format") or "-", modified, beta]


@app.command("history")
def history(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Every version of an entry, newest first."""

    def action() -> None:
        rows = Api(url, token).call("GET", target(key, namespace, group).path + "/history").json()
        if json:
            echo_json(rows)
            return
        columns = ["version", "time (UTC)", "author", "md5", "message"]
        table(columns, [_history_row(r) for r in rows])

    run("history", action)


def _history_row(r: dict[str, Any]) -> list[str]:
    version = str(r["version"]) + (" (deleted)" if r.get("deleted") else "")
    return [version, when(r["time"]), r["author"], r["md5"][:12], r["message"]]


@app.command("diff")
def diff(
    key: Key,
    old: Annotated[int | None, typer.Argument(help="From version (default: TO - 1).")] = None,
    new: Annotated[int | None, typer.Argument(help="To version (default: current).")] = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Show a unified diff between two versions."""

    def action() -> None:
        params = {k: v for k, v in (("from", old), ("to", new)) if v is not None}
        path = target(key, namespace, group).path + "/diff"
        text = Api(url, token).call("GET", path, params=params).text
        colour = sys.stdout.isatty()
        for line in text.splitlines(keepends=True):
            fg = {"+": "green", "-": "red", "@": "cyan"}.get(line[:1]) if colour else None
            typer.secho(line, nl=False, fg=fg)

    run("diff", action)


# Writing.


@app.command("set")
def set_(
    key: Key,
    file: Annotated[str, typer.Argument(help="File with the content; - for stdin.")] = "-",
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    format: Annotated[
        str | None, typer.Option(help="yaml, json, toml, properties or text (default: by name).")
    ] = None,
    beta: Annotated[
        str | None, typer.Option(help="Publish as a beta for instances matching this selector.")
    ] = None,
    if_match: IfMatch = None,
    message: Message = None,
    author: AuthorOpt = None,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Publish content as a new version (or as a gray-release beta)."""

    def action() -> None:
        where = target(key, namespace, group)
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        fmt = format or (format_of_extension(file) if file != "-" else None)
        params = {k: v for k, v in (("format", fmt), ("beta", beta)) if v}
        api = Api(url, token, author)
        answer = api.call(
            "PUT",
            where.path,
            content=data,
            params=params,
            headers=api.change_headers(message, if_match),
        ).json()
        _report_write(where, answer, json)

    run("set", action)


def _report_write(where: Target, answer: dict[str, Any], json: bool) -> None:
    if json:
        echo_json(answer)
    elif answer.get("beta"):
        typer.echo(
            f"{where}: beta published for {answer['selector']} (release v{answer['version']})"
        )
    elif answer.get("changed") is False:
        typer.echo(f"{where}: unchanged at version {answer['version']}")
    else:
        typer.echo(f"{where}: version {answer['version']} (revision {answer['revision']})")


@app.command("edit")
def edit(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    message: Message = None,
    author: AuthorOpt = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Edit an entry in $VISUAL/$EDITOR and publish it if it changed and the
    entry did not change meanwhile (If-Match)."""
    run("edit", lambda: _edit(Api(url, token, author), target(key, namespace, group), message))


def _edit(api: Api, where: Target, message: str | None) -> None:
    original, version = _current(api, where)
    suffix = "." + where.key.rsplit(".", 1)[1] if "." in where.key else ".txt"
    with tempfile.NamedTemporaryFile("wb", suffix=suffix, prefix="crossway-", delete=False) as f:
        f.write(original)
        path = Path(f.name)
    text = original
    while True:
        _run_editor(path)
        text = path.read_bytes()
        if text == original:
            path.unlink()
            typer.echo(f"{where}: no changes")
            return
        headers = api.change_headers(message, version)
        try:
            answer = api.call("PUT", where.path, content=text, headers=headers).json()
        except CliFailure as exc:
            if not _edit_again(str(exc), path):
                raise CliFailure(f"{exc} (your text is kept in {path})") from None
            continue
        path.unlink()
        _report_write(where, answer, False)
        return


def _current(api: Api, where: Target) -> tuple[bytes, int]:
    response = api.call("GET", where.path, accept=(404,))
    if response.status_code == 404:
        return b"", 0  # a new entry: If-Match 0 makes sure it still does not exist
    return response.content, int(response.headers["x-crossway-version"])


def _run_editor(path: Path) -> None:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        status = subprocess.run([*shlex.split(editor), str(path)], check=False).returncode
    except OSError as exc:
        raise CliFailure(f"cannot start the editor {editor!r}: {exc.strerror}") from None
    if status != 0:
        raise CliFailure(f"the editor exited with status {status}; nothing was saved ({path})")


def _edit_again(problem: str, path: Path) -> bool:
    """Offer to fix a refused edit; only at a terminal (scripts just fail)."""
    if not sys.stdin.isatty():
        return False
    typer.echo(f"refused: {one_line(problem)}", err=True)
    return typer.confirm("edit again?", default=True)


@app.command("rollback")
def rollback(
    key: Key,
    version: Annotated[int, typer.Argument(help="The version whose content comes back.")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    if_match: IfMatch = None,
    message: Message = None,
    author: AuthorOpt = None,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Publish an old version's content as a new version (history is kept)."""

    def action() -> None:
        where, api = target(key, namespace, group), Api(url, token, author)
        body = {"version": version, **({"message": message} if message else {})}
        headers = api.change_headers(None, if_match)
        answer = api.call("POST", where.path + "/rollback", json=body, headers=headers).json()
        _report_write(where, answer, json)

    run("rollback", action)


def _simple_write(command: str, method: str, suffix: str, **options: Any) -> None:
    def action() -> None:
        where = target(options["key"], options["namespace"], options["group"])
        api = Api(options["url"], options["token"], options.get("author"))
        headers = api.change_headers(options.get("message"), options.get("if_match"))
        answer = api.call(method, where.path + suffix, headers=headers).json()
        _report_write(where, answer, options["json"])

    run(command, action)


@app.command("promote")
def promote(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    if_match: IfMatch = None,
    message: Message = None,
    author: AuthorOpt = None,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Make the beta the release (a new version)."""
    _simple_write("promote", "POST", "/promote", **locals())


@app.command("abandon")
def abandon(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Drop the beta; its instances get the release again."""
    _simple_write("abandon", "DELETE", "/beta", **locals())


@app.command("delete")
def delete(
    key: Key,
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Group = DEFAULT_GROUP,
    if_match: IfMatch = None,
    message: Message = None,
    author: AuthorOpt = None,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Delete an entry (recorded as a version; roll back to restore it)."""
    _simple_write("delete", "DELETE", "", **locals())


# Many entries at once (listed after the single-entry commands in --help).
app.command("import")(config_transfer.import_)
app.command("export")(config_transfer.export)
