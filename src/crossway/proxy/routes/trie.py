"""A trie of path segments: the routes whose `path_prefix` takes a path,
longest prefix first.

Theory of operation
-------------------
A prefix is matched on segment boundaries (`predicates.prefix_matches`):
"/a" takes "/a" and "/a/b" but not "/ab"; a prefix ending in "/" takes
whatever starts with it ("/a/" takes "/a/" and "/a/b", not "/a"). So a
prefix is a list of whole segments, plus a flag for the trailing slash:

    "/a/b"  -> ["a", "b"], exact      (ends at node a/b: "here")
    "/a/"   -> ["a"],      wild       (at node a: needs one more segment)
    "/"     -> [],         wild       (at the root: every path)

A lookup splits the path once (`str.split`, in C), walks down the trie as
far as its segments go, and climbs back: at each node, first the routes
whose prefix ends in "/" (longer by that slash; they need the path to go
on), then those that end there. A deeper node is a longer prefix of the
same path, so candidates come out longest first, and within one bucket in
the order the table sorted them.

Invariants
----------
- `candidates(path)` yields exactly the buckets of the prefixes that
  `prefix_matches` accepts for `path`, longest prefix first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("children", "here", "wild")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.here: list[T] = []
        self.wild: list[T] = []


def prefix_segments(prefix: str) -> tuple[list[str], bool]:
    """`prefix` (starting with "/") as its segments and its trailing-slash flag."""
    body = prefix[1:]
    if not body:
        return [], True
    if body.endswith("/"):
        return body[:-1].split("/"), True
    return body.split("/"), False


class PrefixTrie(Generic[T]):
    """Items filed by path prefix (see the module header)."""

    __slots__ = ("_root", "size")

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()
        self.size = 0

    def add(self, prefix: str, item: T) -> None:
        segments, wild = prefix_segments(prefix)
        node = self._root
        for segment in segments:
            node = node.children.setdefault(segment, _Node())
        (node.wild if wild else node.here).append(item)
        self.size += 1

    def buckets(self) -> Iterator[list[T]]:
        """Every non-empty bucket (for sorting them once after filling)."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            yield from (b for b in (node.wild, node.here) if b)

    def candidates(self, path: str) -> list[list[T]]:
        """The buckets whose prefix takes `path`, longest first. A list, not
        a generator: the caller stops at its first hit, and closing a
        suspended generator costs more than the whole walk."""
        if not path.startswith("/"):
            return []
        segments = path[1:].split("/")
        trail = [self._root]
        node = self._root
        for segment in segments:
            child = node.children.get(segment)
            if child is None:
                break
            trail.append(child)
            node = child
        count = len(segments)
        found: list[list[T]] = []
        for depth in range(len(trail) - 1, -1, -1):
            node = trail[depth]
            if node.wild and count > depth:
                found.append(node.wild)
            if node.here:
                found.append(node.here)
        return found
