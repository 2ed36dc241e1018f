"""Helpers shared by every `crossway` sub-command.

The CLI's contract with people: a failure is one line on stderr that says what
is wrong and, where it helps, what to do; the exit status is non-zero; there
is never a traceback (with `--log-level debug` the traceback goes to the log).
"""

from __future__ import annotations

import logging
import sys
from typing import NoReturn

import typer

log = logging.getLogger("crossway.cli")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) made one space."""
    return " ".join(text.split())


def print_error(command: str, message: str) -> None:
    print(f"{command}: error: {one_line(message)}", file=sys.stderr, flush=True)


def fail(command: str, message: str, *, code: int = EXIT_FAILURE) -> NoReturn:
    """Print the one-line error and leave the command with `code`."""
    print_error(command, message)
    raise typer.Exit(code)


def fail_unexpected(command: str, exc: BaseException) -> NoReturn:
    """A failure nobody planned for: one line for the user, traceback to the log."""
    log.debug("unexpected failure", exc_info=exc)
    fail(command, f"internal error: {type(exc).__name__}: {exc} (run with --log-level debug)")


def usage_error(exc: typer.TyperException) -> int:
    """Report a command-line error (bad flag value, unknown option) on one
    line; returns the exit status to use (2 for usage errors)."""
    ctx = getattr(exc, "ctx", None)
    command = getattr(ctx, "command_path", None) or "crossway"
    hint = f" (see {command} --help)" if ctx is not None else ""
    message = exc.format_message().replace("Value error, ", "")  # pydantic's prefix
    print_error(command, message + hint)
    return exc.exit_code
