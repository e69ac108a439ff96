"""Pure parts: the value envelope, the key layout, the hash ring, memcached expiry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore import codec
from kvstore.errors import CorruptValueError, InvalidKeyError
from kvstore.memcached import memcached_expire
from kvstore.ring import HashRing


@given(st.binary(max_size=2000))
def test_envelope_round_trips(payload: bytes) -> None:
    assert codec.unseal(codec.seal(payload)) == payload


@pytest.mark.parametrize(
    "blob",
    [b"", b"\x01abc", b"\x02" + codec.seal(b"x")[1:], codec.seal(b"hello")[:-1], codec.seal(b"hello") + b"!"],
    ids=["empty", "short", "future-format", "truncated", "extended"],
)
def test_envelope_rejects_corrupt_values(blob: bytes) -> None:
    with pytest.raises(CorruptValueError):
        codec.unseal(blob, key=b"k")


@given(st.text(min_size=1, max_size=20), st.binary(max_size=100), st.binary(max_size=20))
def test_key_layout_round_trips(plan_hash: str, entity: bytes, suffix: bytes) -> None:
    key = codec.make_key("card_velocity", plan_hash, entity, suffix)
    parts = codec.split_key(key)
    assert (parts.entity, parts.suffix) == (entity, suffix)
    assert codec.route_token(key) == entity


def test_a_new_plan_hash_gives_new_keys_and_datasets_never_collide() -> None:
    assert codec.make_key("d", "plan1", b"e") != codec.make_key("d", "plan2", b"e")
    assert codec.make_key("d1", "p", b"e") != codec.make_key("d2", "p", b"e")
    # the separator keeps ("ab", "c") apart from ("a", "bc")
    assert codec.namespace("ab", "c") != codec.namespace("a", "bc")


def test_keys_of_one_entity_sort_together() -> None:
    layout = codec.KeyLayout("d", "p")
    keys = sorted(layout.key(e, s) for e in (b"b", b"a", b"ab") for s in (b"2", b"1"))
    entities = [codec.split_key(k).entity for k in keys]
    # contiguous runs: each entity appears in exactly one run (the length prefix orders short entities first)
    runs = [e for i, e in enumerate(entities) if i == 0 or entities[i - 1] != e]
    assert sorted(runs) == sorted(set(entities))


def test_entity_encoding_is_unambiguous() -> None:
    enc = codec.encode_entity
    assert enc(["a", "bc"]) != enc(["ab", "c"])
    assert enc([1]) != enc(["1"]) != enc([b"1"])
    assert enc([None, 1]) != enc([1, None])
    with pytest.raises(InvalidKeyError):
        enc([1.5])  # type: ignore[list-item]
    with pytest.raises(InvalidKeyError):
        codec.split_key(b"\x02garbage")


def test_ring_moves_few_tokens_when_a_node_is_added() -> None:
    before = HashRing(["a", "b", "c"])
    after = HashRing(["a", "b", "c", "d"])
    tokens = [b"card-%d" % i for i in range(5000)]
    moved = sum(before.names[before.node_for(t)] != after.names[after.node_for(t)] for t in tokens)
    assert moved / len(tokens) < 0.35  # ideal 1/4
    shares = [sum(before.node_for(t) == i for t in tokens) / len(tokens) for i in range(3)]
    assert all(0.25 < s < 0.42 for s in shares), shares


def test_memcached_expire() -> None:
    assert memcached_expire(0) == 0
    assert memcached_expire(30 * 86400) == 30 * 86400
    assert memcached_expire(30 * 86400 + 1, now=1000.0) == 1000 + 30 * 86400 + 1


# ---- the memcached read path's parser (kvstore.memcached._Read) over a socket pair -------------------------


def _read_answer(chunks: list[bytes]) -> dict[bytes, bytes]:
    """Feed ``chunks`` (one send each) to a node read, as a node's answer; its values once ``END`` came."""
    import socket

    from kvstore.memcached import _Read

    ours, node = socket.socketpair()
    try:
        ours.setblocking(False)
        r = _Read(0, ours, b"", False)
        for chunk in chunks:
            node.sendall(chunk)
            while not r.done:
                before = len(r.buf)
                r.receive()
                if len(r.buf) == before or r.pos == len(r.buf):
                    break  # this chunk is used up: the next one
        assert r.done, "END never parsed"
        return r.values
    finally:
        ours.close()
        node.close()


def test_node_answers_are_parsed_across_any_split() -> None:
    answer = b"VALUE a 0 3\r\nabc\r\nVALUE b 0 4 17\r\n\r\nxy\r\nEND\r\n"
    want = {b"a": b"abc", b"b": b"\r\nxy"}
    assert _read_answer([answer]) == want
    for cut in range(1, len(answer)):
        assert _read_answer([answer[:cut], answer[cut:]]) == want
    assert _read_answer([b"END\r\n"]) == {}


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "answer",
    [
        b"VALUE a 0 -17\r\nabc\r\nEND\r\n",  # this negative length once sent the parser back to the line start, forever
        b"VALUE a 0 3x\r\nabc\r\nEND\r\n",
        b"VALUE a 0\r\nabc\r\nEND\r\n",
        b"VALUE a 0 3\r\nabcXYEND\r\n",  # the value is not followed by CRLF
        b"SERVER_ERROR out of memory storing object\r\n",
        b"ERROR\r\n",
        b"garbage\r\n",
    ],
)
def test_a_malformed_node_answer_is_a_node_error(answer: bytes) -> None:
    from kvstore.memcached import _NodeError

    with pytest.raises(_NodeError):
        _read_answer([answer])


def test_a_connection_closed_mid_answer_is_a_node_error() -> None:
    import socket

    from kvstore.memcached import _NodeError, _Read

    ours, node = socket.socketpair()
    node.sendall(b"VALUE a 0 3\r\nab")
    node.close()
    r = _Read(0, ours, b"", False)
    with pytest.raises(_NodeError, match="closed"):
        for _ in range(3):
            r.receive()
    ours.close()
