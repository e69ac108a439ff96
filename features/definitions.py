"""The definition language: what an ML engineer writes to declare features.

Definitions are frozen dataclasses. Constructing one never fails on a *semantic* mistake (a bad window, an
unknown column, bad SQL): each object remembers the file and line that built it, and
:func:`features.validate.validate` reports every mistake at once, with that location and the fix, before
anything runs. Only a wrong Python *type* (a GroupBy where a source belongs) raises at once.

>>> payments = EventSource(table="payments", topic="payments", time_column="ts",
...                        schema={"ts": "long", "card_id": "string", "amount": "double"})
>>> card = GroupBy(name="card", keys=["card_id"], source=payments,
...                aggregations=[Aggregation("amount", Op.SUM, windows=["1h", "1d"])])
>>> card.aggregations[0].windows
(Window(length='1h', offset=0, hop=None), Window(length='1d', offset=0, hop=None))
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any

from features.windows import WindowError, WindowSpec, default_hop_ms, parse_duration_ms

Duration = str | int | timedelta

_THIS_DIR = os.path.dirname(os.path.abspath(__file__))


def _definition_site() -> tuple[str, int]:
    """The file and line of the user code that is constructing a definition."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != __file__ and not filename.startswith("<") and "dataclasses" not in filename:
            return os.path.abspath(filename), frame.f_lineno
        frame = frame.f_back  # type: ignore[assignment]
    return "<unknown>", 0


class Op(StrEnum):
    """The aggregation operations. Each is a monoid over an intermediate representation (features.ops)."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    VARIANCE = "variance"
    STDDEV = "stddev"
    FIRST = "first"
    LAST = "last"
    FIRST_K = "first_k"
    LAST_K = "last_k"
    TOP_K = "top_k"
    BOTTOM_K = "bottom_k"
    HISTOGRAM = "histogram"
    APPROX_UNIQUE_COUNT = "approx_unique_count"
    APPROX_PERCENTILE = "approx_percentile"

    def __str__(self) -> str:
        return self.value


K_OPS = frozenset({Op.FIRST_K, Op.LAST_K, Op.TOP_K, Op.BOTTOM_K})


@dataclass(frozen=True)
class Window:
    """A sliding window: the last ``length`` before the query time, ``offset`` earlier if given.

    ``Window("30d", offset="7d")`` covers ``[t - 37d, t - 7d)`` (aligned to the hop): a fraud rate whose
    labels arrive late. ``hop`` defaults to the largest of 1s/1m/5m/1h/1d that is at most length/60.
    """

    length: Duration
    offset: Duration = 0
    hop: Duration | None = None
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())

    def resolve(self) -> WindowSpec:
        """The window in milliseconds; raises :class:`WindowError` with the fix when it is not usable."""
        length_ms = parse_duration_ms(self.length, what="window length")
        if length_ms == 0:
            raise WindowError("a window of length 0 covers nothing; give a length like '10m', or no window")
        if length_ms % 1000:
            raise WindowError(f"window length {self.length!r} is not a whole number of seconds")
        offset_ms = parse_duration_ms(self.offset, what="window offset")
        if offset_ms % 1000:
            raise WindowError(f"window offset {self.offset!r} is not a whole number of seconds")
        hop_ms = default_hop_ms(length_ms) if self.hop is None else parse_duration_ms(self.hop, what="hop")
        from features.windows import HOP_LADDER_MS, format_duration

        if hop_ms not in HOP_LADDER_MS:
            sizes = ", ".join(format_duration(s) for s in HOP_LADDER_MS)
            raise WindowError(f"hop {self.hop!r} is not one of the tile sizes ({sizes}); pick one of them")
        if hop_ms > length_ms:
            raise WindowError(
                f"hop {format_duration(hop_ms)} is longer than the window {format_duration(length_ms)}; "
                "use a hop at most the window's length"
            )
        return WindowSpec(length_ms=length_ms, hop_ms=hop_ms, offset_ms=offset_ms)


def _as_window(value: Window | Duration) -> Window:
    if isinstance(value, Window):
        return value
    return Window(length=value, defined_at=_definition_site())


@dataclass(frozen=True)
class EventSource:
    """A stream of events (a Kafka topic) and its offline table, with one schema.

    ``schema`` maps column names to Spark SQL types (``long``, ``int``, ``double``, ``string``,
    ``boolean``, ``decimal(p,s)``). ``time_column`` holds the event time as epoch milliseconds (``long``).
    ``tie_break`` names a column that orders events with equal time (first/last); default: the Kafka
    partition/offset online and the same stored offline.
    """

    table: str
    topic: str
    time_column: str
    schema: Mapping[str, str]
    tie_break: str | None = None
    allowed_lateness: Duration = "5m"
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Mapping):
            raise TypeError(f"EventSource.schema must be a mapping of column -> type, got {self.schema!r}")
        object.__setattr__(self, "schema", dict(self.schema))
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())


@dataclass(frozen=True)
class Aggregation:
    """One aggregated column: ``op`` over ``column`` in each window (none: lifetime).

    ``buckets`` names a sub-key column (e.g. merchant category): the feature is then a map bucket -> value.
    ``k`` is required by first_k/last_k/top_k/bottom_k; ``percentiles`` is used by approx_percentile.
    """

    column: str
    op: Op | str
    windows: Sequence[Window | Duration] = ()
    buckets: str | None = None
    k: int | None = None
    percentiles: Sequence[float] | None = None
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())
        windows = self.windows
        if isinstance(windows, str | int | timedelta | Window):
            windows = [windows]
        object.__setattr__(self, "windows", tuple(_as_window(w) for w in windows))
        if self.percentiles is not None:
            object.__setattr__(self, "percentiles", tuple(self.percentiles))
        op = self.op
        # An unknown op name stays a string; validate() reports it with the list of ops.
        if isinstance(op, str) and not isinstance(op, Op) and op.lower() in Op._value2member_map_:
            object.__setattr__(self, "op", Op(op.lower()))

    @property
    def op_name(self) -> str:
        return self.op.value if isinstance(self.op, Op) else str(self.op)

    def base_name(self) -> str:
        """``amount_sum``, ``merchant_id_last3``: the feature name before the window suffix."""
        op = self.op_name
        if self.k is not None and op in {o.value for o in K_OPS}:
            op = f"{op.removesuffix('_k')}{self.k}"
        name = f"{self.column}_{op}"
        return name


@dataclass(frozen=True)
class GroupBy:
    """Windowed aggregations of an event source, per entity key.

    ``selects`` (output name -> Spark SQL expression) and ``where`` (Spark SQL predicate) are the row logic,
    applied to each event before aggregation. With no selects every source column passes through.
    """

    name: str
    keys: Sequence[str]
    source: EventSource
    selects: Mapping[str, str] | None = None
    where: str | None = None
    aggregations: Sequence[Aggregation] = ()
    online: bool = True
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())
        keys = [self.keys] if isinstance(self.keys, str) else list(self.keys)
        object.__setattr__(self, "keys", tuple(keys))
        if self.selects is not None:
            if not isinstance(self.selects, Mapping):
                raise TypeError(f"GroupBy {self.name!r}: selects must be a mapping of name -> SQL expression")
            object.__setattr__(self, "selects", dict(self.selects))
        object.__setattr__(self, "aggregations", tuple(self.aggregations))
        if not isinstance(self.source, EventSource):
            raise TypeError(
                f"GroupBy {self.name!r}: source must be an EventSource, got {type(self.source).__name__}"
            )


@dataclass(frozen=True)
class JoinPart:
    """A GroupBy inside a Join. ``key_map`` maps the request's columns to the GroupBy's keys
    (``{"payer_card": "card_id"}``); by default a key is read from the request column of the same name.
    ``prefix`` starts every output name (default: the GroupBy's name)."""

    group_by: GroupBy
    key_map: Mapping[str, str] | None = None
    prefix: str | None = None
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())
        if not isinstance(self.group_by, GroupBy):
            raise TypeError(f"JoinPart.group_by must be a GroupBy, got {type(self.group_by).__name__}")
        if self.key_map is not None:
            object.__setattr__(self, "key_map", dict(self.key_map))

    @property
    def output_prefix(self) -> str:
        return self.group_by.name if self.prefix is None else self.prefix

    def request_column(self, key: str) -> str:
        """The request column that supplies the GroupBy key ``key``."""
        for left, right in (self.key_map or {}).items():
            if right == key:
                return left
        return key


@dataclass(frozen=True)
class Join:
    """One feature vector for a model: the request (``left``) plus every part's features, then derivations.

    ``derivations`` (name -> Spark SQL) are computed from the request's own columns and the parts' output
    columns, e.g. ``{"amount_z_30d": "(amount - card_amount_avg_30d) / card_amount_stddev_30d"}``.
    """

    name: str
    left: EventSource
    parts: Sequence[JoinPart]
    derivations: Mapping[str, str] | None = None
    online: bool = True
    defined_at: tuple[str, int] = field(default=("<unknown>", 0), compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.defined_at == ("<unknown>", 0):
            object.__setattr__(self, "defined_at", _definition_site())
        parts = [
            p if isinstance(p, JoinPart) else JoinPart(p, defined_at=_definition_site()) for p in self.parts
        ]
        object.__setattr__(self, "parts", tuple(parts))
        if self.derivations is not None:
            object.__setattr__(self, "derivations", dict(self.derivations))
        if not isinstance(self.left, EventSource):
            raise TypeError(
                f"Join {self.name!r}: left must be an EventSource, got {type(self.left).__name__}"
            )


Definition = EventSource | GroupBy | Join


def location(obj: Any) -> tuple[str, int]:
    """Where a definition object was written (file, line)."""
    loc = getattr(obj, "defined_at", None)
    if isinstance(loc, tuple) and len(loc) == 2:
        return loc
    return ("<unknown>", 0)


__all__ = [
    "K_OPS",
    "Aggregation",
    "Definition",
    "EventSource",
    "GroupBy",
    "Join",
    "JoinPart",
    "Op",
    "Window",
    "WindowError",
    "location",
]
