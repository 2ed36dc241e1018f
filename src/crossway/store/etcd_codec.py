"""Translation between the store's types and etcd's v3 protobuf messages.

Pure functions: no I/O, no asyncio. `etcd.py` and `etcd_watch.py` do the calls.

Theory of operation
- The store's data model *is* etcd's (types.py), so every value maps one to
  one: keys are UTF-8 bytes on the wire, revisions are etcd's revisions, a
  `Compare` is an etcd `Compare`, `Put`/`Delete(prefix)`/`Get(prefix)` are
  `RequestPut`/`RequestDeleteRange`/`RequestRange` with a range end.
- A prefix is the half-open byte range [prefix, prefix_end): the end is the
  prefix with its last byte below 0xff raised by one (trailing 0xff bytes
  dropped). The empty prefix, or one of only 0xff bytes, is "every key", which
  etcd spells key=b"\\0", range_end=b"\\0".
- A DELETE event carries only the key and the deletion revision (as etcd sends
  it, and as the local backends build it): empty value, create_revision 0,
  version 0, no lease.
- gRPC failures become store errors (`translate_rpc_error`), so callers never
  see a grpc type: transport trouble is `StoreUnavailable`, a refused request
  is `InvalidArgument`, a missing lease is `LeaseNotFound`.

Invariants
1. Every write asks etcd for the previous key-values (prev_kv), so results
   carry `prev`/`deleted` exactly as the local backends do.
2. A compare the local backends evaluate as "false" because its value has the
   wrong type (bytes for a revision, an int for a value) is sent as a compare
   that can never hold (version < 0), so both backends take the same branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aetcd import rpc

from crossway.core.errors import CrosswayError, InvalidArgument, Unauthorized
from crossway.store.errors import CompactedError, LeaseNotFound, StoreUnavailable
from crossway.store.types import (
    NO_LEASE,
    Compare,
    Delete,
    DeleteResult,
    Event,
    EventType,
    Get,
    GetResult,
    KeyValue,
    Op,
    OpResult,
    Put,
    PutResult,
    TxnResult,
)

# Keys that are not valid UTF-8 (written by another etcd client) still round-trip.
_KEY_ERRORS = "surrogateescape"
ALL_KEYS = b"\0"

_TARGETS: dict[str, tuple[Any, str]] = {
    "value": (rpc.Compare.VALUE, "value"),
    "version": (rpc.Compare.VERSION, "version"),
    "create": (rpc.Compare.CREATE, "create_revision"),
    "mod": (rpc.Compare.MOD, "mod_revision"),
    "lease": (rpc.Compare.LEASE, "lease"),
}
_RESULTS: dict[str, Any] = {
    "==": rpc.Compare.EQUAL,
    "!=": rpc.Compare.NOT_EQUAL,
    "<": rpc.Compare.LESS,
    ">": rpc.Compare.GREATER,
}


# Keys and ranges


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", _KEY_ERRORS)


def decode_key(raw: bytes) -> str:
    return raw.decode("utf-8", _KEY_ERRORS)


def prefix_range(prefix: str) -> tuple[bytes, bytes]:
    """The (key, range_end) pair etcd uses for "every key starting with prefix"."""
    start = encode_key(prefix)
    end = bytearray(start)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return start, bytes(end)
        end.pop()
    return (start or ALL_KEYS), ALL_KEYS


def range_request(key: str, *, prefix: bool = False, limit: int = 0) -> Any:
    if prefix:
        start, end = prefix_range(key)
        return rpc.RangeRequest(key=start, range_end=end, limit=limit)
    return rpc.RangeRequest(key=encode_key(key), limit=limit)


def revision_probe(revision: int = 0) -> Any:
    """The cheapest read there is: counts one (usually absent) key, at `revision`
    (0 = now). Its header carries the store revision."""
    return rpc.RangeRequest(key=ALL_KEYS, count_only=True, revision=revision)


def put_request(op: Put) -> Any:
    return rpc.PutRequest(key=encode_key(op.key), value=op.value, lease=op.lease, prev_kv=True)


def delete_request(op: Delete) -> Any:
    if op.prefix:
        start, end = prefix_range(op.key)
        return rpc.DeleteRangeRequest(key=start, range_end=end, prev_kv=True)
    return rpc.DeleteRangeRequest(key=encode_key(op.key), prev_kv=True)


def watch_create_request(prefix: str, start_revision: int) -> Any:
    start, end = prefix_range(prefix)
    create = rpc.WatchCreateRequest(
        key=start,
        range_end=end,
        start_revision=start_revision,
        prev_kv=True,
        # Quiet prefixes still advance the resume point, so a reconnect after a
        # long idle spell does not start from a revision compacted since.
        progress_notify=True,
    )
    return rpc.WatchRequest(create_request=create)


# Transactions


def compare_message(compare: Compare) -> Any:
    target, field = _TARGETS[compare.target]
    wants_bytes = compare.target == "value"
    if isinstance(compare.value, bytes) != wants_bytes:
        return _never(compare.key)
    message = rpc.Compare(key=encode_key(compare.key), target=target, result=_RESULTS[compare.op])
    setattr(message, field, compare.value)
    return message


def _never(key: str) -> Any:
    return rpc.Compare(
        key=encode_key(key), target=rpc.Compare.VERSION, result=rpc.Compare.LESS, version=0
    )


def request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return rpc.RequestOp(request_put=put_request(op))
    if isinstance(op, Delete):
        return rpc.RequestOp(request_delete_range=delete_request(op))
    if isinstance(op, Get):
        return rpc.RequestOp(request_range=range_request(op.key, prefix=op.prefix, limit=op.limit))
    raise TypeError(f"not a store operation: {op!r}")


def txn_request(compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op]) -> Any:
    return rpc.TxnRequest(
        compare=[compare_message(c) for c in compares],
        success=[request_op(op) for op in success],
        failure=[request_op(op) for op in failure],
    )


def txn_result(response: Any, ops: Sequence[Op]) -> TxnResult:
    """`ops` is the branch etcd ran (success or failure), in order."""
    revision: int = response.header.revision
    changed = _changed_anything(response.responses)
    # A delete that found nothing reports the revision it looked at: the one
    # before this transaction's, when other operations made a new revision.
    unchanged_at = revision - 1 if changed else revision
    results: list[OpResult] = [
        _op_result(op, r, revision, unchanged_at)
        for op, r in zip(ops, response.responses, strict=True)
    ]
    return TxnResult(bool(response.succeeded), revision, results)


def _changed_anything(responses: Sequence[Any]) -> bool:
    for r in responses:
        kind = r.WhichOneof("response")
        if kind == "response_put" or (
            kind == "response_delete_range" and r.response_delete_range.deleted
        ):
            return True
    return False


def _op_result(op: Op, response: Any, revision: int, unchanged_at: int) -> OpResult:
    if isinstance(op, Put):
        return PutResult(revision, previous_kv(response.response_put))
    if isinstance(op, Delete):
        deleted = [key_value(kv) for kv in response.response_delete_range.prev_kvs]
        return DeleteResult(revision if deleted else unchanged_at, deleted)
    return GetResult([key_value(kv) for kv in response.response_range.kvs])


def first_lease(ops: Sequence[Op]) -> int:
    """The lease named by the first leased put, for a "lease not found" error."""
    return next((op.lease for op in ops if isinstance(op, Put) and op.lease), NO_LEASE)


# Values


def key_value(kv: Any) -> KeyValue:
    return KeyValue(
        decode_key(kv.key), kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease
    )


def previous_kv(response: Any) -> KeyValue | None:
    """`prev_kv` of a put response, None when the key did not exist."""
    return key_value(response.prev_kv) if response.HasField("prev_kv") else None


def event(raw: Any) -> Event:
    prev = key_value(raw.prev_kv) if raw.HasField("prev_kv") else None
    if raw.type == rpc.Event.DELETE:
        tombstone = KeyValue(decode_key(raw.kv.key), b"", 0, raw.kv.mod_revision, 0, NO_LEASE)
        return Event(EventType.DELETE, tombstone, prev)
    return Event(EventType.PUT, key_value(raw.kv), prev)


# Errors


def translate_rpc_error(
    code: str, details: str, *, where: str, lease: int = NO_LEASE
) -> CrosswayError:
    """The store error for a failed etcd call (`code` is the gRPC status name).

    Anything that is not the request's own fault is `StoreUnavailable`: the
    caller may retry it. `CompactedError` (with revisions unknown, 0) is only
    meaningful to callers that read or compact at a revision."""
    text = details or code
    if code == "NOT_FOUND" and "lease" in details:
        return LeaseNotFound(lease)
    if code == "OUT_OF_RANGE" and "compacted" in details:
        return CompactedError(0, 0)
    if code == "OUT_OF_RANGE" or code == "INVALID_ARGUMENT":
        return InvalidArgument(f"etcd refused the request: {text}")
    if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return Unauthorized(f"etcd at {where} refused access: {text}")
    if code == "DEADLINE_EXCEEDED":
        return StoreUnavailable(f"etcd at {where} did not answer in time")
    if code == "UNAVAILABLE":
        return StoreUnavailable(f"etcd at {where} is unavailable: {text}")
    return StoreUnavailable(f"etcd at {where} failed ({code}): {text}")
