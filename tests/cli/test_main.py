"""The `crossway` command line, in-process: flags, env vars, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossway import __version__
from crossway.cli import main as cli
from crossway.server.run import StartupError
from crossway.server.settings import ServerSettings


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ServerSettings]:
    """Replace the server with a recorder of the settings it would run with."""
    calls: list[ServerSettings] = []
    monkeypatch.setattr(cli, "run_server", calls.append)
    for name in (
        "DATA_DIR", "PORT", "BIND", "STORE", "ETCD_ENDPOINTS", "TOKEN", "INSECURE",
        "LOG_LEVEL", "LOG_FORMAT", "SHUTDOWN_GRACE", "STORE_TIMEOUT",
    ):  # fmt: skip
        monkeypatch.delenv(f"CROSSWAY_{name}", raising=False)
    return calls


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"], capsys) == (0, f"crossway {__version__}\n", "")


def test_no_arguments_shows_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run([], capsys)
    assert code == 0
    assert "server" in out
    assert "Usage" in out


def test_server_help_lists_every_flag_and_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["server", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for flag in (
        "--data-dir", "--port", "--bind", "--store", "--etcd-endpoints", "--token",
        "--insecure", "--log-level", "--log-format", "--shutdown-grace", "--store-timeout",
    ):  # fmt: skip
        assert flag in flat
    assert "CROSSWAY_DATA_DIR" in flat
    assert "CROSSWAY_TOKEN" in flat


def test_defaults(captured: list[ServerSettings], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["server"], capsys)[0] == 0
    (settings,) = captured
    assert settings.port == 7700
    assert settings.bind == "127.0.0.1"
    assert settings.store == "sqlite"
    assert settings.data_dir == Path(".crossway")
    assert settings.token is None
    assert not settings.insecure
    assert settings.log_format == "json"  # stderr is not a terminal under pytest
    assert settings.shutdown_grace == 10.0


def test_every_flag_has_an_env_var(
    captured: list[ServerSettings],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "DATA_DIR": "/tmp/cw", "PORT": "7711", "BIND": "::1", "STORE": "etcd",
        "ETCD_ENDPOINTS": "http://a:1,http://b:2", "TOKEN": "tok", "INSECURE": "true",
        "LOG_LEVEL": "debug", "LOG_FORMAT": "text", "SHUTDOWN_GRACE": "3s",
        "STORE_TIMEOUT": "500ms",
    }  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(f"CROSSWAY_{name}", value)
    assert run(["server"], capsys)[0] == 0
    assert captured == [
        ServerSettings(
            data_dir=Path("/tmp/cw"),
            port=7711,
            bind="::1",
            store="etcd",
            etcd_endpoints=("http://a:1", "http://b:2"),
            token="tok",
            insecure=True,
            log_level="debug",
            log_format="text",
            shutdown_grace=3.0,
            store_timeout=0.5,
        )
    ]


def test_flags_win_over_env_vars(
    captured: list[ServerSettings],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CROSSWAY_PORT", "7711")
    assert run(["server", "--port", "7722", "--store", "memory"], capsys)[0] == 0
    assert captured[0].port == 7722
    assert captured[0].store == "memory"


@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["server", "--port", "abc"], 2, "crossway server: error: Invalid value for '--port'"),
        (["server", "--port", "70000"], 2, "--port"),
        (["server", "--store", "x"], 2, "'x' is not one of 'sqlite', 'memory', 'etcd'"),
        (["server", "--log-level", "loud"], 2, "--log-level"),
        (["server", "--nope"], 2, "No such option: --nope"),
        (["nope"], 2, "crossway: error: No such command 'nope'"),
        (["server", "--shutdown-grace", "soon"], 1, "--shutdown-grace: not a duration"),
        (["server", "--store-timeout", "-1s"], 1, "--store-timeout"),
    ],
)
def test_usage_errors_are_one_line(
    argv: list[str], code: int, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, out, err = run(argv, capsys)
    assert got == code
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err


def test_a_bad_env_var_names_itself(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CROSSWAY_PORT", "seventy")
    code, _, err = run(["server"], capsys)
    assert code == 2
    assert "CROSSWAY_PORT" in err


def test_settings_problems_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["server", "--bind", "0.0.0.0", "--port", "0"], capsys)
    assert code == 1
    assert err.startswith("crossway server: error: refusing to listen on 0.0.0.0 without a token")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("failure", "code", "needle"),
    [
        (StartupError("cannot listen on 127.0.0.1:7700: the port is already in use"), 1, "in use"),
        (RuntimeError("bug\nwith lines"), 1, "internal error: RuntimeError: bug with lines"),
        (KeyboardInterrupt(), 130, ""),
    ],
)
def test_failures_while_running_are_one_line(
    failure: BaseException,
    code: int,
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def explode(settings: ServerSettings) -> None:
        raise failure

    monkeypatch.setattr(cli, "run_server", explode)
    got, _, err = run(["server", "--store", "memory"], capsys)
    assert got == code
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == (1 if needle else 0)
    assert needle in err
