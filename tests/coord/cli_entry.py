"""The coordination commands on their own, as the `crossway` CLI will run them.

python cli_entry.py lock NAME -- COMMAND ...
"""

from __future__ import annotations

import typer

from crossway.cli.coord import register

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
register(app)

if __name__ == "__main__":
    app()
