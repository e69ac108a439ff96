"""The one path from a Join's feature row to the model's numeric vector, for training and for serving.

A feature row is what the backfill (training set) and the fetcher (online) produce for a Join: request columns,
then every part's features, then the derivations, as plain Python values. :func:`build_spec` turns the Join's
``output_schema`` into an ordered list of :class:`FeatureSpec`; a :class:`Vectorizer` applies it. The spec is
saved with the model and the serving side rebuilds the Vectorizer *from the model file*, never from the Join,
so the column order the model was trained on is the order it is fed.

The rule (by Spark type of the Join column, after the exclusions):

- numbers (``int``/``long``/``double``...): ``float(v)``; ``None`` (and NaN) -> NaN, which xgboost treats as
  missing; booleans -> 0/1.
- numeric arrays (``array<double>``...): ``__len`` (number of elements), ``__first`` (element 0: the lowest
  percentile, the most recent of a last-k, the largest of a top-k) and ``__max``; ``None``/empty -> NaN
  (``__len`` of ``None`` is NaN, of ``[]`` is 0).
- string arrays: ``__len`` and ``__nunique`` (distinct elements, e.g. distinct merchants among the last 3).
- maps (``map<string, number>``): ``__n_keys`` and ``__sum`` of the values. Maps arrive as ``dict`` from the
  fetcher/reference and as a list of ``(key, value)`` pairs from Arrow (``to_pylist``); both are accepted.
- strings are dropped, except the declared categoricals :data:`CATEGORICALS` (one 0/1 column per declared
  value, NaN when the value is ``None``) and the declared equality pairs :data:`SAME` (1 when both strings are
  equal, 0 when they differ, NaN when either is ``None``; e.g. "this payment's device is the customer's last").
- excluded: identifiers and raw epoch times (:data:`EXCLUDE`, and every ``*_ts_first``/``*_ts_last``): they
  do not generalise over time; ages come from the Join's derivations and :data:`GAPS` (seconds between two
  epoch-ms columns, e.g. since the card's previous payment).
"""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

SPEC_VERSION = 1

#: Declared categoricals: request column -> the values that get their own 0/1 column.
CATEGORICALS: dict[str, tuple[str, ...]] = {
    "channel": ("ecom", "pos"),
    "merchant_category": (
        "grocery",
        "restaurants",
        "fuel",
        "pharmacy",
        "fashion",
        "electronics",
        "travel",
        "digital_goods",
        "utilities",
        "gambling",
        "marketplace",
    ),
}

#: Declared string equality pairs: (column, other column) -> ``{column}__eq__{other}``.
SAME: tuple[tuple[str, str], ...] = (
    ("device_id", "customer_device_id_last"),
    ("country", "card_country_last"),
)

#: Declared gaps in seconds between two epoch-ms columns: (later, earlier) -> ``{earlier}__secs_before_{later}``.
GAPS: tuple[tuple[str, str], ...] = (("ts", "card_ts_last"),)

#: Columns never fed to the model as they are (ids, raw epoch times).
EXCLUDE: frozenset[str] = frozenset({"payment_id", "event_id", "ts"})

_NUMERIC = ("tinyint", "smallint", "int", "integer", "bigint", "long", "float", "double", "boolean")
_NAN = math.nan


def _is_excluded(name: str) -> bool:
    return name in EXCLUDE or name.endswith(("_ts_first", "_ts_last"))


def _is_numeric(spark_type: str) -> bool:
    t = spark_type.strip().lower()
    return t in _NUMERIC or t.startswith("decimal")


# ---- the per-value rules (one function per rule; the row and the table paths both call these) ----


def _num(v: Any) -> float:
    if v is None:
        return _NAN
    return float(v)  # bool -> 0.0/1.0, NaN stays NaN


def _elements(v: Any) -> list[Any] | None:
    if v is None:
        return None
    return [x for x in v if x is not None]


def _len(v: Any) -> float:
    return _NAN if v is None else float(len(v))


def _first(v: Any) -> float:
    xs = _elements(v)
    return float(xs[0]) if xs else _NAN


def _max(v: Any) -> float:
    xs = _elements(v)
    return float(max(xs)) if xs else _NAN


def _nunique(v: Any) -> float:
    xs = _elements(v)
    return _NAN if xs is None else float(len(set(xs)))


def _map_items(v: Any) -> list[tuple[Any, Any]] | None:
    if v is None:
        return None
    if isinstance(v, Mapping):
        return list(v.items())
    return [tuple(kv) for kv in v]  # Arrow map as a list of (key, value) pairs


def _map_n_keys(v: Any) -> float:
    items = _map_items(v)
    return _NAN if items is None else float(len(items))


def _map_sum(v: Any) -> float:
    items = _map_items(v)
    if items is None:
        return _NAN
    return float(sum(float(x) for _, x in items if x is not None))


_UNARY: dict[str, Callable[[Any], float]] = {
    "num": _num,
    "len": _len,
    "first": _first,
    "max": _max,
    "nunique": _nunique,
    "map_n_keys": _map_n_keys,
    "map_sum": _map_sum,
}


def _onehot(v: Any, arg: str) -> float:
    return _NAN if v is None else float(v == arg)


def _eq(a: Any, b: Any) -> float:
    return _NAN if a is None or b is None else float(a == b)


def _gap_s(later: Any, earlier: Any) -> float:
    return _NAN if later is None or earlier is None else (float(later) - float(earlier)) / 1000.0


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: ``name`` = ``rule`` applied to ``column`` (``arg``: the one-hot value, or the other
    column of an ``eq``/``gap_s`` rule)."""

    name: str
    column: str
    rule: str
    arg: str | None = None

    def columns(self) -> tuple[str, ...]:
        if self.rule in ("eq", "gap_s"):
            assert self.arg is not None
            return (self.column, self.arg)
        return (self.column,)

    def fn(self) -> Callable[..., float]:
        """The value function: one argument per :meth:`columns` entry."""
        if self.rule in _UNARY:
            return _UNARY[self.rule]
        arg = self.arg
        if self.rule == "onehot":
            assert arg is not None
            return lambda v: _onehot(v, arg)
        if self.rule == "eq":
            return _eq
        if self.rule == "gap_s":
            return _gap_s
        raise ValueError(f"feature {self.name!r}: unknown rule {self.rule!r}")


def build_spec(output_schema: Mapping[str, str]) -> list[FeatureSpec]:
    """The model inputs of a Join, in the Join's column order (then the declared pairs and gaps)."""
    spec: list[FeatureSpec] = []
    for col, typ in output_schema.items():
        if _is_excluded(col):
            continue
        t = typ.strip().lower()
        if _is_numeric(t):
            spec.append(FeatureSpec(col, col, "num"))
        elif t.startswith("array<"):
            inner = t[len("array<") : -1]
            if _is_numeric(inner):
                spec += [
                    FeatureSpec(f"{col}__len", col, "len"),
                    FeatureSpec(f"{col}__first", col, "first"),
                    FeatureSpec(f"{col}__max", col, "max"),
                ]
            else:
                spec += [
                    FeatureSpec(f"{col}__len", col, "len"),
                    FeatureSpec(f"{col}__nunique", col, "nunique"),
                ]
        elif t.startswith("map<"):
            value_type = t[len("map<") : -1].split(",", 1)[1]
            spec.append(FeatureSpec(f"{col}__n_keys", col, "map_n_keys"))
            if _is_numeric(value_type):
                spec.append(FeatureSpec(f"{col}__sum", col, "map_sum"))
        elif col in CATEGORICALS:
            spec += [FeatureSpec(f"{col}={value}", col, "onehot", value) for value in CATEGORICALS[col]]
        # other strings (ids, countries, currencies) are dropped
    for a, b in SAME:
        if a in output_schema and b in output_schema:
            spec.append(FeatureSpec(f"{a}__eq__{b}", a, "eq", b))
    for later, earlier in GAPS:
        if later in output_schema and earlier in output_schema:
            spec.append(FeatureSpec(f"{earlier}__secs_before_{later}", later, "gap_s", earlier))
    names = [s.name for s in spec]
    if len(set(names)) != len(names):
        raise ValueError("duplicate model feature names in the vectorizer spec")
    return spec


class Vectorizer:
    """Applies a spec: :meth:`vector` for one row (serving), :meth:`matrix` for rows or a table (training,
    batch scoring). Both call the same per-value functions in the same order, so a row gets bit-identical
    values whichever way it is vectorized."""

    def __init__(self, spec: Sequence[FeatureSpec]):
        self.spec = list(spec)
        self.names = [s.name for s in self.spec]
        self._plan = [(s.columns(), s.fn()) for s in self.spec]
        # The same functions for one row, with their one or two columns spelled out (no argument list per value).
        if any(len(cols) > 2 for cols, _ in self._plan):
            raise ValueError("a vectorizer rule reads at most two columns")
        self._row_plan = [(fn, cols[0], cols[1] if len(cols) == 2 else None) for cols, fn in self._plan]
        # One row: the plain numeric columns ("num", most of a vector) in one numpy conversion, which gives
        # float(v) for every int, float and bool and NaN for None (tested against _num); the rest per value.
        self._num_at = np.array([j for j, s in enumerate(self.spec) if s.rule == "num"], dtype=np.intp)
        self._num_cols = [s.column for s in self.spec if s.rule == "num"]
        self._num_values = operator.itemgetter(*self._num_cols) if len(self._num_cols) > 1 else None
        self._other_plan = [
            (j, fn, a, b)
            for j, (s, (fn, a, b)) in enumerate(zip(self.spec, self._row_plan))
            if s.rule != "num"
        ]

    @classmethod
    def for_join(cls, output_schema: Mapping[str, str]) -> Vectorizer:
        return cls(build_spec(output_schema))

    @property
    def input_columns(self) -> list[str]:
        """The Join columns the vector reads, first use first."""
        seen: dict[str, None] = {}
        for cols, _ in self._plan:
            for c in cols:
                seen.setdefault(c, None)
        return list(seen)

    def vector(self, row: Mapping[str, Any]) -> np.ndarray:
        """The model vector of one feature row (a missing column counts as ``None``): the values of
        :meth:`vector_by_value`, with the plain numeric columns converted in one call."""
        get = row.get
        out = np.empty(len(self._row_plan), dtype=np.float64)
        nums: Any = None
        if self._num_values is not None:
            with contextlib.suppress(KeyError):  # every column present (a fetched vector): one C call
                nums = self._num_values(row)
        if nums is None:
            nums = [get(c) for c in self._num_cols]
        try:
            out[self._num_at] = np.array(nums, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # a value that is not a number: the per-value path
            return self.vector_by_value(row)  # (which raises what _num raises for it)
        for j, fn, a, b in self._other_plan:
            out[j] = fn(get(a)) if b is None else fn(get(a), get(b))
        return out

    def vector_by_value(self, row: Mapping[str, Any]) -> np.ndarray:
        """The model vector of one feature row, every value through its rule's function (the definition)."""
        get = row.get
        return np.array(
            [fn(get(a)) if b is None else fn(get(a), get(b)) for fn, a, b in self._row_plan],
            dtype=np.float64,
        )

    def matrix(self, rows: pa.Table | Iterable[Mapping[str, Any]]) -> np.ndarray:
        """The model matrix (one row per feature row). A table is read column by column with the same value
        functions as :meth:`vector`."""
        if not isinstance(rows, pa.Table):
            vectors = [self.vector(r) for r in rows]
            if not vectors:
                return np.empty((0, len(self.names)), dtype=np.float64)
            return np.vstack(vectors)
        table = rows
        n = table.num_rows
        present = set(table.column_names)
        cache: dict[str, list[Any]] = {}

        def col(name: str) -> list[Any]:
            if name not in cache:
                cache[name] = table.column(name).to_pylist() if name in present else [None] * n
            return cache[name]

        for s in self.spec:
            if s.rule.startswith("map_") and s.column in present:
                typ = table.schema.field(s.column).type
                if not pa.types.is_map(typ):
                    raise ValueError(
                        f"column {s.column!r} is {typ} (a struct when Arrow inferred it from dicts); "
                        "feature maps must be Arrow maps"
                    )
        out = np.empty((n, len(self.names)), dtype=np.float64)
        for j, (cols, fn) in enumerate(self._plan):
            if len(cols) == 1:
                out[:, j] = [fn(v) for v in col(cols[0])]
            else:
                out[:, j] = [fn(*vs) for vs in zip(*(col(c) for c in cols))]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"version": SPEC_VERSION, "features": [asdict(s) for s in self.spec]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Vectorizer:
        if data.get("version") != SPEC_VERSION:
            raise ValueError(f"vectorizer spec version {data.get('version')!r}, expected {SPEC_VERSION}")
        return cls([FeatureSpec(**f) for f in data["features"]])
