"""Server-Sent Events framing for store events (pure; no I/O).

Wire format of one store event (`text/event-stream`):

    id: 42
    event: put
    data: {"type":"put","key":"/services/orders/a1","value":"...","revision":42,
           "create_revision":40,"version":3,"lease":0}

- `value` is the UTF-8 text when the bytes decode, else base64 with
  `"encoding": "base64"` beside it. A delete carries an empty value.
- Events of one store transaction share a revision. The `id:` line goes only
  on the last event of a revision within a batch, so the client's
  `Last-Event-ID` never points into the middle of a transaction: resuming
  after it skips nothing and repeats nothing.
- `data:` is a single line (JSON has no raw newlines), so a frame is never
  misparsed.
- A heartbeat is a comment line (`: …`), ignored by every SSE client but
  enough to keep proxies from closing an idle stream.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Sequence
from typing import Any

import msgspec

from crossway.core.errors import InvalidArgument
from crossway.store.types import Event

COMPACTED_MESSAGE = "re-list and watch again from the list's X-Crossway-Index"
_encoder = msgspec.json.Encoder()


def event_data(event: Event) -> dict[str, Any]:
    """The JSON object sent as `data:` for one store event."""
    kv = event.kv
    data: dict[str, Any] = {"type": event.type.value, "key": kv.key}
    try:
        data["value"] = kv.value.decode("utf-8")
    except UnicodeDecodeError:
        data["value"] = base64.b64encode(kv.value).decode("ascii")
        data["encoding"] = "base64"
    data.update(
        revision=kv.mod_revision,
        create_revision=kv.create_revision,
        version=kv.version,
        lease=kv.lease,
    )
    return data


def frame(*, event: str, data: object, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\n".encode() + b"data: " + _encoder.encode(data) + b"\n\n"


def encode_batch(events: Sequence[Event]) -> bytes:
    """Frames for `events` (in revision order), ids on revision boundaries."""
    out = bytearray()
    for i, event in enumerate(events):
        revision = event.kv.mod_revision
        last_of_revision = i + 1 == len(events) or events[i + 1].kv.mod_revision != revision
        out += _event_frame(event, last_of_revision)
    return bytes(out)


@functools.lru_cache(maxsize=64)
def _event_frame(event: Event, with_id: bool) -> bytes:
    # Every stream watching a key gets the same event (the same object from a
    # local store's hub, an equal one from etcd): a change pushed to a
    # thousand streams is framed once, not a thousand times. Small, as a value
    # may be large and only the newest events are being fanned out.
    event_id = event.kv.mod_revision if with_id else None
    return frame(event=event.type.value, data=event_data(event), event_id=event_id)


def comment(text: str) -> bytes:
    return f": {_one_line(text)}\n\n".encode()


def compacted_frame(compacted_revision: int) -> bytes:
    data = {"compacted_revision": compacted_revision, "message": COMPACTED_MESSAGE}
    return frame(event="compacted", data=data)


def resume_revision(last_event_id: str | None, after: str | None) -> int | None:
    """Where a stream starts: after `Last-Event-ID` when the client resumes
    (browsers resend the original URL with it, so it wins over `?after=`),
    else after `?after=N`, else None (from now). `InvalidArgument` (400) for
    anything that is not a non-negative integer."""
    for name, raw in (("Last-Event-ID", last_event_id), ("after", after)):
        if raw is None or not raw.strip():
            continue
        text = raw.strip()
        if not text.isdigit():
            raise InvalidArgument(f"{name} must be a revision number, got {raw!r}", field=name)
        return int(text)
    return None


def check_prefix(prefix: str) -> str:
    """Only the user-visible keyspace (keys starting with "/") can be watched;
    control characters could break a frame, so they are refused."""
    if not prefix.startswith("/"):
        raise InvalidArgument(f"prefix must start with '/', got {prefix!r}", field="prefix")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in prefix):
        raise InvalidArgument("prefix must not contain control characters", field="prefix")
    return prefix


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")
