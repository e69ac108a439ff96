"""The compiler: definitions -> diagnostics -> Plan.

Each rule checks one thing and records a :class:`Diagnostic` (file:line, what, fix) instead of raising, so
``tessera validate`` shows every problem at once. :func:`compile_repo` returns a :class:`Plan` only when there
are no errors.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from features.definitions import (
    K_OPS,
    Aggregation,
    EventSource,
    GroupBy,
    Join,
    JoinPart,
    Op,
    Window,
    location,
)
from features.diagnostics import DefinitionError, Diagnostic
from features.discovery import Repo, load_repo
from features.ops import OpError, OpParams, get_op
from features.plan import (
    PLAN_FORMAT_VERSION,
    AggregationPlan,
    BatchPlan,
    DerivationPlan,
    FeaturePlan,
    GroupByPlan,
    JoinPartPlan,
    JoinPlan,
    Plan,
    RowLogicPlan,
    SourcePlan,
    StreamPlan,
    TileLevelPlan,
    WindowPlan,
)
from features.sql import SqlError, analyze_expression, compile_row_logic
from features.windows import DAY_MS, WindowError, WindowSpec, parse_duration_ms

#: How often the batch upload runs, and how long one upload must keep serving if the next one is late.
BATCH_PERIOD_MS = DAY_MS
BATCH_VALIDITY_MS = 2 * DAY_MS
#: Default flush interval of the stream's tiles to the write-many store.
STREAM_FLUSH_MS = 10

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_TYPES = {"long", "int", "double", "float", "string", "boolean", "bigint", "smallint", "tinyint"}
_DECIMAL_RE = re.compile(r"^decimal\(\s*\d+\s*,\s*\d+\s*\)$")
NUMERIC_TYPES = {"long", "int", "double", "float", "bigint", "smallint", "tinyint"}
_NUMERIC_OPS = {Op.SUM, Op.AVG, Op.VARIANCE, Op.STDDEV, Op.APPROX_PERCENTILE}
_BUCKET_TYPES = {"string", "long", "int", "boolean", "bigint", "smallint", "tinyint"}

#: Rough encoded bytes of one op's IR in one tile, for the state estimate the plan prints.
_IR_BYTES = {
    "count": 3,
    "sum": 9,
    "avg": 12,
    "min": 9,
    "max": 9,
    "variance": 25,
    "stddev": 25,
    "first": 20,
    "last": 20,
    "histogram": 60,
    "approx_unique_count": 48,
    "approx_percentile": 200,
}


def _is_numeric(t: str) -> bool:
    return t in NUMERIC_TYPES or bool(_DECIMAL_RE.match(t))


def _valid_type(t: str) -> bool:
    return t in _TYPES or bool(_DECIMAL_RE.match(t))


def _closest(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return f"did you mean {match[0]!r}? " if match else ""


def find_line(file: str, start_line: int, needle: str) -> int:
    """The first line at or after ``start_line`` of ``file`` that contains ``needle`` (else start_line)."""
    if not needle or not os.path.isfile(file):
        return start_line
    try:
        with open(file, encoding="utf-8") as fh:
            lines = fh.readlines()
    except OSError:
        return start_line
    first = needle.strip().splitlines()[0] if needle.strip() else needle
    for i in range(max(start_line - 1, 0), len(lines)):
        if first in lines[i]:
            return i + 1
    return start_line


@dataclass
class _Compiler:
    repo: Repo
    diagnostics: list[Diagnostic] = field(default_factory=list)

    def error(
        self, obj: Any, code: str, message: str, fix: str = "", detail: str = "", needle: str = ""
    ) -> None:
        file, line = location(obj)
        if needle:
            line = find_line(file, line, needle)
        self.diagnostics.append(Diagnostic(file, line, code, message, fix, detail))

    def rel(self, obj: Any) -> str:
        file, line = location(obj)
        root = self.repo.root if os.path.isdir(self.repo.root) else os.path.dirname(self.repo.root)
        with contextlib.suppress(ValueError):
            file = os.path.relpath(file, os.path.dirname(root))
        return f"{file}:{line}"

    # ---- sources -------------------------------------------------------------------------------------
    def source(self, qname: str, src: EventSource) -> SourcePlan | None:
        ok = True
        for col, typ in src.schema.items():
            if not isinstance(typ, str) or not _valid_type(typ.lower()):
                self.error(
                    src,
                    "bad-type",
                    f"column {col!r} has type {typ!r}, which tessera does not know",
                    fix="use one of long, int, double, string, boolean, decimal(p,s)",
                    needle=col,
                )
                ok = False
        if src.time_column not in src.schema:
            self.error(
                src,
                "unknown-column",
                f"time_column {src.time_column!r} is not in the schema",
                fix=_closest(src.time_column, list(src.schema)) + "name a long column of epoch milliseconds",
                needle="time_column",
            )
            ok = False
        elif str(src.schema[src.time_column]).lower() not in {"long", "bigint"}:
            self.error(
                src,
                "bad-time-column",
                f"time_column {src.time_column!r} has type {src.schema[src.time_column]!r}",
                fix="event time must be a long of epoch milliseconds",
                needle="time_column",
            )
            ok = False
        if src.tie_break is not None and src.tie_break not in src.schema:
            self.error(
                src,
                "unknown-column",
                f"tie_break {src.tie_break!r} is not in the schema",
                fix=_closest(src.tie_break, list(src.schema)) + "name a column that orders equal times",
                needle="tie_break",
            )
            ok = False
        try:
            lateness = parse_duration_ms(src.allowed_lateness, what="allowed_lateness")
        except WindowError as exc:
            self.error(src, "bad-duration", str(exc), needle="allowed_lateness")
            return None
        if not ok:
            return None
        return SourcePlan(
            name=qname,
            table=src.table,
            topic=src.topic,
            time_column=src.time_column,
            tie_break=src.tie_break,
            schema={k: v.lower() for k, v in src.schema.items()},
            allowed_lateness_ms=lateness,
            late_topic=f"{src.topic}.late",
            dead_letter_topic=f"{src.topic}.dlq",
        )

    # ---- group-bys -----------------------------------------------------------------------------------
    def group_by(self, qname: str, gb: GroupBy, source: SourcePlan | None) -> GroupByPlan | None:
        ok = True
        if not _NAME_RE.match(gb.name):
            self.error(
                gb,
                "bad-name",
                f"GroupBy name {gb.name!r} is not a lower-case identifier",
                fix="use lower-case letters, digits and underscores, starting with a letter",
            )
            ok = False
        if not gb.keys:
            self.error(
                gb, "no-keys", f"GroupBy {gb.name!r} has no keys", fix="give keys=['card_id'] or similar"
            )
            ok = False
        if source is None:
            return None
        schema = source.schema
        for key in gb.keys:
            if key not in schema:
                self.error(
                    gb,
                    "unknown-column",
                    f"key {key!r} of GroupBy {gb.name!r} is not a column of source {source.table!r}",
                    fix=_closest(key, list(schema)) + f"keys must be source columns: {', '.join(schema)}",
                    needle=key,
                )
                ok = False
        passthrough = [c for c in (*gb.keys, source.time_column) if c in schema]
        if source.tie_break and source.tie_break not in passthrough:
            passthrough.append(source.tie_break)
        row_logic = self.row_logic(gb, schema, passthrough)
        if row_logic is None:
            return None
        projected = row_logic.output_schema
        aggs: list[AggregationPlan] = []
        features: list[FeaturePlan] = []
        seen: dict[str, Aggregation] = {}
        for agg in gb.aggregations:
            plan = self.aggregation(gb, agg, len(aggs), projected)
            if plan is None:
                ok = False
                continue
            aggs.append(plan)
            for wi, w in enumerate(plan.windows):
                name = _feature_name(agg, w.suffix)
                if name in seen:
                    self.error(
                        agg,
                        "duplicate-feature",
                        f"feature {name!r} is declared twice in GroupBy {gb.name!r}",
                        fix="remove one of the two aggregations or change its window",
                    )
                    ok = False
                seen[name] = agg
                out_type = (
                    plan.output_type
                    if plan.bucket is None
                    else f"map<{projected[plan.bucket]},{plan.output_type}>"
                )
                features.append(FeaturePlan(name=name, agg_index=plan.index, window_index=wi, type=out_type))
        if not gb.aggregations:
            self.error(
                gb,
                "no-aggregations",
                f"GroupBy {gb.name!r} has no aggregations",
                fix="add aggregations=[Aggregation('amount', Op.SUM, windows=['1h'])]",
            )
            ok = False
        if not ok:
            return None
        semantic = {
            "keys": list(gb.keys),
            "schema": schema,
            "time": source.time_column,
            "tie": source.tie_break,
            "selects": row_logic.selects,
            "where": row_logic.where,
            "aggs": [dataclasses.asdict(a) for a in aggs],
        }
        semantic_hash = hashlib.sha256(
            json.dumps(semantic, sort_keys=True, default=str).encode()
        ).hexdigest()[:10]
        hops = sorted({w.hop_ms for a in aggs for w in a.windows})
        tile_sizes = tuple(sorted({*hops, DAY_MS}))
        stream = batch = None
        horizon = BATCH_VALIDITY_MS + source.allowed_lateness_ms
        levels = _tile_levels(aggs, tile_sizes, horizon)
        if gb.online:
            stream = StreamPlan(
                dataset=f"{gb.name}.{semantic_hash}.tiles",
                levels=levels,
                horizon_ms=horizon,
                flush_interval_ms=STREAM_FLUSH_MS,
                key_layout="<entity key> | <tile size> | <period start>  ->  {tile start: IRs}",
            )
            batch = BatchPlan(
                dataset=f"{gb.name}.{semantic_hash}.batch",
                period_ms=BATCH_PERIOD_MS,
                validity_ms=BATCH_VALIDITY_MS,
                key_layout="<entity key>",
            )
        return GroupByPlan(
            name=gb.name,
            qualified_name=qname,
            defined_at=self.rel(gb),
            keys=tuple(gb.keys),
            source=source,
            row_logic=row_logic,
            aggregations=tuple(aggs),
            features=tuple(features),
            online=gb.online,
            semantic_hash=semantic_hash,
            stream=stream,
            batch=batch,
            state_bytes_per_key=_state_estimate(aggs, levels),
        )

    def row_logic(self, gb: GroupBy, schema: dict[str, str], passthrough: list[str]) -> RowLogicPlan | None:
        ok = True
        selects: dict[str, str] | None = None
        if gb.selects is not None:
            selects = {}
            for name, sql in gb.selects.items():
                if not isinstance(name, str) or not _NAME_RE.match(name):
                    self.error(
                        gb,
                        "bad-name",
                        f"select name {name!r} is not a lower-case identifier",
                        fix="name each select with lower-case letters, digits and underscores",
                        needle=str(name),
                    )
                    ok = False
                    continue
                if name in passthrough:
                    self.error(
                        gb,
                        "duplicate-column",
                        f"select {name!r} has the name of a key or time column",
                        fix="give the select another name",
                        needle=f"{name!r}",
                    )
                    ok = False
                    continue
                try:
                    analyzed = analyze_expression(str(sql), schema, kind="select")
                    selects[name] = analyzed.spark_sql
                except SqlError as exc:
                    self._sql_error(gb, f"select {name!r}", str(sql), exc)
                    ok = False
        where = None
        if gb.where is not None:
            try:
                where = analyze_expression(gb.where, schema, kind="where").spark_sql
            except SqlError as exc:
                self._sql_error(gb, "where", gb.where, exc)
                ok = False
        if not ok:
            return None
        logic = compile_row_logic(gb.selects, gb.where, schema, passthrough=passthrough)
        return RowLogicPlan(
            selects=selects,
            where=where,
            passthrough=tuple(passthrough),
            output_schema=dict(logic.output_schema),
        )

    def _sql_error(self, obj: Any, what: str, sql: str, exc: SqlError) -> None:
        """One diagnostic per problem, with the expression and the offending span underlined."""
        if not exc.problems:
            self.error(obj, "bad-sql", f"{what}: {exc}", needle=sql)
        for problem in exc.problems:
            rendered = SqlError([problem], sql).render().splitlines()
            detail = "\n".join(line for line in rendered if not line.startswith(("error: ", "fix: ")))
            self.error(
                obj, "bad-sql", f"{what}: {problem.message}", fix=problem.fix, detail=detail, needle=sql
            )

    def aggregation(
        self, gb: GroupBy, agg: Aggregation, index: int, projected: dict[str, str]
    ) -> AggregationPlan | None:
        if not isinstance(agg.op, Op):
            self.error(
                agg,
                "unknown-op",
                f"unknown aggregation op {agg.op!r}",
                fix=_closest(str(agg.op), [o.value for o in Op]) + "ops: " + ", ".join(o.value for o in Op),
            )
            return None
        ok = True
        if agg.column not in projected:
            self.error(
                agg,
                "unknown-column",
                f"aggregation column {agg.column!r} is not produced by GroupBy {gb.name!r}",
                fix=_closest(agg.column, list(projected))
                + f"columns after the selects: {', '.join(projected)}",
                needle=agg.column,
            )
            return None
        in_type = projected[agg.column]
        if agg.op in _NUMERIC_OPS and not _is_numeric(in_type):
            self.error(
                agg,
                "bad-op-type",
                f"{agg.op.value} needs a number, but {agg.column!r} is {in_type}",
                fix="aggregate a numeric column, or cast it in the selects",
                needle=agg.column,
            )
            ok = False
        if agg.op in K_OPS and (agg.k is None or not 1 <= agg.k <= 1000):
            self.error(
                agg,
                "bad-k",
                f"{agg.op.value} needs k between 1 and 1000, got {agg.k!r}",
                fix=f"write Aggregation({agg.column!r}, Op.{agg.op.name}, k=5, ...)",
                needle=agg.column,
            )
            ok = False
        if (
            agg.op is Op.APPROX_PERCENTILE
            and agg.percentiles is not None
            and not all(isinstance(p, float | int) and 0 <= p <= 1 for p in agg.percentiles)
        ):
            self.error(
                agg,
                "bad-percentiles",
                f"percentiles must be between 0 and 1, got {agg.percentiles!r}",
                fix="write percentiles=[0.5, 0.9, 0.99]",
                needle="percentiles",
            )
            ok = False
        if agg.buckets is not None:
            if agg.buckets not in projected:
                self.error(
                    agg,
                    "unknown-column",
                    f"bucket column {agg.buckets!r} is not produced by GroupBy {gb.name!r}",
                    fix=_closest(agg.buckets, list(projected)) + "bucket by a projected column",
                    needle=agg.buckets,
                )
                ok = False
            elif projected[agg.buckets] not in _BUCKET_TYPES:
                self.error(
                    agg,
                    "bad-bucket-type",
                    f"bucket column {agg.buckets!r} is {projected[agg.buckets]}",
                    fix="bucket by a string, integer or boolean column",
                    needle=agg.buckets,
                )
                ok = False
        windows: list[WindowPlan] = []
        specs: list[WindowSpec] = []
        for w in agg.windows:
            assert isinstance(w, Window)  # Aggregation.__post_init__ made every entry a Window
            try:
                spec = w.resolve()
            except WindowError as exc:
                self.error(
                    w, "bad-window", str(exc), needle=str(w.length) if isinstance(w.length, str) else ""
                )
                ok = False
                continue
            if spec in specs:
                self.error(
                    w,
                    "duplicate-feature",
                    f"window {spec.suffix} is listed twice for {agg.column}_{agg.op.value}",
                    fix="list each window once",
                )
                ok = False
                continue
            specs.append(spec)
            windows.append(WindowPlan(spec.length_ms, spec.hop_ms, spec.offset_ms, spec.suffix))
        if not agg.windows:
            windows.append(WindowPlan(None, DAY_MS, 0, ""))
        if not ok:
            return None
        params = OpParams(
            k=agg.k, percentiles=tuple(float(p) for p in agg.percentiles) if agg.percentiles else None
        )
        try:
            op = get_op(agg.op.value, params, input_type=in_type)
        except OpError as exc:
            self.error(agg, "bad-op", str(exc), needle=agg.column)
            return None
        return AggregationPlan(
            index=index,
            column=agg.column,
            op=agg.op.value,
            input_type=in_type,
            output_type=op.output_type(in_type),
            windows=tuple(windows),
            k=agg.k,
            percentiles=params.percentiles if agg.op is Op.APPROX_PERCENTILE else None,
            bucket=agg.buckets,
        )

    # ---- joins ---------------------------------------------------------------------------------------
    def join(
        self, qname: str, join: Join, left: SourcePlan | None, gbs: dict[int, GroupByPlan]
    ) -> JoinPlan | None:
        ok = True
        if not _NAME_RE.match(join.name):
            self.error(
                join,
                "bad-name",
                f"Join name {join.name!r} is not a lower-case identifier",
                fix="use lower-case letters, digits and underscores, starting with a letter",
            )
            ok = False
        if left is None:
            return None
        output: dict[str, str] = {}
        for col, typ in left.schema.items():
            output[col] = typ
        parts: list[JoinPartPlan] = []
        for part in join.parts:
            gb_plan = gbs.get(id(part.group_by))
            if gb_plan is None:
                ok = False  # the GroupBy's own errors are already reported
                continue
            plan = self.join_part(join, part, gb_plan, left, output)
            if plan is None:
                ok = False
                continue
            parts.append(plan)
        if not join.parts:
            self.error(
                join, "no-parts", f"Join {join.name!r} has no parts", fix="add parts=[JoinPart(my_group_by)]"
            )
            ok = False
        derivations: list[DerivationPlan] = []
        for name, sql in (join.derivations or {}).items():
            if not _NAME_RE.match(name):
                self.error(
                    join,
                    "bad-name",
                    f"derivation name {name!r} is not a lower-case identifier",
                    fix="use lower-case letters, digits and underscores",
                    needle=name,
                )
                ok = False
                continue
            if name in output:
                self.error(
                    join,
                    "duplicate-feature",
                    f"derivation {name!r} has the name of another output column",
                    fix="give the derivation another name",
                    needle=name,
                )
                ok = False
                continue
            scalar = {c: t for c, t in output.items() if not t.startswith(("map<", "array<"))}
            try:
                analyzed = analyze_expression(str(sql), scalar, kind="derivation")
            except SqlError as exc:
                self._sql_error(join, f"derivation {name!r}", str(sql), exc)
                ok = False
                continue
            derivations.append(
                DerivationPlan(name=name, expression=analyzed.spark_sql, type=analyzed.output_type)
            )
            output[name] = analyzed.output_type
        if not ok:
            return None
        return JoinPlan(
            name=join.name,
            qualified_name=qname,
            defined_at=self.rel(join),
            left=left,
            parts=tuple(parts),
            derivations=tuple(derivations),
            output_schema=output,
            online=join.online,
        )

    def join_part(
        self, join: Join, part: JoinPart, gb: GroupByPlan, left: SourcePlan, output: dict[str, str]
    ) -> JoinPartPlan | None:
        ok = True
        key_map: dict[str, str] = {}
        for left_col, gb_key in (part.key_map or {}).items():
            if gb_key not in gb.keys:
                self.error(
                    part,
                    "unknown-column",
                    f"key_map maps {left_col!r} to {gb_key!r}, which is not a key of GroupBy {gb.name!r}",
                    fix=f"its keys are: {', '.join(gb.keys)}",
                    needle=gb_key,
                )
                ok = False
        for key in gb.keys:
            col = part.request_column(key)
            if col not in left.schema:
                self.error(
                    part,
                    "unknown-column",
                    f"the request has no column {col!r} for key {key!r} of GroupBy {gb.name!r}",
                    fix=_closest(col, list(left.schema))
                    + f"map it: JoinPart({gb.name}, key_map={{'<request column>': {key!r}}})",
                )
                ok = False
            key_map[key] = col
        if join.online and not gb.online:
            self.error(
                part,
                "offline-part",
                f"online Join {join.name!r} uses offline GroupBy {gb.name!r}",
                fix=f"set online=True on {gb.name!r}, or online=False on the Join",
            )
            ok = False
        prefix = part.output_prefix
        if not _NAME_RE.match(prefix):
            self.error(
                part,
                "bad-name",
                f"prefix {prefix!r} is not a lower-case identifier",
                fix="use lower-case letters, digits and underscores",
            )
            ok = False
        features: dict[str, str] = {}
        for f in gb.features:
            name = f"{prefix}_{f.name}"
            if name in output:
                self.error(
                    part,
                    "duplicate-feature",
                    f"output column {name!r} of Join {join.name!r} comes twice",
                    fix="give one of the JoinParts its own prefix=...",
                )
                ok = False
                continue
            output[name] = f.type
            features[name] = f.name
        if not ok:
            return None
        return JoinPartPlan(group_by=gb.name, prefix=prefix, key_map=key_map, features=features)

    # ---- the whole repo ------------------------------------------------------------------------------
    def run(self) -> Plan | None:
        self.diagnostics.extend(self.repo.diagnostics)
        sources: dict[int, SourcePlan | None] = {}
        for qname, src in self.repo.sources.items():
            sources[id(src)] = self.source(qname, src)
        names: dict[str, GroupBy] = {}
        gbs: dict[int, GroupByPlan] = {}
        for qname, gb in self.repo.group_bys.items():
            if gb.name in names:
                self.error(
                    gb,
                    "duplicate-name",
                    f"GroupBy name {gb.name!r} is also used at {self.rel(names[gb.name])}",
                    fix="give every GroupBy its own name",
                )
                continue
            names[gb.name] = gb
            plan = self.group_by(qname, gb, sources.get(id(gb.source)))
            if plan is not None:
                gbs[id(gb)] = plan
        join_names: dict[str, Join] = {}
        joins: list[JoinPlan] = []
        for qname, join in self.repo.joins.items():
            if join.name in join_names:
                self.error(
                    join,
                    "duplicate-name",
                    f"Join name {join.name!r} is also used at {self.rel(join_names[join.name])}",
                    fix="give every Join its own name",
                )
                continue
            join_names[join.name] = join
            left = sources.get(id(join.left))
            if id(join.left) not in sources:
                left = self.source(f"<inline>.{join.left.table}", join.left)
            jp = self.join(qname, join, left, gbs)
            if jp is not None:
                joins.append(jp)
        if any(d.severity == "error" for d in self.diagnostics):
            return None
        result = Plan(
            format_version=PLAN_FORMAT_VERSION,
            group_bys=tuple(sorted(gbs.values(), key=lambda g: g.name)),
            joins=tuple(sorted(joins, key=lambda j: j.name)),
        )
        return result.with_hash()


def _feature_name(agg: Aggregation, suffix: str) -> str:
    name = agg.base_name()
    if suffix:
        name = f"{name}_{suffix}"
    if agg.buckets:
        name = f"{name}_by_{agg.buckets}"
    return name


def _tile_levels(
    aggs: list[AggregationPlan], sizes: tuple[int, ...], horizon_ms: int
) -> tuple[TileLevelPlan, ...]:
    """Per tile size: the period one stored value spans (the next size up) and how long tiles are kept.

    A fetch at ``t`` covers ``[max(window start, batch boundary), t)`` with the fewest tiles
    (:func:`features.windows.cover`): tiles of size ``s`` are read next to ``t`` (within the next size up)
    and next to the start of windows whose hop is at most ``s`` that begin after the batch boundary.
    """
    levels = []
    for i, size in enumerate(sizes):
        period = sizes[i + 1] if i + 1 < len(sizes) else size
        keep = 2 * period
        for a in aggs:
            for w in a.windows:
                if w.length_ms is not None and w.hop_ms <= size and w.length_ms + w.offset_ms <= horizon_ms:
                    keep = max(keep, w.length_ms + w.offset_ms + period)
        levels.append(TileLevelPlan(size_ms=size, period_ms=period, retention_ms=min(keep, horizon_ms)))
    return tuple(levels)


def _state_estimate(aggs: list[AggregationPlan], levels: tuple[TileLevelPlan, ...]) -> int:
    """Upper bound of the encoded bytes one busy key (an event in every tile) holds in the stream's tiles."""
    per_tile = 0
    for a in aggs:
        size = _IR_BYTES.get(a.op, 20 * (a.k or 1))
        per_tile += size * (8 if a.bucket else 1)
    tiles = sum(-(-level.retention_ms // level.size_ms) for level in levels)
    return per_tile * max(tiles, 1)


def validate_repo(repo: Repo) -> list[Diagnostic]:
    """Every problem in the repository (empty when it compiles)."""
    compiler = _Compiler(repo)
    compiler.run()
    return sorted(compiler.diagnostics, key=lambda d: (d.file, d.line, d.code))


def compile_repo(repo: Repo | str | os.PathLike[str]) -> Plan:
    """Compile a repository (or a path to one) to a Plan; raise :class:`DefinitionError` on any error."""
    if not isinstance(repo, Repo):
        repo = load_repo(repo)
    compiler = _Compiler(repo)
    plan = compiler.run()
    if plan is None:
        raise DefinitionError(sorted(compiler.diagnostics, key=lambda d: (d.file, d.line, d.code)))
    return plan


__all__ = ["compile_repo", "find_line", "validate_repo"]
