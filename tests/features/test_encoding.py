"""Binary primitives and the versioned IR container (features/encoding.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.encoding import (
    FORMAT_VERSION,
    EncodingError,
    Reader,
    Writer,
    decode_irs,
    encode_irs,
    value_codec,
)
from features.ops import REGISTRY, AggOp, Bucketed, OpParams, fold, get_op

ENC = settings(max_examples=60, deadline=None)


@pytest.mark.parametrize(
    ("n", "hex_"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "8001"), (300, "ac02"), (2**64, "80808080808080808002")],
)
def test_uvarint_known_bytes(n: int, hex_: str) -> None:
    w = Writer()
    w.uvarint(n)
    assert w.getvalue().hex() == hex_
    assert Reader(bytes.fromhex(hex_)).uvarint() == n


@pytest.mark.parametrize(
    ("n", "zigzag"), [(0, 0), (-1, 1), (1, 2), (-2, 3), (2**63 - 1, 2**64 - 2), (-(2**63), 2**64 - 1)]
)
def test_zigzag(n: int, zigzag: int) -> None:
    w = Writer()
    w.svarint(n)
    u = Writer()
    u.uvarint(zigzag)
    assert w.getvalue() == u.getvalue()


typed_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False), st.text()
)


@ENC
@given(st.lists(typed_values, max_size=20))
def test_typed_roundtrip_keeps_type(vs: list[Any]) -> None:
    w = Writer()
    for v in vs:
        w.typed(v)
    r = Reader(w.getvalue())
    back = [r.typed() for _ in vs]
    r.done()
    assert back == vs and [type(v) for v in back] == [type(v) for v in vs]


def test_typed_nan_and_errors() -> None:
    w = Writer()
    w.typed(math.nan)
    assert math.isnan(Reader(w.getvalue()).typed())
    with pytest.raises(EncodingError, match="bytes"):
        w.typed(b"raw")
    with pytest.raises(EncodingError, match="unknown typed-value tag 9"):
        Reader(b"\x09").typed()


@pytest.mark.parametrize(
    ("input_type", "values"),
    [
        ("long", [0, -1, 2**63 - 1, -(2**63)]),
        ("int", [7, -7]),
        ("double", [0.0, -1.5, math.inf, 1e-310]),
        ("string", ["", "card-123", "naïve ✓"]),
        ("boolean", [True, False]),
    ],
)
def test_value_codecs(input_type: str, values: list[Any]) -> None:
    write, read = value_codec(input_type)
    w = Writer()
    for v in values:
        write(w, v)
    r = Reader(w.getvalue())
    assert [read(r) for _ in values] == values
    r.done()


def test_reader_rejects_truncated_and_trailing() -> None:
    with pytest.raises(EncodingError, match="truncated"):
        Reader(b"\x80").uvarint()
    with pytest.raises(EncodingError, match="truncated"):
        Reader(b"\x00\x00").f64()
    r = Reader(b"\x01\x02")
    r.uvarint()
    with pytest.raises(EncodingError, match="1 trailing bytes"):
        r.done()
    with pytest.raises(EncodingError, match="non-negative"):
        Writer().uvarint(-1)


def _all_ops() -> list[AggOp]:
    ops: list[AggOp] = [get_op(n, OpParams(k=2) if c.uses_k else None, "long") for n, c in REGISTRY.items()]
    ops.append(Bucketed(get_op("count", input_type="string")))
    return ops


def test_container_roundtrip_every_op() -> None:
    ops = _all_ops()
    rows = [(v, ts, 0) for ts, v in enumerate([5, 3, 5, -2, 9])]
    irs = [
        fold(op, [((("b" if v > 0 else "a"), v), ts, t) for v, ts, t in rows])
        if isinstance(op, Bucketed)
        else fold(op, rows)
        for op in ops
    ]
    blob = encode_irs(ops, irs)
    assert blob[0] == FORMAT_VERSION
    back = decode_irs(ops, blob)
    assert [op.finalize(ir) for op, ir in zip(ops, back)] == [op.finalize(ir) for op, ir in zip(ops, irs)]
    assert encode_irs(ops, back) == blob
    empty = encode_irs(ops, [op.init() for op in ops])
    assert [op.finalize(ir) for op, ir in zip(ops, decode_irs(ops, empty))] == [
        op.empty_result() for op in ops
    ]


def test_compact_sizes() -> None:
    """Small tiles stay small: a count is 1 byte, a double sum 10, an HLL of 1 item 12."""
    rows = [(2.5, 1, 0)]
    sizes = {n: len(get_op(n).encode(fold(get_op(n), rows))) for n in ("count", "sum", "min", "variance")}
    assert sizes == {"count": 1, "sum": 10, "min": 8, "variance": 17}
    hll = get_op("approx_unique_count", input_type="string")
    assert len(hll.encode(fold(hll, [("m1", 1, 0)]))) == 12


def test_container_errors_are_clear() -> None:
    ops = [get_op("count", input_type="long")]
    blob = encode_irs(ops, [3])
    with pytest.raises(EncodingError, match=r"unknown IR container format version 9.*reads version 1"):
        decode_irs(ops, bytes([9]) + blob[1:])
    with pytest.raises(EncodingError, match="holds 1 IRs but 2 ops"):
        decode_irs(ops * 2, blob)
    with pytest.raises(EncodingError, match="empty IR container"):
        decode_irs(ops, b"")
    with pytest.raises(EncodingError, match="2 ops but 1 IRs"):
        encode_irs(ops * 2, [3])
    with pytest.raises(EncodingError, match=r"IR 0 \(count\)"):
        decode_irs(ops, bytes([FORMAT_VERSION, 1, 2, 1, 1]))  # payload of two varints for a count
    with pytest.raises(EncodingError, match="not a serialized HLL"):
        get_op("approx_unique_count").decode(b"\x01\x02\x03")
