"""What differs between the HTTP client libraries the transports serve
(httpx2, httpx), and the fast paths into their URL and header objects.

Theory of operation
-------------------
A `Flavor` names a library's exceptions ("the request never left", "the
transport failed"), the body type that can be sent again, and the
operations the per-call path needs: move a URL to another host and port,
test for a header (or two in one pass), set one, add several, and give a
URL's text for a span. httpx and httpx2 re-parse a whole URL to change
its host (tens of microseconds) and work out the encoding of every header
before a lookup; the fast paths here use their parsed insides directly.

Invariant: a fast path is used only if it gave the same results as the
public API on samples at import; otherwise the public API is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Flavor:
    """What differs between HTTP client libraries (httpx2, httpx)."""

    unsent_errors: tuple[type[BaseException], ...]  # the request never left
    transport_error: type[BaseException]
    byte_stream: type[Any]  # a body that can be sent again
    rewrite: Callable[[Any, str, int], Any]  # (url, host, port) -> url
    has_header: Callable[[Any, bytes], bool]  # (headers, lower-case name)
    set_header: Callable[[Any, bytes, str], None]  # (headers, lower-case name, ASCII value)
    add_header: Callable[[Any, bytes, str], None]  # set_header for a header known absent
    # (headers, lower-case names a and b) -> 1 if a is there, | 2 if b is: one pass
    find_headers: Callable[[Any, bytes, bytes], int]
    # (headers, (lower-case name, lower-case name, ASCII value) entries known absent)
    add_entries: Callable[[Any, tuple[HeaderEntry, ...]], None]
    url_text: Callable[[Any], str]  # str(url), for spans


# Fast paths. httpx and httpx2 re-parse a whole URL to change its host (tens
# of microseconds) and work out the encoding of every header before a lookup.
# Both keep a parsed URL tuple (`_uri_reference`) and a list of
# (raw name, lower-case name, value) triples (`_list`) inside; using them
# directly makes the per-request path several times cheaper. Each fast path
# is checked against the public API once, at import, and a library whose
# insides differ gets the public API instead.


def url_rewriter(url_cls: type[Any]) -> Callable[[Any, str, int], Any]:
    """(url, host, port) -> the same URL on another host and port."""

    def fast(url: Any, host: str, port: int) -> Any:
        ref = url._uri_reference  # (scheme, userinfo, host, port, path, query, fragment)
        out = object.__new__(url_cls)
        out._uri_reference = tuple.__new__(
            type(ref), (ref[0], ref[1], host, port, ref[4], ref[5], ref[6])
        )
        return out

    def slow(url: Any, host: str, port: int) -> Any:
        return url.copy_with(host=host, port=port)

    try:
        sample = url_cls("https://svc:1/a/b?c=d#e")
        for host in ("10.0.0.1", "::1", "h.example"):
            if str(fast(sample, host, 8)) != str(slow(sample, host, 8)):
                return slow
    except (AttributeError, TypeError, IndexError):
        return slow
    return fast


HeaderEntry = tuple[bytes, bytes, bytes]
"""A header as the libraries keep it: (name, lower-case name, value)."""

HeaderOps = tuple[
    Callable[[Any, bytes], bool],
    Callable[[Any, bytes, str], None],
    Callable[[Any, bytes, str], None],
]


def header_ops(headers_cls: type[Any]) -> HeaderOps:
    """(has_header, set_header, add_header) for a library's Headers class."""

    def fast_has(headers: Any, name: bytes) -> bool:
        for item in headers._list:  # noqa: SIM110 - a plain loop: no generator per call
            if item[1] == name:
                return True
        return False

    def fast_set(headers: Any, name: bytes, value: str) -> None:
        entries = headers._list
        entry = (name, name, value.encode("ascii"))
        for i, item in enumerate(entries):
            if item[1] == name:
                entries[i] = entry
                return
        entries.append(entry)

    def fast_add(headers: Any, name: bytes, value: str) -> None:
        headers._list.append((name, name, value.encode("ascii")))

    def slow_has(headers: Any, name: bytes) -> bool:
        return any(k.lower() == name for k, _ in headers.raw)

    def slow_set(headers: Any, name: bytes, value: str) -> None:
        headers[name.decode("ascii")] = value

    try:
        fast_headers, slow_headers = (
            headers_cls({"A": "1", "b": "2"}),
            headers_cls({"A": "1", "b": "2"}),
        )
        for name, value in ((b"a", "3"), (b"c", "4")):
            fast_set(fast_headers, name, value)
            slow_set(slow_headers, name, value)
        fast_add(fast_headers, b"e", "5")
        slow_set(slow_headers, b"e", "5")
        same = fast_headers.multi_items() == slow_headers.multi_items()
        if same and fast_has(fast_headers, b"c") and not fast_has(fast_headers, b"d"):
            return fast_has, fast_set, fast_add
    except (AttributeError, TypeError, IndexError):
        pass
    return slow_has, slow_set, slow_set


EntryOps = tuple[
    Callable[[Any, bytes, bytes], int],
    Callable[[Any, tuple[HeaderEntry, ...]], None],
]


def entry_ops(headers_cls: type[Any]) -> EntryOps:
    """(find_headers, add_entries) for a library's Headers class: the
    headers a call adds are looked for in one pass and added in one."""

    def fast_find(headers: Any, a: bytes, b: bytes) -> int:
        found = 0
        for item in headers._list:
            name = item[1]
            if name == a:
                found |= 1
            elif name == b:
                found |= 2
        return found

    def fast_add_entries(headers: Any, entries: tuple[HeaderEntry, ...]) -> None:
        headers._list.extend(entries)

    def slow_has(headers: Any, name: bytes) -> bool:
        return any(k.lower() == name for k, _ in headers.raw)

    def slow_find(headers: Any, a: bytes, b: bytes) -> int:
        return slow_has(headers, a) | slow_has(headers, b) << 1

    def slow_add_entries(headers: Any, entries: tuple[HeaderEntry, ...]) -> None:
        for _, name, value in entries:
            headers[name.decode("ascii")] = value.decode("ascii")

    try:
        fast_headers, slow_headers = headers_cls({"A": "1"}), headers_cls({"A": "1"})
        fast_add_entries(fast_headers, ((b"f", b"f", b"6"), (b"g", b"g", b"7")))
        slow_add_entries(slow_headers, ((b"f", b"f", b"6"), (b"g", b"g", b"7")))
        same = fast_headers.multi_items() == slow_headers.multi_items()
        found = fast_find(fast_headers, b"a", b"d"), fast_find(fast_headers, b"d", b"g")
        if same and found == (1, 2) and slow_find(slow_headers, b"a", b"g") == 3:
            return fast_find, fast_add_entries
    except (AttributeError, TypeError, IndexError):
        pass
    return slow_find, slow_add_entries


_MAX_URL_TEXTS = 1024


def url_texter(url_cls: type[Any]) -> Callable[[Any], str]:
    """url -> str(url), remembered for the last distinct URLs (up to
    `_MAX_URL_TEXTS`, then forgotten all at once): a span per attempt names
    its URL, and a caller mostly calls a few. Keyed by the parsed tuple,
    whose hash costs a fraction of rebuilding the text."""
    texts: dict[Any, str] = {}

    def fast(url: Any) -> str:
        ref = url._uri_reference
        text = texts.get(ref)
        if text is None:
            if len(texts) >= _MAX_URL_TEXTS:
                texts.clear()
            text = texts[ref] = str(url)
        return text

    try:
        samples = [url_cls("https://svc:1/a/b?c=d#e"), url_cls("http://svc/a")]
        if [fast(u) for u in samples * 2] == [str(u) for u in samples * 2]:
            texts.clear()
            return fast
    except (AttributeError, TypeError):
        pass
    return str


def flavor(
    *,
    unsent_errors: tuple[type[BaseException], ...],
    transport_error: type[BaseException],
    byte_stream: type[Any],
    url_cls: type[Any],
    headers_cls: type[Any],
) -> Flavor:
    has, set_, add = header_ops(headers_cls)
    find, add_entries = entry_ops(headers_cls)
    rewrite, url_text = url_rewriter(url_cls), url_texter(url_cls)
    return Flavor(
        unsent_errors,
        transport_error,
        byte_stream,
        rewrite,
        has,
        set_,
        add,
        find,
        add_entries,
        url_text,
    )
