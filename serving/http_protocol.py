"""uvicorn's HTTP/1.1 protocol with ``TCP_NODELAY`` on every accepted connection.

With ``--workers N`` uvicorn binds the listening socket itself as ``socket.socket(family=AF_INET)`` (protocol
number 0), and asyncio sets ``TCP_NODELAY`` only on sockets whose protocol is ``IPPROTO_TCP``, so every
connection of a multi-worker server kept Nagle's algorithm on. A response written as headers, then body, then
waited for the client's delayed ACK: ~40 ms added to every answer (p50 45 ms at any rate, against 3 ms with one
worker). Setting the option per connection fixes both modes and costs one system call per connection.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def _nodelay(transport: asyncio.Transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayH11Protocol(H11Protocol):
    """:class:`H11Protocol` (pure Python) that turns Nagle's algorithm off on its connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        _nodelay(transport)
        super().connection_made(transport)


try:  # httptools' C parser (``uvicorn[standard]``): less CPU per request than h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - without httptools
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

if HttpToolsProtocol is not None:

    class NoDelayHttpToolsProtocol(HttpToolsProtocol):
        """:class:`HttpToolsProtocol` that turns Nagle's algorithm off on its connection."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            _nodelay(transport)
            super().connection_made(transport)


def http_protocol() -> type[Any]:
    """The protocol class ``tessera serve`` runs (module level, so ``--workers`` can pickle it): httptools'
    parser when installed, else h11; Nagle off either way."""
    return NoDelayHttpToolsProtocol if HttpToolsProtocol is not None else NoDelayH11Protocol
