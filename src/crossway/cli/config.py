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

import getpass
import json as json_module
import os
import shlex
import subprocess
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import httpx2
import typer
from rich.console import Console
from rich.table import Table

from crossway.cli._common import fail, one_line
from crossway.config import layout
from crossway.config.formats import ContentInvalid, decode_text, format_of_extension
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


Url = Annotated[
    str, typer.Option("--url", envvar="CROSSWAY_URL", help="The control plane's address.")
]
Token = Annotated[
    str | None,
    typer.Option(
        envvar="CROSSWAY_TOKEN",
        help="Bearer token (prefer the environment variable).",
        show_default=False,
    ),
]
Namespace = Annotated[
    str, typer.Option("--namespace", "-n", envvar="CROSSWAY_NAMESPACE", help="Environment.")
]
Group = Annotated[str, typer.Option("--group", "-g", help="Group of the key.")]
Key = Annotated[str, typer.Argument(help="key, group/key or namespace/group/key")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
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
DEFAULT_URL = "http://127.0.0.1:7700"


class CliFailure(Exception):
    """A failure to report on one line (the command name is added by `_run`)."""


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


class Api:
    """The control plane over HTTP; every failure becomes a `CliFailure`."""

    def __init__(self, url: str, token: str | None, author: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.author = author or _login_name()
        self.http = httpx2.Client(base_url=self.url, headers=headers, timeout=60.0)

    def call(
        self, method: str, path: str, *, accept: tuple[int, ...] = (), **kwargs: Any
    ) -> httpx2.Response:
        """The response; `CliFailure` for an error status not in `accept`."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx2.HTTPError as exc:
            raise CliFailure(f"cannot reach the control plane at {self.url}: {exc}") from None
        if response.status_code >= 400 and response.status_code not in accept:
            raise CliFailure(_error_text(response))
        return response

    def change_headers(self, message: str | None, if_match: int | None = None) -> dict[str, str]:
        headers = {"X-Crossway-Author": urllib.parse.quote(self.author)}
        if message:
            headers["X-Crossway-Message"] = urllib.parse.quote(message)
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        return headers


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "anonymous"


def _error_text(response: httpx2.Response) -> str:
    try:
        error = response.json()["error"]
        return str(error["message"])
    except (ValueError, KeyError, TypeError):
        return f"the control plane answered {response.status_code}: {response.text[:200]}"


def _run(command: str, action: Any) -> None:
    try:
        action()
    except CliFailure as exc:
        fail(f"crossway config {command}", str(exc))
    except OSError as exc:
        fail(f"crossway config {command}", f"{exc.strerror or exc}: {exc.filename or ''}".strip())


def _echo_json(value: Any) -> None:
    typer.echo(json_module.dumps(value, indent=2, ensure_ascii=False))


def _when(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


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
            _echo_json(_described(where, response))
        else:
            sys.stdout.write(response.text)

    _run("get", action)


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
            _echo_json(rows)
        elif group is None:
            _table(["group", "keys"], [[r["group"], str(r["keys"])] for r in rows])
        else:
            _table(["key", "version", "format", "modified", "beta"], [_key_row(r) for r in rows])

    _run("ls", action)


def _key_row(row: dict[str, Any]) -> list[str]:
    modified = _when(row["modified"]) if row.get("modified") else "-"
    beta = row.get("beta_selector") or ("yes" if row.get("beta") else "")
    return [row["key"], str(row["version"]), row.get("format") or "-", modified, beta]


def _table(columns: list[str], rows: list[list[str]]) -> None:
    table = Table(*columns, box=None, header_style="bold")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


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
            _echo_json(rows)
            return
        columns = ["version", "time (UTC)", "author", "md5", "message"]
        _table(columns, [_history_row(r) for r in rows])

    _run("history", action)


def _history_row(r: dict[str, Any]) -> list[str]:
    version = str(r["version"]) + (" (deleted)" if r.get("deleted") else "")
    return [version, _when(r["time"]), r["author"], r["md5"][:12], r["message"]]


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

    _run("diff", action)


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

    _run("set", action)


def _report_write(where: Target, answer: dict[str, Any], json: bool) -> None:
    if json:
        _echo_json(answer)
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
    _run("edit", lambda: _edit(Api(url, token, author), target(key, namespace, group), message))


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

    _run("rollback", action)


def _simple_write(command: str, method: str, suffix: str, **options: Any) -> None:
    def action() -> None:
        where = target(options["key"], options["namespace"], options["group"])
        api = Api(options["url"], options["token"], options.get("author"))
        headers = api.change_headers(options.get("message"), options.get("if_match"))
        answer = api.call(method, where.path + suffix, headers=headers).json()
        _report_write(where, answer, options["json"])

    _run(command, action)


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


# Moving many entries.


@app.command("import")
def import_(
    directory: Annotated[Path, typer.Argument(help="A directory or git working tree.")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Annotated[str, typer.Option("--group", "-g", help="Group of top-level files.")] = (
        DEFAULT_GROUP
    ),
    message: Message = None,
    author: AuthorOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change.")] = False,
    json: Json = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Import YAML/JSON/TOML/properties files in one transaction: all or nothing."""

    def action() -> None:
        found, skipped = layout.scan(directory, top_group=group)
        body = {"entries": _entries(found), "message": message or "", "dry_run": dry_run}
        report = _post_import(Api(url, token, author), namespace, body)
        if json:
            _echo_json(
                report | {"skipped": [{"path": s.path, "reason": s.reason} for s in skipped]}
            )
            return
        _print_import(report, skipped, found)

    _run("import", action)


def _entries(found: list[layout.Found]) -> list[dict[str, Any]]:
    entries = []
    for item in found:
        placed = item.placed
        try:
            content = decode_text(item.data, placed.format)
        except ContentInvalid as exc:
            where = f"{item.path}:{exc.line}:{exc.column}"
            raise CliFailure(f"{where}: {exc.problem}; nothing was imported") from None
        entries.append(
            {
                "group": placed.group,
                "key": placed.key,
                "format": placed.format,
                "content": content,
                "source": item.path,
            }
        )
    return entries


def _post_import(api: Api, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    path, headers = f"/v1/config/{namespace}/_import", api.change_headers(None)
    response = api.call("POST", path, json=body, headers=headers, accept=(400,))
    if response.status_code == 400:
        _print_problems(response.json().get("error", {}).get("errors", []))
        raise CliFailure(_error_text(response))
    report: dict[str, Any] = response.json()
    return report


def _print_problems(problems: list[dict[str, Any]]) -> None:
    # Compiler style (file:line:column: message), so editors can jump to each one.
    for problem in problems:
        where = problem.get("source") or problem["entry"]
        if problem.get("line") is not None:
            where += f":{problem['line']}:{problem['column']}"
        typer.echo(f"{where}: {one_line(problem['message'])}", err=True)


def _print_import(
    report: dict[str, Any], skipped: list[layout.Skipped], found: list[layout.Found]
) -> None:
    for item in skipped:
        typer.echo(f"skipped {item.path}: {item.reason}", err=True)
    rows = [[e["action"], e["group"], e["key"], str(e["version"])] for e in report["entries"]]
    _table(["action", "group", "key", "version"], rows)
    counts = {
        a: sum(1 for e in report["entries"] if e["action"] == a)
        for a in ("created", "updated", "unchanged")
    }
    verb = "would import" if report["dry_run"] else "imported"
    typer.echo(
        f"{verb} {len(found)} files into {report['namespace']}: {counts['created']} created, "
        f"{counts['updated']} updated, {counts['unchanged']} unchanged "
        f"(revision {report['revision']})"
    )


@app.command("export")
def export(
    directory: Annotated[Path, typer.Argument(help="Where to write (created if missing).")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="Only this group, written at the top level."),
    ] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Write every release of a namespace as files, in the layout import reads."""

    def action() -> None:
        params = {"group": group} if group else {}
        path = f"/v1/config/{namespace}/_export"
        body = Api(url, token).call("GET", path, params=params).json()
        top = group or DEFAULT_GROUP
        for entry in body["entries"]:
            relative = layout.path_for(entry["group"], entry["key"], top_group=top)
            destination = directory.joinpath(*relative.parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(entry["content"].encode("utf-8"))
        typer.echo(
            f"wrote {len(body['entries'])} files of {namespace} to {directory} "
            f"(revision {body['revision']})"
        )

    _run("export", action)
