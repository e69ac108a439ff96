"""Consistent hashing: place a routing token on one of N nodes, moving ~1/N of tokens when a node is added.

Each node owns ``vnodes`` points on a 64-bit ring (BLAKE2b of ``"name#i"``); a token belongs to the first point
clockwise from its own hash. Membership is fixed for the lifetime of a ring: a dead node is *not* removed, its
tokens read as unavailable instead. Remapping would send writes to another node during the outage and serve
those stale copies' absence — or the revived node's stale copies — afterwards, which is worse for feature
correctness than a visible miss.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence


def _h64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """A consistent-hash ring over ``names`` (e.g. ``"127.0.0.1:11211"``).

    >>> ring = HashRing(["a", "b", "c"])
    >>> ring.node_for(b"card-1") == ring.node_for(b"card-1")
    True
    """

    def __init__(self, names: Sequence[str], vnodes: int = 160) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"a ring needs one or more distinct node names, got {list(names)!r}")
        points = sorted(
            (_h64(f"{name}#{i}".encode()), idx) for idx, name in enumerate(names) for i in range(vnodes)
        )
        self.names = list(names)
        self._hashes = [h for h, _ in points]
        self._owners = [idx for _, idx in points]

    def node_for(self, token: bytes) -> int:
        """Index in ``names`` of the node that owns ``token``."""
        i = bisect.bisect(self._hashes, _h64(token))
        return self._owners[i if i < len(self._owners) else 0]
