"""approx_unique_count (HyperLogLog) and approx_percentile (KLL), both from Apache DataSketches.

approx_unique_count — ``hll_sketch(lg_k=12, HLL_4)``. Chosen over CPC after measuring serialized size for
the small cardinalities typical of per-key tiles (datasketches 5.x, string items):

    distinct:   1     5     20     100    1000    10000
    HLL_4 12:  12B   28B    92B   412B   2088B   2088B   exact (round(est) == n) up to ~380 distinct
    CPC 11:    36B   40B    60B   132B    584B   1252B   off by ≥1 from ~40 distinct

Updates, unions and (de)serialization cost the same (0.1–0.5 µs). HLL's coupon list/set modes store 4
bytes per distinct item, so small tiles are 3× smaller than CPC's and their counts are exact; the
relative standard error once in HLL mode is ≈ 1.04/√4096 ≈ 1.6 %. Large batch values (≥ 400 distinct)
are 2 KB instead of CPC's ~0.6–1.3 KB — the price for exact small counts.

``finalize`` unions the sketch with itself and reads the estimate of the result. That switches DataSketches
from the HIP estimator (which depends on insertion order) to the composite estimator over the register
values, which depend only on the *set* of distinct items: stream tiles, batch values and the backfill get
the same number whatever the fold/merge order (checked by the law suite with exact equality).

approx_percentile — ``kll_doubles_sketch(k=200)`` (normalized rank error ≈ 1.33 %, 99 % confidence).
Output: ``get_quantiles(percentiles, inclusive=True)``, i.e. for each q the smallest retained value whose
inclusive rank is ≥ q — with n ≤ 200 values the sketch keeps them all and this is exactly
``sorted(xs)[max(ceil(q·n), 1) − 1]`` (Spark's ``percentile_approx`` definition). NaN values are ignored.
Beyond 200 values KLL compacts with random choices (the Python binding exposes no seed), so two engines
agree within the rank error, not bit for bit; :meth:`ApproxPercentile.agrees` checks ranks when the values
are known.

Encodings are the sketches' own ``serialize_compact()`` / ``serialize()``, made canonical so that
``encode(decode(b)) == b``: HLL coupons/aux entries are sorted (:func:`canonical_hll_bytes`), KLL's level 0
is sorted before serializing. (KLL queries and ``encode`` sort level 0 in place: the IR's content does not
change, only its internal order.)
"""

from __future__ import annotations

import struct
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import Any

import datasketches as ds
import numpy as np

from features.encoding import EncodingError
from features.ops.base import DEFAULT_PERCENTILES, NUMERIC_TYPES, AggOp, results_close

HLL_LG_K = 12
HLL_TYPE = ds.tgt_hll_type.HLL_4
KLL_K = 200


def canonical_hll_bytes(image: bytes) -> bytes:
    """Sort the 4-byte coupons (LIST/SET modes) or HLL_4 aux entries of a compact HLL image.

    In SET mode the compact image lists coupons in hash-table order, which depends on insertion order, so
    ``serialize(deserialize(b)) != b``. Deserialization re-inserts the coupons (or aux exceptions) one by
    one, so their order carries no information and sorting them gives a canonical, round-trip-stable image.
    Layout (DataSketches HLL serialization format): byte 0 = preamble ints, byte 3 = lg_k, byte 7 low bits =
    mode (0 LIST, 1 SET, 2 HLL); HLL_4 images are a 40-byte preamble, 2^lg_k / 2 register bytes, then aux
    entries. Unknown layouts are returned unchanged.
    """
    if len(image) < 8:
        return image
    mode = image[7] & 3
    if mode in (0, 1):
        start = (image[0] & 0x3F) * 4
    elif mode == 2 and (image[7] >> 2) & 3 == 0:  # HLL mode, HLL_4 registers
        start = 40 + (1 << image[3]) // 2
    else:
        return image
    n, rest = divmod(len(image) - start, 4)
    if rest or start > len(image):
        return image
    if n < 2:
        return image
    # Sorting the 4-byte entries as big-endian unsigned ints sorts them as bytes, at C speed.
    fmt = f">{n}I"
    return image[:start] + struct.pack(fmt, *sorted(struct.unpack_from(fmt, image, start)))


class ApproxUniqueCount(AggOp):
    """Approximate number of distinct values (HLL). Empty → 0."""

    name = "approx_unique_count"
    is_exact = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # bool has no sketch overload; hash it as the int 0/1 (as Spark hashes booleans as ints).
        self._item = int if self.input_type == "boolean" else self.coerce

    def init(self) -> ds.hll_sketch:
        return ds.hll_sketch(HLL_LG_K, HLL_TYPE)

    def update(self, ir: ds.hll_sketch, value: Any, ts_ms: int, tie: int) -> ds.hll_sketch:
        ir.update(self._item(value))
        return ir

    def merge(self, a: ds.hll_sketch, b: ds.hll_sketch) -> ds.hll_sketch:
        if b.is_empty():
            return a
        union = ds.hll_union(HLL_LG_K)
        union.update(a)
        union.update(b)
        return union.get_result(HLL_TYPE)

    def finalize(self, ir: ds.hll_sketch) -> int:
        if ir.is_empty():
            return 0
        union = ds.hll_union(HLL_LG_K)
        union.update(ir)
        union.update(ir)  # a second, out-of-order update selects the order-independent composite estimator
        # The union's own estimate: the same registers and estimator as get_result(HLL_TYPE).get_estimate()
        # (checked equal on 21 k sketches of 1-120 k items, every mode), without the HLL_4 copy (~45 % of
        # the call on dense sketches, which the backfill finalizes once per query and window).
        return round(union.get_estimate())

    def encode(self, ir: ds.hll_sketch) -> bytes:
        return canonical_hll_bytes(bytes(ir.serialize_compact()))

    def decode(self, data: bytes) -> ds.hll_sketch:
        try:
            return ds.hll_sketch.deserialize(bytes(data))
        except Exception as exc:  # the binding raises RuntimeError/ValueError variants
            raise EncodingError(f"not a serialized HLL sketch ({len(data)} bytes): {exc}") from exc

    def copy(self, ir: ds.hll_sketch) -> ds.hll_sketch:
        return ds.hll_sketch.deserialize(ir.serialize_updatable())

    def output_type(self, input_type: str | None = None) -> str:
        return "long"


class ApproxPercentile(AggOp):
    """Approximate quantiles (KLL) at ``params.percentiles``. Empty → None."""

    name = "approx_percentile"
    deterministic = False
    is_exact = False
    accepted_inputs = NUMERIC_TYPES
    uses_percentiles = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.percentiles: tuple[float, ...] = self.params.percentiles or DEFAULT_PERCENTILES

    def init(self) -> ds.kll_doubles_sketch:
        return ds.kll_doubles_sketch(KLL_K)

    def update(self, ir: ds.kll_doubles_sketch, value: Any, ts_ms: int, tie: int) -> ds.kll_doubles_sketch:
        ir.update(float(value))
        return ir

    def update_many(
        self, ir: ds.kll_doubles_sketch, values: Any, ts: Any, ties: Any
    ) -> ds.kll_doubles_sketch:
        arr = np.asarray(values, dtype=np.float64)
        if len(arr):
            ir.update(arr)
        return ir

    def merge(self, a: ds.kll_doubles_sketch, b: ds.kll_doubles_sketch) -> ds.kll_doubles_sketch:
        if not b.is_empty():
            a.merge(b)
        return a

    def finalize(self, ir: ds.kll_doubles_sketch) -> list[float] | None:
        if ir.is_empty():
            return None
        return [float(q) for q in ir.get_quantiles(list(self.percentiles), inclusive=True)]

    def encode(self, ir: ds.kll_doubles_sketch) -> bytes:
        if not ir.is_empty():
            # Queries sort level 0 in place, which changes serialize()'s bytes (not the content); sort first
            # so encode(x) does not depend on whether x was finalized before.
            ir.get_quantile(0.5)
        return bytes(ir.serialize())

    def decode(self, data: bytes) -> ds.kll_doubles_sketch:
        try:
            return ds.kll_doubles_sketch.deserialize(bytes(data))
        except Exception as exc:
            raise EncodingError(f"not a serialized KLL doubles sketch ({len(data)} bytes): {exc}") from exc

    def copy(self, ir: ds.kll_doubles_sketch) -> ds.kll_doubles_sketch:
        return ds.kll_doubles_sketch.deserialize(self.encode(ir))

    def output_type(self, input_type: str | None = None) -> str:
        return "array<double>"

    @staticmethod
    def rank_error() -> float:
        """The sketch's a-priori normalized rank error for single quantile queries (99 % confidence)."""
        return float(ds.kll_doubles_sketch.get_normalized_rank_error(KLL_K, False))

    def within_rank_error(self, result: Sequence[float] | None, values: Sequence[Any], eps: float) -> bool:
        """Whether each returned quantile's true rank range in ``values`` is within ``eps`` of its q."""
        xs = sorted(float(v) for v in values if float(v) == float(v))
        if not xs:
            return result is None
        if result is None or len(result) != len(self.percentiles):
            return False
        n = len(xs)
        for q, r in zip(self.percentiles, result):
            lo, hi = bisect_left(xs, r) / n, bisect_right(xs, r) / n
            if not (lo - eps <= q <= hi + eps):
                return False
        return True

    def agrees(self, a: Any, b: Any, values: Sequence[Any] | None = None) -> bool:
        """Equal (always the case while n ≤ 200), or — when ``values`` are given — both within twice the
        rank error of the exact quantiles (two independent sketches may err in opposite directions)."""
        if results_close(a, b):
            return True
        if values is None:
            return False
        eps = 2 * self.rank_error()
        return self.within_rank_error(a, values, eps) and self.within_rank_error(b, values, eps)
