"""Errors the agent and the CLI raise on purpose.

Every error a user can cause, or that the world can cause, is a ``HyphaError``;
anything else escaping is a bug in Hypha and is allowed to crash loudly::

    HyphaError
    ├── ConfigError            a config file, flag or spec value is wrong (names the key)
    ├── SecretError            the cluster secret or a key file is missing, short or too open
    ├── ApiError               the agent's API answered with an error (carries the status)
    │   ├── NotFoundError      the named workload, node or replica does not exist
    │   └── ConflictError      the write conflicts with the current state (exists, version)
    ├── AgentUnreachableError  no agent answers at the API address
    ├── ConsensusError         Raft could not commit (no leader, timeout, stale term)
    │   └── NotLeaderError     this agent is not the leader (carries the leader's API)
    ├── GossipUnavailableError membership could not be joined or read
    └── RuntimeUnavailableError the container runtime is missing or refused

The libraries (``gossip``, ``runtime``, ``scheduler``) have their own roots and
import nothing of ours; the agent translates their errors into this tree where
they enter (``raise ConfigError(...) from exc``), as httpx does with its
transports' errors.
"""

from __future__ import annotations


class HyphaError(Exception):
    """Root of every error Hypha raises on purpose. ``str(err)`` is one line for the user."""


class ConfigError(HyphaError):
    """A config file, flag or workload spec value is wrong; the message names the key."""


class SecretError(HyphaError):
    """The cluster secret or a key file is missing, too short, or readable by others."""


class ApiError(HyphaError):
    """The agent's API answered with an error status."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class NotFoundError(ApiError):
    """The named workload, node or replica does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=404)


class ConflictError(ApiError):
    """The write conflicts with the current state: the workload exists, or its version moved."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status=409)


class AgentUnreachableError(HyphaError):
    """No agent answers at the API address."""


class ConsensusError(HyphaError):
    """Raft could not commit a write: no leader, a timeout, or a stale term."""


class NotLeaderError(ConsensusError):
    """This agent is not the Raft leader; ``leader_api`` is where writes go (None if unknown)."""

    def __init__(self, message: str, leader_api: str | None = None) -> None:
        super().__init__(message)
        self.leader_api = leader_api


class GossipUnavailableError(HyphaError):
    """Membership could not be joined or read."""


class RuntimeUnavailableError(HyphaError):
    """The container runtime is missing or refused to run."""
