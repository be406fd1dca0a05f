"""Gossip timers and limits, with presets built from one another.

Every field says what it costs to turn it up or down. ``lan()`` follows the
figures HashiCorp memberlist ships for a LAN (probe every second, 500 ms ack
timeout, 3 indirect probes, suspicion multiplier 4, gossip every 200 ms to 3
nodes); ``wan()`` relaxes them for links with 100+ ms of latency; ``local()``
tightens them for several agents on one host (tests, ``hypha up``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from gossip.errors import ConfigError

#: Bytes the sealed envelope adds to a plaintext: 1 version byte, 12 nonce, 16 tag.
SEAL_OVERHEAD = 29


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timers (seconds) and limits of one gossip node. Check with ``__post_init__``."""

    cluster: str = "hypha"
    """Cluster name, authenticated as associated data in every datagram. Nodes with
    different names ignore each other even when they share a key, so two clusters on
    one network cannot merge by mistake."""

    mtu: int = 1400
    """Largest datagram sent, sealed. Larger lets a round carry more updates and
    bigger values; above the path MTU (1500 on Ethernet minus IP/UDP headers)
    datagrams fragment and a lost fragment loses the whole packet."""

    probe_interval: float = 1.0
    """Time between failure-detection probes (one random member each). Shorter
    detects failures sooner at the cost of more packets (2 per interval per node) and
    more false suspicions on a busy host."""

    probe_timeout: float = 0.5
    """How long to wait for a direct ack before asking others (ping-req). Set it
    above the network's 99th percentile round trip; too short turns every slow ack
    into indirect probes, too long delays detection. Must be below ``probe_interval``."""

    indirect_checks: int = 3
    """Members asked to probe a silent target for us (SWIM's k). More makes a lossy
    path to one node less likely to cause a suspicion, at k extra packet pairs."""

    suspicion_mult: int = 4
    """Suspicion timeout = mult * log10(N+1) * probe_interval (at least mult *
    probe_interval). Larger gives a suspect more time to refute (fewer false deaths
    under loss or pauses); smaller declares real deaths sooner."""

    suspicion_max_timeout_mult: int = 6
    """A fresh suspicion waits up to this many times the minimum timeout; each
    independent confirmation (another member suspecting too) shrinks it towards the
    minimum (Lifeguard). Larger protects a slow-but-alive node that only one member
    accuses; smaller bounds detection time when nobody confirms."""

    awareness_max: int = 8
    """Lifeguard local health: a node that misses its own deadlines or gets no nacks
    raises its health score up to this bound, and scales its probe interval and
    timeout by (score + 1). Larger lets a sick node back off further before it
    accuses anyone; it also slows detection by that node while it is sick."""

    retransmit_mult: int = 4
    """Each update is piggybacked mult * ceil(log10(N+1)) times. Larger makes
    dissemination survive more loss, at more bytes per update."""

    gossip_interval: float = 0.2
    """Time between gossip rounds (pending updates pushed to ``gossip_nodes`` random
    members). Shorter spreads changes faster and costs more packets; a round with
    nothing to say sends nothing."""

    gossip_nodes: int = 3
    """Members each gossip round sends to (the fan-out)."""

    gossip_to_dead: float = 30.0
    """Keep gossiping to members declared dead for this long, so a node wrongly
    declared dead hears it and refutes. Longer costs a few packets to real corpses."""

    sync_interval: float = 1.0
    """Time between scuttlebutt anti-entropy exchanges (digest -> delta, 3 packets
    with one random member). This repairs what piggybacking lost, teaches a joiner
    the membership, and carries large key/value states; shorter converges states
    faster, at about 3 * mtu bytes per interval."""

    reap_after: float = 300.0
    """Dead and left members are forgotten this long after they died or left.
    Longer lets the agent see recent corpses (and rejects their stale gossip);
    shorter bounds memory in a cluster with churn."""

    tombstone_gc_after: float = 300.0
    """A deleted key is kept as a tombstone this long so every node hears of the
    delete; after that it is collected. A node that was away longer gets that
    node's whole state again (a reset) instead of the delete."""

    stall_threshold: float = 0.5
    """If the driver calls ``tick`` this late past the deadline it asked for, the
    node's own loop stalled: pending probes are inconclusive (not failures), due
    suspicions wait another round for refutations, and the health score rises.
    Lower treats smaller hiccups as stalls; higher risks accusing others for our pause."""

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, rule: str) -> None:
            if not ok:
                value = getattr(self, field)
                raise ConfigError(f"gossip config: {field}={value!r} is invalid: {rule}")

        need(0 < len(self.cluster) <= 64, "cluster", "must be 1 to 64 characters")
        need(576 <= self.mtu <= 65000, "mtu", "must be between 576 and 65000 bytes")
        for name in (
            "probe_interval",
            "probe_timeout",
            "gossip_interval",
            "sync_interval",
            "reap_after",
            "tombstone_gc_after",
            "stall_threshold",
        ):
            value = getattr(self, name)
            need(math.isfinite(value) and value > 0, name, "must be a positive number of seconds")
        need(self.gossip_to_dead >= 0, "gossip_to_dead", "must be >= 0 seconds")
        need(
            self.probe_timeout < self.probe_interval,
            "probe_timeout",
            f"must be below probe_interval ({self.probe_interval})",
        )
        need(0 <= self.indirect_checks <= 16, "indirect_checks", "must be 0 to 16")
        need(1 <= self.suspicion_mult <= 100, "suspicion_mult", "must be 1 to 100")
        need(
            1 <= self.suspicion_max_timeout_mult <= 100,
            "suspicion_max_timeout_mult",
            "must be 1 to 100",
        )
        need(1 <= self.awareness_max <= 64, "awareness_max", "must be 1 to 64")
        need(1 <= self.retransmit_mult <= 100, "retransmit_mult", "must be 1 to 100")
        need(1 <= self.gossip_nodes <= 64, "gossip_nodes", "must be 1 to 64")

    @classmethod
    def lan(cls, **changes: object) -> GossipConfig:
        """memberlist's LAN figures: for hosts on one datacenter network."""
        return dataclasses.replace(cls(), **changes)  # type: ignore[arg-type]

    @classmethod
    def wan(cls, **changes: object) -> GossipConfig:
        """For members across regions: slower timers, more patience, more fan-out."""
        base = cls.lan(
            probe_interval=5.0,
            probe_timeout=3.0,
            suspicion_mult=6,
            gossip_interval=0.5,
            gossip_nodes=4,
            gossip_to_dead=60.0,
            sync_interval=5.0,
            stall_threshold=2.0,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    @classmethod
    def local(cls, **changes: object) -> GossipConfig:
        """For agents sharing one host (tests, ``hypha up``): detection in about a second."""
        base = cls.lan(
            probe_interval=0.5,
            probe_timeout=0.25,
            suspicion_mult=3,
            gossip_interval=0.1,
            sync_interval=0.5,
            gossip_to_dead=10.0,
            reap_after=30.0,
            tombstone_gc_after=30.0,
            stall_threshold=0.25,
        )
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    @property
    def payload_budget(self) -> int:
        """Bytes of plaintext one sealed datagram can carry."""
        return self.mtu - SEAL_OVERHEAD
