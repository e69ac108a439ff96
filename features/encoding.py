"""Binary primitives for aggregation IRs, and the versioned container that stores several IRs in one value.

Everything here is deterministic (the same input gives the same bytes), uses no pickle and no JSON, and is
pure Python so it works in both the main and the Flink environment.

Primitives (little-endian where it matters):

* ``uvarint`` — unsigned LEB128 of an arbitrary-size non-negative Python int.
* ``svarint`` — zigzag then ``uvarint`` (so small negative numbers stay small).
* ``f64`` — IEEE-754 binary64, 8 bytes.
* ``string`` — ``uvarint`` byte length + UTF-8.
* ``typed`` — a tag byte then the payload, for values whose type is not known from context
  (bucket keys): ``0`` None, ``1`` False, ``2`` True, ``3`` int (svarint), ``4`` float (f64), ``5`` str.
* ``value codecs`` — per Spark input type, untyped (the op knows the type): long/int → svarint,
  double → f64, string → string, boolean → one byte.

Container (:func:`encode_irs`): ``version byte (1)`` ``uvarint n`` then ``n`` × (``uvarint length`` + op payload).
Op payloads carry no header; the plan says which op produced each one.

>>> w = Writer(); w.svarint(-3); w.f64(1.5); w.string("é"); w.typed(True)
>>> r = Reader(w.getvalue()); (r.svarint(), r.f64(), r.string(), r.typed()); r.done()
(-3, 1.5, 'é', True)
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = [
    "FORMAT_VERSION",
    "EncodingError",
    "IRCodec",
    "Reader",
    "ValueReader",
    "ValueWriter",
    "Writer",
    "decode_irs",
    "encode_irs",
    "join_irs",
    "svarint_bytes",
    "uvarint_bytes",
    "value_bytes",
    "value_codec",
]

FORMAT_VERSION = 1
"""Leading byte of every container written by this build. Bump it (and keep a reader) on any payload change."""

_F64 = struct.Struct("<d")

TAG_NONE, TAG_FALSE, TAG_TRUE, TAG_INT, TAG_FLOAT, TAG_STR = range(6)


def _uvarint_loop(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: ``uvarint`` bytes of every n < 2**14 (one or two bytes), precomputed: the hot encoders look them up.
_UV_SMALL: tuple[bytes, ...] = tuple(_uvarint_loop(n) for n in range(1 << 14))
#: The two bytes of a 14-bit group that more groups follow (both with the continuation bit).
_UV_CONT: tuple[bytes, ...] = tuple(bytes(((x & 0x7F) | 0x80, (x >> 7) | 0x80)) for x in range(1 << 14))


def _uvarint_slow(n: int) -> bytes:
    """``uvarint`` of ``n`` ≥ 2**14, 14 bits at a time (LEB128's 7-bit groups, two per table entry). Up to 42
    bits (millisecond timestamps and their zigzag, the common large values) without a loop."""
    if n < 1 << 28:
        return _UV_CONT[n & 0x3FFF] + _UV_SMALL[n >> 14]
    if n < 1 << 42:
        return _UV_CONT[n & 0x3FFF] + _UV_CONT[(n >> 14) & 0x3FFF] + _UV_SMALL[n >> 28]
    parts = []
    while n >= 16384:
        parts.append(_UV_CONT[n & 0x3FFF])
        n >>= 14
    parts.append(_UV_SMALL[n])
    return b"".join(parts)


def uvarint_bytes(n: int) -> bytes:
    """The bytes :meth:`Writer.uvarint` appends for ``n`` (``n`` ≥ 0), without a Writer.

    >>> uvarint_bytes(300).hex(), uvarint_bytes(2**64).hex()
    ('ac02', '80808080808080808002')
    """
    if 0 <= n < 16384:
        return _UV_SMALL[n]
    if n < 0:
        raise EncodingError(f"uvarint needs a non-negative int, got {n}; use svarint for signed values")
    return _uvarint_slow(n)


def svarint_bytes(n: int) -> bytes:
    """The bytes :meth:`Writer.svarint` appends for ``n`` (zigzag, then uvarint)."""
    z = n << 1 if n >= 0 else ((-n) << 1) - 1
    return _UV_SMALL[z] if z < 16384 else _uvarint_slow(z)


class EncodingError(ValueError):
    """Bytes that cannot be decoded: truncated, trailing garbage, an unknown tag or format version."""


class Writer:
    """Appends primitives to a growing buffer; :meth:`getvalue` returns the bytes."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def getvalue(self) -> bytes:
        return bytes(self.buf)

    def uvarint(self, n: int) -> None:
        """Unsigned LEB128; ``n`` must be ≥ 0 (any size)."""
        if 0 <= n < 16384:
            self.buf += _UV_SMALL[n]
            return
        if n < 0:
            raise EncodingError(f"uvarint needs a non-negative int, got {n}; use svarint for signed values")
        buf = self.buf
        while n >= 0x80:
            buf.append((n & 0x7F) | 0x80)
            n >>= 7
        buf.append(n)

    def svarint(self, n: int) -> None:
        """Zigzag-encoded signed varint (any size): 0→0, -1→1, 1→2, -2→3, ..."""
        self.uvarint(n << 1 if n >= 0 else ((-n) << 1) - 1)

    def f64(self, x: float) -> None:
        self.buf += _F64.pack(x)

    def string(self, s: str) -> None:
        raw = s.encode("utf-8")
        self.uvarint(len(raw))
        self.buf += raw

    def boolean(self, b: bool) -> None:
        self.buf.append(1 if b else 0)

    def raw(self, data: bytes) -> None:
        """Length-prefixed opaque bytes (a nested payload)."""
        self.uvarint(len(data))
        self.buf += data

    def typed(self, v: Any) -> None:
        """A tag byte and the payload; accepts None, bool, int, float, str."""
        buf = self.buf
        if v is None:
            buf.append(TAG_NONE)
        elif v is True:
            buf.append(TAG_TRUE)
        elif v is False:
            buf.append(TAG_FALSE)
        elif isinstance(v, int):
            buf.append(TAG_INT)
            self.svarint(v)
        elif isinstance(v, float):
            buf.append(TAG_FLOAT)
            self.f64(v)
        elif isinstance(v, str):
            buf.append(TAG_STR)
            self.string(v)
        else:
            raise EncodingError(
                f"cannot encode a typed value of type {type(v).__name__} ({v!r}); "
                "supported: None, bool, int, float, str"
            )


class Reader:
    """Reads primitives from ``data`` starting at ``pos``; call :meth:`done` to reject trailing bytes."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int = 0) -> None:
        self.data = bytes(data)
        self.pos = pos

    def _truncated(self, what: str) -> EncodingError:
        return EncodingError(f"truncated data: expected {what} at byte {self.pos} of {len(self.data)}")

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def done(self) -> None:
        """Raise if unread bytes remain (a payload of the wrong op or a corrupted value)."""
        if self.pos != len(self.data):
            raise EncodingError(
                f"{len(self.data) - self.pos} trailing bytes after a complete payload "
                f"(read {self.pos} of {len(self.data)}); the payload is not of this op/version"
            )

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self._truncated("a byte")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def uvarint(self) -> int:
        data, pos, shift, result = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise self._truncated("a varint")
            b = data[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return result
            shift += 7

    def svarint(self) -> int:
        z = self.uvarint()
        return (z >> 1) if not z & 1 else -((z + 1) >> 1)

    def f64(self) -> float:
        end = self.pos + 8
        if end > len(self.data):
            raise self._truncated("8 bytes of a float64")
        (x,) = _F64.unpack_from(self.data, self.pos)
        self.pos = end
        return float(x)

    def bytes_(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise self._truncated(f"{n} bytes")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def string(self) -> str:
        n = self.uvarint()
        try:
            return self.bytes_(n).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncodingError(f"invalid UTF-8 in a string ending at byte {self.pos}: {exc}") from exc

    def boolean(self) -> bool:
        b = self.byte()
        if b > 1:
            raise EncodingError(f"invalid boolean byte {b} at byte {self.pos - 1}")
        return b == 1

    def raw(self) -> bytes:
        return self.bytes_(self.uvarint())

    def typed(self) -> Any:
        tag = self.byte()
        if tag == TAG_NONE:
            return None
        if tag == TAG_FALSE:
            return False
        if tag == TAG_TRUE:
            return True
        if tag == TAG_INT:
            return self.svarint()
        if tag == TAG_FLOAT:
            return self.f64()
        if tag == TAG_STR:
            return self.string()
        raise EncodingError(f"unknown typed-value tag {tag} at byte {self.pos - 1}")


ValueWriter = Callable[[Writer, Any], None]
ValueReader = Callable[[Reader], Any]

_CODECS: dict[str, tuple[ValueWriter, ValueReader]] = {
    "long": (Writer.svarint, Reader.svarint),
    "int": (Writer.svarint, Reader.svarint),
    "double": (Writer.f64, Reader.f64),
    "string": (Writer.string, Reader.string),
    "boolean": (Writer.boolean, Reader.boolean),
}


def value_codec(input_type: str) -> tuple[ValueWriter, ValueReader]:
    """The untyped (writer, reader) pair for values of a canonical Spark input type.

    >>> write, read = value_codec("long"); w = Writer(); write(w, -70); read(Reader(w.getvalue()))
    -70
    """
    try:
        return _CODECS[input_type]
    except KeyError:
        raise EncodingError(
            f"no value codec for input type {input_type!r}; known: {sorted(_CODECS)}"
        ) from None


def _string_bytes(s: str) -> bytes:
    raw = s.encode("utf-8")
    n = len(raw)
    return (_UV_SMALL[n] if n < 16384 else _uvarint_slow(n)) + raw


def _bool_bytes(b: bool) -> bytes:
    return b"\x01" if b else b"\x00"


_VALUE_BYTES: dict[str, Callable[[Any], bytes]] = {
    "long": svarint_bytes,
    "int": svarint_bytes,
    "double": _F64.pack,
    "string": _string_bytes,
    "boolean": _bool_bytes,
}


def value_bytes(input_type: str) -> Callable[[Any], bytes]:
    """The bytes of one value as the writer of :func:`value_codec` appends them, as a plain function (the
    fast path of the op encoders; byte-identical).

    >>> value_bytes("string")("é").hex()
    '02c3a9'
    """
    try:
        return _VALUE_BYTES[input_type]
    except KeyError:
        raise EncodingError(
            f"no value codec for input type {input_type!r}; known: {sorted(_VALUE_BYTES)}"
        ) from None


class IRCodec(Protocol):
    """What the container needs of an op: its name and its payload codec (``features.ops.AggOp`` fits)."""

    name: str

    def encode(self, ir: Any) -> bytes: ...

    def decode(self, data: bytes) -> Any: ...


def encode_irs(ops: Sequence[IRCodec], irs: Sequence[Any]) -> bytes:
    """Encode ``irs[i]`` with ``ops[i]`` into one versioned value.

    >>> class Count:
    ...     name = "count"
    ...     def encode(self, ir): w = Writer(); w.uvarint(ir); return w.getvalue()
    ...     def decode(self, data): r = Reader(data); n = r.uvarint(); r.done(); return n
    >>> blob = encode_irs([Count(), Count()], [3, 300]); blob.hex()
    '0102010302ac02'
    >>> decode_irs([Count(), Count()], blob)
    [3, 300]
    """
    if len(ops) != len(irs):
        raise EncodingError(f"encode_irs got {len(ops)} ops but {len(irs)} IRs; pass one IR per op")
    return join_irs([op.encode(ir) for op, ir in zip(ops, irs)])


_VERSION_BYTE = bytes([FORMAT_VERSION])


def join_irs(payloads: Sequence[bytes]) -> bytes:
    """The container of :func:`encode_irs` from already encoded op payloads (one per op, in order).

    >>> join_irs([bytes([3]), bytes([0xAC, 2])]).hex()
    '0102010302ac02'
    """
    n = len(payloads)
    parts = [_VERSION_BYTE, _UV_SMALL[n] if n < 16384 else _uvarint_slow(n)]
    for p in payloads:
        k = len(p)
        parts.append(_UV_SMALL[k] if k < 16384 else _uvarint_slow(k))
        parts.append(p)
    return b"".join(parts)


def decode_irs(ops: Sequence[IRCodec], data: bytes) -> list[Any]:
    """Inverse of :func:`encode_irs`; raises :class:`EncodingError` on an unknown version or a count mismatch."""
    if not data:
        raise EncodingError("empty IR container: expected a format-version byte")
    r = Reader(data)
    version = r.byte()
    if version != FORMAT_VERSION:
        raise EncodingError(
            f"unknown IR container format version {version}; this build of tessera reads version "
            f"{FORMAT_VERSION}. The value was written by a different tessera version: upgrade this reader "
            "or re-run the batch upload with this version"
        )
    n = r.uvarint()
    if n != len(ops):
        raise EncodingError(
            f"IR container holds {n} IRs but {len(ops)} ops were given "
            f"({', '.join(op.name for op in ops)}); the plan does not match the stored value"
        )
    out = []
    for i, op in enumerate(ops):
        payload = r.raw()
        try:
            out.append(op.decode(payload))
        except EncodingError as exc:
            raise EncodingError(f"IR {i} ({op.name}): {exc}") from exc
    r.done()
    return out
