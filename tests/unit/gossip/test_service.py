"""The trio driver on real UDP sockets on loopback (in one process, a few seconds)."""

from __future__ import annotations

import time

import pytest
import trio

from gossip import (
    ConfigError,
    GossipConfig,
    GossipError,
    GossipService,
    JoinError,
    KeyChanged,
    Keyring,
    MemberEvent,
)

CONFIG = GossipConfig.local()
RING = Keyring(bytes(range(32)))


def service(name: str, host: str, keyring: Keyring = RING) -> GossipService:
    return GossipService(CONFIG, name=name, bind=(host, 0), keyring=keyring, rng_seed=1)


async def wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def test_join_state_events_and_leave() -> None:
    a, b, c = service("a", "127.0.0.11"), service("b", "127.0.0.12"), service("c", "127.0.0.13")
    async with trio.open_nursery() as nursery:
        addr_a = await nursery.start(a.serve)
        await nursery.start(b.serve)
        await nursery.start(c.serve)
        assert addr_a[0] == "127.0.0.11" and addr_a[1] > 0
        events = a.subscribe()
        assert await a.join([addr_a], 1.0) == 1  # only ourselves: we are the cluster
        assert await b.join([addr_a], 5.0) >= 2
        assert await c.join([("127.0.0.11", addr_a[1])], 5.0) >= 2
        await wait_for(
            lambda: all(len([m for m in s.members() if m.state == "alive"]) == 3 for s in (a, b, c))
        )
        b.set("api", '{"port": 8080}')
        await wait_for(lambda: c.state_of("b").get("api") == '{"port": 8080}')
        assert a.states()["b"] == {"api": '{"port": 8080}'}
        b.delete("api")
        await wait_for(lambda: "api" not in c.state_of("b"))
        await c.leave(2.0)
        await wait_for(lambda: any(m.name == "c" and m.state == "left" for m in a.members()))
        seen: list[object] = []
        while True:
            try:
                seen.append(events.receive_nowait())
            except trio.WouldBlock:
                break
        kinds = {(e.kind, e.member.name) for e in seen if isinstance(e, MemberEvent)}
        assert {("joined", "b"), ("joined", "c"), ("left", "c")} <= kinds
        assert KeyChanged("b", "api", '{"port": 8080}') in seen
        since = next(m.since for m in a.members() if m.name == "c")
        assert abs(since - time.time()) < 30  # wall clock
        counters = a.counters()
        assert counters["packets_received"] > 0 and counters["bytes_sent"] > 0
        nursery.cancel_scope.cancel()


async def test_join_fails_clearly_when_no_seed_answers() -> None:
    a = service("a", "127.0.0.14")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        # A bound socket nobody reads from: the datagrams vanish.
        with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as silent:
            await silent.bind(("127.0.0.15", 0))
            port = silent.getsockname()[1]
            with pytest.raises(JoinError, match=rf"none of 127.0.0.15:{port} answered within 1s"):
                await a.join([("127.0.0.15", port)], 1.0)
        nursery.cancel_scope.cancel()


async def test_a_member_with_another_key_cannot_join_and_drops_are_counted() -> None:
    a, b = service("a", "127.0.0.16"), service("b", "127.0.0.17", Keyring(bytes(32)))
    async with trio.open_nursery() as nursery:
        addr_a = await nursery.start(a.serve)
        await nursery.start(b.serve)
        with pytest.raises(JoinError):
            await b.join([addr_a], 0.6)
        assert a.counters()["drops_auth"] >= 1
        assert [m.name for m in a.members()] == ["a"]
        nursery.cancel_scope.cancel()


async def test_bind_errors_are_gossip_errors() -> None:
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as taken:
        await taken.bind(("127.0.0.18", 0))
        port = taken.getsockname()[1]
        with pytest.raises(
            GossipError, match=f"cannot bind gossip UDP socket to 127.0.0.18:{port}"
        ):
            await (
                service("a", "127.0.0.18")
                .__class__(CONFIG, name="a", bind=("127.0.0.18", port), keyring=RING)
                .serve()
            )
    with pytest.raises(ConfigError, match="pass advertise"):
        await GossipService(CONFIG, name="a", bind=("0.0.0.0", 0), keyring=RING).serve()
