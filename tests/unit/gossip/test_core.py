"""The sans-I/O core on a fake clock: the rules one at a time."""

from __future__ import annotations

import random

import pytest

from gossip import GossipConfig, GossipNode, KeyChanged, Keyring, MemberEvent, StateError, wire
from gossip.core import _Suspicion
from gossip.sim import Simulation

LAN = GossipConfig.lan()
RING = Keyring(bytes(32))


def node(name: str, generation: int = 1, config: GossipConfig = LAN) -> GossipNode:
    n = GossipNode(config, name=name, generation=generation, keyring=RING, rng=random.Random(1))
    n.start((name, 1), 0.0)
    return n


def packet(sender: GossipNode, message: wire.Message) -> bytes:
    s = wire.Sender(sender.name, sender.generation, sender.incarnation, sender.address)
    return RING.seal(wire.encode(s, message), b"hypha")


def kinds(n: GossipNode) -> list[tuple[str, str]]:
    return [(e.kind, e.member.name) for e in n.take_events() if isinstance(e, MemberEvent)]


def test_a_sender_becomes_a_member_and_a_ping_is_acked() -> None:
    a, b = node("a"), node("b")
    out = b.receive(packet(a, wire.Ping(7, "b")), a.address, 0.1)
    assert kinds(b) == [("joined", "a")]
    # The ack, then (a join is news) an early gossip round, to the only member: a.
    assert [o.address for o in out] == [a.address, a.address]
    reply = wire.decode(RING.open(out[0].data, b"hypha"))
    assert reply.message == wire.Ack(7, reply.message.updates)  # type: ignore[union-attr]
    assert isinstance(wire.decode(RING.open(out[1].data, b"hypha")).message, wire.Gossip)


def test_drops_are_counted_by_reason() -> None:
    a, b = node("a"), node("b")
    b.receive(b"\x01" + bytes(40), a.address, 0.0)
    b.receive(Keyring(bytes(range(32))).seal(b"x", b"hypha"), a.address, 0.0)
    b.receive(RING.seal(b"\xc1garbage", b"hypha"), a.address, 0.0)
    b.receive(bytes(LAN.mtu + 1), a.address, 0.0)
    b.receive(packet(b, wire.Gossip()), b.address, 0.0)
    c = b.counters
    assert (c["drops_auth"], c["drops_decode"], c["drops_oversize"]) == (2, 1, 1)
    assert c["drops_from_self"] == 1
    assert b.members()[0].name == "b" and len(b.members()) == 1


def test_suspicion_timeout_scales_with_log_n_and_shrinks_with_confirmations() -> None:
    s = _Suspicion(0.0, {"x"}, 2, 8.0, 48.0, 0.0)
    s.recompute()
    assert s.deadline == 48.0
    s.accusers.add("y")
    s.recompute()
    first = s.deadline
    s.accusers.add("z")
    s.recompute()
    assert 8.0 < first < 48.0 and s.deadline == 8.0
    s.accusers.add("w")
    s.recompute()
    assert s.deadline == 8.0  # never below the minimum


def test_suspicion_refutation_and_incarnations() -> None:
    a, b = node("a"), node("b")
    b.receive(packet(a, wire.Gossip()), a.address, 0.0)
    kinds(b)
    # Somebody suspects a; b believes it.
    b.receive(packet(a, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), ("c", 1), 0.1)
    assert kinds(b) == [("suspect", "a")]
    # a hears it and refutes with a higher incarnation.
    a.receive(packet(b, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), b.address, 0.2)
    assert a.incarnation == 1 and a.counters["refutations"] == 1 and a.awareness == 1
    b.receive(packet(a, wire.Gossip((wire.Alive("a", 1, 1, a.address),))), a.address, 0.3)
    assert kinds(b) == [("alive", "a")]
    # A stale suspicion (older incarnation) is ignored.
    b.receive(packet(a, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), ("c", 1), 0.4)
    assert kinds(b) == []


def test_a_suspect_dies_after_the_timeout_unless_it_refutes() -> None:
    a, b = node("a"), node("b")
    b.receive(packet(a, wire.Gossip()), a.address, 0.0)
    b.receive(packet(a, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), ("c", 1), 1.0)
    kinds(b)
    t = 1.0
    while t < 60 and b.member("a").state == "suspect":  # type: ignore[union-attr]
        t = max(t, b.next_deadline())
        b.tick(t)
    assert b.member("a").state == "dead"  # type: ignore[union-attr]
    # min = 4 * log10(2+1) * 1 s clamped to 4 s; two members only: no confirmations wanted.
    assert 4.9 <= t <= 5.5
    assert ("dead", "a") in kinds(b)


def test_a_new_generation_supersedes_the_old_self() -> None:
    a1, b = node("a", 1), node("b")
    a1.set("k", "v", 0.0)
    b.receive(packet(a1, wire.Gossip((wire.KeyUpdate("a", 1, "k", "v", 1),))), a1.address, 0.0)
    assert b.state_of("a") == {"k": "v"}
    b.receive(packet(a1, wire.Gossip((wire.Dead("a", 1, 0, "b"),))), ("x", 1), 1.0)
    b.take_events()
    a2 = node("a", 2)
    b.receive(packet(a2, wire.Gossip()), a2.address, 2.0)
    assert b.member("a").generation == 2 and b.member("a").state == "alive"  # type: ignore[union-attr]
    events = b.take_events()
    assert KeyChanged("a", "k", None) in events
    assert ("joined", "a") in [
        (e.kind, e.member.name) for e in events if isinstance(e, MemberEvent)
    ]
    # The old generation's gossip no longer counts.
    b.receive(packet(a1, wire.Gossip((wire.Suspect("a", 1, 5, "b"),))), ("x", 1), 3.0)
    assert b.member("a").state == "alive"  # type: ignore[union-attr]
    # A node ignores suspicion of its old generation.
    a2.receive(packet(b, wire.Gossip((wire.Dead("a", 1, 9, "b"),))), b.address, 3.0)
    assert a2.incarnation == 0


def test_state_values_are_checked() -> None:
    a = node("a")
    with pytest.raises(StateError, match="key must be"):
        a.set("", "v", 0.0)
    with pytest.raises(StateError, match="must be a string"):
        a.set("k", 5, 0.0)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="raise mtu or split the value"):
        a.set("k", "x" * 5000, 0.0)
    a.set("k", "x" * 1000, 0.0)


def test_leave_is_heard_and_the_member_is_reaped_after_the_grace() -> None:
    config = GossipConfig.lan(reap_after=20.0)
    sim = Simulation(config, seed=11)
    for i in range(5):
        sim.add_node(f"n{i}", join=["n0"] if i else [])
    assert sim.run_until_true(sim.converged, 20)
    sim.leave("n3")
    assert sim.run_until_true(lambda: sim.all_see("n3", "left"), 5)
    assert sim.nodes["n3"].leave_done()
    sim.crash("n3")
    sim.run_for(25)
    assert all(sim.view(o, "n3") is None for o in ("n0", "n1", "n2", "n4"))
    assert sim.nodes["n0"].counters["reaped"] == 1


def test_tombstones_are_collected_and_a_long_absent_node_gets_a_reset() -> None:
    config = GossipConfig.lan(tombstone_gc_after=10.0, reap_after=600.0)
    sim = Simulation(config, seed=12)
    for i in range(4):
        sim.add_node(f"n{i}", join=["n0"] if i else [])
    assert sim.run_until_true(sim.converged, 20)
    owner = sim.nodes["n1"]
    owner.set("gone", "soon", sim.now)
    owner.set("kept", "yes", sim.now)
    assert sim.run_until_true(lambda: sim.nodes["n3"].state_of("n1").get("gone") == "soon", 5)
    sim.partition(["n3"])  # n3 alone on one side
    sim.run_for(1)
    owner.delete("gone", sim.now)
    owner.set("later", "x", sim.now)
    sim.run_for(20)  # the tombstone is collected everywhere reachable
    assert "gone" not in owner._me.kv  # noqa: SLF001
    assert sim.nodes["n3"].state_of("n1").get("gone") == "soon"
    sim.heal()
    assert sim.run_until_true(
        lambda: sim.nodes["n3"].state_of("n1") == {"kept": "yes", "later": "x"}, 60
    )
    assert sim.run_until_true(sim.converged, 60)


def opened(out: list) -> list[tuple[tuple[str, int], wire.Message]]:  # type: ignore[type-arg]
    return [(o.address, wire.decode(RING.open(o.data, b"hypha")).message) for o in out]


def test_a_join_is_a_push_pull_sync_and_the_seed_spreads_the_joiner_at_once() -> None:
    seed = node("seed")
    others = [node(f"m{i}") for i in range(4)]
    for m in others:  # the seed knows four members; no gossip pending
        seed.receive(packet(m, wire.Gossip()), m.address, 0.0)
    seed.tick(seed.next_deadline())
    seed.take_events()
    joiner = node("joiner")
    [syn] = joiner.join([seed.address], 1.0)
    assert syn.address == seed.address
    # The seed learns the joiner from the SYN, answers with the whole membership it
    # lacks, and pushes the joiner's arrival to gossip_nodes members right away.
    replies = opened(seed.receive(syn.data, joiner.address, 1.0))
    assert kinds(seed) == [("joined", "joiner")]
    [(to, synack)] = [(a, m) for a, m in replies if isinstance(m, wire.SynAck)]
    assert to == joiner.address
    assert {d.name for d in synack.delta} == {"seed", "m0", "m1", "m2", "m3"}
    pushed = [(a, m) for a, m in replies if isinstance(m, wire.Gossip)]
    assert len(pushed) == LAN.gossip_nodes
    assert all(wire.Alive("joiner", 1, 0, joiner.address) in m.updates for _, m in pushed)
    # One round trip: the joiner knows everyone.
    out = [o for o in seed.receive(syn.data, joiner.address, 1.0) if o.address == joiner.address]
    for o in out:
        joiner.receive(o.data, seed.address, 1.01)
    assert {m.name for m in joiner.members()} == {"joiner", "seed", "m0", "m1", "m2", "m3"}
    assert {m.state for m in joiner.members()} == {"alive"}


def test_news_of_a_death_is_pushed_at_once_but_not_more_than_every_quarter_round() -> None:
    a, b, c, d = node("a"), node("b"), node("c"), node("d")
    for m in (a, c, d):
        b.receive(packet(m, wire.Gossip()), m.address, 0.0)
    b.tick(b.next_deadline())  # the joins' early pushes are done
    now = b._last_gossip + LAN.gossip_interval / 2  # noqa: SLF001
    out = opened(b.receive(packet(c, wire.Gossip((wire.Dead("a", 1, 0, "c"),))), c.address, now))
    assert len([m for _, m in out if isinstance(m, wire.Gossip)]) == min(3, LAN.gossip_nodes)
    assert b.counters["gossip_eager"] >= 1
    eager = b.counters["gossip_eager"]
    # A second death right after waits for the rate limit (a quarter gossip interval).
    out = opened(b.receive(packet(c, wire.Gossip((wire.Dead("d", 1, 0, "c"),))), c.address, now))
    assert [m for _, m in out if isinstance(m, wire.Gossip)] == []
    assert b.counters["gossip_eager"] == eager
    # Suspicions are not pushed early (on a lossy network they come in storms).
    b2 = node("b2")
    for m in (a, c, d):
        b2.receive(packet(m, wire.Gossip()), m.address, 0.0)
    b2.tick(b2.next_deadline())
    t = b2._last_gossip + LAN.gossip_interval / 2  # noqa: SLF001
    out = opened(b2.receive(packet(c, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), c.address, t))
    assert [m for _, m in out if isinstance(m, wire.Gossip)] == []


def test_a_missing_ack_gets_a_second_direct_ping_with_the_indirect_ones() -> None:
    a, b, c, d, e = node("a"), node("b"), node("c"), node("d"), node("e")
    for m in (b, c, d, e):
        a.receive(packet(m, wire.Gossip()), m.address, 0.0)
    t = 0.0
    while "probes" not in a.counters:  # run to the first probe
        t = a.next_deadline()
        a.tick(t)
    probe = a._probe  # noqa: SLF001
    assert probe is not None
    target = a.member(probe.target)
    assert target is not None
    while a.counters.get("indirect_probes", 0) == 0:
        t = a.next_deadline()
        out = opened(a.tick(t))
    pings = [(addr, m) for addr, m in out if isinstance(m, wire.Ping)]
    assert pings == [(target.address, wire.Ping(probe.seq, target.name, pings[0][1].updates))]
    assert len([m for _, m in out if isinstance(m, wire.PingReq)]) == 3
    assert a.counters["probe_retries"] == 1


def test_before_the_verdict_the_suspect_is_pinged_and_its_ack_refutes() -> None:
    # c suspects a; b believes it, and a's refutation gossip never reaches b (lost on a
    # lossy network). In the last probe timeouts before its deadline, b pings a with the
    # suspicion; a refutes, and its ack carries the new incarnation back to b.
    a, b = node("a"), node("b")
    b.receive(packet(a, wire.Gossip()), a.address, 0.0)
    b.receive(packet(a, wire.Gossip((wire.Suspect("a", 1, 0, "c"),))), ("c", 1), 1.0)
    kinds(b)
    deadline = 1.0 + 4.0  # two members: the minimum, 4 s, and no confirmations wanted
    last_words: list[wire.Ping] = []
    t = 1.0
    while not last_words:
        t = b.next_deadline()
        assert t < deadline, "no ping to the suspect before its deadline"
        out = opened(b.tick(t))
        if b.counters.get("last_word_pings"):
            last_words = [m for _, m in out if isinstance(m, wire.Ping)]
            assert [addr for addr, m in out if isinstance(m, wire.Ping)] == [a.address]
            assert last_words[0].target == "a"
            assert wire.Suspect("a", 1, 0, "b") in last_words[0].updates
    assert t >= deadline - 8 * LAN.probe_timeout  # only near the verdict: a corpse costs little
    me = wire.Sender("b", 1, 0, b.address)
    replies = a.receive(RING.seal(wire.encode(me, last_words[0]), b"hypha"), b.address, t)
    assert a.incarnation == 1
    for reply in replies:
        if reply.address == b.address:
            b.receive(reply.data, a.address, t + 0.01)
    assert b.member("a").state == "alive"  # type: ignore[union-attr]
    b.take_events()
    while t < deadline + 1:
        t = b.next_deadline()
        b.tick(t)
    # b's own probes of a go unanswered here, so it may suspect (and kill) incarnation
    # 1 anew; the refuted incarnation 0 never dies.
    dead = [e.member for e in b.take_events() if isinstance(e, MemberEvent) and e.kind == "dead"]
    assert [m.incarnation for m in dead if m.name == "a"] in ([], [1])


def test_key_updates_keep_half_of_each_packet_in_a_suspicion_storm() -> None:
    # A lossy network fills the membership queue with fresh suspicions faster than
    # packets drain it; a key update already sent once must still go out at once, not
    # after every fresh suspicion (it would reach the last members through anti-entropy).
    b = node("b")
    members = [f"m{i:03d}" for i in range(300)]
    b.preload([(m, 1, 0, (m, 1)) for m in members], 0.0)
    b.set("load", "0.42", 0.0)
    update = wire.KeyUpdate("b", 1, "load", "0.42", 1)
    first = opened(b.receive(packet(node("m000"), wire.Ping(1, "b")), ("m000", 1), 0.1))
    assert any(update in m.updates for _, m in first if isinstance(m, wire.Ack))
    for m in members:  # 300 fresh suspicions: several packets' worth
        b.receive(packet(node("m000"), wire.Gossip((wire.Suspect(m, 1, 0, "x"),))), ("x", 1), 0.2)
    out = opened(b.receive(packet(node("m001"), wire.Ping(2, "b")), ("m001", 1), 0.3))
    [(_, ack)] = [(a, m) for a, m in out if isinstance(m, wire.Ack)]
    assert update in ack.updates
    suspicions = [u for u in ack.updates if isinstance(u, wire.Suspect)]
    assert len(suspicions) >= 10  # membership still gets its half


def test_a_packet_with_its_own_updates_still_fits_when_the_queue_is_full() -> None:
    b = node("b")
    members = [f"m{i:03d}" for i in range(300)]
    b.preload([(m, 1, 0, (m, 1)) for m in members], 0.0)
    for m in members:
        b.receive(packet(node("m000"), wire.Gossip((wire.Suspect(m, 1, 0, "x"),))), ("x", 1), 0.1)
    accusation = wire.Suspect("m007", 1, 0, "b")
    b._emit(("m007", 1), wire.Ping(9, "m007", (accusation,)))  # noqa: SLF001
    [out] = b._take_out()  # noqa: SLF001
    assert len(out.data) <= LAN.mtu
    ping = wire.decode(RING.open(out.data, b"hypha")).message
    assert isinstance(ping, wire.Ping) and ping.updates[0] == accusation and len(ping.updates) > 10


def test_a_key_update_about_an_unknown_or_half_known_member_pulls_its_range() -> None:
    # A joiner still catching up hears a key update about a member it does not know
    # yet: it syncs the name range from that member with the sender at once, instead
    # of waiting for random anti-entropy to visit it (about once a minute at N=1000).
    s, j = node("s"), node("j")
    x = node("x")
    s.receive(packet(x, wire.Gossip()), x.address, 0.0)
    s.receive(packet(x, wire.Gossip((wire.KeyUpdate("x", 1, "load", "0.42", 1),))), x.address, 0.0)
    j.receive(packet(s, wire.Gossip()), s.address, 0.0)
    update = wire.KeyUpdate("x", 1, "load", "0.42", 1)
    out = opened(j.receive(packet(s, wire.Gossip((update,))), s.address, 1.0))
    [(to, syn)] = [(a, m) for a, m in out if isinstance(m, wire.Syn)]
    assert to == s.address and syn.lo == "x"
    assert j.counters["gap_pulls"] == 1
    # At most one pull per gossip interval.
    later = opened(j.receive(packet(s, wire.Gossip((update,))), s.address, 1.01))
    assert [m for _, m in later if isinstance(m, wire.Syn)] == []
    me = wire.Sender("j", 1, 0, j.address)
    for reply in s.receive(RING.seal(wire.encode(me, syn), b"hypha"), j.address, 1.0):
        if reply.address == j.address:
            j.receive(reply.data, s.address, 1.01)
    assert j.state_of("x") == {"load": "0.42"}
    # A known member whose update leaves a gap below it (version 3 over watermark 1);
    # (s is still busy answering j's catch-up chain, so this one pulls from x).
    gap = wire.KeyUpdate("x", 1, "zone", "a", 3)
    out = opened(j.receive(packet(x, wire.Gossip((gap,))), x.address, 2.0))
    assert [(a, m.lo) for a, m in out if isinstance(m, wire.Syn)] == [(x.address, "x")]
