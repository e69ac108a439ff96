"""The fetcher: a Join's feature vector for one request, from batch state plus fresh stream tiles.

Per request, for every part of the Join (a GroupBy and the request's entity key):

* **Batch**: the entity's batch value from the bulk store (one ``multi_get`` per batch dataset, all parts at
  once), decoded to a :class:`~features.tiles.BatchState`. Batch values are immutable per published version, so
  decoded states (and "no value" answers) live in a bounded in-process LRU keyed by ``(dataset, version, key)``;
  the published version (with its boundary, from the version's metadata record, :mod:`kvstore.meta`) is
  re-checked at most every ``version_check_s``.
* **Stream**: the period values the GroupBy's :class:`~features.merge.MergeProgram` names for the query time (a
  bounded number whatever the window length), every stream dataset in one request: with memcached, one
  ``get_many`` per node touched (:meth:`~kvstore.memcached.MemcachedStore.multi_get_many`; an entity's values
  share a node). A tile that ended before the stream's watermark (the clock minus allowed lateness and the flush
  interval) no longer changes. Every period value read is kept (bounded LRU) with the time up to which its tiles
  are final: a fetch that needs only final tiles of it does not read it again, and one that does reuses the
  decoded tiles whose bytes did not change.
* **Merge**: :meth:`features.merge.MergeProgram.run` (the definition of :func:`features.merge.merge_features`)
  with a per-entity :class:`~features.merge.EntityMemo` (bounded LRU keyed by GroupBy, entity and batch
  version): a window whose inputs did not change gives its previous values, and the fold over a window's batch
  part and final tiles is kept, so a fetch folds only the fresh tiles at the head. Then the Join's output names
  and derivations (:func:`features.sql.compile_expression`).

Failures never raise: an entity missing from the stores gets the values of an empty window (count 0, nulls); a
key that cannot be encoded, a store that is down or slow (the memcached budget per call, and a total budget per
fetch) leave that part's features null with the reason in ``errors`` and the vector flagged ``degraded``. The
clock is injected (``now_ms``), so tests and the consistency checker fetch "as of" any time.
"""

from __future__ import annotations

import operator
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from features.merge import EntityMemo, MergeProgram, reuse_tiles
from features.plan import GroupByPlan, JoinPartPlan, JoinPlan, Plan
from features.sql import compile_expression
from features.tiles import BatchState, StateCodec, Tile, TileKey, tile_suffix
from features.windows import DAY_MS
from kvstore.base import KVStore
from kvstore.codec import KeyLayout, encode_entity
from kvstore.dual import DualStore
from kvstore.memcached import MemcachedStore
from kvstore.meta import decode_meta, meta_key

if TYPE_CHECKING:
    from serving.feature_log import FeatureLogger

K = TypeVar("K")
V = TypeVar("V")

_ABSENT = object()  # cached "no batch value for this entity in this version"


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class LRU(Generic[K, V]):
    """A bounded, thread-safe least-recently-used map with hit/miss counters."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def peek(self, key: K) -> V | None:
        """Like :meth:`get` without counting a hit or a miss."""
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class FeatureVector:
    """One Join's features for one request.

    ``values``: every output column of the Join in order (request columns, part features, derivations).
    ``errors``: per part (its GroupBy name) or derivation (``derivation:NAME``), why its values are null.
    ``degraded``: some part could not be served (store down or slow, bad key). ``stale``: some batch state is
    past its validity (the batch upload is late). ``timings_ms``: ``batch``, ``stream``, ``merge``, ``total``.
    """

    join: str
    at_ms: int
    values: dict[str, Any]
    errors: dict[str, str] = field(default_factory=dict)
    degraded: bool = False
    stale: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Version:
    """The published batch version of one dataset as the fetcher last saw it."""

    name: str | None
    boundary_ms: int | None
    validity_ms: int
    checked_at: float


@dataclass
class _PartRead:
    """What one part of a request reads: its GroupBy, entity and keys, and what came back."""

    part: JoinPartPlan
    gb: GroupByPlan
    entity: bytes | None
    batch_key: bytes | None = None
    version: _Version | None = None
    batch: BatchState | None = None
    batch_known: bool = False
    boundary_ms: int | None = None
    period_keys: dict[bytes, TileKey] = field(default_factory=dict)
    held: dict[bytes, _Period] = field(default_factory=dict)  # kept period values being read again
    tiles: dict[TileKey, Tile] = field(default_factory=dict)
    inputs: list[dict[TileKey, Tile]] = field(default_factory=list)  # the tile maps ``tiles`` was built from
    error: str | None = None


@dataclass(frozen=True)
class _Period:
    """A stream period value as last read: its bytes (None: absent), its tiles, and the time up to which they
    are final (a tile ending at or before ``final_until`` can no longer change, nor can its absence)."""

    blob: bytes | None
    tiles: dict[TileKey, Tile]
    by_start: dict[int, Tile]
    final_until: int
    read_at: float  # time.monotonic() of the read


class _GroupByRuntime:
    """Per GroupBy: the codec and key layouts (built once)."""

    def __init__(self, gb: GroupByPlan) -> None:
        assert gb.batch is not None and gb.stream is not None
        self.gb = gb
        self.codec = StateCodec(gb)
        self.batch_dataset = gb.batch.dataset
        self.stream_dataset = gb.stream.dataset
        self.batch_layout = KeyLayout(gb.batch.dataset, gb.semantic_hash)
        self.stream_layout = KeyLayout(gb.stream.dataset, gb.semantic_hash)
        self.meta_key = meta_key(gb.batch.dataset, gb.semantic_hash)
        self.program = MergeProgram(self.codec)
        # A tile is final once the stream can no longer write into it.
        self.settle_ms = gb.source.allowed_lateness_ms + gb.stream.flush_interval_ms


def _getter(slots: list[int]) -> Callable[[list[Any]], tuple[Any, ...]]:
    """``values -> tuple(values[i] for i in slots)`` in one C call (``itemgetter`` of one slot gives no tuple)."""
    if len(slots) < 2:
        return lambda values: tuple(values[i] for i in slots)
    return operator.itemgetter(*slots)


class _JoinRuntime:
    def __init__(self, join: JoinPlan, gbs: Mapping[str, _GroupByRuntime]) -> None:
        self.join = join
        # Per part: its output columns, and a getter of their values from the GroupBy's (one C call).
        self.out_names: list[tuple[str, ...]] = []
        self.out_values: list[Callable[[list[Any]], tuple[Any, ...]]] = []
        for part in join.parts:
            slot = {name: i for i, name in enumerate(gbs[part.group_by].program.names)}
            self.out_names.append(tuple(part.features))
            self.out_values.append(_getter([slot[feature] for feature in part.features.values()]))
        self.derivations: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = []
        for d in join.derivations:
            schema = {}
            for col, typ in join.output_schema.items():
                if col == d.name:
                    break
                if not typ.startswith(("map<", "array<")):
                    schema[col] = typ
            self.derivations.append((d.name, compile_expression(d.expression, schema, kind="derivation")))


class Fetcher:
    """Feature vectors of a plan's online Joins from a bulk store (batch state) and a stream store (tiles).

    ``store``: a :class:`~kvstore.dual.DualStore` or a ``(bulk, stream)`` pair. ``now_ms``: the clock (epoch ms)
    used when a fetch gives no ``at_ms`` and to decide which stream tiles are final. ``cache_size``: decoded batch
    states kept; ``tile_cache_size``: period values kept; ``merge_cache_size``: per-entity merge memos kept (one
    per GroupBy, entity and batch version; 0 turns the memo off). ``recheck_s``: a kept period value whose
    needed tiles are all final is still read again after this long (bounds what a stream job that fell behind
    its allowed lateness can leave stale). ``logger``: an optional
    :class:`~serving.feature_log.FeatureLogger` of served vectors. ``budget_s``: a fetch stops asking stores once it
    has spent this long (the parts not yet read are degraded); the memcached store's own per-call budget bounds
    each call.
    """

    def __init__(
        self,
        plan: Plan,
        store: DualStore | tuple[KVStore, KVStore],
        *,
        now_ms: Callable[[], int] = wall_clock_ms,
        cache_size: int = 100_000,
        tile_cache_size: int = 100_000,
        merge_cache_size: int = 20_000,
        version_check_s: float = 1.0,
        recheck_s: float = 60.0,
        budget_s: float = 0.25,
        logger: FeatureLogger | None = None,
    ) -> None:
        self.plan = plan
        self.logger = logger
        if isinstance(store, DualStore):
            self.bulk, self.stream = store.bulk, store.stream
        else:
            self.bulk, self.stream = store
        self.now_ms = now_ms
        self.version_check_s = version_check_s
        self.recheck_s = recheck_s
        self.budget_s = budget_s
        self.batch_cache: LRU[tuple[str, str, bytes], Any] = LRU(cache_size)
        self.tile_cache: LRU[tuple[str, bytes], _Period] = LRU(tile_cache_size)
        self.merge_cache: LRU[tuple[str, bytes, str], EntityMemo] = LRU(merge_cache_size)
        self._keys: dict[tuple[str, bytes], tuple[Any, list[Any]]] = {}  # see _period_keys
        self._keys_capacity = max(1, merge_cache_size)
        self._versions: dict[str, _Version] = {}
        self._version_lock = threading.Lock()
        self._gbs: dict[str, _GroupByRuntime] = {}
        self._joins: dict[str, _JoinRuntime] = {}
        for j in plan.joins:
            if not j.online:
                continue
            for part in j.parts:
                if part.group_by not in self._gbs:
                    self._gbs[part.group_by] = _GroupByRuntime(plan.group_by(part.group_by))
            self._joins[j.name] = _JoinRuntime(j, self._gbs)

    @property
    def joins(self) -> list[str]:
        return list(self._joins)

    # ---- the published batch version ---------------------------------------------------------------------
    def _version(self, rt: _GroupByRuntime) -> _Version:
        """The published version of ``rt``'s batch dataset and its boundary (re-checked every version_check_s)."""
        now = time.monotonic()
        cached = self._versions.get(rt.batch_dataset)
        if cached is not None and now - cached.checked_at < self.version_check_s:
            return cached
        name = self.bulk.current_version(rt.batch_dataset)
        assert rt.gb.batch is not None
        validity = rt.gb.batch.validity_ms
        boundary: int | None = None
        if name is not None:
            if cached is not None and cached.name == name:
                boundary, validity = cached.boundary_ms, cached.validity_ms
            else:
                meta_blob = self.bulk.multi_get(rt.batch_dataset, [rt.meta_key]).get(rt.meta_key)
                if meta_blob is not None:
                    meta = decode_meta(meta_blob)
                    boundary, validity = int(meta["boundary_ms"]), int(meta["validity_ms"])
                else:
                    boundary = _boundary_from_version_name(name)
        version = _Version(name, boundary, validity, now)
        with self._version_lock:
            self._versions[rt.batch_dataset] = version
        return version

    # ---- fetch -------------------------------------------------------------------------------------------
    def fetch(self, join_name: str, request: Mapping[str, Any], at_ms: int | None = None) -> FeatureVector:
        """Every output column of Join ``join_name`` for ``request`` (the Join's left columns) at ``at_ms``
        (default: the clock). Never raises for store or key problems: see :class:`FeatureVector`."""
        started = time.perf_counter()
        deadline = started + self.budget_s
        jr = self._joins.get(join_name)
        if jr is None:
            raise KeyError(f"no online Join named {join_name!r} (known: {', '.join(self._joins)})")
        join = jr.join
        t = int(at_ms) if at_ms is not None else int(self.now_ms())
        now = int(self.now_ms())
        vector = FeatureVector(join_name, t, {c: request.get(c) for c in join.left.schema})

        reads = [self._part_read(part, request) for part in join.parts]
        self._read_batch(reads, deadline)
        t_batch = time.perf_counter()
        self._read_stream(reads, t, now, deadline)
        t_stream = time.perf_counter()

        out = vector.values
        for r, out_names, out_values in zip(reads, jr.out_names, jr.out_values):
            rt = self._gbs[r.gb.name]
            values: list[Any] | None = None
            if r.error is None:
                memo = None
                if r.version is not None and r.version.name is not None:
                    # A part without an entity (a key column missing) has the values of an empty window:
                    # they are kept under the entity b"" (no key encodes to it: a GroupBy has a key column).
                    memo = self._memo(rt, r.entity if r.entity is not None else b"", r.version.name)
                try:
                    res = rt.program.run(
                        t,
                        r.batch,
                        r.tiles,
                        r.boundary_ms,
                        memo=memo,
                        final_before=now - rt.settle_ms,
                        inputs=tuple(r.inputs),  # a period value's tile map is kept while its bytes are
                    )
                    values = res.values
                    vector.stale = vector.stale or res.stale_batch
                except Exception as e:  # a corrupt value: this part only
                    r.error = f"merge failed: {type(e).__name__}: {e}"
            if r.error is not None:
                vector.errors[r.gb.name] = r.error
                vector.degraded = True
            if values is None:
                out.update(dict.fromkeys(out_names))
            else:
                out.update(zip(out_names, out_values(values)))
        for name, fn in jr.derivations:
            try:
                vector.values[name] = fn(vector.values)
            except Exception as e:
                vector.values[name] = None
                vector.errors[f"derivation:{name}"] = f"{type(e).__name__}: {e}"
        end = time.perf_counter()
        vector.timings_ms = {
            "batch": (t_batch - started) * 1e3,
            "stream": (t_stream - t_batch) * 1e3,
            "merge": (end - t_stream) * 1e3,
            "total": (end - started) * 1e3,
        }
        if self.logger is not None:  # sampled, queued, written off the request path; never raises
            self.logger.log(
                vector,
                request,
                plan_hash=self.plan.plan_hash,
                keys={r.gb.name: [request.get(r.part.key_map[k]) for k in r.gb.keys] for r in reads},
                batch={r.gb.name: (r.version.name if r.version else None, r.boundary_ms) for r in reads},
            )
        return vector

    def _memo(self, rt: _GroupByRuntime, entity: bytes, version: str) -> EntityMemo | None:
        if self.merge_cache.capacity <= 0:
            return None
        key = (rt.gb.name, entity, version)
        memo = self.merge_cache.get(key)
        if memo is None:
            memo = EntityMemo()
            self.merge_cache.put(key, memo)
        return memo

    def _part_read(self, part: JoinPartPlan, request: Mapping[str, Any]) -> _PartRead:
        gb = self._gbs[part.group_by].gb
        key = [request.get(part.key_map[k]) for k in gb.keys]
        if any(k is None for k in key):  # no entity: the features of an empty window
            return _PartRead(part, gb, None)
        try:
            entity = encode_entity(key)
        except Exception as e:
            return _PartRead(part, gb, None, error=f"bad key {key!r}: {e}")
        return _PartRead(part, gb, entity)

    def _read_batch(self, reads: list[_PartRead], deadline: float) -> None:
        wanted: dict[str, dict[bytes, list[_PartRead]]] = {}
        for r in reads:
            rt = self._gbs[r.gb.name]
            if r.error is not None:
                continue
            try:
                r.version = self._version(rt)
            except Exception as e:
                r.error = f"bulk store unavailable: {type(e).__name__}: {e}"
                continue
            if r.version.name is None:
                r.error = f"no published batch version of {rt.batch_dataset}"
                continue
            r.boundary_ms = r.version.boundary_ms
            if r.entity is None:
                r.batch_known = True
                continue
            r.batch_key = rt.batch_layout.key(r.entity)
            cached = self.batch_cache.get((rt.batch_dataset, r.version.name, r.batch_key))
            if cached is not None:
                self._set_batch(r, cached)
                continue
            wanted.setdefault(rt.batch_dataset, {}).setdefault(r.batch_key, []).append(r)
        for dataset, by_key in wanted.items():
            parts = [r for rs in by_key.values() for r in rs]
            if time.perf_counter() > deadline:
                for r in parts:
                    r.error = "fetch budget spent before the bulk store was read"
                continue
            try:
                got = self.bulk.multi_get(dataset, list(by_key))
            except Exception as e:
                for r in parts:
                    r.error = f"bulk store unavailable: {type(e).__name__}: {e}"
                continue
            for key, rs in by_key.items():
                blob = got.get(key)
                for r in rs:
                    rt = self._gbs[r.gb.name]
                    try:
                        value: Any = rt.codec.decode_batch(blob) if blob is not None else _ABSENT
                    except Exception as e:
                        r.error = f"batch value cannot be decoded: {type(e).__name__}: {e}"
                        continue
                    assert r.version is not None and r.version.name is not None
                    self.batch_cache.put((dataset, r.version.name, key), value)
                    self._set_batch(r, value)

    @staticmethod
    def _set_batch(r: _PartRead, value: Any) -> None:
        r.batch_known = True
        if value is not _ABSENT:
            r.batch = value
            r.boundary_ms = value.boundary_ms

    def _read_stream(self, reads: list[_PartRead], t: int, now: int, deadline: float) -> None:
        wanted: dict[str, dict[bytes, list[_PartRead]]] = {}
        cache = self.tile_cache
        keep = cache.capacity > 0
        mono = time.monotonic()
        recheck_before = mono - self.recheck_s
        for r in reads:
            if r.error is not None or r.entity is None:
                continue
            rt = self._gbs[r.gb.name]
            boundary = r.boundary_ms if r.boundary_ms is not None else t
            needs = rt.program.layout(t, boundary).needs
            for need_end, key, cache_key, period_key in self._period_keys(rt, r.entity, needs):
                held = cache.peek(cache_key) if keep else None
                if held is not None:
                    # Every tile needed from it is final (and it was read recently): no read.
                    if need_end <= held.final_until and held.read_at > recheck_before:
                        cache.hits += 1
                        r.tiles.update(held.tiles)
                        r.inputs.append(held.tiles)
                        continue
                    r.held[key] = held
                cache.misses += 1
                r.period_keys[key] = period_key
                wanted.setdefault(rt.stream_dataset, {}).setdefault(key, []).append(r)
        if not wanted:
            return
        if time.perf_counter() > deadline:
            for by_key in wanted.values():
                for rs in by_key.values():
                    for r in rs:
                        r.error = r.error or "fetch budget spent before the stream store was read"
            return
        try:
            got, unavailable = self._stream_get({dataset: list(by_key) for dataset, by_key in wanted.items()})
        except Exception as e:
            for by_key in wanted.values():
                for rs in by_key.values():
                    for r in rs:
                        r.error = r.error or f"stream store unavailable: {type(e).__name__}: {e}"
            return
        for dataset, by_key in wanted.items():
            got_ds = got.get(dataset, {})
            unavailable_ds = unavailable.get(dataset, frozenset())
            for key, rs in by_key.items():
                for r in rs:
                    if r.error is not None:
                        continue
                    if key in unavailable_ds:
                        r.error = f"stream store unavailable for {dataset} (node down or slow)"
                        continue
                    rt = self._gbs[r.gb.name]
                    try:
                        period = self._period(rt, got_ds.get(key), r.held.get(key), now - rt.settle_ms, mono)
                    except Exception as e:
                        r.error = f"period value cannot be decoded: {type(e).__name__}: {e}"
                        continue
                    if keep:
                        cache.put((dataset, key), period)
                    r.tiles.update(period.tiles)
                    r.inputs.append(period.tiles)

    def _period_keys(
        self, rt: _GroupByRuntime, entity: bytes, needs: dict[TileKey, int]
    ) -> list[tuple[int, bytes, tuple[str, bytes], TileKey]]:
        """Per period value ``needs`` names for ``entity``: (latest tile end needed, store key, tile-cache key,
        (size, period start)). Kept per entity while the layout's ``needs`` is the same object (a layout
        template lasts one smallest tile), so an entity asked again does not build its keys again."""
        memo_key = (rt.gb.name, entity)
        kept = self._keys.get(memo_key)
        if kept is not None and kept[0] is needs:
            return kept[1]
        out = []
        for period_key, need_end in needs.items():
            key = rt.stream_layout.key(entity, tile_suffix(*period_key))
            out.append((need_end, key, (rt.stream_dataset, key), period_key))
        if len(self._keys) >= self._keys_capacity:  # plain and bounded: cleared when full
            self._keys.clear()
        self._keys[memo_key] = (needs, out)
        return out

    @staticmethod
    def _period(
        rt: _GroupByRuntime, blob: bytes | None, held: _Period | None, final_until: int, read_at: float
    ) -> _Period:
        """A period value just read; the kept one's tiles where the bytes did not change."""
        if held is not None and held.blob == blob:
            return _Period(blob, held.tiles, held.by_start, max(final_until, held.final_until), read_at)
        if blob is None:
            return _Period(None, {}, {}, final_until, read_at)
        size, _, by_start = rt.codec.decode_period(blob, lazy=True)
        if held is not None:
            reuse_tiles(held.by_start, by_start)
        return _Period(
            blob, {(size, s): tile for s, tile in by_start.items()}, by_start, final_until, read_at
        )

    def _stream_get(
        self, requests: dict[str, list[bytes]]
    ) -> tuple[dict[str, dict[bytes, bytes]], dict[str, frozenset[bytes]]]:
        """Every stream dataset's keys: one round trip per memcached node touched, else one call per dataset."""
        if isinstance(self.stream, MemcachedStore):
            return self.stream.multi_get_many(requests)
        got: dict[str, dict[bytes, bytes]] = {}
        unavailable: dict[str, frozenset[bytes]] = {}
        report = getattr(self.stream, "multi_get_report", None)
        for dataset, keys in requests.items():
            if report is not None:
                res = report(dataset, keys)
                got[dataset], unavailable[dataset] = res.values, res.unavailable
            else:
                got[dataset] = self.stream.multi_get(dataset, keys)
        return got, unavailable

    def cache_stats(self) -> dict[str, int]:
        return {
            "batch_hits": self.batch_cache.hits,
            "batch_misses": self.batch_cache.misses,
            "batch_size": len(self.batch_cache),
            "tile_hits": self.tile_cache.hits,
            "tile_misses": self.tile_cache.misses,
            "tile_size": len(self.tile_cache),
            "merge_hits": self.merge_cache.hits,
            "merge_misses": self.merge_cache.misses,
            "merge_size": len(self.merge_cache),
        }


def _boundary_from_version_name(name: str) -> int | None:
    """A version without a metadata record: ``YYYY-MM-DD[.rN]`` names the day whose end is the boundary."""
    import datetime as dt

    try:
        day = dt.date.fromisoformat(name.split(".", 1)[0])
    except ValueError:
        return None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000) + DAY_MS
