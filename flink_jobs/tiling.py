"""The stream's tiling logic, pure and Flink-free: projected rows in, encoded period values out.

The PyFlink operator (:mod:`flink_jobs.job`) only moves bytes between Kafka, Flink keyed state and memcached; every
decision is made here, with the shared layout of :mod:`features.tiles`:

* an event with ``ts < watermark - allowed_lateness`` is **late**: counted, never applied (the nightly batch
  upload corrects it);
* an on-time event updates, for every tile level of the plan, the tile ``(size, align(ts, size))`` of its entity
  (:meth:`features.tiles.StateCodec.update`) and marks the stored value holding that tile - the level's *period
  value* ``(size, period start)`` - dirty;
* a flush returns the full period value of every dirty period (:meth:`~features.tiles.StateCodec.encode_period`):
  idempotent full-IR upserts, so re-flushing or replaying after a crash writes the same bytes;
* eviction drops whole periods once no on-time event can reach them and no read after the batch boundary needs
  them: ``period end + max(retention, allowed lateness) <= watermark``. Dirty periods are flushed first.

Two forms share these rules: :class:`Tiler` holds every entity of one GroupBy in memory (unit tests, replays,
``snapshot``/``restore``), and the per-entity helpers (:func:`apply_row`, :func:`period_value`,
:func:`expired_periods`, :func:`encode_tile`) and :class:`KeyTiles` (one key: IRs decoded in memory, encoded only
at flush, keyed state = period values + rows applied since) are what the Flink operator uses with its keyed state.
"""

from __future__ import annotations

import hashlib
import heapq
import struct
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from features.encoding import Reader, Writer, svarint_bytes, uvarint_bytes
from features.plan import GroupByPlan
from features.tiles import TILES_FORMAT, StateCodec, Tile, TileKey
from features.windows import align
from flink_jobs import jsonio

#: The due time of a dirty period of the smallest level: always (see :meth:`KeyTiles.flush`).
ALWAYS_DUE = -(2**63)

#: Flushed values: ``(entity parts, size, period start) -> encoded period value``.
FlushKey = tuple[tuple[Any, ...], int, int]

_I64 = struct.Struct(">q")
_TILES_FORMAT_BYTE = bytes([TILES_FORMAT])
SNAPSHOT_FORMAT = 1


# ---- per-entity rules (shared by Tiler and the Flink operator) ------------------------------------------


def is_late(ts_ms: int, watermark_ms: int | None, allowed_lateness_ms: int) -> bool:
    """True if an event at ``ts_ms`` arrives too late to be applied (watermark ``None``: nothing is late).

    >>> is_late(1_000, 400_000, 300_000), is_late(100_000, 400_000, 300_000)
    (True, False)
    """
    return watermark_ms is not None and ts_ms < watermark_ms - allowed_lateness_ms


def entity_of(gb: GroupByPlan, row: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The entity key parts of a projected row; ``None`` if any part is null (such rows are not aggregated)."""
    parts = tuple(row.get(k) for k in gb.keys)
    return None if any(p is None for p in parts) else parts


def tile_keys(codec: StateCodec, ts_ms: int) -> list[TileKey]:
    """The tile of every level that an event at ``ts_ms`` falls in."""
    return [(size, ts_ms - ts_ms % size) for size in codec.sizes]


def apply_row(
    codec: StateCodec, tiles: MutableMapping[TileKey, Tile], row: Mapping[str, Any]
) -> list[TileKey]:
    """Fold one projected row into its tile of every level; returns the period values it changed."""
    ts = row[codec.time_col]
    changed: list[TileKey] = []
    for key in tile_keys(codec, ts):
        tile = tiles.get(key)
        if tile is None:
            tile = Tile(codec.init(), ts)
        codec.update(tile.irs, row)
        if ts > tile.max_ts:
            tile.max_ts = ts
        tiles[key] = tile
        changed.append(codec.period_key(*key))
    return changed


def retention_of(gb: GroupByPlan) -> dict[int, int]:
    """Per tile size, how long after its period ends a period value is kept in state."""
    assert gb.stream is not None, f"{gb.name} has no stream plan (online=False?)"
    lateness = gb.source.allowed_lateness_ms
    return {lv.size_ms: max(lv.retention_ms, lateness) for lv in gb.stream.levels}


def period_end(codec: StateCodec, size_ms: int, period_start_ms: int) -> int:
    return period_start_ms + codec.period_of[size_ms]


def expired_periods(
    codec: StateCodec, retention: Mapping[int, int], periods: Iterable[TileKey], watermark_ms: int
) -> list[TileKey]:
    """The periods (``(size, period start)``) that may be dropped from state at ``watermark_ms``."""
    return [
        (size, ps) for size, ps in periods if period_end(codec, size, ps) + retention[size] <= watermark_ms
    ]


def expiry_ms(codec: StateCodec, retention: Mapping[int, int], size_ms: int, period_start_ms: int) -> int:
    """The watermark at which a period value may be dropped from state."""
    return period_end(codec, size_ms, period_start_ms) + retention[size_ms]


# ---- tile state bytes (what Flink keyed state holds per tile) ---------------------------------------------


def encode_tile(codec: StateCodec, tile: Tile) -> bytes:
    """A tile as state bytes: 8-byte big-endian max event time, then the shared IR encoding."""
    return _I64.pack(tile.max_ts) + codec.encode(tile.irs)


def decode_tile(codec: StateCodec, data: bytes) -> Tile:
    (max_ts,) = _I64.unpack_from(data)
    return Tile(codec.decode(data[_I64.size :]), max_ts)


def period_value(size_ms: int, period_start_ms: int, encoded_tiles: Mapping[int, bytes]) -> bytes:
    """The period value of :meth:`StateCodec.encode_period` assembled from tile state bytes (no IR re-encode).

    ``encoded_tiles`` maps tile start to :func:`encode_tile` bytes; byte-identical to ``encode_period``.
    """
    w = Writer()
    w.buf.append(TILES_FORMAT)
    w.uvarint(size_ms)
    w.svarint(period_start_ms)
    w.uvarint(len(encoded_tiles))
    for start in sorted(encoded_tiles):
        data = encoded_tiles[start]
        (max_ts,) = _I64.unpack_from(data)
        w.uvarint((start - period_start_ms) // size_ms)
        w.svarint(max_ts - start)
        w.raw(data[_I64.size :])
    return w.getvalue()


# ---- the in-memory tiler -----------------------------------------------------------------------------------


@dataclass
class TilerStats:
    events_in: int = 0
    applied: int = 0
    late: int = 0
    no_key: int = 0
    flushes: int = 0
    values_flushed: int = 0
    periods_evicted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class _Entity:
    tiles: dict[TileKey, Tile] = field(default_factory=dict)


class Tiler:
    """Every entity's tiles of one GroupBy, in memory. Not thread-safe.

    ``on_event(row, watermark, now_ms)`` folds a projected row (late rows are counted, not applied);
    ``on_timer(now_ms)`` flushes once ``flush_interval_ms`` has passed since the first unflushed change;
    ``flush()`` returns every dirty period value; ``evict(watermark)`` bounds the state.
    """

    def __init__(
        self,
        gb: GroupByPlan,
        *,
        allowed_lateness_ms: int | None = None,
        flush_interval_ms: int | None = None,
    ) -> None:
        if gb.stream is None:
            raise ValueError(f"GroupBy {gb.name} has no stream plan (is it online?)")
        self.gb = gb
        self.codec = StateCodec(gb)
        self.allowed_lateness_ms = (
            gb.source.allowed_lateness_ms if allowed_lateness_ms is None else allowed_lateness_ms
        )
        self.flush_interval_ms = (
            gb.stream.flush_interval_ms if flush_interval_ms is None else flush_interval_ms
        )
        self.retention = retention_of(gb)
        if allowed_lateness_ms is not None:
            self.retention = {s: max(r, allowed_lateness_ms) for s, r in self.retention.items()}
        self.entities: dict[tuple[Any, ...], _Entity] = {}
        self.dirty: set[FlushKey] = set()
        self.flush_due_ms: int | None = None
        self.stats = TilerStats()

    # -- events ---------------------------------------------------------------------------------------
    def on_event(self, row: Mapping[str, Any], watermark_ms: int | None, now_ms: int | None = None) -> str:
        """Fold one projected row. Returns ``"applied"``, ``"late"`` or ``"no_key"``."""
        self.stats.events_in += 1
        ts = row.get(self.codec.time_col)
        entity = entity_of(self.gb, row)
        if entity is None or ts is None:
            self.stats.no_key += 1
            return "no_key"
        if is_late(ts, watermark_ms, self.allowed_lateness_ms):
            self.stats.late += 1
            return "late"
        ent = self.entities.get(entity)
        if ent is None:
            ent = self.entities[entity] = _Entity()
        for size, ps in apply_row(self.codec, ent.tiles, row):
            self.dirty.add((entity, size, ps))
        self.stats.applied += 1
        if self.flush_due_ms is None and now_ms is not None:
            self.flush_due_ms = now_ms + self.flush_interval_ms
        return "applied"

    def on_timer(self, now_ms: int) -> dict[FlushKey, bytes]:
        """Flush if the flush interval since the first unflushed change has passed."""
        if self.flush_due_ms is not None and now_ms >= self.flush_due_ms:
            return self.flush()
        return {}

    def flush(self) -> dict[FlushKey, bytes]:
        """The full period value of every dirty period; clears the dirty set."""
        out: dict[FlushKey, bytes] = {}
        for entity, size, ps in self.dirty:
            tiles = self.entities[entity].tiles
            in_period = {
                start: tile
                for (sz, start), tile in tiles.items()
                if sz == size and self.codec.period_key(sz, start) == (size, ps)
            }
            out[(entity, size, ps)] = self.codec.encode_period(size, ps, in_period)
        self.dirty.clear()
        self.flush_due_ms = None
        if out:
            self.stats.flushes += 1
            self.stats.values_flushed += len(out)
        return out

    def evict(self, watermark_ms: int) -> int:
        """Drop the periods no on-time event or stream read can need; returns how many were dropped."""
        dropped = 0
        dirty_periods = {(e, s, p) for e, s, p in self.dirty}
        for entity in list(self.entities):
            tiles = self.entities[entity].tiles
            periods = {self.codec.period_key(size, start) for size, start in tiles}
            gone = {
                p
                for p in expired_periods(self.codec, self.retention, periods, watermark_ms)
                if (entity, *p) not in dirty_periods
            }
            if not gone:
                continue
            for tk in [tk for tk in tiles if self.codec.period_key(*tk) in gone]:
                del tiles[tk]
            dropped += len(gone)
            if not tiles:
                del self.entities[entity]
        self.stats.periods_evicted += dropped
        return dropped

    def tile_count(self) -> int:
        return sum(len(e.tiles) for e in self.entities.values())

    # -- state ----------------------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """All tiles and dirty marks as explicit bytes (the shared IR encoding; no pickle)."""
        w = Writer()
        w.buf.append(SNAPSHOT_FORMAT)
        w.string(self.gb.semantic_hash)
        w.uvarint(len(self.entities))
        for entity, ent in self.entities.items():
            w.uvarint(len(entity))
            for part in entity:
                w.typed(part)
            w.uvarint(len(ent.tiles))
            for (size, start), tile in ent.tiles.items():
                w.uvarint(size)
                w.svarint(start)
                w.raw(encode_tile(self.codec, tile))
        w.uvarint(len(self.dirty))
        for entity, size, ps in sorted(self.dirty, key=repr):
            w.uvarint(len(entity))
            for part in entity:
                w.typed(part)
            w.uvarint(size)
            w.svarint(ps)
        return w.getvalue()

    def restore(self, data: bytes) -> None:
        """Replace the state with a :meth:`snapshot` (of the same plan)."""
        r = Reader(data)
        version = r.byte()
        if version != SNAPSHOT_FORMAT:
            raise ValueError(f"tiler snapshot format {version} is not {SNAPSHOT_FORMAT}")
        plan_hash = r.string()
        if plan_hash != self.gb.semantic_hash:
            raise ValueError(
                f"snapshot of plan {plan_hash} cannot restore {self.gb.name} ({self.gb.semantic_hash})"
            )
        entities: dict[tuple[Any, ...], _Entity] = {}
        for _ in range(r.uvarint()):
            entity = tuple(r.typed() for _ in range(r.uvarint()))
            ent = entities[entity] = _Entity()
            for _ in range(r.uvarint()):
                size = r.uvarint()
                start = r.svarint()
                ent.tiles[(size, start)] = decode_tile(self.codec, r.raw())
        dirty: set[FlushKey] = set()
        for _ in range(r.uvarint()):
            entity = tuple(r.typed() for _ in range(r.uvarint()))
            size = r.uvarint()
            dirty.add((entity, size, r.svarint()))
        r.done()
        self.entities = entities
        self.dirty = dirty
        self.flush_due_ms = None


def align_period(codec: StateCodec, size_ms: int, ts_ms: int) -> int:
    """The start of the period (of level ``size_ms``) holding ``ts_ms``."""
    return align(ts_ms, codec.period_of[size_ms])


class PeriodEntry:
    """One period value being updated in place: its tiles as IR bytes, decoded only when a row lands in them.

    This is how the Flink operator keeps state: the bytes of :meth:`value` are both what keyed state holds and
    what memcached gets (byte-identical to :meth:`StateCodec.encode_period`), and an update re-encodes one tile.
    """

    __slots__ = ("encoded", "head", "period_start", "size", "tiles")

    def __init__(self, size_ms: int, period_start_ms: int) -> None:
        self.size = size_ms
        self.period_start = period_start_ms
        # tile start -> [max_ts, decoded IRs or None, encoded IRs or None (stale), payload cache or None,
        #                shared: the IR list (and cache) is the same object as the next smaller level's tile's,
        #                the tile's bytes in the period value (index, max ts, IRs) or None (stale)]
        self.tiles: dict[int, list[Any]] = {}
        self.encoded: bytes | None = None  # the value's bytes while no tile changed since
        self.head = _TILES_FORMAT_BYTE + uvarint_bytes(size_ms) + svarint_bytes(period_start_ms)

    @classmethod
    def from_value(cls, data: bytes) -> PeriodEntry:
        """Parse a period value without decoding any IR."""
        r = Reader(data)
        version = r.byte()
        if version != TILES_FORMAT:
            raise ValueError(f"period value format {version} is not {TILES_FORMAT}")
        entry = cls(r.uvarint(), r.svarint())
        for _ in range(r.uvarint()):
            start = entry.period_start + r.uvarint() * entry.size
            max_ts = start + r.svarint()
            entry.tiles[start] = [max_ts, None, r.raw(), None, False, None]
        r.done()
        entry.encoded = bytes(data)
        return entry

    def update(self, codec: StateCodec, row: Mapping[str, Any], *, encode: bool = True) -> None:
        """Fold a projected row (its event time must fall in this period) into its tile.

        ``encode=False`` only marks the tile stale: :meth:`value` (given the codec) re-encodes it once, however
        many rows landed in it since the last encode.
        """
        ts = row[codec.time_col]
        start = ts - ts % self.size
        tile = self.tiles.get(start)
        if tile is None:
            tile = self.tiles[start] = [ts, codec.init(), None, codec.new_payloads(), False, None]
        elif tile[1] is None:
            tile[1], tile[3] = codec.decode_tracked(tile[2])
        elif tile[4]:
            raise ValueError("a tile sharing its IRs with another level is updated through KeyTiles only")
        codec.update_tracked(tile[1], row, tile[3])
        if ts > tile[0]:
            tile[0] = ts
        tile[2] = codec.encode_tracked(tile[1], tile[3]) if encode else None
        tile[5] = None
        self.encoded = None

    def value(self, codec: StateCodec | None = None) -> bytes:
        """The period value; tiles left stale by ``update(..., encode=False)`` are encoded now (needs ``codec``).
        Cached until the next update: a flush and the compaction after it encode once. Each tile's part of the
        value is cached too, so a period whose other tiles did not change re-encodes only the changed one."""
        if self.encoded is not None:
            return self.encoded
        tiles = self.tiles
        size, ps = self.size, self.period_start
        parts = [self.head, uvarint_bytes(len(tiles))]
        for start in sorted(tiles):
            tile = tiles[start]
            seg = tile[5]
            if seg is None:
                enc = tile[2]
                if enc is None:
                    if codec is None:
                        raise ValueError("stale tiles: value() needs the codec")
                    enc = tile[2] = codec.encode_tracked(tile[1], tile[3])
                seg = tile[5] = b"".join(
                    (
                        uvarint_bytes((start - ps) // size),
                        svarint_bytes(tile[0] - start),
                        uvarint_bytes(len(enc)),
                        enc,
                    )
                )
            parts.append(seg)
        self.encoded = b"".join(parts)
        return self.encoded


# ---- one key of the Flink operator: decoded IRs in memory, encoded at flush time ---------------------------

#: MapState keys of pending rows (``r:<seq>``); period values use ``<size>:<period start>``.
ROW_PREFIX = "r:"


def period_state_key(size_ms: int, period_start_ms: int) -> str:
    return f"{size_ms}:{period_start_ms}"


def encode_row(row: Mapping[str, Any]) -> bytes:
    """A projected row as state bytes (JSON: the row logic's values are JSON scalars)."""
    return jsonio.dumps(row if isinstance(row, dict) else dict(row))


def decode_row(data: bytes) -> dict[str, Any]:
    row: dict[str, Any] = jsonio.loads(data)
    return row


class KeyTiles:
    """The in-memory tiles of one (GroupBy, entity) of the Flink operator, and what its keyed state must hold.

    Events update decoded IRs only (:meth:`apply`); period values are encoded when flushed (:meth:`flush`), once
    per dirty period however many events landed in it. Keyed state (one MapState per key) always equals
    *period values as of the last compaction* plus *the rows applied since* (``r:<seq>`` entries, in order):
    :meth:`apply` returns the row entry to put, :meth:`compact` the period values to put and row entries to
    remove, and :meth:`load` rebuilds this object from such state (replaying the rows). Whatever the moment a
    checkpoint barrier arrives, the state is therefore enough to restore the key exactly.
    """

    __slots__ = ("codec", "dirty", "entries", "expiries", "part", "retention", "seq", "stored", "uncompacted")

    def __init__(self, codec: StateCodec, retention: Mapping[int, int]) -> None:
        self.codec = codec
        self.retention = retention
        self.entries: dict[str, PeriodEntry] = {}
        # changed since the last flush (memcached): period key -> the earliest end of its changed tiles, or
        # ALWAYS_DUE for the smallest level (see flush())
        self.dirty: dict[str, int] = {}
        self.uncompacted: set[str] = set()  # changed since the last compaction (period values in state)
        self.seq = 0  # pending rows in state: r:0 .. r:seq-1
        self.stored: set[str] = set()  # batch path: the periods the key's state entries hold
        self.part = 0  # batch path: the key's compaction slice (BucketTiles.slice_of)
        # heap of (expiry, period key) of every entry, built at the first question about expiry (entries loaded
        # from state come before it), kept by _fold and expired() after
        self.expiries: list[tuple[int, str]] | None = None

    @classmethod
    def load(
        cls, codec: StateCodec, retention: Mapping[int, int], state: Iterable[tuple[str, bytes]]
    ) -> KeyTiles:
        """From the key's MapState items: period values parsed (IRs decoded lazily), pending rows replayed."""
        kt = cls(codec, retention)
        rows: list[tuple[int, bytes]] = []
        for k, v in state:
            if k.startswith(ROW_PREFIX):
                rows.append((int(k[len(ROW_PREFIX) :]), bytes(v)))
            else:
                kt.entries[k] = PeriodEntry.from_value(bytes(v))
        rows.sort()
        for _, data in rows:
            kt._fold(decode_row(data))
        kt.seq = rows[-1][0] + 1 if rows else 0
        return kt

    def _fold(self, row: Mapping[str, Any]) -> int | None:
        """Fold a row into its tile of every level (smallest first), encoding nothing.

        Tiles of consecutive levels that hold the same rows share one IR list (and payload cache): a row that
        opens a new tile at several levels is folded (and later encoded) once for all of them, which is the
        common case for all but the largest levels. A shared tile that a row reaches without the smaller tile
        it shares with gets its own copy first.
        """
        codec = self.codec
        ts = row[codec.time_col]
        earliest: int | None = None
        prev: list[Any] | None = None  # the previous (smaller) level's tile, after this row
        prev_old: Any = None  # the IR list that tile held before this row (None: it is new)
        dirty = self.dirty
        smallest = codec.sizes[0] if codec.sizes else 0
        for size in codec.sizes:
            period = codec.period_of[size]
            start = ts - ts % size
            # When the value is due (flush()): the smallest level's always, a larger level's when the tile ends.
            end = ALWAYS_DUE if size == smallest else start + size
            ps = align(start, period)
            pk = period_state_key(size, ps)
            entry = self.entries.get(pk)
            if entry is None:
                entry = self.entries[pk] = PeriodEntry(size, ps)
                expiry = ps + period + self.retention[size]
                earliest = expiry if earliest is None else min(earliest, expiry)
                if self.expiries is not None:
                    heapq.heappush(self.expiries, (expiry, pk))
            tile = entry.tiles.get(start)
            if tile is None:
                old = None
                if prev is not None and prev_old is None:  # the smaller tile is new too: same single row
                    tile = [ts, prev[1], None, prev[3], True, None]
                else:
                    irs = codec.init()
                    cache = codec.new_payloads()
                    codec.update_tracked(irs, row, cache)
                    tile = [ts, irs, None, cache, False, None]
                entry.tiles[start] = tile
            else:
                if tile[1] is None:
                    tile[1], tile[3] = codec.decode_tracked(tile[2])
                    tile[4] = False
                old = tile[1]
                if tile[4] and prev is not None and old is prev_old:
                    # It held the smaller tile's rows before this row and both get it: still equal.
                    tile[1], tile[3] = prev[1], prev[3]
                else:
                    if tile[4]:  # shared with a smaller tile this row does not reach
                        tile[1], tile[3], tile[4] = codec.copy(old), codec.copy_payloads(tile[3]), False
                    codec.update_tracked(tile[1], row, tile[3])
                if ts > tile[0]:
                    tile[0] = ts
            tile[2] = tile[5] = None
            entry.encoded = None
            prev, prev_old = tile, old
            due = dirty.get(pk)
            if due is None or end < due:
                dirty[pk] = end
            self.uncompacted.add(pk)
        return earliest

    def apply(self, row: Mapping[str, Any]) -> tuple[str, bytes, int | None]:
        """Fold an on-time row. Returns the state entry to put (the pending row) and the earliest expiry of the
        periods it created (``None`` if it created none)."""
        earliest = self._fold(row)
        k = f"{ROW_PREFIX}{self.seq}"
        self.seq += 1
        return k, encode_row(row), earliest

    def flush(self, horizon_ms: int | None = None) -> list[tuple[int, int, bytes]]:
        """``(size, period start, value)`` of every dirty period that is due (encoded now); it is no longer dirty.

        ``horizon_ms=None``: every dirty period. Otherwise a period of the smallest level is always due, and one of a
        larger level only once one of its changed tiles ends at or before ``horizon_ms``: a fetch reads a larger
        level's tile only when the tile is complete (:func:`features.windows.cover` takes tiles that end by the query
        time; the open end is the smallest tile), so an open tile's value is written when it is about to end, not at
        every change (the caller's horizon is *now + a lead*; a hot key's hour and day tiles are written once near
        their end instead of at every flush). Deferred periods stay dirty (see :meth:`next_due`)."""
        out = []
        entries = self.entries
        if horizon_ms is None:
            due = list(self.dirty)
            self.dirty.clear()
        else:
            due = [pk for pk, end in self.dirty.items() if end <= horizon_ms]
            for pk in due:
                del self.dirty[pk]
        for pk in due:
            e = entries.get(pk)
            if e is not None:
                out.append((e.size, e.period_start, e.value(self.codec)))
        return out

    def next_due(self) -> int | None:
        """The earliest end of a changed tile among the deferred (dirty) periods; ``None`` if none is dirty."""
        return min(self.dirty.values()) if self.dirty else None

    def mark_due_since(self, since_ms: int) -> int:
        """Every period ending at or after ``since_ms`` due at the next flush (after a restore: values a deferral
        may have kept from memcached). Returns how many."""
        n = 0
        for pk, e in self.entries.items():
            if e.period_start + self.codec.period_of[e.size] >= since_ms:
                self.dirty[pk] = ALWAYS_DUE
                n += 1
        return n

    def compact(self) -> tuple[dict[str, bytes], list[str]]:
        """Period values to put and pending-row keys to remove so state holds no rows; resets both."""
        puts = {pk: self.entries[pk].value(self.codec) for pk in self.uncompacted if pk in self.entries}
        removes = [f"{ROW_PREFIX}{i}" for i in range(self.seq)]
        self.uncompacted.clear()
        self.seq = 0
        return puts, removes

    def _expiries(self) -> list[tuple[int, str]]:
        h = self.expiries
        if h is None:
            h = self.expiries = [
                (expiry_ms(self.codec, self.retention, e.size, e.period_start), pk)
                for pk, e in self.entries.items()
            ]
            heapq.heapify(h)
        return h

    def expiring(self, watermark_ms: int) -> bool:
        """True if some period is past retention at ``watermark_ms``."""
        h = self._expiries()
        return bool(h) and h[0][0] <= watermark_ms

    def expired(self, watermark_ms: int) -> list[str]:
        """Drop (from memory) and return the periods past retention at ``watermark_ms``; flush and compact
        first (a dropped period is neither flushed nor written). Pops them off the key's expiry heap: no scan."""
        h = self._expiries()
        gone = []
        while h and h[0][0] <= watermark_ms:
            _, pk = heapq.heappop(h)
            if self.entries.pop(pk, None) is not None:
                self.dirty.pop(pk, None)
                self.uncompacted.discard(pk)
                gone.append(pk)
        return gone

    def next_expiry(self) -> int | None:
        h = self._expiries()
        return h[0][0] if h else None


# ---- one hash bucket of keys (the batch path of the Flink operator) -----------------------------------------

_NEVER = 2**63

#: A projected row handed to a bucket: ``(GroupBy index, Flink key, row)``.
BucketRow = tuple[int, str, Mapping[str, Any]]


def encode_batch(rows: Iterable[BucketRow]) -> bytes:
    """Rows applied to a bucket in one call, as state bytes (GroupBy index, key, row JSON; in order)."""
    w = Writer()
    rows = list(rows)
    w.uvarint(len(rows))
    for gi, key, row in rows:
        w.uvarint(gi)
        w.string(key)
        w.raw(encode_row(row))
    return w.getvalue()


def decode_batch(data: bytes) -> list[tuple[int, str, dict[str, Any]]]:
    r = Reader(data)
    out = [(r.uvarint(), r.string(), decode_row(r.raw())) for _ in range(r.uvarint())]
    r.done()
    return out


#: Batch path state: a key's *index* is the entry ``<key>`` (its period keys, comma-separated) and each of its period
#: values is an entry of its own, ``<key>\x1e<period key>`` (a Flink key holds no "\x1e"; see flink_jobs.job).
PERIOD_SEP = "\x1e"


#: Batch path state: ``#through:<slice>`` holds the batch sequence number a compaction slice is compacted through.
THROUGH_PREFIX = "#through:"
#: Batch path state: the earliest tile end a deferred value waited for at the bucket's last compaction (absent: none).
DEFERRED_SINCE_KEY = "#deferred-since"


def flush_horizon(now_ms: int, watermark_ms: int | None, lead_ms: int) -> int | None:
    """The batch path's flush horizon (:meth:`KeyTiles.flush`): ``lead_ms`` past now, or past the watermark if event
    time runs ahead of this clock (a producer's); ``None`` (write every changed period) if ``lead_ms`` < 0."""
    if lead_ms < 0:
        return None
    return max(now_ms, -(2**63) if watermark_ms is None else watermark_ms) + lead_ms


def period_entry_key(key: str, pk: str) -> str:
    """The state entry of one period value of ``key`` (``pk``: :func:`period_state_key`)."""
    return key + PERIOD_SEP + pk


def key_index(kt: KeyTiles) -> bytes:
    """The state entry listing a key's periods (sorted)."""
    return ",".join(sorted(kt.entries)).encode("ascii")


def key_tiles_from_state(
    codec: StateCodec, retention: Mapping[int, int], key: str, index: bytes, get: Any
) -> KeyTiles:
    """A key as its state holds it: ``index`` (:func:`key_index`) and each period value read through ``get`` (IRs
    decoded lazily)."""
    kt = KeyTiles(codec, retention)
    for pk in index.decode("ascii").split(",") if index else ():
        data = get(period_entry_key(key, pk))
        if data is None:
            raise ValueError(f"the state of key {key!r} lists period {pk} but holds no value for it")
        entry = PeriodEntry.from_value(data)
        if period_state_key(entry.size, entry.period_start) != pk:
            raise ValueError(f"the state of key {key!r} holds another period under {pk}")
        kt.entries[pk] = entry
    kt.stored = set(kt.entries)
    return kt


class BucketTiles:
    """The keys of one hash bucket of the Flink operator's batch path, and what the bucket's keyed state must hold.

    A bucket receives batches of projected rows (:meth:`apply`); its keys' IRs are updated in memory
    (:class:`KeyTiles`) and encoded only when flushed (:meth:`flush`). The bucket's keyed state always equals
    *each key's period values as of the last compaction* (an index entry per key and one entry per period value,
    :func:`period_entry_key`: a compaction writes only the periods that changed) plus *every
    batch applied since* (pending batches ``"<seq>"``, :func:`encode_batch`): :meth:`apply` returns the batch
    entry to put, :meth:`compact` the state entries to put and the pending batches to remove, and :meth:`replay`
    rebuilds the bucket from its pending batches (keys are loaded from their state values through ``load``).
    So a checkpoint barrier, which can only fall between two batches, always finds a restorable state.

    Compaction is allowed only when nothing is due (:attr:`dirty` empty): a compacted value is then in memcached
    unless a flush deferred it (an open tile of a larger level, :meth:`KeyTiles.flush`). A restore re-flushes what
    it replays and, through :meth:`restore_deferred`, every period that a flush may have deferred before the last
    compaction (those ending at or after :meth:`next_due` as of that compaction, which the caller keeps in
    state, ``#deferred-since``). Eviction (:meth:`expire`) needs a compacted bucket too (a
    replayed batch would bring an evicted period back).

    With ``slices`` > 1 the keys are split by hash into slices that compact one at a time (:meth:`compact` with a
    ``part``): a compaction is a pause of the operator that grows with the periods it writes, and a slice's is
    1/``slices`` of the bucket's. Each slice records in state (``#through:<slice>``) the batch sequence number it
    is compacted through; pending batches leave state once every slice is past them, and a replay skips a row of a
    batch its key's slice was compacted through (its value in state already holds it).
    """

    __slots__ = (
        "codecs",
        "deferred",
        "deferred_at",
        "dirty",
        "expiry",
        "keys",
        "low",
        "next_part",
        "pending_rows",
        "retentions",
        "scheduled",
        "seq",
        "slices",
        "stored_since",
        "through",
        "uncompacted",
        "uncompacted_periods",
    )

    def __init__(
        self, codecs: Sequence[StateCodec], retentions: Sequence[Mapping[int, int]], slices: int = 1
    ) -> None:
        self.codecs = codecs
        self.retentions = retentions
        self.slices = slices
        self.keys: dict[str, KeyTiles] = {}
        self.dirty: dict[str, int] = {}  # key -> GroupBy index, changed since the last flush
        # per slice: its keys changed since its last compaction
        self.uncompacted: list[set[str]] = [set() for _ in range(slices)]
        self.seq = 0  # the next batch's sequence number; pending batches in state: str(low) .. str(seq - 1)
        self.low = 0
        self.through = [0] * slices  # per slice: the batches before this are in its keys' values in state
        self.next_part = 0  # the slice the next (one-slice) compaction takes
        self.pending_rows = 0  # rows applied since the last compaction
        self.uncompacted_periods = 0  # changed since their slice's last compaction (what compactions write)
        self.stored_since: int | None = None  # the DEFERRED_SINCE_KEY entry as in state
        self.expiry: list[tuple[int, str]] = []  # heap: (a key's earliest expiry, key); stale entries skipped
        self.scheduled: dict[str, int] = {}  # key -> its entry in the heap (at most its earliest expiry)
        # keys whose unwritten periods were all deferred by a flush: heap of (due, key) (stale entries skipped) and
        # key -> (due, GroupBy index)
        self.deferred: list[tuple[int, str]] = []
        self.deferred_at: dict[str, tuple[int, int]] = {}

    def tiles(self, gi: int, key: str, load: Any = None) -> KeyTiles:
        """The key's tiles; a key not in memory is loaded through ``load(state entry)`` (its index, then its
        period values; ``None``: not in state)."""
        kt = self.keys.get(key)
        if kt is None:
            index = load(key) if load is not None else None
            if index is None:
                kt = KeyTiles(self.codecs[gi], self.retentions[gi])
            else:
                kt = key_tiles_from_state(self.codecs[gi], self.retentions[gi], key, index, load)
                nxt = kt.next_expiry()
                if nxt is not None:
                    self._schedule(key, nxt)
            kt.part = self.slice_of(key)
            self.keys[key] = kt
        return kt

    def slice_of(self, key: str) -> int:
        """The key's compaction slice: a stable hash (it must not change across a restore), and not the one of the
        job's hash buckets (``crc32``: with as many buckets as slices, a bucket's keys would all share a slice)."""
        if self.slices == 1:
            return 0
        digest = hashlib.blake2b(key.encode("utf-8"), digest_size=4).digest()
        return int.from_bytes(digest, "little") % self.slices

    def _fold(self, rows: Iterable[BucketRow], load: Any) -> int:
        keys = self.keys
        dirty = self.dirty
        uncompacted = self.uncompacted
        n = 0
        for gi, key, row in rows:
            kt = keys.get(key)
            if kt is None:
                kt = self.tiles(gi, key, load)
            before = len(kt.uncompacted)
            earliest = kt._fold(row)
            self.uncompacted_periods += len(kt.uncompacted) - before
            if earliest is not None and earliest < self.scheduled.get(key, _NEVER):
                self._schedule(key, earliest)
            dirty[key] = gi
            uncompacted[kt.part].add(key)
            n += 1
        self.pending_rows += n
        return n

    def apply(self, rows: Sequence[BucketRow], load: Any = None) -> tuple[str, bytes]:
        """Fold a batch of on-time rows; returns the pending-batch entry to put into state."""
        self._fold(rows, load)
        k = str(self.seq)
        self.seq += 1
        return k, encode_batch(rows)

    def replay(self, pending: Iterable[tuple[str, bytes]], load: Any = None) -> int:
        """Rebuild from the state's pending batches (in order) and, with slices, the ``#through:<slice>`` entries
        read through ``load``; the rows replayed become unflushed (flushed again, the same bytes). A row of a batch
        its key's slice was compacted through is skipped. Returns the rows replayed."""
        if load is not None:
            held = load(DEFERRED_SINCE_KEY)
            self.stored_since = None if held is None else int(held)
        if self.slices > 1 and load is not None:
            for part in range(self.slices):
                held = load(f"{THROUGH_PREFIX}{part}")
                self.through[part] = 0 if held is None else int(held)
        batches = sorted((int(k), bytes(v)) for k, v in pending)
        n = 0
        for seq, data in batches:
            rows = decode_batch(data)
            if self.slices > 1:
                through, slice_of = self.through, self.slice_of
                rows = [r for r in rows if seq >= through[slice_of(r[1])]]
            n += self._fold(rows, load)
        self.seq = max([batches[-1][0] + 1 if batches else 0, *self.through])
        self.low = min([batches[0][0] if batches else self.seq, *self.through])
        return n

    def flush(self, horizon_ms: int | None = None) -> list[tuple[int, str, int, int, bytes]]:
        """``(GroupBy index, key, size, period start, value)`` of every period changed since it was last written
        that is due at ``horizon_ms`` (:meth:`KeyTiles.flush`; ``None``: all of them). Keys left with deferred
        periods only wait in a heap until their earliest is due: a flush visits the keys changed since the last
        one and those come due, never every deferred key."""
        out = []
        keys = self.keys
        visit = self.dirty
        heap, at = self.deferred, self.deferred_at
        if horizon_ms is None:
            for key, (_, gi) in at.items():
                visit.setdefault(key, gi)
            at.clear()
            heap.clear()
        else:
            while heap and heap[0][0] <= horizon_ms:
                due, key = heapq.heappop(heap)
                cur = at.get(key)
                if cur is not None and cur[0] == due:
                    del at[key]
                    visit.setdefault(key, cur[1])
        for key, gi in visit.items():
            kt = keys.get(key)
            if kt is None:
                continue
            for size, ps, v in kt.flush(horizon_ms):
                out.append((gi, key, size, ps, v))
            if kt.dirty:
                due = min(kt.dirty.values())
                cur = at.get(key)
                if cur is None or due < cur[0]:
                    at[key] = (due, gi)
                    heapq.heappush(heap, (due, key))
            elif key in at:
                del at[key]
        self.dirty = {}
        return out

    def next_due(self) -> int | None:
        """The earliest tile end a deferred period waits for (``None``: nothing deferred)."""
        heap, at = self.deferred, self.deferred_at
        while heap:
            due, key = heap[0]
            cur = at.get(key)
            if cur is not None and cur[0] == due:
                return due
            heapq.heappop(heap)
        return None

    def restore_deferred(self, indexes: Iterable[tuple[str, int, bytes]], load: Any = None) -> int:
        """After a restore (:meth:`replay`), if the state held a deferred value (:attr:`stored_since`: the bucket's
        :meth:`next_due` at its last compaction; every period a flush deferred ends no earlier): of the keys in
        state (``(key, GroupBy index, index entry)``, :func:`key_index`), every period ending at or after it is due
        at the next flush - the same bytes again where memcached had them. Returns the periods marked."""
        since_ms = self.stored_since
        if since_ms is None:
            return 0
        n = 0
        for key, gi, index in indexes:
            codec = self.codecs[gi]
            smallest = codec.sizes[0]
            for pk in index.decode("ascii").split(",") if index else ():
                size, ps = (int(x) for x in pk.split(":"))
                if size != smallest and ps + codec.period_of[size] >= since_ms:
                    break
            else:
                continue
            kt = self.tiles(gi, key, load)
            n += kt.mark_due_since(since_ms)
            if kt.dirty:
                self.dirty[key] = gi
        return n

    def compact(self, part: int | None = None) -> tuple[dict[str, bytes], list[str], list[str]]:
        """``(state entries to put, entries to remove, pending batches to remove)``: the values of the keys of slice
        ``part`` (``None``: every slice, after which state holds no batch) changed since its last compaction; only
        when nothing is due to be flushed."""
        if self.dirty:
            raise ValueError("compact() with unflushed rows: flush first")
        puts: dict[str, bytes] = {}
        removes: list[str] = []
        written = 0
        for p in range(self.slices) if part is None else (part,):
            for key in self.uncompacted[p]:
                kt = self.keys.get(key)
                if kt is None:
                    continue
                entries, stored = kt.entries, kt.stored
                new = False
                written += len(kt.uncompacted)
                for pk in kt.uncompacted:
                    e = entries.get(pk)
                    if e is not None:
                        puts[period_entry_key(key, pk)] = e.value(kt.codec)
                        if pk not in stored:
                            new = True
                if new:  # (periods leave state only through expire())
                    puts[key] = key_index(kt)
                    kt.stored = set(entries)
                kt.uncompacted.clear()
                kt.seq = 0
            self.uncompacted[p].clear()
            self.through[p] = self.seq
            if self.slices > 1:
                puts[f"{THROUGH_PREFIX}{p}"] = str(self.seq).encode("ascii")
        since = self.next_due()  # what memcached may lack now ends no earlier (restore_deferred)
        if since != self.stored_since:
            if since is None:
                removes.append(DEFERRED_SINCE_KEY)
            else:
                puts[DEFERRED_SINCE_KEY] = str(since).encode("ascii")
            self.stored_since = since
        low = min(self.through)
        pending = [str(i) for i in range(self.low, low)]
        self.low = low
        if self.slices == 1:  # (numbering restarts: the state of a one-slice bucket is as it always was)
            self.seq = self.low = self.through[0] = 0
        else:
            self.next_part = (self.next_part if part is None else part + 1) % self.slices
        self.pending_rows = 0
        self.uncompacted_periods = max(0, self.uncompacted_periods - written) if part is not None else 0
        return puts, removes, pending

    def compaction_due(self, compact_rows: int, compact_periods: int) -> bool:
        """A slice is due every ``compact_rows`` / slices rows (so a restore replays at most about ``compact_rows``),
        or once ``compact_periods`` period values changed (a slice then writes about 1/slices of them)."""
        return self.pending_rows * self.slices >= compact_rows or self.uncompacted_periods >= compact_periods

    def _schedule(self, key: str, at: int) -> None:
        self.scheduled[key] = at
        heapq.heappush(self.expiry, (at, key))

    def next_expiry(self) -> int | None:
        return self.expiry[0][0] if self.expiry else None

    def eviction_due(self, watermark_ms: int | None, granularity_ms: int = 1) -> bool:
        """True once ``watermark_ms`` has passed the earliest expiry rounded up to ``granularity_ms`` (so a
        bucket evicts, and compacts for it, at most once per step of event time)."""
        if watermark_ms is None or not self.expiry:
            return False
        return -(-self.expiry[0][0] // granularity_ms) * granularity_ms <= watermark_ms

    def expire(self, watermark_ms: int) -> tuple[dict[str, bytes], list[str], int]:
        """Drop the periods past retention at ``watermark_ms``: ``(state entries to put, entries to remove, periods
        dropped)``. Only on a compacted bucket (:meth:`compact` first)."""
        if self.low < self.seq or self.dirty:
            raise ValueError("expire() needs a flushed and compacted bucket")
        puts: dict[str, bytes] = {}
        removes: set[str] = set()
        dropped = 0
        heap = self.expiry
        while heap and heap[0][0] <= watermark_ms:
            at, key = heapq.heappop(heap)
            if self.scheduled.get(key) != at:
                continue  # superseded by an earlier expiry of the key, or the key is gone
            del self.scheduled[key]
            kt = self.keys.get(key)
            if kt is None:
                continue
            gone = kt.expired(watermark_ms)
            dropped += len(gone)
            for pk in gone:
                if pk in kt.stored:
                    kt.stored.discard(pk)
                    removes.add(period_entry_key(key, pk))
            if kt.entries:
                if gone:
                    puts[key] = key_index(kt)
                    removes.discard(key)
                nxt = kt.next_expiry()
                if nxt is not None:  # (> watermark_ms: the key's next eviction)
                    self._schedule(key, nxt)
            else:
                del self.keys[key]
                self.deferred_at.pop(key, None)
                puts.pop(key, None)
                removes.add(key)
        return puts, sorted(removes), dropped
