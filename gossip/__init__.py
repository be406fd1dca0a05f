"""Membership and per-node key/value state for Hypha: SWIM + Lifeguard and scuttlebutt.

The protocol core (``gossip.core``) is sans-I/O: no sockets, no clock reads, no
randomness of its own. ``gossip.sim`` runs it on an in-memory network on virtual
time; ``gossip.service`` is the trio driver on real UDP. This package imports
nothing else of Hypha's. Errors: see ``gossip.errors``.
"""

from gossip.config import GossipConfig
from gossip.core import (
    GossipEvent,
    GossipNode,
    KeyChanged,
    Member,
    MemberEvent,
    MemberState,
    Outgoing,
)
from gossip.errors import (
    AuthError,
    ConfigError,
    DecodeError,
    GossipError,
    JoinError,
    KeyringError,
    StateError,
    WireError,
)
from gossip.keyring import Keyring, generate_key
from gossip.service import GossipService
from gossip.wire import Address

__all__ = [
    "Address",
    "AuthError",
    "ConfigError",
    "DecodeError",
    "GossipConfig",
    "GossipError",
    "GossipEvent",
    "GossipNode",
    "GossipService",
    "JoinError",
    "KeyChanged",
    "Keyring",
    "KeyringError",
    "Member",
    "MemberEvent",
    "MemberState",
    "Outgoing",
    "StateError",
    "WireError",
    "generate_key",
]
