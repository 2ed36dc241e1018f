"""The directory layout of `crossway config import` and `export`.

It is the layout Spring Cloud Config users keep in git today:

    DIR/application.yml               group DEFAULT_GROUP (or --group), key application.yml
    DIR/orders-prod.properties        group DEFAULT_GROUP, key orders-prod.properties
    DIR/billing/db.yaml               group billing, key db.yaml
    DIR/.git/…                        ignored (as is anything hidden)

Only `.yml/.yaml/.json/.toml/.properties` files are config; other files, and
anything nested deeper than one directory, are skipped and reported. Export
writes the same layout back, so `import(export(ns))` changes nothing.

`place` and `path_for` are pure; `scan` walks a directory and reads files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from crossway.config.formats import format_of_extension
from crossway.config.model import DEFAULT_GROUP, Format


@dataclass(frozen=True, slots=True)
class Placed:
    group: str
    key: str
    format: Format


@dataclass(frozen=True, slots=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Found:
    path: str
    """Relative to the scanned directory, with '/' separators."""
    placed: Placed
    data: bytes


def place(relative: PurePosixPath, *, top_group: str = DEFAULT_GROUP) -> Placed | Skipped | None:
    """Where a file at `relative` goes; None for hidden files (ignored silently)."""
    if any(part.startswith(".") for part in relative.parts):
        return None
    fmt = format_of_extension(relative.name)
    if fmt is None:
        return Skipped(str(relative), "not a config file (.yml .yaml .json .toml .properties)")
    if len(relative.parts) == 1:
        return Placed(top_group, relative.name, fmt)
    if len(relative.parts) == 2:
        return Placed(relative.parts[0], relative.name, fmt)
    return Skipped(str(relative), "nested deeper than one directory (a directory is a group)")


def path_for(group: str, key: str, *, top_group: str = DEFAULT_GROUP) -> PurePosixPath:
    """The file an entry is exported to (names are validated by the server,
    so neither part can climb out of the directory)."""
    if "/" in group or "/" in key or group.startswith(".") or key.startswith("."):
        raise ValueError(f"unsafe entry name {group}/{key}")
    return PurePosixPath(key) if group == top_group else PurePosixPath(group, key)


def scan(root: Path, *, top_group: str = DEFAULT_GROUP) -> tuple[list[Found], list[Skipped]]:
    """Every config file under `root`, sorted by path, and what was skipped.

    Raises `NotADirectoryError` when `root` is not a directory and `OSError`
    when a file cannot be read.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    found: list[Found] = []
    skipped: list[Skipped] = []
    for path in _files(root):
        relative = PurePosixPath(path.relative_to(root).as_posix())
        where = place(relative, top_group=top_group)
        if isinstance(where, Placed):
            found.append(Found(str(relative), where, path.read_bytes()))
        elif where is not None:
            skipped.append(where)
    return found, skipped


def _files(root: Path) -> list[Path]:
    out: list[Path] = []
    for directory, subdirectories, files in os.walk(root):
        # Prune hidden directories (.git holds thousands of files) before descending.
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        out.extend(Path(directory, name) for name in files)
    return sorted(out)
