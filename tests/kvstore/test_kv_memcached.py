"""memcached store specifics: placement by entity, size limit, TTL, key mapping."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kv_helpers import new_name, tagged

from kvstore.codec import encode_entity, make_key
from kvstore.errors import ValueTooLargeError
from kvstore.memcached import ITEM_OVERHEAD_BYTES, MemcachedStore
from kvstore.services import Service

pytestmark = pytest.mark.services  # real servers on 127.0.0.1


@pytest.fixture
def mc(memcached_cluster: list[Service]) -> Iterator[MemcachedStore]:
    store = MemcachedStore([n.address for n in memcached_cluster])
    yield store
    store.close()


def test_all_keys_of_an_entity_share_a_node_and_entities_spread(mc: MemcachedStore) -> None:
    placements = {}
    for e in range(200):
        entity = encode_entity([f"card-{e}"])
        nodes = {
            mc.node_of(make_key(ds, "plan", entity, day)) for ds in ("a", "b") for day in (b"1", b"2", b"3")
        }
        assert len(nodes) == 1
        placements[e] = nodes.pop()
    counts = [list(placements.values()).count(n) for n in set(placements.values())]
    assert len(counts) == 3 and min(counts) > 30, counts


def test_a_value_over_the_item_size_is_refused_whole_and_nothing_written(mc: MemcachedStore) -> None:
    dataset = new_name("big")
    small, big = make_key("t", "p", b"small"), make_key("t", "p", b"big")
    limit = mc.item_size_max()
    with pytest.raises(ValueTooLargeError, match="item_size_max"):
        mc.multi_put(dataset, {small: b"ok", big: b"x" * limit})
    assert mc.multi_get(dataset, [small, big]) == {}


def test_the_largest_accepted_value_round_trips_untruncated(mc: MemcachedStore) -> None:
    dataset = new_name("big")
    key = make_key("t", "p", b"edge")
    fits = mc.item_size_max() - ITEM_OVERHEAD_BYTES - len(mc.memcached_key(dataset, key)) - 5
    value = bytes(range(256)) * (fits // 256) + b"\x07" * (fits % 256)
    mc.multi_put(dataset, {key: value})
    assert mc.multi_get(dataset, [key]) == {key: value}
    with pytest.raises(ValueTooLargeError):
        mc.multi_put(dataset, {key: value + b"!"})


def test_long_keys_are_hashed_to_legal_memcached_keys(mc: MemcachedStore) -> None:
    dataset = new_name("long")
    ks = [b"k" * 300, b"k" * 301, bytes(range(256)) * 3]
    assert all(len(mc.memcached_key(dataset, k)) <= 250 for k in ks)
    mc.multi_put(dataset, tagged(ks, b"v"))
    assert mc.multi_get(dataset, ks) == tagged(ks, b"v")


def test_ttl_over_thirty_days_is_sent_as_an_absolute_time(memcached_cluster: list[Service]) -> None:
    # memcached reads an exptime over 30 days as a Unix time; sent as-is, 40 days would mean "expired in 1970".
    store = MemcachedStore([n.address for n in memcached_cluster], ttl_s=40 * 86400)
    dataset = new_name("ttl")
    ks = [make_key("t", "p", b"e%d" % i) for i in range(20)]
    store.multi_put(dataset, tagged(ks, b"v"))
    assert store.multi_get(dataset, ks) == tagged(ks, b"v")
    store.close()


def test_values_expire_after_their_ttl(memcached_cluster: list[Service]) -> None:
    store = MemcachedStore([n.address for n in memcached_cluster], ttl_s=1)
    dataset = new_name("ttl")
    ks = [make_key("t", "p", b"e%d" % i) for i in range(5)]
    store.multi_put(dataset, tagged(ks, b"v"))
    assert len(store.multi_get(dataset, ks)) == 5
    time.sleep(2.1)  # memcached's clock ticks once per second
    assert store.multi_get(dataset, ks) == {}
    store.close()
