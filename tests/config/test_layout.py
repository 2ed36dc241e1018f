"""The import/export directory layout."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from crossway.config.layout import Placed, Skipped, path_for, place, scan


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("application.yml", Placed("DEFAULT_GROUP", "application.yml", "yaml")),
        ("orders-prod.properties", Placed("DEFAULT_GROUP", "orders-prod.properties", "properties")),
        ("billing/db.yaml", Placed("billing", "db.yaml", "yaml")),
        ("billing/limits.toml", Placed("billing", "limits.toml", "toml")),
        ("a.json", Placed("DEFAULT_GROUP", "a.json", "json")),
        (".git/config", None),
        ("billing/.hidden.yaml", None),
        (
            "README.md",
            Skipped("README.md", "not a config file (.yml .yaml .json .toml .properties)"),
        ),
    ],
)
def test_place(path: str, expected: object) -> None:
    assert place(PurePosixPath(path)) == expected


def test_place_deep_and_top_group() -> None:
    deep = place(PurePosixPath("a/b/c.yaml"))
    assert isinstance(deep, Skipped)
    assert "deeper" in deep.reason
    assert place(PurePosixPath("x.yaml"), top_group="shop") == Placed("shop", "x.yaml", "yaml")


def test_path_for_round_trips_place() -> None:
    for group, key in (("DEFAULT_GROUP", "a.yaml"), ("billing", "db.properties")):
        placed = place(path_for(group, key))
        assert isinstance(placed, Placed)
        assert (placed.group, placed.key) == (group, key)
    assert path_for("shop", "x.yaml", top_group="shop") == PurePosixPath("x.yaml")
    with pytest.raises(ValueError, match="unsafe"):
        path_for("..", "x")


def test_scan(tmp_path: Path) -> None:
    (tmp_path / ".git" / "objects").mkdir(parents=True)
    (tmp_path / ".git" / "objects" / "ab.yaml").write_text("ignored: true\n")
    (tmp_path / "billing" / "deep").mkdir(parents=True)
    (tmp_path / "application.yml").write_text("a: 1\n")
    (tmp_path / "billing" / "db.properties").write_text("x=1\n")
    (tmp_path / "billing" / "deep" / "x.yaml").write_text("x: 1\n")
    (tmp_path / "notes.txt").write_text("hello\n")
    found, skipped = scan(tmp_path)
    assert [(f.path, f.placed.group, f.data) for f in found] == [
        ("application.yml", "DEFAULT_GROUP", b"a: 1\n"),
        ("billing/db.properties", "billing", b"x=1\n"),
    ]
    assert [s.path for s in skipped] == ["billing/deep/x.yaml", "notes.txt"]
    with pytest.raises(NotADirectoryError):
        scan(tmp_path / "application.yml")
