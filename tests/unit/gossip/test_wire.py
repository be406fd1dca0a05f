"""The codec and the sealed envelope: round trips, and hostile input raises only WireError."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossip import AuthError, DecodeError, Keyring, WireError, wire

names = st.text(min_size=1, max_size=20)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
addresses = st.tuples(st.text(min_size=1, max_size=40), st.integers(0, 65535))
values = st.none() | st.text(max_size=50)

updates = st.one_of(
    st.builds(wire.Alive, names, u64, u64, addresses),
    st.builds(wire.Suspect, names, u64, u64, names),
    st.builds(wire.Dead, names, u64, u64, names),
    st.builds(wire.Left, names, u64, u64),
    st.builds(wire.KeyUpdate, names, u64, names, values, u64),
)
update_lists = st.lists(updates, max_size=5).map(tuple)
digests = st.lists(
    st.builds(wire.DigestEntry, names, u64, u64, st.integers(0, 3), u64, u64), max_size=5
).map(tuple)
entries = st.lists(st.tuples(names, values, u64), max_size=4).map(tuple)
deltas = st.lists(
    st.builds(
        wire.NodeDelta,
        names,
        u64,
        u64,
        st.integers(0, 3),
        addresses,
        u64,
        u64,
        st.booleans(),
        st.booleans(),
        entries,
    ),
    max_size=3,
).map(tuple)
his = st.none() | names
messages = st.one_of(
    st.builds(wire.Ping, u32, names, update_lists),
    st.builds(wire.Ack, u32, update_lists),
    st.builds(wire.PingReq, u32, names, addresses, update_lists),
    st.builds(wire.Nack, u32, update_lists),
    st.builds(wire.Gossip, update_lists),
    st.builds(wire.Syn, st.text(max_size=20), his, digests),
    st.builds(wire.SynAck, st.text(max_size=20), his, digests, deltas),
    st.builds(wire.Delta, deltas),
)
senders = st.builds(wire.Sender, names, u64, u64, addresses)

KEYRING = Keyring(bytes(range(32)))
AAD = b"hypha"


@given(senders, messages)
def test_every_message_round_trips(sender: wire.Sender, message: wire.Message) -> None:
    assert wire.decode(wire.encode(sender, message)) == wire.Packet(sender, message)


@given(st.binary(max_size=300))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        wire.decode(data)


@settings(max_examples=300)
@given(senders, messages, st.data())
def test_mutated_packets_raise_only_decode_error(
    sender: wire.Sender, message: wire.Message, data: st.DataObject
) -> None:
    raw = bytearray(wire.encode(sender, message))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif action == "cut" and raw:
            del raw[data.draw(st.integers(0, len(raw) - 1)) :]
        else:
            i = data.draw(st.integers(0, len(raw)))
            raw[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    with contextlib.suppress(DecodeError):
        wire.decode(bytes(raw))


@given(st.binary(max_size=200))
def test_random_sealed_datagrams_raise_only_wire_errors(data: bytes) -> None:
    with pytest.raises(WireError):
        KEYRING.open(data, AAD)


@settings(max_examples=200)
@given(senders, messages, st.integers(0, 10_000), st.integers(1, 255))
def test_any_flipped_bit_fails_authentication(
    sender: wire.Sender, message: wire.Message, where: int, mask: int
) -> None:
    sealed = bytearray(KEYRING.seal(wire.encode(sender, message), AAD))
    sealed[where % len(sealed)] ^= mask
    with pytest.raises(AuthError):
        KEYRING.open(bytes(sealed), AAD)


def test_unknown_types_and_versions_are_refused_with_a_reason() -> None:
    sender = ["a", 1, 0, "h", 1]
    with pytest.raises(DecodeError, match="unknown message type 99"):
        wire.decode(wire.pack([wire.MAGIC, wire.VERSION, 99, sender]))
    with pytest.raises(DecodeError, match="unsupported wire version 2"):
        wire.decode(wire.pack([wire.MAGIC, 2, wire.PING, sender, 1, "b", []]))
    with pytest.raises(DecodeError, match="bad magic"):
        wire.decode(wire.pack([1, wire.VERSION, wire.PING, sender, 1, "b", []]))
    with pytest.raises(DecodeError, match="unknown update kind"):
        wire.decode(wire.pack([wire.MAGIC, wire.VERSION, wire.GOSSIP, sender, [[42]]]))


def test_type_codes_are_append_only() -> None:
    # Changing any of these breaks mixed-version clusters: add new codes instead.
    assert (wire.PING, wire.ACK, wire.PING_REQ, wire.NACK, wire.GOSSIP) == (1, 2, 3, 4, 5)
    assert (wire.SYN, wire.SYN_ACK, wire.DELTA) == (6, 7, 8)
    assert (wire.ALIVE, wire.SUSPECT, wire.DEAD, wire.LEFT, wire.KEY) == (1, 2, 3, 4, 5)


def test_sealed_with_another_cluster_name_does_not_open() -> None:
    sealed = KEYRING.seal(b"hello", b"cluster-a")
    assert KEYRING.open(sealed, b"cluster-a") == b"hello"
    with pytest.raises(AuthError):
        KEYRING.open(sealed, b"cluster-b")
