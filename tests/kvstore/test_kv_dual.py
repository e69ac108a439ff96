"""The router sends each dataset to the store the plan names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kv_helpers import tagged

from kvstore.codec import make_key
from kvstore.dual import DualStore
from kvstore.embedded import EmbeddedBulkStore
from kvstore.errors import UnknownDatasetError, UnsupportedOperationError
from kvstore.memcached import MemcachedStore
from kvstore.services import Service

pytestmark = pytest.mark.services  # real servers on 127.0.0.1

KEYS = [make_key("d", "p", b"e%d" % i) for i in range(10)]


@pytest.fixture
def dual(tmp_path: Path, memcached_cluster: list[Service]) -> Iterator[DualStore]:
    store = DualStore(
        EmbeddedBulkStore(tmp_path),
        MemcachedStore([n.address for n in memcached_cluster]),
        {"cv_batch": "bulk", "cv_tiles": "stream"},
    )
    yield store
    store.close()


def test_routes_each_dataset_to_its_store(dual: DualStore) -> None:
    dual.bulk_upload("cv_batch", "v1", sorted(tagged(KEYS, b"batch").items()))
    dual.publish("cv_batch", "v1")
    dual.multi_put("cv_tiles", tagged(KEYS[:5], b"tile"))
    got = dual.multi_get_many({"cv_batch": KEYS, "cv_tiles": KEYS})
    assert got == {"cv_batch": tagged(KEYS, b"batch"), "cv_tiles": tagged(KEYS[:5], b"tile")}
    assert dual.bulk.multi_get("cv_batch", KEYS) == tagged(KEYS, b"batch")
    assert dual.stream.multi_get("cv_tiles", KEYS) == tagged(KEYS[:5], b"tile")
    assert dual.versions("cv_batch") == ["v1"]


def test_wrong_operations_and_unknown_datasets_are_refused(dual: DualStore) -> None:
    with pytest.raises(UnsupportedOperationError):
        dual.multi_put("cv_batch", tagged(KEYS, b"x"))
    with pytest.raises(UnsupportedOperationError):
        dual.publish("cv_tiles", "v1")
    with pytest.raises(UnknownDatasetError, match="cv_batch"):
        dual.multi_get("other", KEYS)


def test_routes_are_checked(tmp_path: Path, memcached_cluster: list[Service]) -> None:
    bulk, stream = EmbeddedBulkStore(tmp_path), MemcachedStore([n.address for n in memcached_cluster])
    with pytest.raises(ValueError, match="route"):
        DualStore(bulk, stream, {"x": "tiles"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="versions"):
        DualStore(stream, stream, {})
    stream.close()
