"""`crossway config …` against a real control plane on loopback (sqlite store)."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
import uvicorn
from typer.testing import CliRunner, Result

from crossway.cli import config as cli
from crossway.server.api import config as config_api
from crossway.server.api import watch
from crossway.server.app import create_app
from crossway.server.context import ServerContext
from crossway.store.sqlite import open_sqlite_store
from crossway.testing.services import free_port, port_open


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    servers: list[uvicorn.Server] = []
    data = tmp_path_factory.mktemp("cli-store") / "store.db"

    async def serve() -> None:
        ctx = ServerContext(store=await open_sqlite_store(data))
        app = create_app(ctx, providers=(config_api.routes, watch.routes))
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        servers.append(uvicorn.Server(config))
        await servers[0].serve()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not port_open("127.0.0.1", port) and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    servers[0].should_exit = True
    thread.join(10)


Invoke = Callable[..., Result]


@pytest.fixture
def run(server_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> Invoke:
    monkeypatch.setenv("CROSSWAY_URL", server_url)
    monkeypatch.setenv("CROSSWAY_NAMESPACE", namespace)
    monkeypatch.setenv("CROSSWAY_AUTHOR", "tester")
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, ok: bool = True) -> Result:
        result = runner.invoke(cli.app, list(args), input=input)
        if ok:
            assert result.exit_code == 0, (result.output, result.stderr)
        return result

    return invoke


def test_set_get_history_diff_rollback(run: Invoke, tmp_path: Path) -> None:
    source = tmp_path / "orders.yaml"
    source.write_text("port: 1\n")
    assert "version 1" in run("set", "orders.yaml", str(source), "-m", "first").stdout
    assert "version 2" in run("set", "orders.yaml", input="port: 2\n").stdout
    assert "unchanged" in run("set", "orders.yaml", input="port: 2\n").stdout
    assert run("get", "orders.yaml").stdout == "port: 2\n"
    assert run("get", "DEFAULT_GROUP/orders.yaml", "--version", "1").stdout == "port: 1\n"
    history = run("history", "orders.yaml").stdout
    assert "tester" in history
    assert "first" in history
    assert "-port: 1\n+port: 2\n" in run("diff", "orders.yaml", "1", "2").stdout
    assert "version 3" in run("rollback", "orders.yaml", "1").stdout
    assert run("get", "orders.yaml").stdout == "port: 1\n"
    described = run("get", "orders.yaml", "--json").stdout
    assert '"version": 3' in described


def test_errors_are_one_line(run: Invoke) -> None:
    bad = run("set", "bad.yaml", input="a: [1,\n", ok=False)
    assert bad.exit_code == 1
    assert bad.stderr.count("\n") == 1
    assert "line 2, column 1" in bad.stderr
    missing = run("get", "nope.yaml", ok=False)
    assert "does not exist" in missing.stderr
    conflict = run("set", "c.yaml", "--if-match", "5", input="a: 1\n", ok=False)
    assert "version 0, not 5" in conflict.stderr
    unreachable = run("ls", "--url", "http://127.0.0.1:9", ok=False)
    assert "cannot reach the control plane" in unreachable.stderr
    assert "Traceback" not in unreachable.output


def test_beta_promote_abandon_delete(run: Invoke) -> None:
    run("set", "flags.yaml", input="on: false\n")
    assert (
        "beta published" in run("set", "flags.yaml", "--beta", "canary", input="on: true\n").stdout
    )
    assert run("get", "flags.yaml", "--labels", "canary=yes").stdout == "on: true\n"
    assert run("get", "flags.yaml").stdout == "on: false\n"
    assert "canary" in run("ls", "DEFAULT_GROUP").stdout
    run("abandon", "flags.yaml")
    assert run("get", "flags.yaml", "--labels", "canary=yes").stdout == "on: false\n"
    run("set", "flags.yaml", "--beta", "canary", input="on: true\n")
    assert "version 2" in run("promote", "flags.yaml").stdout
    assert run("get", "flags.yaml").stdout == "on: true\n"
    assert "version 3" in run("delete", "flags.yaml").stdout
    assert run("get", "flags.yaml", ok=False).exit_code == 1


def test_edit(run: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "editor.py"
    script.write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "p.write_text(p.read_text() + 'added: true\\n')\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script}")
    run("set", "app.yaml", input="a: 1\n")
    assert "version 2" in run("edit", "app.yaml").stdout
    assert run("get", "app.yaml").stdout == "a: 1\nadded: true\n"
    monkeypatch.setenv("EDITOR", f"{sys.executable} -c pass")
    assert "no changes" in run("edit", "app.yaml").stdout
    breaking = tmp_path / "break.py"
    breaking.write_text("import sys, pathlib\npathlib.Path(sys.argv[1]).write_text('a: [\\n')\n")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {breaking}")
    refused = run("edit", "app.yaml", ok=False)
    assert "your text is kept in" in refused.stderr
    assert run("get", "app.yaml").stdout == "a: 1\nadded: true\n"


def test_import_export_round_trip(run: Invoke, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "billing").mkdir()
    (repo / "application.yml").write_text("server:\n  port: 80\n")
    (repo / "application-prod.properties").write_text("db.url=jdbc:x\n")
    (repo / "billing" / "limits.toml").write_text("max = 5\n")
    (repo / "README.md").write_text("# config\n")
    dry = run("import", str(repo), "--dry-run")
    assert "would import 3 files" in dry.stdout
    assert "skipped README.md" in dry.stderr
    assert "application.yml" not in run("ls", "DEFAULT_GROUP").stdout
    done = run("import", str(repo), "-m", "from git")
    assert "3 created" in done.stdout
    assert "3 unchanged" in run("import", str(repo)).stdout
    assert run("get", "billing/limits.toml").stdout == "max = 5\n"
    out = tmp_path / "out"
    assert "wrote 3 files" in run("export", str(out)).stdout
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "application-prod.properties",
        "application.yml",
        "billing/limits.toml",
    ]
    assert (out / "billing" / "limits.toml").read_text() == "max = 5\n"


def test_invalid_import_lists_every_problem(run: Invoke, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "good.yaml").write_text("a: 1\n")
    (repo / "bad.yaml").write_text("a: [\n")
    (repo / "bad.json").write_text('{"a": }')
    result = run("import", str(repo), ok=False)
    assert "bad.json:1:7:" in result.stderr
    assert "bad.yaml:2:1:" in result.stderr
    assert "nothing was imported" in result.stderr
    assert run("get", "good.yaml", ok=False).exit_code == 1


def test_the_sse_watch_follows_config_keys(server_url: str, namespace: str) -> None:
    url = f"/v1/config/{namespace}/DEFAULT_GROUP/watched.yaml"
    with httpx2.Client(base_url=server_url, timeout=10) as http:
        index = http.put(url, content=b"v: 1\n").json()["revision"]
        params = {"prefix": f"/config/{namespace}/", "after": index}
        with http.stream("GET", "/v1/watch", params=params) as stream:
            http.put(url, content=b"v: 2\n")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    break
    assert event["key"] == f"/config/{namespace}/DEFAULT_GROUP/watched.yaml"
    assert json.loads(event["value"])["release"]["content"] == "v: 2\n"
