"""`crossway config import` and `export`: many entries at once, as files.

    crossway config import DIR --namespace prod        a directory or git working tree, atomically
    crossway config export --namespace prod DIR        the same layout back

The file layout (which file becomes which group and key, and back) is
`crossway.config.layout`'s; import sends every entry in one request, so the
control plane applies all of them in one transaction or none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from crossway.cli._common import one_line
from crossway.cli._config_common import Api, AuthorOpt, Message, Namespace, run, table
from crossway.cli._http import DEFAULT_URL, CliFailure, Json, Token, Url, echo_json, error_text
from crossway.config import layout
from crossway.config.formats import ContentInvalid, decode_text
from crossway.config.model import DEFAULT_GROUP, DEFAULT_NAMESPACE


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
            echo_json(report | {"skipped": [{"path": s.path, "reason": s.reason} for s in skipped]})
            return
        _print_import(report, skipped, found)

    run("import", action)


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
        raise CliFailure(error_text(response))
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
    table(["action", "group", "key", "version"], rows)
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

    run("export", action)
