"""Errors the gossip library raises on purpose.

::

    GossipError                 root: everything below; nothing else escapes on purpose
    ├── ConfigError             a GossipConfig field is out of range (names the field)
    ├── KeyringError            a key is malformed, unknown, or a key file is unsafe
    ├── WireError               a datagram was refused (the network's fault, never ours)
    │   ├── AuthError           no key in the keyring opens it (wrong key or cluster name)
    │   └── DecodeError         it opened but is not a well-formed message
    ├── StateError              a key or value we were asked to publish is not acceptable
    └── JoinError               no seed answered before the join deadline

``WireError`` is what the codec and the sealed envelope raise for any input at all;
the core catches it, drops the packet and counts it by reason.
"""

from __future__ import annotations


class GossipError(Exception):
    """Root of every error the gossip library raises on purpose."""


class ConfigError(GossipError, ValueError):
    """A ``GossipConfig`` field is out of range; the message names the field."""


class KeyringError(GossipError):
    """A key is not 32 bytes, is not installed, or a key file is missing or too open."""


class WireError(GossipError):
    """A datagram was refused. ``reason`` is the counter it is dropped under."""

    reason = "malformed"


class AuthError(WireError):
    """No key of the keyring authenticates the datagram (or the cluster name differs)."""

    reason = "auth"


class DecodeError(WireError):
    """The datagram authenticated but is not a well-formed message of a known version."""

    reason = "decode"


class StateError(GossipError, ValueError):
    """A key or value cannot be published (empty key, too large for one datagram...)."""


class JoinError(GossipError):
    """None of the seeds answered before the join deadline."""
