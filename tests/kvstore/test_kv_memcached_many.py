"""``MemcachedStore.multi_get_many``: several datasets in one ``get`` per node, unavailable keys per dataset."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from kv_helpers import new_name, tagged

import kvstore.memcached as memcached_mod
from kvstore.codec import encode_entity, make_key
from kvstore.memcached import MemcachedStore
from kvstore.services import Service

pytestmark = pytest.mark.services  # real servers on 127.0.0.1


@pytest.fixture
def mc(memcached_cluster: list[Service]) -> Iterator[MemcachedStore]:
    store = MemcachedStore([n.address for n in memcached_cluster])
    yield store
    store.close()


def _keys(dataset: str, entities: range) -> list[bytes]:
    return [
        make_key(dataset, "plan", encode_entity([f"card-{e}"]), p) for e in entities for p in (b"1", b"2")
    ]


@pytest.fixture
def get_many_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[bytes]]:
    """Records the memcached keys of every ``get`` request the store sends."""
    calls: list[list[bytes]] = []
    original = memcached_mod._get_command

    def counting(mkeys: Sequence[bytes]) -> bytes:
        calls.append(list(mkeys))
        return original(mkeys)

    monkeypatch.setattr(memcached_mod, "_get_command", counting)
    return calls


def test_values_match_per_dataset_multi_get(mc: MemcachedStore) -> None:
    datasets = [new_name(f"tiles{i}") for i in range(4)]
    requests: dict[str, list[bytes]] = {}
    for ds in datasets:
        ks = _keys(ds, range(30))
        mc.multi_put(ds, tagged(ks[: len(ks) // 2], ds.encode()))  # half the keys exist
        requests[ds] = ks
    requests[new_name("empty")] = []
    values, unavailable = mc.multi_get_many(requests)
    assert unavailable == {}
    assert set(values) == set(requests)
    for ds, ks in requests.items():
        assert values[ds] == mc.multi_get(ds, ks)
    assert values[datasets[0]] == tagged(requests[datasets[0]][:30], datasets[0].encode())


def test_same_key_in_two_datasets_keeps_each_value(mc: MemcachedStore) -> None:
    a, b = new_name("a"), new_name("b")
    k = make_key("t", "plan", encode_entity(["card-1"]), b"1")
    mc.multi_put(a, {k: b"from-a"})
    mc.multi_put(b, {k: b"from-b"})
    values, _ = mc.multi_get_many({a: [k], b: [k]})
    assert values == {a: {k: b"from-a"}, b: {k: b"from-b"}}


def test_one_entity_across_six_datasets_is_one_round_trip(
    mc: MemcachedStore, get_many_calls: list[list[bytes]]
) -> None:
    datasets = [new_name(f"gb{i}") for i in range(6)]
    requests = {ds: _keys(ds, range(7, 8)) for ds in datasets}
    for ds, ks in requests.items():
        mc.multi_put(ds, tagged(ks, b"v"))
    get_many_calls.clear()
    values, unavailable = mc.multi_get_many(requests)
    assert len(get_many_calls) == 1 and len(get_many_calls[0]) == 12
    assert unavailable == {} and all(values[ds] == tagged(ks, b"v") for ds, ks in requests.items())
    # Many entities over 3 nodes: at most one call per node, whatever the number of datasets.
    get_many_calls.clear()
    mc.multi_get_many({ds: _keys(ds, range(100)) for ds in datasets})
    assert len(get_many_calls) <= 3


def test_keys_of_a_dead_node_are_reported_per_dataset(fresh_memcached_cluster: list[Service]) -> None:
    nodes = fresh_memcached_cluster
    store = MemcachedStore([n.address for n in nodes], connect_timeout_s=0.1, timeout_s=0.1)
    datasets = [new_name(f"tiles{i}") for i in range(3)]
    requests = {ds: _keys(ds, range(40)) for ds in datasets}
    for ds, ks in requests.items():
        store.multi_put(ds, tagged(ks, ds.encode()))
    nodes[1].kill()
    values, unavailable = store.multi_get_many(requests)
    for ds, ks in requests.items():
        on_dead = {k for k in ks if store.node_of(k) == nodes[1].address}
        assert on_dead, "the dead node should hold some of the keys"
        assert unavailable[ds] == on_dead
        assert values[ds] == tagged([k for k in ks if k not in on_dead], ds.encode())
    store.close()


def test_closed_store_and_bad_names_raise(mc: MemcachedStore, memcached_cluster: list[Service]) -> None:
    with pytest.raises(ValueError):
        mc.multi_get_many({"bad name!": [b"k"]})
    other = MemcachedStore([n.address for n in memcached_cluster])
    other.close()
    with pytest.raises(Exception, match="closed"):
        other.multi_get_many({"ok": [b"k"]})
