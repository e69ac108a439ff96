"""The KVStore contract, run unchanged over every backend (``store`` is parametrized in conftest.py).

Data goes in through ``load`` (upload + publish for bulk stores, multi_put for stream stores); every read check
is the same for all. Operations a backend refuses must raise UnsupportedOperationError, per its capabilities.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kv_helpers import load, new_name, tagged

from kvstore.base import Capability, KVStore
from kvstore.codec import make_key
from kvstore.errors import (
    InvalidKeyError,
    InvalidNameError,
    KVStoreError,
    NotPublishedError,
    UnsortedInputError,
    UnsupportedOperationError,
    VersionExistsError,
    VersionNotFoundError,
)

pytestmark = pytest.mark.services  # real servers on 127.0.0.1

KEYS = [make_key("conformance", "plan1", f"card-{i}".encode(), b"d1") for i in range(200)]

ODD_KEYS = {
    b"\x00": b"nul key",
    b"a b\r\nc": b"whitespace key",
    b"\xff" * 200: b"long binary key",
    bytes(range(1, 256)): b"every byte",
    "é".encode(): b"",
    b"k-empty-value": b"",
    b"k-binary-value": bytes(range(256)) * 4,
}


def versions_supported(store: KVStore) -> bool:
    return Capability.VERSIONS in store.capabilities


def test_round_trip_returns_exactly_the_bytes_written(store: KVStore, dataset: str) -> None:
    items = tagged(KEYS, b"v1")
    load(store, dataset, items)
    assert store.multi_get(dataset, KEYS) == items


def test_missing_keys_are_absent_not_none(store: KVStore, dataset: str) -> None:
    load(store, dataset, tagged(KEYS[:10], b"v1"))
    missing = [make_key("conformance", "plan1", b"nobody")]
    got = store.multi_get(dataset, KEYS[5:15] + missing)
    assert got == tagged(KEYS[5:10], b"v1")


def test_empty_request_returns_empty(store: KVStore, dataset: str) -> None:
    load(store, dataset, tagged(KEYS[:3], b"v1"))
    assert store.multi_get(dataset, []) == {}


def test_duplicate_keys_in_a_request(store: KVStore, dataset: str) -> None:
    load(store, dataset, tagged(KEYS[:3], b"v1"))
    assert store.multi_get(dataset, [KEYS[0], KEYS[0], KEYS[1]]) == tagged(KEYS[:2], b"v1")


def test_binary_safe_keys_and_values(store: KVStore, dataset: str) -> None:
    load(store, dataset, ODD_KEYS)
    assert store.multi_get(dataset, list(ODD_KEYS)) == ODD_KEYS


def test_datasets_are_independent(store: KVStore) -> None:
    a, b = new_name("a"), new_name("b")
    load(store, a, tagged(KEYS[:5], b"A"))
    load(store, b, tagged(KEYS[3:8], b"B"))
    assert store.multi_get(a, KEYS[:8]) == tagged(KEYS[:5], b"A")
    assert store.multi_get(b, KEYS[:8]) == tagged(KEYS[3:8], b"B")


@pytest.mark.parametrize("bad", ["", "a/b", "../x", ".hidden", "x" * 101, "sp ace"])
def test_invalid_dataset_names_are_refused(store: KVStore, bad: str) -> None:
    with pytest.raises(InvalidNameError):
        store.multi_get(bad, KEYS[:1])


@pytest.mark.parametrize("bad", [b"", "text-key", None])
def test_invalid_keys_are_refused(store: KVStore, dataset: str, bad: object) -> None:
    load(store, dataset, tagged(KEYS[:1], b"v1"))
    with pytest.raises(InvalidKeyError):
        store.multi_get(dataset, [KEYS[0], bad])  # type: ignore[list-item]


def test_refused_operations_say_so(store: KVStore, dataset: str) -> None:
    if versions_supported(store):
        with pytest.raises(UnsupportedOperationError):
            store.multi_put(dataset, tagged(KEYS[:1], b"v1"))
    else:
        with pytest.raises(UnsupportedOperationError):
            store.bulk_upload(dataset, "v1", [])
        with pytest.raises(UnsupportedOperationError):
            store.publish(dataset, "v1")
        with pytest.raises(UnsupportedOperationError):
            store.versions(dataset)


def test_a_new_write_replaces_the_old_value(store: KVStore, dataset: str) -> None:
    load(store, dataset, tagged(KEYS[:10], b"old"))
    load(store, dataset, tagged(KEYS[:10], b"new"))
    assert store.multi_get(dataset, KEYS[:10]) == tagged(KEYS[:10], b"new")


def test_close_is_idempotent_and_final(store: KVStore, dataset: str) -> None:
    store.close()
    store.close()
    with pytest.raises(KVStoreError):
        store.multi_get(dataset, KEYS[:1])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    items=st.dictionaries(st.binary(min_size=1, max_size=40), st.binary(max_size=300), max_size=40),
    probes=st.lists(st.binary(min_size=1, max_size=40), max_size=10),
)
def test_property_reads_return_what_was_loaded(
    store: KVStore, items: dict[bytes, bytes], probes: list[bytes]
) -> None:
    dataset = new_name("prop")
    load(store, dataset, items)
    asked = list(items) + probes
    assert store.multi_get(dataset, asked) == {k: items[k] for k in asked if k in items}


# -- versions: run over the bulk backends (``bulk`` fixture); stream stores refuse them, checked above ---------
def test_read_before_any_publish_raises(bulk: KVStore, dataset: str) -> None:
    with pytest.raises(NotPublishedError):
        bulk.multi_get(dataset, KEYS[:1])
    bulk.bulk_upload(dataset, "v1", sorted(tagged(KEYS[:3], b"v1").items()))
    with pytest.raises(NotPublishedError):  # uploaded is not published
        bulk.multi_get(dataset, KEYS[:1])
    assert bulk.current_version(dataset) is None


def test_a_version_replaces_the_whole_dataset(bulk: KVStore, dataset: str) -> None:
    load(bulk, dataset, tagged(KEYS[:10], b"v1"), version="v1")
    load(bulk, dataset, tagged(KEYS[5:15], b"v2"), version="v2")
    assert bulk.multi_get(dataset, KEYS[:20]) == tagged(KEYS[5:15], b"v2")
    assert bulk.current_version(dataset) == "v2"
    assert bulk.versions(dataset) == ["v1", "v2"]


def test_rollback_to_a_kept_version(bulk: KVStore, dataset: str) -> None:
    load(bulk, dataset, tagged(KEYS[:10], b"v1"), version="v1")
    load(bulk, dataset, tagged(KEYS[:10], b"v2"), version="v2")
    bulk.publish(dataset, "v1")
    assert bulk.multi_get(dataset, KEYS[:10]) == tagged(KEYS[:10], b"v1")


def test_versions_are_write_once(bulk: KVStore, dataset: str) -> None:
    load(bulk, dataset, tagged(KEYS[:3], b"v1"), version="v1")
    with pytest.raises(VersionExistsError):
        bulk.bulk_upload(dataset, "v1", sorted(tagged(KEYS[:3], b"again").items()))
    assert bulk.multi_get(dataset, KEYS[:3]) == tagged(KEYS[:3], b"v1")


def test_publish_of_an_unknown_version_raises(bulk: KVStore, dataset: str) -> None:
    load(bulk, dataset, tagged(KEYS[:3], b"v1"), version="v1")
    with pytest.raises(VersionNotFoundError):
        bulk.publish(dataset, "v9")
    assert bulk.current_version(dataset) == "v1"


@pytest.mark.parametrize("order", ["unsorted", "duplicate"])
def test_unsorted_upload_is_refused_and_leaves_nothing(bulk: KVStore, dataset: str, order: str) -> None:
    load(bulk, dataset, tagged(KEYS[:3], b"v1"), version="v1")
    bad = [(KEYS[1], b"x"), (KEYS[0], b"y")] if order == "unsorted" else [(KEYS[0], b"x"), (KEYS[0], b"y")]
    with pytest.raises(UnsortedInputError):
        bulk.bulk_upload(dataset, "v2", bad)
    assert bulk.versions(dataset) == ["v1"]
    assert bulk.multi_get(dataset, KEYS[:3]) == tagged(KEYS[:3], b"v1")
    bulk.bulk_upload(dataset, "v2", sorted(tagged(KEYS[:3], b"v2").items()))  # the name is still free


def test_empty_version(bulk: KVStore, dataset: str) -> None:
    assert bulk.bulk_upload(dataset, "v1", []) == 0
    bulk.publish(dataset, "v1")
    assert bulk.multi_get(dataset, KEYS[:3]) == {}


def test_upload_counts_keys(bulk: KVStore, dataset: str) -> None:
    assert bulk.bulk_upload(dataset, "v1", sorted(tagged(KEYS, b"v1").items())) == len(KEYS)
