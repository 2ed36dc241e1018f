"""Config GET responses, rendered once per served view and shared.

One change wakes every client long-polling the key, and all of them that are
served the same view get byte-identical answers. Rendering (encoding the
content, formatting the headers) therefore happens once per view, and each
client's response is two ASGI messages over the shared header tuple and body.

Invariants
1. A `Rendered` depends only on the view's (index, md5, version, format,
   beta); the md5 is that of the content, so equal keys mean equal bytes.
2. Headers are tuples and the body is bytes: nothing a middleware or server
   does with one response can change another's.
3. The cache is bounded (cleared when full): a busy server renders each view
   at most once per fill, never holds more than `CACHE_SIZE` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from crossway.config.formats import MEDIA_TYPES
from crossway.config.view import View
from crossway.server.http import INDEX_HEADER

CACHE_SIZE = 64
"""Small: an entry may hold up to 512 KiB, and a push fans out one or two views."""

Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Rendered:
    headers: Headers
    """For a 200: content-type and content-length first and last."""
    not_modified: Headers
    """For a 304: no content, so neither content-type nor content-length."""
    body: bytes


_cache: dict[tuple[int, str, int, str, bool], Rendered] = {}


def render(view: View) -> Rendered:
    """The response parts for `view`, from the cache when it has them."""
    key = (view.index, view.md5, view.version, view.format, view.beta)
    found = _cache.get(key)
    if found is None:
        if len(_cache) >= CACHE_SIZE:
            _cache.clear()
        found = _cache[key] = _render(view)
    return found


def _render(view: View) -> Rendered:
    body = view.content.encode("utf-8")
    pairs = [
        ("etag", view.etag),
        (INDEX_HEADER.lower(), str(view.index)),
        ("x-crossway-version", str(view.version)),
        ("x-crossway-format", view.format),
        ("cache-control", "no-cache"),
    ]
    if view.beta:
        pairs.append(("x-crossway-beta", "true"))
    common = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in pairs)
    content_type = (b"content-type", f"{MEDIA_TYPES[view.format]}; charset=utf-8".encode())
    length = (b"content-length", b"%d" % len(body))
    return Rendered((content_type, *common, length), common, body)
