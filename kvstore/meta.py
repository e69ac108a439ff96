"""The metadata record heading every version of a bulk dataset: what a reader needs beyond the entity values.

A batch upload writes it as the first key of each version (the empty entity sorts before every real one); the
fetcher reads it once per published version, so it knows the version's batch boundary even for entities that have
no value in it. The payload is a small JSON object (``boundary_ms``, ``validity_ms``, ``date``...).
"""

from __future__ import annotations

import json
from typing import Any

from kvstore.codec import KeyLayout

META_SUFFIX = b"__tessera_meta"
META_FORMAT = 1


def meta_key(dataset: str, plan_hash: str) -> bytes:
    """The key of ``dataset``'s metadata record under ``plan_hash`` (sorts before every entity key).

    >>> meta_key("a", "1") < KeyLayout("a", "1").key(b"\\x00")
    True
    """
    return KeyLayout(dataset, plan_hash).key(b"", META_SUFFIX)


def encode_meta(fields: dict[str, Any]) -> bytes:
    return json.dumps({"format": META_FORMAT, **fields}, sort_keys=True).encode()


def decode_meta(data: bytes) -> dict[str, Any]:
    meta = json.loads(data)
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"dataset metadata format {got!r} is not {META_FORMAT}; re-upload with this tessera")
    return meta
