"""The plan: a frozen, JSON-serializable description of everything tessera will run.

Engines (the Flink job, the Spark jobs, the fetcher) read only the plan, never the definitions, so what
``tessera plan`` shows is what runs. ``Plan.from_json(p.to_json()) == p`` holds for every plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar

PLAN_FORMAT_VERSION = 1


@dataclass(frozen=True)
class WindowPlan:
    """A resolved window, all in ms; ``length_ms`` None is a lifetime window."""

    length_ms: int | None
    hop_ms: int
    offset_ms: int
    suffix: str


@dataclass(frozen=True)
class AggregationPlan:
    """One aggregation of a GroupBy: an op over a projected column, in one or more windows."""

    index: int
    column: str
    op: str
    input_type: str
    output_type: str
    windows: tuple[WindowPlan, ...]
    k: int | None = None
    percentiles: tuple[float, ...] | None = None
    bucket: str | None = None


@dataclass(frozen=True)
class FeaturePlan:
    """One output column of a GroupBy: aggregation ``agg_index`` in window ``window_index``."""

    name: str
    agg_index: int
    window_index: int
    type: str


@dataclass(frozen=True)
class SourcePlan:
    name: str
    table: str
    topic: str
    time_column: str
    tie_break: str | None
    schema: dict[str, str]
    allowed_lateness_ms: int
    late_topic: str
    dead_letter_topic: str


@dataclass(frozen=True)
class RowLogicPlan:
    """Row logic as normalized Spark SQL (the Python row function is compiled from it by the same path)."""

    selects: dict[str, str] | None
    where: str | None
    passthrough: tuple[str, ...]
    output_schema: dict[str, str]


@dataclass(frozen=True)
class TileLevelPlan:
    """Tiles of one size. A stored value holds the tiles of one ``period`` (the next size up), and tiles
    are kept while they can still be read: ``retention_ms`` after their end."""

    size_ms: int
    period_ms: int
    retention_ms: int


@dataclass(frozen=True)
class StreamPlan:
    """The streaming side of an online GroupBy: tiles in keyed state, flushed to the write-many store."""

    dataset: str
    levels: tuple[TileLevelPlan, ...]
    horizon_ms: int
    flush_interval_ms: int
    key_layout: str

    @property
    def tile_sizes_ms(self) -> tuple[int, ...]:
        return tuple(level.size_ms for level in self.levels)


@dataclass(frozen=True)
class BatchPlan:
    """The batch side: per key, each window's body up to a day boundary plus the tail tiles."""

    dataset: str
    period_ms: int
    validity_ms: int
    key_layout: str


@dataclass(frozen=True)
class GroupByPlan:
    name: str
    qualified_name: str
    defined_at: str
    keys: tuple[str, ...]
    source: SourcePlan
    row_logic: RowLogicPlan
    aggregations: tuple[AggregationPlan, ...]
    features: tuple[FeaturePlan, ...]
    online: bool
    semantic_hash: str
    stream: StreamPlan | None
    batch: BatchPlan | None
    state_bytes_per_key: int

    def feature(self, name: str) -> FeaturePlan:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"GroupBy {self.name!r} has no feature {name!r}")


@dataclass(frozen=True)
class JoinPartPlan:
    group_by: str
    prefix: str
    key_map: dict[str, str]  # GroupBy key -> request column
    features: dict[str, str]  # output column -> the GroupBy's feature name


@dataclass(frozen=True)
class DerivationPlan:
    name: str
    expression: str
    type: str


@dataclass(frozen=True)
class JoinPlan:
    name: str
    qualified_name: str
    defined_at: str
    left: SourcePlan
    parts: tuple[JoinPartPlan, ...]
    derivations: tuple[DerivationPlan, ...]
    output_schema: dict[str, str]
    online: bool


@dataclass(frozen=True)
class Plan:
    format_version: int
    group_bys: tuple[GroupByPlan, ...]
    joins: tuple[JoinPlan, ...]
    plan_hash: str = ""

    def group_by(self, name: str) -> GroupByPlan:
        for gb in self.group_bys:
            if gb.name == name:
                return gb
        known = ", ".join(g.name for g in self.group_bys)
        raise KeyError(f"no GroupBy named {name!r} in the plan (known: {known})")

    def join(self, name: str) -> JoinPlan:
        for j in self.joins:
            if j.name == name:
                return j
        known = ", ".join(j.name for j in self.joins)
        raise KeyError(f"no Join named {name!r} in the plan (known: {known})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        data = json.loads(text)
        if data.get("format_version") != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"plan format {data.get('format_version')!r} is not {PLAN_FORMAT_VERSION}; "
                "recompile the plan with this version of tessera (tessera plan --json)"
            )
        return from_obj(cls, data)

    def with_hash(self) -> Plan:
        body = dataclasses.replace(self, plan_hash="")
        digest = hashlib.sha256(body.to_json(indent=None).encode()).hexdigest()[:16]
        return dataclasses.replace(self, plan_hash=digest)


T = TypeVar("T")


def from_obj(tp: Any, value: Any) -> Any:
    """Rebuild a value of type ``tp`` (dataclasses, tuples, dicts, optionals) from its JSON form."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return from_obj(members[0], value) if len(members) == 1 else value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        hints = typing.get_type_hints(tp)
        kwargs = {
            f.name: from_obj(hints[f.name], value[f.name]) for f in dataclasses.fields(tp) if f.name in value
        }
        return tp(**kwargs)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_obj(args[0], v) for v in value)
        return tuple(from_obj(a, v) for a, v in zip(args, value))
    if origin is dict:
        _, vt = typing.get_args(tp)
        return {k: from_obj(vt, v) for k, v in value.items()}
    return value
