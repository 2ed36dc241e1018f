"""Stable 64-bit hashing for the hash balancers.

Every client of a service must map a key to the same endpoint, so the hash has
to be identical across processes, machines and Python versions. Python's own
`hash()` is salted per process (PYTHONHASHSEED) and is ruled out. xxHash (what
Envoy uses) is not a dependency of this project; `hashlib.blake2b` with an
8-byte digest is in the standard library, implemented in C, well distributed in
every output bit, and costs about a microsecond for a short key: fast enough
for one hash per pick, and ring/table construction hashes only on `update`.
A 16-byte digest gives Maglev its two independent hashes in one call.
"""

from __future__ import annotations

from hashlib import blake2b


def key_bytes(key: bytes | str) -> bytes:
    return key.encode() if isinstance(key, str) else key


def hash64(data: bytes | str) -> int:
    """An unsigned 64-bit hash of `data`, stable everywhere."""
    return int.from_bytes(blake2b(key_bytes(data), digest_size=8).digest(), "little")


def hash64_pair(data: bytes | str) -> tuple[int, int]:
    """Two independent unsigned 64-bit hashes of `data`."""
    digest = blake2b(key_bytes(data), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
