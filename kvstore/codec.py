"""Binary layouts of what kvstore stores: the value envelope and the key layout.

Value envelope (every backend wraps values in it on write and checks it on read)::

    [u8 format version = 1][u32 little-endian CRC-32 of payload][payload]

Five bytes of overhead; a wrong version or checksum raises :class:`~kvstore.errors.CorruptValueError`, so a
truncated or foreign value is never returned as data.

Key layout (built by the writers and the fetcher through the same helper, so they agree byte for byte)::

    [u8 key format = 1][8-byte namespace][u16 big-endian len(entity)][entity][suffix]

``namespace`` is a BLAKE2b digest of (dataset name, plan hash): a changed definition gets a new plan hash, hence
new keys, so old bytes are never read as new. ``entity`` is the entity key (e.g. an encoded ``card_id``);
``suffix`` distinguishes several values of one entity (e.g. the day of a stream tile value). Stores that shard
(memcached) route by :func:`route_token`, which is the entity alone: all values of one entity, in every dataset,
live on one node. In byte order the keys of one dataset sort together, and within it all keys of one
entity are adjacent (ordered by suffix).

No pickle anywhere: every layout here is explicit bytes.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvstore.errors import CorruptValueError, InvalidKeyError

VALUE_FORMAT_VERSION = 1
KEY_FORMAT_VERSION = 1
ENVELOPE_OVERHEAD = 5
NAMESPACE_BYTES = 8
MAX_ENTITY_BYTES = 0xFFFF

_CRC = struct.Struct("<I")
_ENTITY_LEN = struct.Struct(">H")
_KEY_HEADER = 1 + NAMESPACE_BYTES + _ENTITY_LEN.size


def seal(payload: bytes) -> bytes:
    """Wrap ``payload`` in the value envelope.

    >>> seal(b"hi")[:1], len(seal(b"hi"))
    (b'\\x01', 7)
    """
    return b"\x01" + _CRC.pack(zlib.crc32(payload)) + payload


def unseal(blob: bytes, *, key: bytes | None = None) -> bytes:
    """Check the envelope of ``blob`` and return its payload; raise CorruptValueError if it does not check.

    >>> unseal(seal(b"hi"))
    b'hi'
    """
    if len(blob) < ENVELOPE_OVERHEAD or blob[0] != VALUE_FORMAT_VERSION:
        got = blob[0] if blob else None
        raise CorruptValueError(
            f"value for key {key!r} has format version {got!r} (length {len(blob)}); this build reads "
            f"version {VALUE_FORMAT_VERSION}. Re-upload the dataset with this version of tessera."
        )
    payload = blob[ENVELOPE_OVERHEAD:]
    if _CRC.unpack_from(blob, 1)[0] != zlib.crc32(payload):
        raise CorruptValueError(
            f"value for key {key!r} fails its CRC-32 check (length {len(blob)}): it was truncated or "
            "overwritten by something other than kvstore. Re-write the value."
        )
    return bytes(payload)


def namespace(dataset: str, plan_hash: str) -> bytes:
    """The 8-byte key prefix of one dataset under one plan hash.

    >>> len(namespace("card_velocity", "3f2a")), namespace("a", "1") != namespace("a", "2")
    (8, True)
    """
    if not dataset or not plan_hash:
        raise InvalidKeyError(f"namespace needs a dataset and a plan hash, got {dataset!r} and {plan_hash!r}")
    h = hashlib.blake2b(digest_size=NAMESPACE_BYTES)
    h.update(dataset.encode())
    h.update(b"\x00")
    h.update(plan_hash.encode())
    return h.digest()


def make_key(dataset: str, plan_hash: str, entity: bytes, suffix: bytes = b"") -> bytes:
    """Build a key from a dataset name, the plan hash, the entity key bytes and an optional suffix.

    >>> k = make_key("card_velocity", "3f2a", b"card-1", b"d19000")
    >>> split_key(k).entity, split_key(k).suffix
    (b'card-1', b'd19000')
    """
    return KeyLayout(dataset, plan_hash).key(entity, suffix)


@dataclass(frozen=True)
class KeyParts:
    """A key taken apart by :func:`split_key`."""

    namespace: bytes
    entity: bytes
    suffix: bytes


def split_key(key: bytes) -> KeyParts:
    """Take a key built by :func:`make_key` apart; raise InvalidKeyError for any other bytes."""
    if len(key) < _KEY_HEADER or key[0] != KEY_FORMAT_VERSION:
        raise InvalidKeyError(
            f"{key!r} is not a kvstore key of format {KEY_FORMAT_VERSION}; build keys with make_key"
        )
    (n,) = _ENTITY_LEN.unpack_from(key, 1 + NAMESPACE_BYTES)
    end = _KEY_HEADER + n
    if end > len(key):
        raise InvalidKeyError(f"{key!r} declares an entity of {n} bytes but is only {len(key)} bytes long")
    return KeyParts(key[1 : 1 + NAMESPACE_BYTES], key[_KEY_HEADER:end], key[end:])


def route_token(key: bytes) -> bytes:
    """What a sharded store hashes to place ``key``: its entity if it is a layout key, else the whole key.

    >>> route_token(make_key("a", "1", b"card-1", b"x")) == route_token(make_key("b", "9", b"card-1", b"y"))
    True
    """
    if len(key) >= _KEY_HEADER and key[0] == KEY_FORMAT_VERSION:
        (n,) = _ENTITY_LEN.unpack_from(key, 1 + NAMESPACE_BYTES)
        if _KEY_HEADER + n <= len(key):
            return key[_KEY_HEADER : _KEY_HEADER + n]
    return key


@dataclass(frozen=True)
class KeyLayout:
    """Key builder for one (dataset, plan hash); compute once, call :meth:`key` per entity."""

    dataset: str
    plan_hash: str
    prefix: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "prefix", bytes([KEY_FORMAT_VERSION]) + namespace(self.dataset, self.plan_hash)
        )

    def key(self, entity: bytes, suffix: bytes = b"") -> bytes:
        """The key of ``entity`` (+ ``suffix``) in this dataset under this plan hash."""
        if not isinstance(entity, bytes) or len(entity) > MAX_ENTITY_BYTES:
            raise InvalidKeyError(
                f"entity must be bytes of at most {MAX_ENTITY_BYTES} bytes, got {entity!r:.80}"
            )
        return self.prefix + _ENTITY_LEN.pack(len(entity)) + entity + suffix


_TAG_NONE, _TAG_INT, _TAG_STR, _TAG_BYTES = 0, 1, 2, 3
_I64 = struct.Struct(">q")


def encode_entity(parts: Sequence[str | int | bytes | None]) -> bytes:
    """Encode an entity key (one or more key columns) as bytes, identically in every engine.

    Each part is a type tag, then a fixed 8-byte integer or a u16 length and UTF-8/raw bytes; ``None`` is a tag
    alone. So ``("a", "bc")`` and ``("ab", "c")`` differ, and ``1`` differs from ``"1"``.

    >>> encode_entity(["card-1"])
    b'\\x02\\x00\\x06card-1'
    """
    out = bytearray()
    for p in parts:
        if p is None:
            out.append(_TAG_NONE)
        elif isinstance(p, bool) or not isinstance(p, int | str | bytes):
            raise InvalidKeyError(
                f"entity key parts must be str, int, bytes or None, got {type(p).__name__} {p!r}"
            )
        elif isinstance(p, int):
            out.append(_TAG_INT)
            out += _I64.pack(p)
        else:
            raw = p.encode() if isinstance(p, str) else p
            out.append(_TAG_STR if isinstance(p, str) else _TAG_BYTES)
            out += _ENTITY_LEN.pack(len(raw)) + raw
    return bytes(out)
