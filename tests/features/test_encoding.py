"""Binary primitives and the versioned IR container (features/encoding.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from features.encoding import (
    FORMAT_VERSION,
    EncodingError,
    Reader,
    Writer,
    decode_irs,
    encode_irs,
    join_irs,
    svarint_bytes,
    uvarint_bytes,
    value_bytes,
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


# ---- the fast encoders: byte-identical to the Writer-based format -------------------------------------------


@ENC
@given(st.integers(0, 2**130))
@example(2**14 - 1)
@example(2**14)
@example(2**28 - 1)
@example(2**28)
@example(2**42 - 1)
@example(2**42)
@example(2 * 1_765_000_000_000)
def test_uvarint_bytes_equal_the_writer(n: int) -> None:
    w = Writer()
    w.uvarint(n)
    assert uvarint_bytes(n) == w.getvalue()
    assert join_irs([uvarint_bytes(n)]) == encode_irs([_Raw()], [uvarint_bytes(n)])


@ENC
@given(st.integers(-(2**100), 2**100))
def test_svarint_bytes_equal_the_writer(n: int) -> None:
    w = Writer()
    w.svarint(n)
    assert svarint_bytes(n) == w.getvalue()


@pytest.mark.parametrize(
    ("input_type", "values"),
    [
        ("long", [0, -1, 8191, -8192, 2**63 - 1, -(2**63)]),
        ("double", [0.0, -1.5, math.inf, math.nan, 1e-310]),
        ("string", ["", "card-123", "naïve ✓", "x" * 20_000]),
        ("boolean", [True, False]),
    ],
)
def test_value_bytes_equal_the_value_codec(input_type: str, values: list[Any]) -> None:
    write, _ = value_codec(input_type)
    for v in values:
        w = Writer()
        write(w, v)
        assert value_bytes(input_type)(v) == w.getvalue()


class _Raw:
    name = "raw"

    def encode(self, ir: bytes) -> bytes:
        return ir

    def decode(self, data: bytes) -> bytes:
        return data


def test_op_payloads_are_pinned() -> None:
    """The stored format, byte for byte, of a few IRs of every op family (a faster encoder must not move it;
    the hex strings were written by the Writer-based encoders)."""
    long_, dbl, text = "long", "double", "string"
    cases = [
        (get_op("count", input_type=long_), [(1, 5, 0)] * 300, "ac02"),
        (get_op("sum", input_type=long_), [(-70, 5, 0), (2**40, 6, 0)], "02f4feffffff3f"),
        (
            get_op("sum", input_type=dbl),
            [(0.1, 5, 0), (math.inf, 6, 0), (1e300, 7, 0)],
            "03050001009a9999999999b93f9c7500883ce4377e",
        ),
        (get_op("max", input_type=dbl), [(1.5, 5, 0)], "000000000000f83f"),
        (
            get_op("variance", input_type=dbl),
            [(1.0, 5, 0), (3.0, 6, 0)],
            "0200000000000000400000000000000040",
        ),
        (get_op("last", input_type=text), [("é", 1_700_000_000_000, 3)], "80a0abfef9620602c3a9"),
        (
            get_op("last_k", OpParams(k=2), long_),
            [(7, 10, 1), (8, 1_700_000_000_000, 0), (9, 11, -4)],
            "02160712f5cf95ffbc310010",
        ),
        (
            get_op("top_k", OpParams(k=3), dbl),
            [(2.0, 1, 0), (2.0, 2, 0), (math.nan, 3, 0)],
            "0300000000000000400000000000000040000000000000f87f",
        ),
        (
            get_op("approx_unique_count", input_type=text),
            [(c, 1, 0) for c in "abcdefghij"],
            "0301070c050800010a0000000aff80042ed715052f823b046ed44e076f19dc068667e1049d7ad00bbc03c608c0bf6a12fef9c80e",
        ),
        (
            Bucketed(get_op("sum", input_type=long_)),
            [(("US", 5), 1, 0), ((None, 2), 2, 0), (("", 1), 3, 0)],
            "030002010405000201020502555302010a",
        ),
    ]
    for op, rows, hex_ in cases:
        payload = op.encode(fold(op, rows))
        assert payload.hex() == hex_, op
        assert op.encode(op.decode(payload)) == payload


def test_tracked_encoding_equals_the_full_encoding() -> None:
    """``StateCodec.update_tracked``/``encode_tracked`` (the stream's per-op payload cache) write exactly the
    bytes of ``encode``, on rows that exercise every way an op can keep or change its IR: repeated and null
    values, a max not exceeded, top_k ties between equal ints, NaN, out-of-order events, a decoded tile."""
    import random
    import sys
    from pathlib import Path

    from features.compile import compile_repo
    from features.reference import row_function
    from features.synthetic import generate
    from features.tiles import StateCodec

    plan = compile_repo(Path(__file__).resolve().parents[2] / "features" / "fraud")
    rng = random.Random(3)
    raw = generate(seed=9, days=1, events_per_day=400, n_cards=5, n_merchants=3).payments.to_pylist()
    for name in ("card", "merchant", "customer", "device"):
        gb = plan.group_by(name)
        codec = StateCodec(gb)
        fn = row_function(gb)
        # Equal strings as one object (as a decoder may share them): identity must not pass for "unchanged".
        rows = [
            {k: sys.intern(v) if isinstance(v, str) else v for k, v in r.items()}
            for r in map(fn, raw)
            if r is not None
        ]
        cols = [a.column for a in gb.aggregations if a.column != gb.source.time_column]
        irs, cache = codec.init(), codec.new_payloads()
        for i in range(600):
            row = dict(rng.choice(rows))
            row[gb.source.time_column] += rng.randint(-5_000, 5_000)
            for col in cols:
                x = rng.random()
                if x < 0.05:
                    row[col] = None
                elif x < 0.1 and isinstance(row.get(col), float):
                    row[col] = rng.choice([math.nan, 0.0, -0.0, 5.0])
                elif x < 0.15 and isinstance(row.get(col), int) and not isinstance(row.get(col), bool):
                    row[col] = rng.choice([0, 1, 5])
            codec.update_tracked(irs, row, cache)
            assert codec.encode_tracked(irs, cache) == codec.encode(irs), (name, i)
            if rng.random() < 0.05:  # as after a restore: decoded, payloads from the stored bytes
                irs, cache = codec.decode_tracked(codec.encode(irs))
