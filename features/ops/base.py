"""The aggregation-op contract every engine shares (stream, batch upload, backfill, fetcher).

An op is a monoid over an intermediate representation (IR), shaped like Beam's ``CombineFn``:

* ``init() -> IR`` — the identity.
* ``update(ir, value, ts_ms, tie) -> IR`` — add one non-null event. May mutate ``ir``; callers must use the
  returned IR.
* ``merge(a, b) -> IR`` — combine two IRs. **May mutate and return ``a``; must never mutate ``b``** (``b`` is
  often a cached, immutable tile or batch value).
* ``finalize(ir) -> value`` — the feature value (JSON-friendly). Does not mutate ``ir``.
* ``encode(ir) -> bytes`` / ``decode(bytes) -> IR`` — compact and deterministic, no header (the container in
  :mod:`features.encoding` carries the version).
* ``inverse(ir, value, ts_ms, tie) -> IR`` — take one event back out, only where ``has_inverse``.
* ``copy(ir) -> IR`` — deep enough that mutating one does not affect the other.

Laws (checked for every registered op by ``tests/features/test_ops_laws.py``): ``merge(init(), x) ≡ x``;
merge is associative and commutative; folding any split of an event list and merging equals folding the
whole list; event order does not matter; ``decode(encode(x)) ≡ x``; ``inverse(update(x, e), e) ≡ x`` where
``has_inverse``. ``≡`` means "finalizes to results for which :meth:`AggOp.agrees` is true".

Ops are stateless: one instance per (op, params, input type), safe to share between threads and tiles.

Input values are coerced once on entry (``update``) to the canonical Python type of the input type:
long/int → ``int``, double → ``float`` with ``-0.0`` normalised to ``0.0`` and every NaN to one NaN object,
string → ``str``, boolean → ``bool``. So results never depend on whether a caller passed ``3`` or ``3.0``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from features.encoding import Reader, ValueReader, ValueWriter, Writer, value_bytes, value_codec

IR = Any
"""An op's intermediate representation: a plain Python value, list or dict (sketch objects for sketches)."""

NAN = float("nan")
"""The one NaN object doubles are normalised to, so NaN works as a dict key and compares identical."""

INPUT_TYPES = ("long", "int", "double", "string", "boolean")
"""Canonical input types. ``decimal(p,s)``/``float`` are read as double, ``bigint`` as long, etc."""

NUMERIC_TYPES = frozenset({"long", "int", "double", "boolean"})
INTEGER_TYPES = frozenset({"long", "int", "boolean"})

_ALIASES = {
    "bigint": "long",
    "long": "long",
    "int": "int",
    "integer": "int",
    "smallint": "int",
    "tinyint": "int",
    "short": "int",
    "byte": "int",
    "double": "double",
    "float": "double",
    "real": "double",
    "string": "string",
    "varchar": "string",
    "boolean": "boolean",
    "bool": "boolean",
}

DEFAULT_PERCENTILES = (0.5, 0.9, 0.99)

FLOAT_RTOL = 1e-9
"""Relative tolerance for float results computed in different fold/merge orders (see :meth:`AggOp.agrees`)."""


class OpError(ValueError):
    """A bad op request (unknown name, missing/invalid params, unsupported input type) or an impossible
    operation (``inverse`` where none exists). Messages say what was given and what to do."""


@dataclass(frozen=True)
class OpParams:
    """Parameters of an op. ``k`` is required by first_k/last_k/top_k/bottom_k (and rejected by other ops);
    ``percentiles`` (each in [0, 1]) is used by approx_percentile, default ``(0.5, 0.9, 0.99)``.

    >>> OpParams(k=0)
    Traceback (most recent call last):
    ...
    features.ops.base.OpError: k must be a positive int, got 0
    """

    k: int | None = None
    percentiles: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise OpError(f"k must be a positive int, got {self.k!r}")
        if self.percentiles is not None:
            ps = tuple(self.percentiles)
            if not ps:
                raise OpError(
                    "percentiles is empty; give at least one, e.g. (0.5, 0.9, 0.99), or leave it unset"
                )
            bad = [
                p for p in ps if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0
            ]
            if bad:
                raise OpError(
                    f"percentiles must be numbers in [0, 1], got {bad!r} in {ps!r} (write 0.99, not 99)"
                )
            object.__setattr__(self, "percentiles", tuple(float(p) for p in ps))


def canonical_input_type(input_type: str) -> str:
    """Map a Spark type name to one of :data:`INPUT_TYPES`.

    >>> canonical_input_type("decimal(12,2)"), canonical_input_type("BIGINT")
    ('double', 'long')
    """
    t = input_type.strip().lower()
    if t.startswith("decimal"):
        return "double"
    try:
        return _ALIASES[t]
    except KeyError:
        raise OpError(
            f"unsupported input type {input_type!r}; aggregations take one of "
            f"{', '.join(INPUT_TYPES)} (or decimal(p,s), read as double)"
        ) from None


def to_double(x: Any) -> float:
    """Canonical double: ``-0.0`` → ``0.0``, any NaN → :data:`NAN`."""
    f = float(x) + 0.0
    return NAN if f != f else f


COERCE: dict[str, Callable[[Any], Any]] = {
    "long": int,
    "int": int,
    "double": to_double,
    "string": str,
    "boolean": bool,
}


def double_key(x: float) -> tuple[int, float]:
    """Total order on canonical doubles with NaN greatest (Spark's ordering)."""
    return (1, 0.0) if x != x else (0, x)


def typed_key(v: Any) -> tuple[int, Any]:
    """A total order across the typed values None < bool < int < float (NaN last) < str.

    Used to sort bucket keys and histogram keys so encodings and outputs are deterministic.

    >>> sorted([3, "a", None, True, 2.5, float("nan")], key=typed_key)
    [None, True, 3, 2.5, nan, 'a']
    """
    if v is None:
        return (0, 0)
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, int):
        return (2, v)
    if isinstance(v, float):
        return (3, double_key(v))
    if isinstance(v, str):
        return (4, v)
    raise OpError(
        f"unsupported value type {type(v).__name__} ({v!r}); expected None, bool, int, float or str"
    )


def value_key(input_type: str) -> Callable[[Any], Any] | None:
    """Sort key for coerced values of ``input_type``: None (natural order) except for doubles (NaN greatest)."""
    return double_key if input_type == "double" else None


def results_close(a: Any, b: Any, atol: float = 0.0, rtol: float = FLOAT_RTOL) -> bool:
    """Structural equality of finalized results where floats may differ by ``rtol``·max(|a|,|b|) + ``atol``,
    NaN equals NaN, and ints/bools must match exactly."""
    if isinstance(a, float) or isinstance(b, float):
        if (
            not isinstance(a, int | float)
            or not isinstance(b, int | float)
            or isinstance(a, bool)
            or isinstance(b, bool)
        ):
            return False
        fa, fb = float(a), float(b)
        if fa != fa or fb != fb:
            return fa != fa and fb != fb
        if fa == fb:
            return True
        return abs(fa - fb) <= rtol * max(abs(fa), abs(fb)) + atol
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(results_close(x, y, atol, rtol) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        if len(a) != len(b):
            return False
        ka = sorted(a, key=typed_key)
        kb = sorted(b, key=typed_key)
        return all(
            results_close(x, y, 0.0, 0.0) and results_close(a[x], b[y], atol, rtol) for x, y in zip(ka, kb)
        )
    return type(a) is type(b) and a == b


class AggOp(ABC):
    """Base class of every aggregation op; see the module docstring for the contract and the laws.

    Subclasses set ``name`` and implement the abstract methods; ``accepted_inputs`` limits input types,
    ``uses_k``/``uses_percentiles`` declare which :class:`OpParams` fields they read.
    """

    name: ClassVar[str]
    is_exact: ClassVar[bool] = True
    deterministic: ClassVar[bool] = True
    """Finalized results are bit-identical whatever the fold/merge order (False: equal within :meth:`agrees`)."""
    accepted_inputs: ClassVar[frozenset[str]] = frozenset(INPUT_TYPES)
    uses_k: ClassVar[bool] = False
    uses_percentiles: ClassVar[bool] = False

    has_inverse: bool = False
    """Whether :meth:`inverse` is exact for this (op, input type). Set per instance by subclasses."""

    def __init__(self, params: OpParams | None = None, input_type: str = "double") -> None:
        self.params = params if params is not None else OpParams()
        self.declared_input_type = input_type
        self.input_type = canonical_input_type(input_type)
        if self.input_type not in self.accepted_inputs:
            raise OpError(
                f"{self.name} does not accept {input_type!r} input; it takes "
                f"{', '.join(t for t in INPUT_TYPES if t in self.accepted_inputs)}"
                + (
                    ". Cast the column in `selects`, e.g. CAST(x AS DOUBLE)"
                    if self.input_type == "string"
                    else ""
                )
            )
        if self.params.k is not None and not self.uses_k:
            raise OpError(
                f"{self.name} takes no k (k={self.params.k} given); k is for first_k, last_k, top_k, bottom_k"
            )
        if self.uses_k and self.params.k is None:
            raise OpError(
                f"{self.name} needs k, the number of values to keep: e.g. OpParams(k=5) / "
                f"Aggregation(..., Op.{self.name.upper()}, k=5)"
            )
        if self.params.percentiles is not None and not self.uses_percentiles:
            raise OpError(
                f"{self.name} takes no percentiles (got {self.params.percentiles}); they are for approx_percentile"
            )
        self.coerce: Callable[[Any], Any] = COERCE[self.input_type]
        self.write_value: ValueWriter
        self.read_value: ValueReader
        self.write_value, self.read_value = value_codec(self.input_type)
        #: ``write_value``'s bytes as a plain function (the encoders' fast path; byte-identical).
        self.value_bytes: Callable[[Any], bytes] = value_bytes(self.input_type)

    @property
    def k(self) -> int:
        """``params.k`` (only for ops with ``uses_k``, where it is validated to be set)."""
        assert self.params.k is not None
        return self.params.k

    # ---- the monoid ---------------------------------------------------------------------------------
    @abstractmethod
    def init(self) -> IR:
        """A fresh identity IR (a new object each call)."""

    @abstractmethod
    def update(self, ir: IR, value: Any, ts_ms: int, tie: int) -> IR:
        """Add one event (``value`` is never None). May mutate ``ir``; returns the IR to use."""

    @abstractmethod
    def merge(self, a: IR, b: IR) -> IR:
        """Combine ``a`` and ``b``. May mutate and return ``a``; never mutates ``b``."""

    @abstractmethod
    def finalize(self, ir: IR) -> Any:
        """The feature value (int/float/str/bool/list/dict/None); does not mutate ``ir``."""

    @abstractmethod
    def encode(self, ir: IR) -> bytes:
        """Compact deterministic payload, no header."""

    @abstractmethod
    def decode(self, data: bytes) -> IR:
        """Inverse of :meth:`encode`; raises :class:`features.encoding.EncodingError` on bad bytes."""

    @abstractmethod
    def copy(self, ir: IR) -> IR:
        """An independent copy of ``ir``."""

    @abstractmethod
    def output_type(self, input_type: str | None = None) -> str:
        """Spark type of the finalized value for ``input_type`` (default: this op's input type)."""

    # ---- optional -----------------------------------------------------------------------------------
    def inverse(self, ir: IR, value: Any, ts_ms: int, tie: int) -> IR:
        """Remove one event previously added with :meth:`update` (only where ``has_inverse``)."""
        raise OpError(
            f"{self.name} over {self.input_type} has no exact inverse; merge tiles instead of "
            "subtracting events"
        )

    def update_many(self, ir: IR, values: Any, ts: Any, ties: Any) -> IR:
        """Add a batch of events (numpy arrays or sequences of equal length, nulls already removed).

        The default loops over :meth:`update`; numeric ops override it with vectorised code.
        """
        update = self.update
        vals = values.tolist() if isinstance(values, np.ndarray) else list(values)
        tss = ts.tolist() if isinstance(ts, np.ndarray) else list(ts)
        tis = ties.tolist() if isinstance(ties, np.ndarray) else list(ties)
        if not len(vals) == len(tss) == len(tis):
            raise OpError(
                f"update_many needs arrays of equal length, got {len(vals)}, {len(tss)}, {len(tis)}"
            )
        for v, t, tie in zip(vals, tss, tis):
            ir = update(ir, v, t, tie)
        return ir

    def agrees(self, a: Any, b: Any, values: Sequence[Any] | None = None) -> bool:
        """Whether two finalized results of this op over the same events (folded or merged in different
        orders, or by different engines) are equal within this op's stated tolerance.

        Exact ops: equal, with floats within :data:`FLOAT_RTOL` relative (NaN equals NaN). ``values`` (the
        events' values) lets ops whose error scales with the inputs (variance) widen the tolerance.
        """
        return results_close(a, b)

    def empty_result(self) -> Any:
        """What an empty window finalizes to."""
        return self.finalize(self.init())

    # ---- identity -----------------------------------------------------------------------------------
    def _key(self) -> tuple[Any, ...]:
        return (type(self), self.params, self.input_type)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AggOp) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        extra = "".join(
            f", {f}={getattr(self.params, f)!r}"
            for f in ("k", "percentiles")
            if getattr(self.params, f) is not None
        )
        return f"{type(self).__name__}({self.input_type}{extra})"


def finite_scale(values: Iterable[Any] | None) -> float:
    """max |x| over the finite numeric ``values`` (0.0 if none) — the scale float tolerances grow with."""
    if values is None:
        return 0.0
    m = 0.0
    for v in values:
        if isinstance(v, int | float) and not isinstance(v, bool):
            f = abs(float(v))
            if math.isfinite(f) and f > m:
                m = f
    return m


def read_all(data: bytes, read: Callable[[Reader], IR]) -> IR:
    """Decode ``data`` with ``read`` and check nothing is left over."""
    r = Reader(data)
    ir = read(r)
    r.done()
    return ir


def write_with(write: Callable[[Writer], None]) -> bytes:
    w = Writer()
    write(w)
    return w.getvalue()
