"""Readers in other processes, reading while versions are published back and forth, never see a mix."""

from __future__ import annotations

import json
import time

import pytest
from kv_helpers import new_name, tagged
from kv_worker import keys
from test_kv_crash import spawn, worker_spec

from kvstore.base import KVStore

pytestmark = pytest.mark.services  # real servers on 127.0.0.1

N = 400
READ_SECONDS = 2.5


def test_readers_in_other_processes_never_see_a_mix_of_versions(bulk: KVStore) -> None:
    dataset = new_name("flip")
    ks = keys(N)
    for v in ("A", "B"):
        bulk.bulk_upload(dataset, v, sorted(tagged(ks, v.encode()).items()))
    bulk.publish(dataset, "A")

    readers = [spawn(worker_spec(bulk), "read", dataset, str(N), str(READ_SECONDS)) for _ in range(2)]
    for r in readers:
        assert r.stdout is not None and r.stdout.readline().strip() == "READY"
    publishes = 0
    end = time.monotonic() + READ_SECONDS - 0.3
    while time.monotonic() < end:
        bulk.publish(dataset, "B" if publishes % 2 == 0 else "A")
        publishes += 1
        time.sleep(0.005)

    results = []
    for r in readers:
        out, err = r.communicate(timeout=30)
        assert r.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert publishes > 20
    for res in results:
        assert res["calls"] > 20, res
        assert res["mixed"] == 0, f"a read mixed versions: {res}"
        assert res["missing"] == 0, f"a read missed keys: {res}"
    assert any(res["seen"] == ["A", "B"] for res in results), f"no reader saw a switch: {results}"
    assert bulk.versions(dataset) == ["A", "B"], "versions in use must survive publishing back and forth"
