"""Errors the scheduler raises on purpose.

::

    SchedulerError              root; the agent translates it into its own tree
    ├── InvalidInputError       a snapshot, request or config value is wrong (names the field)
    └── ReschedulePaused        too many nodes were lost at once: a likely partition

A request that cannot be placed is not an error: it comes back as a ``Decision``
with ``node_id=None`` and a reason a user can act on.
"""

from __future__ import annotations


class SchedulerError(Exception):
    """Root of every error the scheduler raises on purpose."""


class InvalidInputError(SchedulerError, ValueError):
    """A snapshot, request or config value is wrong; the message names the field."""


class ReschedulePaused(SchedulerError):
    """More than the configured fraction of nodes was lost at once.

    Moving their replicas would likely overload the survivors for what is more
    probably a network partition than a real failure, so nothing moves.
    """

    def __init__(self, message: str, *, lost: int, total: int, threshold: float) -> None:
        super().__init__(message)
        self.lost = lost
        self.total = total
        self.threshold = threshold
