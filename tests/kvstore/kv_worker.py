"""A separate process for the crash and concurrency tests: ``python kv_worker.py STORE-JSON COMMAND ...``.

STORE-JSON is ``{"backend": "embedded", "root": ...}`` or ``{"backend": "postgres", "dsn": ...}``.

* ``upload DATASET VERSION N HALF``: bulk-upload N keys tagged with VERSION; after HALF keys print ``HALF``
  and then stall forever (the parent kills it with SIGKILL).
* ``read DATASET N SECONDS``: multi-get all N keys in a loop for SECONDS; print one JSON line with the number of
  calls, of calls that mixed versions or missed keys, and the set of versions seen.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator

from kvstore.base import KVStore
from kvstore.codec import make_key
from kvstore.embedded import EmbeddedBulkStore


def keys(n: int) -> list[bytes]:
    return sorted(make_key("worker", "plan", f"entity-{i:06d}".encode()) for i in range(n))


def open_store(spec: dict[str, str]) -> KVStore:
    if spec["backend"] == "embedded":
        return EmbeddedBulkStore(spec["root"], chunk_keys=100)
    from kvstore.postgres import PostgresBulkStore

    return PostgresBulkStore(spec["dsn"])


def stalling_items(version: str, n: int, half: int) -> Iterator[tuple[bytes, bytes]]:
    for i, k in enumerate(keys(n)):
        if i == half:
            print("HALF", flush=True)
            time.sleep(3600)
        yield k, version.encode() + b"|" + k


def main(argv: list[str]) -> None:
    store = open_store(json.loads(argv[0]))
    cmd, dataset = argv[1], argv[2]
    if cmd == "upload":
        version, n, half = argv[3], int(argv[4]), int(argv[5])
        store.bulk_upload(dataset, version, stalling_items(version, n, half))
        return
    n, seconds = int(argv[3]), float(argv[4])
    ks = keys(n)
    calls = mixed = missing = 0
    seen: set[str] = set()
    print("READY", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        got = store.multi_get(dataset, ks)
        calls += 1
        tags = {v.split(b"|", 1)[0].decode() for v in got.values()}
        seen |= tags
        mixed += len(tags) > 1
        missing += len(got) != n
    print(json.dumps({"calls": calls, "mixed": mixed, "missing": missing, "seen": sorted(seen)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
