"""The write-many store: values in a cluster of memcached servers, placed by entity.

Contracts:

* Placement: a key goes to the node that owns :func:`kvstore.codec.route_token` of it (its entity) on a
  :class:`~kvstore.ring.HashRing`, so all values of one entity share a node and a ``multi_get`` costs one
  ``get_many`` round trip per node touched. Requests to several nodes run concurrently.
* Budget: a read returns within about ``connect_timeout_s + timeout_s`` (its *budget*, :attr:`budget_s`)
  whatever a node does; a write within ``connect_timeout_s + write_timeout_s`` (writers flush in the background
  and would rather wait than drop). A node that fails or times out is marked dead for ``dead_timeout_s``: meanwhile its keys are
  reported unavailable at once, then one call probes it again. Other nodes keep answering.
* ``multi_get`` returns the values from reachable nodes; :meth:`MemcachedStore.multi_get_report` also says which
  keys could not be asked. :meth:`MemcachedStore.multi_get_many` does the same for several datasets at once, still
  one ``get_many`` per node touched (a fetch reading six stream datasets of one entity makes one round trip). ``multi_put`` writes what it can and then raises
  :class:`~kvstore.errors.PartialWriteError` naming the keys it could not write (retry them: upserts are
  idempotent).
* Expiry: every value is set with ``ttl_s`` (must outlive the longest window that reads it); TTLs over 30 days are
  sent as absolute times, as memcached requires.
* Size: a value whose item would exceed the server's ``item_size_max`` raises
  :class:`~kvstore.errors.ValueTooLargeError` before anything of that call is written; nothing is truncated.
* Keys: memcached keys are ``<dataset>:<base64url(key)>``; keys that would exceed 250 bytes are replaced by a
  192-bit BLAKE2b digest.
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field

from pymemcache.client.base import PooledClient
from pymemcache.exceptions import MemcacheServerError

from kvstore import codec
from kvstore.base import Capability, ClosedMixin, KVStore, check_keys, check_name
from kvstore.errors import PartialWriteError, ValueTooLargeError
from kvstore.ring import HashRing

_MAX_KEY = 250
_THIRTY_DAYS_S = 30 * 24 * 3600
# memcached's per-item header (item struct, CAS, flags, CRLF) upper bound, from memcached 1.6 item_make_header.
ITEM_OVERHEAD_BYTES = 96
DEFAULT_ITEM_SIZE_MAX = 1024 * 1024


@dataclass(frozen=True)
class GetResult:
    """Values found, and the keys whose node was unavailable (so their absence means nothing)."""

    values: dict[bytes, bytes]
    unavailable: frozenset[bytes] = field(default_factory=frozenset)


@dataclass
class _Node:
    name: str
    client: PooledClient
    write_client: PooledClient
    executor: ThreadPoolExecutor
    dead_until: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def parse_server(spec: str | tuple[str, int]) -> tuple[str, int]:
    """``"host:port"`` or ``(host, port)`` → ``(host, port)``.

    >>> parse_server("127.0.0.1:11211")
    ('127.0.0.1', 11211)
    """
    if isinstance(spec, tuple):
        return spec
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"memcached server {spec!r} must look like HOST:PORT, e.g. 127.0.0.1:11211")
    return host, int(port)


def memcached_expire(ttl_s: int, now: float | None = None) -> int:
    """The ``exptime`` memcached needs for a TTL: relative up to 30 days, an absolute Unix time beyond.

    >>> memcached_expire(3600), memcached_expire(40 * 86400, now=1_000_000_000)
    (3600, 1003456000)
    """
    if ttl_s <= 0:
        return 0
    if ttl_s <= _THIRTY_DAYS_S:
        return int(ttl_s)
    return int((time.time() if now is None else now) + ttl_s)


def _get_many(mkeys: list[bytes]) -> Callable[[PooledClient], object]:
    return lambda c: c.get_many(mkeys)


def _set_many(payload: dict[bytes, bytes], expire: int) -> Callable[[PooledClient], object]:
    return lambda c: c.set_many(payload, expire=expire, noreply=False)


class MemcachedStore(ClosedMixin, KVStore):
    """Stream values over memcached ``servers``; see the module docstring for the contracts."""

    capabilities = Capability.PUT

    def __init__(
        self,
        servers: Sequence[str | tuple[str, int]],
        *,
        ttl_s: int = 40 * 24 * 3600,
        connect_timeout_s: float = 0.1,
        timeout_s: float = 0.1,
        write_timeout_s: float = 1.0,
        dead_timeout_s: float = 4.0,
        pool_size: int = 8,
        item_size_max: int | None = None,
        route: Callable[[bytes], bytes] = codec.route_token,
    ) -> None:
        addrs = [parse_server(s) for s in servers]
        self.ttl_s = ttl_s
        self.dead_timeout_s = dead_timeout_s
        self.budget_s = connect_timeout_s + timeout_s
        self.write_budget_s = connect_timeout_s + write_timeout_s
        self._route = route
        self._item_size_max = item_size_max
        self._ring = HashRing([f"{h}:{p}" for h, p in addrs])

        def client(h: str, p: int, timeout: float) -> PooledClient:
            return PooledClient(
                (h, p),
                connect_timeout=connect_timeout_s,
                timeout=timeout,
                no_delay=True,
                max_pool_size=pool_size,
                default_noreply=False,
            )

        self._nodes = [
            _Node(
                name=f"{h}:{p}",
                client=client(h, p, timeout_s),
                write_client=client(h, p, write_timeout_s),
                executor=ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix=f"memcached-{p}"),
            )
            for h, p in addrs
        ]

    @property
    def name(self) -> str:
        return f"memcached-{len(self._nodes)}"

    # -- placement ---------------------------------------------------------------------------------------
    @staticmethod
    def memcached_key(dataset: str, key: bytes) -> bytes:
        """The memcached key of ``key`` in ``dataset`` (printable, at most 250 bytes)."""
        mk = dataset.encode() + b":" + base64.urlsafe_b64encode(key).rstrip(b"=")
        if len(mk) <= _MAX_KEY:
            return mk
        return (
            dataset.encode() + b"#" + base64.urlsafe_b64encode(hashlib.blake2b(key, digest_size=24).digest())
        )

    def node_of(self, key: bytes) -> str:
        """Name (``host:port``) of the node that holds ``key``."""
        return self._nodes[self._ring.node_for(self._route(key))].name

    def _group(self, dataset: str, keys: Sequence[bytes]) -> dict[int, dict[bytes, bytes]]:
        """Node index → {memcached key: key}."""
        groups: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for k in keys:
            groups[self._ring.node_for(self._route(k))][self.memcached_key(dataset, k)] = k
        return groups

    # -- node calls with dead-node handling ----------------------------------------------------------------
    def _alive(self, node: _Node) -> bool:
        return time.monotonic() >= node.dead_until

    def _mark_dead(self, node: _Node) -> None:
        node.dead_until = time.monotonic() + self.dead_timeout_s

    def _call(self, node: _Node, fn: Callable[[PooledClient], object], write: bool = False) -> object | None:
        """Run ``fn`` on ``node``; None if the node is dead or fails (then it is marked dead)."""
        if not self._alive(node):
            return None
        try:
            return fn(node.write_client if write else node.client)
        except MemcacheServerError as e:
            if "too large" in str(e):
                raise ValueTooLargeError(f"memcached {node.name} refused a value as too large: {e}") from e
            self._mark_dead(node)
            return None
        except Exception:  # socket errors, timeouts, unexpected close: the node is unavailable
            self._mark_dead(node)
            return None

    def _fan_out(
        self, tasks: dict[int, Callable[[PooledClient], object]], write: bool = False
    ) -> dict[int, object | None]:
        """Run one task per node concurrently (the first in this thread); results within the budget."""
        if not tasks:
            return {}
        items = list(tasks.items())
        futures: dict[int, Future[object | None]] = {
            i: self._nodes[i].executor.submit(self._call, self._nodes[i], fn, write) for i, fn in items[1:]
        }
        deadline = time.monotonic() + (self.write_budget_s if write else self.budget_s)
        first_i, first_fn = items[0]
        results: dict[int, object | None] = {first_i: self._call(self._nodes[first_i], first_fn, write)}
        wait_futures(list(futures.values()), timeout=max(0.0, deadline - time.monotonic()))
        for i, fut in futures.items():
            # Not done: the call's budget is spent; report the node's keys unavailable. The worker marks the node
            # dead itself if its socket times out (a late answer from a merely slow node does not).
            results[i] = fut.result() if fut.done() else None
        return results

    # -- the interface -------------------------------------------------------------------------------------
    def multi_get_report(self, dataset: str, keys: Sequence[bytes]) -> GetResult:
        """Like ``multi_get``, and also which keys sat on unavailable nodes."""
        self._check_open()
        check_name("dataset", dataset)
        check_keys(keys)
        groups = self._group(dataset, keys)
        tasks = {i: _get_many(list(g)) for i, g in groups.items()}
        values: dict[bytes, bytes] = {}
        unavailable: set[bytes] = set()
        for i, got in self._fan_out(tasks).items():
            g = groups[i]
            if got is None:
                unavailable.update(g.values())
                continue
            assert isinstance(got, dict)
            for mk, blob in got.items():
                k = g[mk]
                values[k] = codec.unseal(blob, key=k)
        return GetResult(values, frozenset(unavailable))

    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.multi_get_report(dataset, keys).values

    def multi_get_many(
        self, requests: Mapping[str, Sequence[bytes]]
    ) -> tuple[dict[str, dict[bytes, bytes]], dict[str, frozenset[bytes]]]:
        """Several datasets in one ``get_many`` per node touched (all nodes asked concurrently).

        ``{dataset: keys}`` → ``({dataset: {key: value}}, {dataset: keys whose node was unavailable})``; every
        requested dataset appears in the first mapping, only datasets with unavailable keys in the second.
        """
        self._check_open()
        # Node index → {memcached key: (dataset, key)}.
        groups: dict[int, dict[bytes, tuple[str, bytes]]] = defaultdict(dict)
        for dataset, keys in requests.items():
            check_name("dataset", dataset)
            check_keys(keys)
            for k in keys:
                groups[self._ring.node_for(self._route(k))][self.memcached_key(dataset, k)] = (dataset, k)
        values: dict[str, dict[bytes, bytes]] = {dataset: {} for dataset in requests}
        unavailable: dict[str, set[bytes]] = defaultdict(set)
        tasks = {i: _get_many(list(g)) for i, g in groups.items()}
        for i, got in self._fan_out(tasks).items():
            g = groups[i]
            if got is None:
                for dataset, k in g.values():
                    unavailable[dataset].add(k)
                continue
            assert isinstance(got, dict)
            for mk, blob in got.items():
                dataset, k = g[mk]
                values[dataset][k] = codec.unseal(blob, key=k)
        return values, {dataset: frozenset(ks) for dataset, ks in unavailable.items()}

    def item_size_max(self) -> int:
        """The servers' ``item_size_max`` (asked once from the first node that answers), or the given one."""
        if self._item_size_max is None:
            for node in self._nodes:
                stats = self._call(node, lambda c: c.stats("settings"))
                if isinstance(stats, dict) and b"item_size_max" in stats:
                    self._item_size_max = int(stats[b"item_size_max"])
                    break
        return self._item_size_max or DEFAULT_ITEM_SIZE_MAX

    def multi_put(self, dataset: str, items: Mapping[bytes, bytes]) -> None:
        self._check_open()
        check_name("dataset", dataset)
        check_keys(list(items))
        limit = self.item_size_max()
        groups = self._group(dataset, list(items))
        payloads: dict[int, dict[bytes, bytes]] = {}
        for i, g in groups.items():
            payloads[i] = {}
            for mk, k in g.items():
                blob = codec.seal(bytes(items[k]))
                if len(blob) + len(mk) + ITEM_OVERHEAD_BYTES > limit:
                    raise ValueTooLargeError(
                        f"value for key {k!r:.80} in {dataset!r} is {len(items[k])} bytes; with its key and "
                        f"memcached's item header it exceeds item_size_max={limit} bytes. Nothing of this "
                        "multi_put was written. Split the value (e.g. fewer tiles per value) or raise the "
                        "servers' -I limit."
                    )
                payloads[i][mk] = blob
        expire = memcached_expire(self.ttl_s)
        tasks = {i: _set_many(p, expire) for i, p in payloads.items()}
        failed: set[bytes] = set()
        for i, res in self._fan_out(tasks, write=True).items():
            if res is None:
                failed.update(groups[i].values())
            else:
                assert isinstance(res, list)
                failed.update(groups[i][mk] for mk in res)
        if failed:
            raise PartialWriteError(
                f"{len(failed)} of {len(items)} keys of {dataset!r} were not written (node unavailable); "
                "retry them",
                failed,
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self._nodes:
            node.executor.shutdown(wait=False, cancel_futures=True)
            node.client.close()
            node.write_client.close()
