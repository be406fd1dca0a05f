"""The HTTP API on hypercorn/trio: routes, JSON errors, tokens, forwarding, streams."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from agent.api import ApiApp, current_request_id
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


class ReplicatedBackend(FakeBackend):
    """A leader whose applied writes are remembered by request id in state shared with
    the next leader, as the Raft state machine does."""

    def __init__(self, applied: dict[str, dict[str, Any]], *, hang: bool = False) -> None:
        super().__init__()
        self.applied = applied
        self.hang = hang
        self.seen: list[str | None] = []

    async def put_workload(
        self, spec: dict[str, Any], *, create: bool, expected_version: int | None
    ) -> dict[str, Any]:
        request_id = current_request_id()
        self.seen.append(request_id)
        assert request_id is not None
        if request_id in self.applied:
            return self.applied[request_id]  # a retry: answered, not applied again
        result = await super().put_workload(spec, create=create, expected_version=expected_version)
        self.applied[request_id] = result
        if self.hang:
            await trio.sleep_forever()  # committed, then died before answering
        return result


async def test_a_write_whose_answer_was_lost_is_retried_once_with_its_request_id(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    applied: dict[str, dict[str, Any]] = {}
    old = ReplicatedBackend(applied, hang=True)
    new = ReplicatedBackend(applied)
    new.workloads = old.workloads  # one replicated state
    apis = []
    for backend in (old, new):
        sock = tcp_listener("127.0.0.1", 0)
        apis.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
        await nursery.start(serve_api, ApiApp(backend, tokens=["t" * 32]), sock)

    follower = FakeBackend(leader=apis[0])
    path = tmp_path / "follower.sock"
    app = ApiApp(follower, peer=PeerClient("t" * 32, timeout=1.0))
    await nursery.start(serve_api, app, unix_listener(path))

    async def elect() -> None:
        while not old.seen:
            await trio.sleep(0.05)
        follower.leader = apis[1]

    nursery.start_soon(elect)
    created = await call(ApiClient(f"unix:{path}").post, "/v1/workloads", {"spec": SPEC})
    # Without the request id the new leader would answer 409 "already exists" to a
    # create that did apply (the soak's "impossible acknowledged write").
    assert created == {"name": "web", "version": 1}
    assert len(applied) == 1
    assert old.seen == new.seen and old.seen[0] is not None


async def test_a_client_may_name_its_write_and_a_bad_name_is_refused(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    backend = ReplicatedBackend({})
    path = tmp_path / "api.sock"
    await nursery.start(serve_api, ApiApp(backend), unix_listener(path))
    client = ApiClient(f"unix:{path}")

    def post(request_id: str) -> Any:
        import json
        import socket

        body = json.dumps({"spec": SPEC}).encode()
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(
                b"POST /v1/workloads HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"x-hypha-request-id: {request_id}\r\ncontent-length: {len(body)}\r\n"
                "connection: close\r\n\r\n".encode()
                + body
            )
            return b"".join(iter(lambda: s.recv(65536), b""))

    first = await trio.to_thread.run_sync(post, "job-1")
    again = await trio.to_thread.run_sync(post, "job-1")
    assert b" 201 " in first.split(b"\r\n")[0] and b" 201 " in again.split(b"\r\n")[0]
    assert backend.seen == ["job-1", "job-1"]
    bad = await trio.to_thread.run_sync(post, "no spaces allowed")
    assert b" 400 " in bad.split(b"\r\n")[0] and b"x-hypha-request-id" in bad
    assert (await call(client.get, "/v1/workloads"))["workloads"][0]["name"] == "web"


async def test_a_follower_answers_a_forwarded_write_once_it_has_applied_it(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """Read your writes: the leader says how far it had applied; the follower waits to
    apply as far before answering, so a read through it right after sees the write."""

    class Leader(FakeBackend):
        def applied_index(self) -> int:
            return 42

    class Follower(FakeBackend):
        waited: list[tuple[int, float]] = []

        async def wait_applied(self, index: int, timeout: float) -> None:
            self.waited.append((index, timeout))

    leader_sock = tcp_listener("127.0.0.1", 0)
    leader_api = f"http://127.0.0.1:{leader_sock.getsockname()[1]}"
    await nursery.start(serve_api, ApiApp(Leader(), tokens=["t" * 32]), leader_sock)
    follower = Follower(leader=leader_api)
    path = tmp_path / "follower.sock"
    await nursery.start(serve_api, ApiApp(follower, peer=PeerClient("t" * 32)), unix_listener(path))
    created = await call(ApiClient(f"unix:{path}").post, "/v1/workloads", {"spec": SPEC})
    assert created == {"name": "web", "version": 1}  # the index is not shown to clients
    assert [index for index, _ in follower.waited] == [42]


@pytest.mark.parametrize("route", ["/v1/plan", "/v1/workloads", "/v1/workloads/web"])
@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": float("nan")}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": float("inf")}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": "1e400"}, "resources.cpu: must be a finite number of cores"),
        ({"memory": 1.5}, "resources.memory: expected a size like 512Mi"),
    ],
)
async def test_a_spec_with_a_bad_number_is_a_400_not_a_500(
    nursery: trio.Nursery, tmp_path: Path, route: str, resources: dict[str, Any], message: str
) -> None:
    """JSON carries NaN and Infinity (Python's json reads them): the spec refuses them."""
    path = tmp_path / "api.sock"
    backend = FakeBackend()
    backend.workloads["web"] = {"name": "web", "version": 1, "spec": SPEC}
    await nursery.start(serve_api, ApiApp(backend), unix_listener(path))
    client = ApiClient(f"unix:{path}")
    method = client.put if route == "/v1/workloads/web" else client.post
    with pytest.raises(ApiError, match=message) as info:
        await call(method, route, {"spec": {**SPEC, "resources": resources}})
    assert info.value.status == 400
