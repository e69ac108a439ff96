"""Every connection the API accepts has Nagle's algorithm off, also on the socket uvicorn binds for
``--workers N`` (protocol number 0, which asyncio leaves alone): otherwise each answer waits ~40 ms for the
client's delayed ACK."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from serving.http_protocol import NoDelayH11Protocol, http_protocol


async def _app(scope: dict, receive: object, send: object) -> None:  # never called: no request is sent
    raise AssertionError("no request expected")


async def _nodelay_after_accept(protocol_class: type[H11Protocol]) -> int:
    listener = socket.socket(family=socket.AF_INET)  # as uvicorn's Config.bind_socket does for workers
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    conn, _ = listener.accept()
    try:
        config = uvicorn.Config(app=_app, log_level="warning")
        config.load()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={})
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: protocol, sock=conn)
        value = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.close()
        return value
    finally:
        client.close()
        listener.close()


@pytest.mark.parametrize(
    ("protocol_class", "nodelay"),
    [(H11Protocol, False), (NoDelayH11Protocol, True), (http_protocol(), True)],
)
def test_accepted_connections_have_nagle_off(protocol_class: type[H11Protocol], nodelay: bool) -> None:
    assert bool(asyncio.run(_nodelay_after_accept(protocol_class))) is nodelay
