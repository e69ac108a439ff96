"""The write-many store: values in a cluster of memcached servers, placed by entity.

Contracts:

* Placement: a key goes to the node that owns :func:`kvstore.codec.route_token` of it (its entity) on a
  :class:`~kvstore.ring.HashRing`, so all values of one entity share a node and a ``multi_get`` costs one
  ``get`` round trip per node touched. Reads ask every node touched at once from the calling thread (the
  request goes to each node before any answer is read, then the answers are read as they arrive, over
  non-blocking sockets kept per node), so a read that touches three nodes waits for the slowest one, not the
  sum, and hands nothing to other threads. Writes go to several nodes concurrently (worker threads).
* Budget: a read returns within about ``connect_timeout_s + timeout_s`` (its *budget*, :attr:`budget_s`)
  whatever a node does; a write within ``connect_timeout_s + write_timeout_s`` (writers flush in the background
  and would rather wait than drop). A call that fails or misses its budget on a node reports that node's keys
  unavailable (other nodes keep answering); ``dead_after`` such misses in a row (default 3) mark the node dead
  for ``dead_timeout_s``: meanwhile its keys are reported unavailable at once, then calls probe it again (one
  more miss marks it dead again; an answer clears the count). One miss is not enough: on a CPU-starved machine
  a live node's answer can come late because the *client* did not run, and taking it for dead would degrade
  every read of its keys for ``dead_timeout_s``.
* ``multi_get`` returns the values from reachable nodes; :meth:`MemcachedStore.multi_get_report` also says which
  keys could not be asked. :meth:`MemcachedStore.multi_get_many` does the same for several datasets at once, still
  one ``get`` per node touched (a fetch reading six stream datasets of one entity makes one round trip).
  ``multi_put`` writes what it can and then raises
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
import errno
import hashlib
import select
import socket
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
_MEMO_SIZE = 100_000  # entities whose node is remembered (then the memo starts over)
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
    address: tuple[str, int]
    client: PooledClient
    write_client: PooledClient
    executor: ThreadPoolExecutor
    dead_until: float = 0.0
    misses: int = 0  # failed or late calls in a row
    idle: list[socket.socket] = field(default_factory=list)  # connected non-blocking sockets for reads
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


def _get_command(mkeys: Sequence[bytes]) -> bytes:
    """The text-protocol request for ``mkeys`` (one ``get`` of all of them)."""
    return b"get " + b" ".join(mkeys) + b"\r\n"


class _NodeError(Exception):
    """A node answered something other than values (or closed the connection)."""


class _Read:
    """One node's part of a read: its socket, the request still to send, the answer read so far."""

    __slots__ = ("buf", "connecting", "done", "i", "out", "pos", "sock", "values")

    def __init__(self, i: int, sock: socket.socket, out: bytes, connecting: bool) -> None:
        self.i = i
        self.sock = sock
        self.out = out
        self.connecting = connecting
        self.buf = bytearray()
        self.pos = 0
        self.values: dict[bytes, bytes] = {}
        self.done = False

    def send(self) -> None:
        """Send what the socket takes now (raises OSError)."""
        if self.connecting:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, errno.errorcode.get(err, "connect failed"))
            self.connecting = False
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        self.out = self.out[n:]

    def receive(self) -> None:
        """Read what has arrived and parse it; ``done`` once ``END`` came (raises OSError, _NodeError: anything
        but ``VALUE`` blocks, each a well-formed header and its value followed by CRLF, then ``END``)."""
        try:
            data = self.sock.recv(262144)
        except BlockingIOError:
            return
        if not data:
            raise _NodeError("connection closed by the server")
        self.buf += data
        buf, pos = self.buf, self.pos
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf.startswith(b"VALUE ", pos):
                head = bytes(buf[pos + 6 : eol]).split()  # key flags bytes [cas]
                if len(head) not in (3, 4) or not head[2].isdigit():
                    raise _NodeError(f"malformed VALUE line {bytes(buf[pos:eol])[:200]!r}")
                end = eol + 2 + int(head[2])
                if len(buf) < end + 2:
                    break  # the value is still arriving
                if buf[end : end + 2] != b"\r\n":
                    raise _NodeError(f"value of {head[0][:200]!r} is not followed by CRLF")
                self.values[head[0]] = bytes(buf[eol + 2 : end])
                pos = end + 2
            elif eol == pos + 3 and buf.startswith(b"END", pos):
                self.done = True
                pos = eol + 2
                break
            else:
                raise _NodeError(bytes(buf[pos:eol]).decode("ascii", "replace")[:200])
        self.pos = pos


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
        dead_after: int = 3,
        pool_size: int = 8,
        item_size_max: int | None = None,
        route: Callable[[bytes], bytes] = codec.route_token,
    ) -> None:
        addrs = [parse_server(s) for s in servers]
        self.ttl_s = ttl_s
        if dead_after < 1:
            raise ValueError(f"dead_after={dead_after}: a node is marked dead after at least 1 miss")
        self.dead_timeout_s = dead_timeout_s
        self.dead_after = dead_after
        self.pool_size = pool_size
        self.budget_s = connect_timeout_s + timeout_s
        self.write_budget_s = connect_timeout_s + write_timeout_s
        self._route = route
        self._item_size_max = item_size_max
        self._ring = HashRing([f"{h}:{p}" for h, p in addrs])
        self._node_of_token: dict[bytes, int] = {}
        self._placed: dict[tuple[str, bytes], tuple[int, bytes]] = {}  # see _place

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
                address=(h, p),
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
        return self._nodes[self._node_index(key)].name

    def _node_index(self, key: bytes) -> int:
        """Index of the node that holds ``key`` (remembered per entity: a fetch asks for several keys of each)."""
        token = self._route(key)
        i = self._node_of_token.get(token)
        if i is None:
            if len(self._node_of_token) >= _MEMO_SIZE:
                self._node_of_token.clear()
            i = self._node_of_token[token] = self._ring.node_for(token)
        return i

    def _place(self, dataset: str, key: bytes) -> tuple[int, bytes]:
        """(node index, memcached key) of ``key`` in ``dataset``, remembered (reads ask for the same keys again
        and again)."""
        at = self._placed.get((dataset, key))
        if at is None:
            if len(self._placed) >= _MEMO_SIZE:
                self._placed.clear()
            at = self._placed[(dataset, key)] = (self._node_index(key), self.memcached_key(dataset, key))
        return at

    def _group(self, dataset: str, keys: Sequence[bytes]) -> dict[int, dict[bytes, bytes]]:
        """Node index → {memcached key: key}."""
        groups: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for k in keys:
            i, mk = self._place(dataset, k)
            groups[i][mk] = k
        return groups

    # -- node calls with dead-node handling ----------------------------------------------------------------
    def _alive(self, node: _Node) -> bool:
        return time.monotonic() >= node.dead_until

    def _missed(self, node: _Node) -> None:
        """A call on ``node`` failed or came too late: after ``dead_after`` in a row, the node is dead for a
        while (a probe that misses again renews that at once, as the count is still past the limit)."""
        node.misses += 1
        if node.misses >= self.dead_after:
            node.dead_until = time.monotonic() + self.dead_timeout_s

    @staticmethod
    def _answered(node: _Node) -> None:
        node.misses = 0

    def _call(self, node: _Node, fn: Callable[[PooledClient], object], write: bool = False) -> object | None:
        """Run ``fn`` on ``node``; None if the node is dead or fails (a miss, see :meth:`_missed`)."""
        if not self._alive(node):
            return None
        try:
            result = fn(node.write_client if write else node.client)
        except MemcacheServerError as e:
            if "too large" in str(e):
                raise ValueTooLargeError(f"memcached {node.name} refused a value as too large: {e}") from e
            self._missed(node)
            return None
        except Exception:  # socket errors, timeouts, unexpected close: the node is unavailable
            self._missed(node)
            return None
        self._answered(node)
        return result

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
            # Not done: the call's budget is spent; report the node's keys unavailable. The worker counts a miss
            # itself if its socket times out (a late answer from a merely slow node does not).
            results[i] = fut.result() if fut.done() else None
        return results

    def _connect(self, node: _Node) -> tuple[socket.socket, bool]:
        """A connected socket to ``node`` from its pool, or a new one (``True``: its connect is under way)."""
        try:
            return node.idle.pop(), False
        except IndexError:
            pass
        sock = socket.socket(
            socket.AF_INET6 if ":" in node.address[0] else socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            err = sock.connect_ex(node.address)
        except OSError:
            sock.close()
            raise
        if err in (0, errno.EISCONN):
            return sock, False
        if err in (errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK):
            return sock, True
        sock.close()
        raise OSError(err, errno.errorcode.get(err, "connect failed"))

    def _read_nodes(self, groups: Mapping[int, Sequence[bytes]]) -> dict[int, dict[bytes, bytes] | None]:
        """One ``get`` per node (node index → memcached keys), in this thread: every request is sent before any
        answer is read, then the answers are read as they arrive until all came or the budget is spent.
        Node index → {memcached key: value found}, or None for a node that is dead, failed or too late."""
        results: dict[int, dict[bytes, bytes] | None] = {}
        reads: dict[int, _Read] = {}  # file descriptor → the node's read
        deadline = time.monotonic() + self.budget_s
        for i, mkeys in groups.items():
            node = self._nodes[i]
            if not self._alive(node):
                results[i] = None
                continue
            try:
                sock, connecting = self._connect(node)
            except OSError:
                self._missed(node)
                results[i] = None
                continue
            r = _Read(i, sock, _get_command(mkeys), connecting)
            if not connecting:
                try:
                    r.send()
                except OSError:
                    self._fail_read(r)
                    results[i] = None
                    continue
            reads[sock.fileno()] = r
        poller = select.poll() if reads else None
        for fd, r in reads.items():
            assert poller is not None
            poller.register(fd, select.POLLOUT if r.out else select.POLLIN)
        while reads:
            assert poller is not None
            left = deadline - time.monotonic()
            if left <= 0:
                break
            for fd, event in poller.poll(left * 1000.0):
                r = reads[fd]
                try:
                    if r.out:
                        r.send()
                        if not r.out:
                            poller.modify(fd, select.POLLIN)
                    elif event & (select.POLLIN | select.POLLERR | select.POLLHUP):
                        r.receive()
                except (OSError, ValueError, IndexError, _NodeError):
                    poller.unregister(fd)
                    del reads[fd]
                    self._fail_read(r)
                    results[r.i] = None
                    continue
                if r.done:
                    poller.unregister(fd)
                    del reads[fd]
                    node = self._nodes[r.i]
                    self._answered(node)
                    results[r.i] = r.values
                    if r.pos == len(r.buf) and len(node.idle) < self.pool_size and not self._closed:
                        node.idle.append(r.sock)
                    else:
                        r.sock.close()
        for r in reads.values():  # the budget is spent: these nodes are too slow this time
            self._fail_read(r)
            results[r.i] = None
        return results

    def _fail_read(self, r: _Read) -> None:
        r.sock.close()  # its answer (if any comes) belongs to no later request
        self._missed(self._nodes[r.i])

    # -- the interface -------------------------------------------------------------------------------------
    def multi_get_report(self, dataset: str, keys: Sequence[bytes]) -> GetResult:
        """Like ``multi_get``, and also which keys sat on unavailable nodes."""
        self._check_open()
        check_name("dataset", dataset)
        check_keys(keys)
        groups = self._group(dataset, keys)
        values: dict[bytes, bytes] = {}
        unavailable: set[bytes] = set()
        for i, got in self._read_nodes({i: list(g) for i, g in groups.items()}).items():
            g = groups[i]
            if got is None:
                unavailable.update(g.values())
                continue
            for mk, blob in got.items():
                k = g.get(mk)
                if k is not None:
                    values[k] = codec.unseal(blob, key=k)
        return GetResult(values, frozenset(unavailable))

    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.multi_get_report(dataset, keys).values

    def multi_get_many(
        self, requests: Mapping[str, Sequence[bytes]]
    ) -> tuple[dict[str, dict[bytes, bytes]], dict[str, frozenset[bytes]]]:
        """Several datasets in one ``get`` per node touched (all nodes asked at once).

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
                i, mk = self._place(dataset, k)
                groups[i][mk] = (dataset, k)
        values: dict[str, dict[bytes, bytes]] = {dataset: {} for dataset in requests}
        unavailable: dict[str, set[bytes]] = defaultdict(set)
        for i, got in self._read_nodes({i: list(g) for i, g in groups.items()}).items():
            g = groups[i]
            if got is None:
                for dataset, k in g.values():
                    unavailable[dataset].add(k)
                continue
            for mk, blob in got.items():
                entry = g.get(mk)
                if entry is not None:
                    dataset, k = entry
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
            while node.idle:
                node.idle.pop().close()
