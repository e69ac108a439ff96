"""kvstore: versioned bytes under bytes keys, in a write-once bulk store and a write-many stream store.

* :mod:`kvstore.base` — the ``KVStore`` interface and its contracts; :mod:`kvstore.errors` — what it raises.
* :mod:`kvstore.embedded` — the default bulk store (LMDB file per version, atomic pointer switch).
* :mod:`kvstore.postgres` — the distributed bulk option (table per version, view switch).
* :mod:`kvstore.memcached` — the stream store (memcached cluster, placed by entity).
* :mod:`kvstore.dual` — the router from dataset names to stores.
* :mod:`kvstore.codec` — value envelope and key layout; :mod:`kvstore.ring` — consistent hashing.
* :mod:`kvstore.services` — start/stop the servers on loopback for tests, benchmarks and ``make``.

kvstore knows nothing of features or engines: it stores bytes.
"""
