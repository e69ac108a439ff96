"""The router: one KVStore facade over a bulk (write-once) store and a stream (write-many) store.

The plan says which dataset is which (``{"card_velocity__batch": "bulk", "card_velocity__tiles": "stream"}``);
each call goes to the store of its dataset, so ``multi_put`` to a bulk dataset or ``publish`` of a stream dataset
fails with the store's own :class:`~kvstore.errors.UnsupportedOperationError`. A dataset missing from the mapping
raises :class:`~kvstore.errors.UnknownDatasetError` instead of silently reading nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, get_args

from kvstore.base import Capability, KVStore, check_name
from kvstore.errors import UnknownDatasetError

Route = Literal["bulk", "stream"]


class DualStore(KVStore):
    """Routes each dataset to ``bulk`` or ``stream`` by ``routes``; closing it closes both stores."""

    capabilities = Capability.PUT | Capability.VERSIONS

    def __init__(self, bulk: KVStore, stream: KVStore, routes: Mapping[str, Route]) -> None:
        if Capability.VERSIONS not in bulk.capabilities:
            raise ValueError(f"the bulk store must support versions; {bulk.name} does not")
        if Capability.PUT not in stream.capabilities:
            raise ValueError(f"the stream store must support multi_put; {stream.name} does not")
        for dataset, route in routes.items():
            check_name("dataset", dataset)
            if route not in get_args(Route):
                raise ValueError(f"dataset {dataset!r} has route {route!r}; use 'bulk' or 'stream'")
        self.bulk = bulk
        self.stream = stream
        self.routes: dict[str, Route] = dict(routes)

    @property
    def name(self) -> str:
        return f"dual({self.bulk.name}, {self.stream.name})"

    def store_for(self, dataset: str) -> KVStore:
        """The store that holds ``dataset``."""
        try:
            route = self.routes[dataset]
        except KeyError:
            raise UnknownDatasetError(
                f"dataset {dataset!r} has no route; known datasets: {sorted(self.routes)}. "
                "Regenerate the plan or add it to the routes mapping."
            ) from None
        return self.bulk if route == "bulk" else self.stream

    def multi_get(self, dataset: str, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        return self.store_for(dataset).multi_get(dataset, keys)

    def multi_get_many(self, requests: Mapping[str, Sequence[bytes]]) -> dict[str, dict[bytes, bytes]]:
        """One ``multi_get`` per dataset: ``{dataset: keys}`` → ``{dataset: {key: value}}``."""
        return {dataset: self.multi_get(dataset, keys) for dataset, keys in requests.items()}

    def multi_put(self, dataset: str, items: Mapping[bytes, bytes]) -> None:
        self.store_for(dataset).multi_put(dataset, items)

    def bulk_upload(self, dataset: str, version: str, items: Iterable[tuple[bytes, bytes]]) -> int:
        return self.store_for(dataset).bulk_upload(dataset, version, items)

    def publish(self, dataset: str, version: str) -> None:
        self.store_for(dataset).publish(dataset, version)

    def versions(self, dataset: str) -> list[str]:
        return self.store_for(dataset).versions(dataset)

    def current_version(self, dataset: str) -> str | None:
        return self.store_for(dataset).current_version(dataset)

    def close(self) -> None:
        self.bulk.close()
        self.stream.close()
