"""JSON for the stream's per-event path: ``orjson`` where it is installed, with the standard library's meaning.

``orjson`` (a dependency of apache-beam, so always in the Flink environment) parses a payment in ~3 us against
~11 us for :func:`json.loads`. Where the two differ - ``NaN``/``Infinity`` tokens and numbers beyond the double
range (which ``orjson`` refuses) and integers beyond 64 bits (which it turns into floats), all of which the
standard library reads exactly - :func:`loads` uses :func:`json.loads`: on an ``orjson`` error, and whenever the
result is not a flat object or holds a float of magnitude >= 9.2e18 (where an integer beyond 64 bits would
show), and :func:`dumps` to :func:`json.dumps` for values ``orjson`` would change (non-finite
floats, which it writes as ``null``) or refuses. So what is accepted, and every value read back, is exactly what
the standard library gives; only the bytes of :func:`dumps` may differ (both round-trip every value).

>>> loads('{"a": 1, "b": NaN}')["a"], loads('[123456789012345678901234567890]'), dumps({"a": 1.5})
(1, [123456789012345678901234567890], b'{"a":1.5}')
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # (both of tessera's environments have it; without it, the standard library only)
    _orjson = None  # type: ignore[assignment]


def _std_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), allow_nan=True).encode()


if _orjson is not None:
    _fast_loads = _orjson.loads
    _fast_dumps = _orjson.dumps
    _FastError = _orjson.JSONDecodeError
    _FastEncodeError = _orjson.JSONEncodeError

    def loads(raw: str | bytes) -> Any:
        """:func:`json.loads` (same values, same errors), fast for a flat JSON object."""
        try:
            value = _fast_loads(raw)
        except _FastError:
            return json.loads(raw)  # what orjson refuses but the standard library reads (NaN, 1e400)
        if value.__class__ is not dict:
            return json.loads(raw)
        for v in value.values():
            c = v.__class__
            # An integer beyond 64 bits came back as a float of magnitude >= 2**63; nested values are not
            # looked into (events are flat): both take the standard library's reading.
            if (c is float and not -9.2e18 < v < 9.2e18) or c is dict or c is list:
                return json.loads(raw)
        return value

    def dumps(row: dict[str, Any]) -> bytes:
        """A flat mapping of JSON scalars as compact JSON bytes that :func:`loads` reads back unchanged."""
        for v in row.values():
            if v.__class__ is float and v - v != 0.0:  # inf or nan: orjson would write null
                return _std_dumps(row)
        try:
            return _fast_dumps(row)
        except _FastEncodeError:  # an int beyond 64 bits
            return _std_dumps(row)

else:

    def loads(raw: str | bytes) -> Any:
        """:func:`json.loads`."""
        return json.loads(raw)

    def dumps(row: dict[str, Any]) -> bytes:
        """A flat mapping of JSON scalars as compact JSON bytes that :func:`loads` reads back unchanged."""
        return _std_dumps(row)
