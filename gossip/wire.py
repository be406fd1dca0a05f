"""The wire format: msgpack arrays in a versioned envelope.

A plaintext datagram is one msgpack array::

    [MAGIC, VERSION, type, sender, *fields]
    sender = [name, generation, incarnation, host, port]

``type`` codes and update ``kind`` codes are only ever appended, never reused.
Every receiver learns who sent a datagram and where to reach them (that is how a
seed learns a joiner). Piggybacked membership and key updates ride at the end of
PING, ACK, PING_REQ, NACK and GOSSIP as pre-packed items, so the core can fill a
datagram up to the MTU without re-encoding.

``decode`` raises ``DecodeError`` for any malformed input and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeAlias

import msgpack  # type: ignore[import-untyped]

from gossip.errors import DecodeError

MAGIC: Final = 0x4879  # "Hy"
VERSION: Final = 1

Address: TypeAlias = tuple[str, int]

# Message types (append only).
PING: Final = 1
ACK: Final = 2
PING_REQ: Final = 3
NACK: Final = 4
GOSSIP: Final = 5
SYN: Final = 6
SYN_ACK: Final = 7
DELTA: Final = 8

# Update kinds (append only).
ALIVE: Final = 1
SUSPECT: Final = 2
DEAD: Final = 3
LEFT: Final = 4
KEY: Final = 5

# Member status codes as carried in digests and deltas.
STATUS_CODES: Final = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
STATUS_NAMES: Final = {v: k for k, v in STATUS_CODES.items()}

MAX_NAME = 128
MAX_KEY = 256
MAX_HOST = 255
MAX_U64 = 2**64 - 1
MAX_U32 = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Sender:
    name: str
    generation: int
    incarnation: int
    address: Address


@dataclass(frozen=True, slots=True)
class Alive:
    name: str
    generation: int
    incarnation: int
    address: Address


@dataclass(frozen=True, slots=True)
class Suspect:
    name: str
    generation: int
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    name: str
    generation: int
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Left:
    name: str
    generation: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class KeyUpdate:
    node: str
    generation: int
    key: str
    value: str | None  # None is a tombstone
    version: int


Update: TypeAlias = Alive | Suspect | Dead | Left | KeyUpdate


@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    seq: int
    target: str
    target_address: Address
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    seq: int
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Gossip:
    updates: tuple[Update, ...] = ()


class DigestEntry(NamedTuple):
    """What a node knows of one member: identity, liveness and key/value watermark."""

    name: str
    generation: int
    incarnation: int
    status: int
    version: int
    gc_version: int


@dataclass(frozen=True, slots=True)
class NodeDelta:
    """Part of one member's state: its header and key entries in version order.

    ``reset``: the entries are the owner's state from version 0, so the receiver
    first forgets what it held (a tombstone it needed was collected). ``complete``:
    these are all entries above the requested version, so the receiver's watermark
    becomes ``max_version``; otherwise it becomes the last entry's version.
    """

    name: str
    generation: int
    incarnation: int
    status: int
    address: Address
    max_version: int
    gc_version: int
    reset: bool
    complete: bool
    entries: tuple[tuple[str, str | None, int], ...]


@dataclass(frozen=True, slots=True)
class Syn:
    """Digest of the sender's members with names in [lo, hi) (hi None: to the end)."""

    lo: str
    hi: str | None
    digest: tuple[DigestEntry, ...]


@dataclass(frozen=True, slots=True)
class SynAck:
    lo: str
    hi: str | None
    digest: tuple[DigestEntry, ...]
    delta: tuple[NodeDelta, ...]


@dataclass(frozen=True, slots=True)
class Delta:
    delta: tuple[NodeDelta, ...]


Message: TypeAlias = Ping | Ack | PingReq | Nack | Gossip | Syn | SynAck | Delta


@dataclass(frozen=True, slots=True)
class Packet:
    sender: Sender
    message: Message


# -- encoding ---------------------------------------------------------------

_packer = msgpack.Packer(use_bin_type=True)


def pack(obj: object) -> bytes:
    packed: bytes = _packer.pack(obj)
    return packed


def array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 65536:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def update_fields(update: Update) -> list[Any]:
    if isinstance(update, Alive):
        host, port = update.address
        return [ALIVE, update.name, update.generation, update.incarnation, host, port]
    if isinstance(update, Suspect):
        return [SUSPECT, update.name, update.generation, update.incarnation, update.accuser]
    if isinstance(update, Dead):
        return [DEAD, update.name, update.generation, update.incarnation, update.accuser]
    if isinstance(update, Left):
        return [LEFT, update.name, update.generation, update.incarnation]
    return [KEY, update.node, update.generation, update.key, update.value, update.version]


def pack_update(update: Update) -> bytes:
    return pack(update_fields(update))


def sender_fields(sender: Sender) -> list[Any]:
    host, port = sender.address
    return [sender.name, sender.generation, sender.incarnation, host, port]


def digest_fields(entry: DigestEntry) -> list[Any]:
    return list(entry)


def delta_fields(node: NodeDelta) -> list[Any]:
    host, port = node.address
    return [
        node.name,
        node.generation,
        node.incarnation,
        node.status,
        host,
        port,
        node.max_version,
        node.gc_version,
        node.reset,
        node.complete,
        [list(e) for e in node.entries],
    ]


def head_fields(message: Message) -> tuple[int, list[Any], tuple[Update, ...] | None]:
    """The type code, the fields before the updates, and the updates (None: no slot)."""
    if isinstance(message, Ping):
        return PING, [message.seq, message.target], message.updates
    if isinstance(message, Ack):
        return ACK, [message.seq], message.updates
    if isinstance(message, PingReq):
        host, port = message.target_address
        return PING_REQ, [message.seq, message.target, host, port], message.updates
    if isinstance(message, Nack):
        return NACK, [message.seq], message.updates
    if isinstance(message, Gossip):
        return GOSSIP, [], message.updates
    if isinstance(message, Syn):
        return SYN, [message.lo, message.hi, [digest_fields(e) for e in message.digest]], None
    if isinstance(message, SynAck):
        fields = [
            message.lo,
            message.hi,
            [digest_fields(e) for e in message.digest],
            [delta_fields(d) for d in message.delta],
        ]
        return SYN_ACK, fields, None
    return DELTA, [[delta_fields(d) for d in message.delta]], None


def encode_head(sender: Sender, message: Message) -> tuple[bytes, int, bool]:
    """The packed fields before the updates slot: (bytes, field count, has_updates)."""
    code, fields, updates = head_fields(message)
    parts = [MAGIC, VERSION, code, sender_fields(sender), *fields]
    return b"".join(pack(p) for p in parts), len(parts), updates is not None


def assemble(head: bytes, count: int, packed_updates: list[bytes] | None) -> bytes:
    """Join a packed head with pre-packed updates into one envelope."""
    if packed_updates is None:
        return array_header(count) + head
    return (
        array_header(count + 1)
        + head
        + array_header(len(packed_updates))
        + b"".join(packed_updates)
    )


def encode(sender: Sender, message: Message) -> bytes:
    """The plaintext of one datagram (not sealed, no size limit: the caller checks)."""
    head, count, has_updates = encode_head(sender, message)
    _, _, updates = head_fields(message)
    packed = [pack_update(u) for u in updates] if has_updates and updates is not None else None
    return assemble(head, count, packed)


# -- decoding ---------------------------------------------------------------


def _fail(what: str) -> DecodeError:
    return DecodeError(f"malformed datagram: {what}")


def _str(value: object, what: str, limit: int, *, empty: bool = False) -> str:
    if type(value) is not str or len(value) > limit or (not empty and not value):
        raise _fail(f"{what} must be a string of 1 to {limit} characters")
    return value


def _uint(value: object, what: str, limit: int = MAX_U64) -> int:
    if type(value) is not int or not 0 <= value <= limit:
        raise _fail(f"{what} must be an integer in 0..{limit}")
    return value


def _bool(value: object, what: str) -> bool:
    if type(value) is not bool:
        raise _fail(f"{what} must be a boolean")
    return value


def _list(value: object, what: str, size: int | None = None) -> list[Any]:
    if type(value) is not list or (size is not None and len(value) != size):
        wanted = f" of {size} items" if size is not None else ""
        raise _fail(f"{what} must be an array{wanted}")
    return value


def _address(host: object, port: object, what: str) -> Address:
    return (_str(host, f"{what} host", MAX_HOST), _uint(port, f"{what} port", 65535))


def _status(value: object) -> int:
    if type(value) is not int or value not in STATUS_NAMES:
        raise _fail("unknown member status")
    return value


def decode_update(raw: object) -> Update:
    items = _list(raw, "update")
    if not items:
        raise _fail("empty update")
    kind = items[0]
    if kind == ALIVE and type(kind) is int:
        _list(items, "alive update", 6)
        return Alive(
            _str(items[1], "name", MAX_NAME),
            _uint(items[2], "generation"),
            _uint(items[3], "incarnation"),
            _address(items[4], items[5], "alive"),
        )
    if kind in (SUSPECT, DEAD) and type(kind) is int:
        _list(items, "suspect/dead update", 5)
        cls = Suspect if kind == SUSPECT else Dead
        return cls(
            _str(items[1], "name", MAX_NAME),
            _uint(items[2], "generation"),
            _uint(items[3], "incarnation"),
            _str(items[4], "accuser", MAX_NAME),
        )
    if kind == LEFT and type(kind) is int:
        _list(items, "left update", 4)
        return Left(
            _str(items[1], "name", MAX_NAME),
            _uint(items[2], "generation"),
            _uint(items[3], "incarnation"),
        )
    if kind == KEY and type(kind) is int:
        _list(items, "key update", 6)
        value = items[4]
        if value is not None and type(value) is not str:
            raise _fail("key value must be a string or nil")
        return KeyUpdate(
            _str(items[1], "node", MAX_NAME),
            _uint(items[2], "generation"),
            _str(items[3], "key", MAX_KEY),
            value,
            _uint(items[5], "version"),
        )
    raise _fail(f"unknown update kind {kind!r}")


def _updates(raw: object) -> tuple[Update, ...]:
    return tuple(decode_update(u) for u in _list(raw, "updates"))


def _digest(raw: object) -> tuple[DigestEntry, ...]:
    out = []
    for item in _list(raw, "digest"):
        if type(item) is not list or len(item) != 6:
            raise _fail("digest entry must be an array of 6 items")
        name, generation, incarnation, status, version, gc_version = item
        if type(name) is not str or not 0 < len(name) <= MAX_NAME:
            raise _fail("digest name must be a string of 1 to 128 characters")
        for number in (generation, incarnation, version, gc_version):
            if type(number) is not int or not 0 <= number <= MAX_U64:
                raise _fail("digest numbers must be integers in 0..2**64-1")
        out.append(DigestEntry(name, generation, incarnation, _status(status), version, gc_version))
    return tuple(out)


def _delta(raw: object) -> tuple[NodeDelta, ...]:
    out = []
    for item in _list(raw, "delta"):
        f = _list(item, "node delta", 11)
        entries = []
        for e in _list(f[10], "entries"):
            key, value, version = _list(e, "entry", 3)
            if value is not None and type(value) is not str:
                raise _fail("entry value must be a string or nil")
            entries.append((_str(key, "key", MAX_KEY), value, _uint(version, "version")))
        out.append(
            NodeDelta(
                _str(f[0], "name", MAX_NAME),
                _uint(f[1], "generation"),
                _uint(f[2], "incarnation"),
                _status(f[3]),
                _address(f[4], f[5], "delta"),
                _uint(f[6], "max version"),
                _uint(f[7], "gc version"),
                _bool(f[8], "reset"),
                _bool(f[9], "complete"),
                tuple(entries),
            )
        )
    return tuple(out)


_MIN_LEN = {PING: 7, ACK: 6, PING_REQ: 9, NACK: 6, GOSSIP: 5, SYN: 7, SYN_ACK: 8, DELTA: 5}


def _hi(value: object) -> str | None:
    return None if value is None else _str(value, "range end", MAX_NAME)


def decode(data: bytes, max_size: int = 65535) -> Packet:
    """Parse one plaintext datagram. Raises ``DecodeError`` for anything malformed."""
    if len(data) > max_size:
        raise _fail(f"{len(data)} bytes is over the {max_size}-byte limit")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=max_size,
            max_map_len=max_size,
            max_ext_len=max_size,
        )
    except (ValueError, TypeError) as exc:  # msgpack's errors for hostile input
        raise _fail(f"not msgpack ({type(exc).__name__})") from exc
    if type(raw) is not list or len(raw) < 4:
        raise _fail("not an envelope")
    if raw[0] != MAGIC or type(raw[0]) is not int:
        raise _fail("bad magic")
    if raw[1] != VERSION or type(raw[1]) is not int:
        raise DecodeError(f"unsupported wire version {raw[1]!r} (this node speaks {VERSION})")
    code = raw[2]
    if type(code) is not int or code not in _MIN_LEN:
        raise DecodeError(f"unknown message type {code!r}")
    if len(raw) != _MIN_LEN[code]:
        raise _fail(f"message type {code} has {len(raw)} fields")
    s = _list(raw[3], "sender", 5)
    sender = Sender(
        _str(s[0], "sender name", MAX_NAME),
        _uint(s[1], "sender generation"),
        _uint(s[2], "sender incarnation"),
        _address(s[3], s[4], "sender"),
    )
    f = raw[4:]
    message: Message
    if code == PING:
        message = Ping(_uint(f[0], "seq", MAX_U32), _str(f[1], "target", MAX_NAME), _updates(f[2]))
    elif code == ACK:
        message = Ack(_uint(f[0], "seq", MAX_U32), _updates(f[1]))
    elif code == PING_REQ:
        message = PingReq(
            _uint(f[0], "seq", MAX_U32),
            _str(f[1], "target", MAX_NAME),
            _address(f[2], f[3], "target"),
            _updates(f[4]),
        )
    elif code == NACK:
        message = Nack(_uint(f[0], "seq", MAX_U32), _updates(f[1]))
    elif code == GOSSIP:
        message = Gossip(_updates(f[0]))
    elif code == SYN:
        message = Syn(_str(f[0], "range start", MAX_NAME, empty=True), _hi(f[1]), _digest(f[2]))
    elif code == SYN_ACK:
        message = SynAck(
            _str(f[0], "range start", MAX_NAME, empty=True),
            _hi(f[1]),
            _digest(f[2]),
            _delta(f[3]),
        )
    else:
        message = Delta(_delta(f[0]))
    return Packet(sender, message)
