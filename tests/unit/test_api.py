"""The HTTP API on hypercorn/trio: routes, JSON errors, tokens, forwarding, streams."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.api import ApiApp
from agent.client import ApiClient
from agent.errors import ApiError, ConflictError, NotFoundError, NotLeaderError
from agent.peer import PeerClient
from agent.server import serve_api, tcp_listener, unix_listener
from agent.spec import WorkloadSpec


class FakeBackend:
    """Holds workloads in a dict; ``leader`` None means 'I am the leader'."""

    def __init__(self, leader: str | None = None) -> None:
        self.leader = leader
        self.workloads: dict[str, dict[str, Any]] = {}

    def _write(self) -> None:
        if self.leader is not None:
            raise NotLeaderError("not the leader", self.leader)

    async def list_workloads(self) -> list[dict[str, Any]]:
        return list(self.workloads.values())

    async def get_workload(self, name: str) -> dict[str, Any]:
        if name not in self.workloads:
            raise NotFoundError(f"no workload named {name!r}")
        return self.workloads[name]

    async def put_workload(
        self, spec: dict[str, Any], *, create: bool, expected_version: int | None
    ) -> dict[str, Any]:
        parsed = WorkloadSpec.from_dict(spec)
        self._write()
        if create and parsed.name in self.workloads:
            raise ConflictError(f"workload {parsed.name!r} already exists")
        self.workloads[parsed.name] = {"name": parsed.name, "version": 1, "spec": parsed.to_dict()}
        return {"name": parsed.name, "version": 1}

    async def scale_workload(self, name: str, replicas: int) -> dict[str, Any]:
        self._write()
        await self.get_workload(name)
        return {"name": name, "replicas": replicas}

    async def delete_workload(self, name: str) -> dict[str, Any]:
        self._write()
        await self.get_workload(name)
        del self.workloads[name]
        return {"name": name, "deleted": True}

    async def list_replicas(self, workload: str | None) -> list[dict[str, Any]]:
        return []

    async def list_nodes(self) -> list[dict[str, Any]]:
        return [{"name": "n1"}]

    async def get_node(self, name: str) -> dict[str, Any]:
        raise NotFoundError(f"no node named {name!r}")

    async def set_node_admin(
        self, name: str, *, draining: bool | None, eligible: bool | None
    ) -> dict[str, Any]:
        self._write()
        return {"name": name, "draining": draining, "eligible": eligible}

    async def plan_workload(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"name": WorkloadSpec.from_dict(spec).name, "replicas": []}

    async def members(self) -> list[dict[str, Any]]:
        return [{"name": "n1", "state": "alive"}]

    async def status(self) -> dict[str, Any]:
        return {"leader": "n1"}

    async def logs(self, replica: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        if replica != "web-0":
            raise NotFoundError(f"no replica named {replica!r}")
        yield b"hello\nwor"
        yield b"ld\n"


SPEC = {"name": "web", "command": ["sleep", "100"], "replicas": 2}


async def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_routes_and_errors_over_unix_socket(nursery: trio.Nursery, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    sock = unix_listener(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await nursery.start(serve_api, ApiApp(FakeBackend()), sock)
    client = ApiClient(f"unix:{path}")

    created = await call(client.post, "/v1/workloads", {"spec": SPEC})
    assert created == {"name": "web", "version": 1}
    listed = await call(client.get, "/v1/workloads")
    assert [w["name"] for w in listed["workloads"]] == ["web"]

    with pytest.raises(ConflictError, match="already exists"):
        await call(client.post, "/v1/workloads", {"spec": SPEC})
    with pytest.raises(NotFoundError, match="no workload named 'nope'"):
        await call(client.get, "/v1/workloads/nope")
    with pytest.raises(ApiError, match="replicas: must be 0..10000") as info:
        await call(client.post, "/v1/workloads", {"spec": {**SPEC, "replicas": -2}})
    assert info.value.status == 400
    with pytest.raises(ApiError, match="replicas: is required"):
        await call(client.post, "/v1/workloads/web/scale", {})
    with pytest.raises(ApiError, match="GET is not allowed on /v1/workloads/web/scale"):
        await call(client.get, "/v1/workloads/web/scale")
    with pytest.raises(NotFoundError, match="no such API route"):
        await call(client.get, "/v2/things")

    lines = await call(lambda: list(client.stream("/v1/logs/web-0")))
    assert lines == [{"line": "hello"}, {"line": "world"}]
    with pytest.raises(NotFoundError, match="no replica named 'web-9'"):
        await call(lambda: list(client.stream("/v1/logs/web-9")))


async def test_tcp_needs_the_token_and_followers_forward_writes(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    leader_backend = FakeBackend()
    leader_sock = tcp_listener("127.0.0.1", 0)
    leader_api = f"http://127.0.0.1:{leader_sock.getsockname()[1]}"
    await nursery.start(serve_api, ApiApp(leader_backend, tokens=["t" * 32]), leader_sock)

    with pytest.raises(ApiError, match="bearer token") as info:
        await call(ApiClient(leader_api).get, "/v1/status")
    assert info.value.status == 401
    assert await call(ApiClient(leader_api, token="t" * 32).get, "/v1/status") == {"leader": "n1"}

    path = tmp_path / "follower.sock"
    follower = FakeBackend(leader=leader_api)
    app = ApiApp(follower, peer=PeerClient("t" * 32))
    await nursery.start(serve_api, app, unix_listener(path))
    # The follower's local socket needs no token; the write lands on the leader.
    client = ApiClient(f"unix:{path}")
    created = await call(client.post, "/v1/workloads", {"spec": SPEC})
    assert created["name"] == "web"
    assert "web" in leader_backend.workloads and not follower.workloads
    with pytest.raises(NotFoundError, match="no workload named 'ghost'"):
        await call(client.delete, "/v1/workloads/ghost")


async def test_a_dead_leader_is_looked_up_again(nursery: trio.Nursery, tmp_path: Path) -> None:
    leader_backend = FakeBackend()
    leader_sock = tcp_listener("127.0.0.1", 0)
    leader_api = f"http://127.0.0.1:{leader_sock.getsockname()[1]}"
    await nursery.start(serve_api, ApiApp(leader_backend, tokens=["t" * 32]), leader_sock)
    dead = tcp_listener("127.0.0.1", 0)
    dead_api = f"http://127.0.0.1:{dead.getsockname()[1]}"
    dead.close()  # nothing listens there: the old leader just died

    follower = FakeBackend(leader=dead_api)
    path = tmp_path / "follower.sock"
    app = ApiApp(follower, peer=PeerClient("t" * 32))
    await nursery.start(serve_api, app, unix_listener(path))

    async def elect() -> None:
        await trio.sleep(1.0)
        follower.leader = leader_api

    nursery.start_soon(elect)
    client = ApiClient(f"unix:{path}")
    created = await call(client.post, "/v1/workloads", {"spec": SPEC})
    assert created["name"] == "web" and "web" in leader_backend.workloads
