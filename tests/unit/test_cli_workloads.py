"""Workload commands against an in-process API with a scripted backend: what a user
reads when a workload is unknown, fails to start, or loses its image in an update."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from agent import workload_commands
from agent.api import ApiApp, Request, StreamResponse
from agent.cli import main
from agent.daemon import refuse_host_command_on_oci
from agent.errors import ConfigError, NotFoundError
from agent.nodes import NodeView
from agent.server import serve_api, unix_listener
from agent.spec import WorkloadSpec

LONG_ERROR = (
    'runc create failed: unable to start container process: exec: "/bin/serve": '
    "stat /bin/serve: no such file or directory"
)


class ScriptedBackend:
    """Workloads in a dict and the replica rows a test sets; records every write."""

    def __init__(self) -> None:
        self.workloads: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.puts: list[tuple[dict[str, Any], bool]] = []
        # Each logs() call serves the next (output, then) pair: ``then`` runs once the
        # output is sent, before the stream ends (the container ended meanwhile).
        self.log_streams: list[tuple[bytes, Callable[[], None]]] = []
        self.log_calls: list[tuple[str, int | None, bool]] = []
        # Replica rows that later list_replicas calls answer, one list per call (the
        # last one stays): node reports that change while a command polls.
        self.rows_ahead: list[list[dict[str, Any]]] = []
        # Node admin states, and the node rows later get_node calls answer, one per
        # call (the last one stays): a node's report of its containers as it changes.
        self.admin: dict[str, dict[str, bool]] = {}
        self.nodes_ahead: list[dict[str, Any]] = []
        # What /v1/events serves before it ends the stream.
        self.events: list[dict[str, Any]] = []

    def add(self, spec: dict[str, Any], rows: list[dict[str, Any]]) -> None:
        parsed = WorkloadSpec.from_dict(spec)
        self.workloads[parsed.name] = {
            "name": parsed.name,
            "version": 1,
            "spec": parsed.to_dict(),
            "replicas": parsed.replicas,
            "running": sum(1 for r in rows if r["state"] == "running"),
            "tenant": "default",
            "replica_states": rows,
        }
        self.rows = rows

    async def list_workloads(self) -> list[dict[str, Any]]:
        return list(self.workloads.values())

    async def get_workload(self, name: str) -> dict[str, Any]:
        if name not in self.workloads:
            raise NotFoundError(f"no workload named {name!r} (see `hypha ps`)")
        return self.workloads[name]

    async def put_workload(
        self, spec: dict[str, Any], *, create: bool, expected_version: int | None
    ) -> dict[str, Any]:
        parsed = WorkloadSpec.from_dict(spec)
        self.puts.append((parsed.to_dict(), create))
        if create:
            self.add(spec, self.rows)
        return {"name": parsed.name, "version": 2, "changed": True}

    async def scale_workload(self, name: str, replicas: int) -> dict[str, Any]:
        await self.get_workload(name)
        return {"name": name, "replicas": replicas, "version": 2}

    async def delete_workload(self, name: str) -> dict[str, Any]:
        await self.get_workload(name)
        return {"name": name, "deleted": True}

    async def list_replicas(self, workload: str | None) -> list[dict[str, Any]]:
        if self.rows_ahead:
            self.rows = self.rows_ahead.pop(0)
        return [copy.deepcopy(r) for r in self.rows if workload in (None, r["workload"])]

    async def list_nodes(self) -> list[dict[str, Any]]:
        return []

    async def get_node(self, name: str) -> dict[str, Any]:
        if not self.nodes_ahead or self.nodes_ahead[0]["name"] != name:
            raise NotFoundError(f"no node named {name!r}")
        return self.nodes_ahead.pop(0) if len(self.nodes_ahead) > 1 else self.nodes_ahead[0]

    async def set_node_admin(
        self, name: str, *, draining: bool | None, eligible: bool | None
    ) -> dict[str, Any]:
        admin = self.admin.setdefault(name, {"draining": False, "eligible": True})
        if draining is not None:
            admin["draining"] = draining
        if eligible is not None:
            admin["eligible"] = eligible
        return {"name": name, **admin}

    async def plan_workload(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {"name": WorkloadSpec.from_dict(spec).name, "replicas": []}

    async def members(self) -> list[dict[str, Any]]:
        return []

    async def status(self) -> dict[str, Any]:
        return {}

    async def logs(self, replica: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        if not self.log_streams:
            raise NotFoundError(f"no replica named {replica!r}")
        self.log_calls.append((replica, tail, follow))
        output, then = self.log_streams.pop(0)
        yield output
        then()

    async def h_events(self, request: Request) -> StreamResponse:
        async def lines() -> AsyncIterator[bytes]:
            yield b"".join(json.dumps(e).encode() + b"\n" for e in self.events) or b"\n"

        return StreamResponse(lines(), "application/x-ndjson")


def row(rid: str, state: str, **extra: Any) -> dict[str, Any]:
    return {
        "replica_id": rid,
        "workload": rid.rpartition("-")[0],
        "node": "n1",
        "state": state,
        "version": 1,
        "exit_code": None,
        "restarts": 0,
        "health": None,
        "error": None,
        "started_at": None,
        **extra,
    }


class Cli:
    """Runs ``hypha ARGS`` (``agent.cli.main``) in a thread against the test's API."""

    def __init__(self, api: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.api = api
        self.capsys = capsys

    async def __call__(self, *args: str) -> tuple[int, str, str]:
        def run() -> int:
            try:
                main(["--api", self.api, *args])
            except SystemExit as exc:
                return int(exc.code or 0)
            return 0

        self.capsys.readouterr()
        code = await trio.to_thread.run_sync(run)
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend()


@pytest.fixture
async def hypha(
    nursery: trio.Nursery,
    tmp_path: Path,
    backend: ScriptedBackend,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    path = tmp_path / "api.sock"
    app = ApiApp(backend, extra_routes=[("GET", "/v1/events", backend.h_events)])
    await nursery.start(serve_api, app, unix_listener(path))
    return Cli(f"unix:{path}", capsys)


WEB = {"name": "web", "command": ["serve"], "replicas": 2}


async def test_ps_of_an_unknown_workload_says_so(hypha: Cli) -> None:
    code, out, err = await hypha("ps", "ghost")
    assert code == 1
    assert out == ""
    assert err == "hypha: error: no workload named 'ghost' (see `hypha ps`)\n"


async def test_ps_and_inspect_show_the_whole_note(hypha: Cli, backend: ScriptedBackend) -> None:
    backend.add(WEB, [row("web-0", "running"), row("web-1", "failed", error=LONG_ERROR)])
    for args in (["ps"], ["ps", "web"], ["inspect", "web"]):
        code, out, _ = await hypha(*args)
        assert code == 0
        assert any(line.endswith(LONG_ERROR) for line in out.splitlines()), out


async def test_wait_stops_at_a_replica_that_failed_to_start_for_good(
    hypha: Cli, backend: ScriptedBackend
) -> None:
    backend.rows = [
        row("web-0", "running"),
        row("web-1", "failed", restarts=2, error=LONG_ERROR),
    ]
    # It must end because of the failure (before the fix: after the whole timeout).
    code, _, err = await hypha("run", "web", "-n", "2", "--wait", "--timeout", "30", "--", "x")
    assert code == 1
    assert err.splitlines()[-1] == (
        f"hypha: error: 1 replica of web failed for good; web-1 on n1: failed to start "
        f"2 times: {LONG_ERROR}"
    )
    code, _, err = await hypha("scale", "web", "2", "--wait", "--timeout", "30")
    assert code == 1
    assert err.splitlines()[-1].endswith(LONG_ERROR)


async def test_wait_stops_at_a_replica_that_exited_and_will_not_restart(
    hypha: Cli, backend: ScriptedBackend
) -> None:
    backend.rows = [row("web-0", "exited", exit_code=127)]
    code, _, err = await hypha("run", "web", "--wait", "--timeout", "30", "--", "x")
    assert code == 1
    assert err.splitlines()[-1] == (
        "hypha: error: 1 replica of web failed for good; web-0 on n1: exited with code 127 "
        "and will not restart"
    )


@pytest.mark.parametrize(
    "other",
    [
        row("web-1", "starting"),
        row("web-1", "failed", restarts=1, error="first try"),  # may be passing trouble
        row("web-1", "backoff", exit_code=1),  # will be started again
        row("web-1", "pending", error="no node has 2 CPUs free"),
    ],
)
async def test_wait_goes_on_while_a_replica_may_still_run(
    hypha: Cli, backend: ScriptedBackend, other: dict[str, Any]
) -> None:
    backend.rows = [row("web-0", "failed", restarts=3, error=LONG_ERROR), other]
    code, _, err = await hypha("run", "web", "-n", "2", "--wait", "--timeout", "0", "--", "x")
    assert code == 1
    assert "not every replica of web was running after 0s" in err.splitlines()[-1]


OCI_WEB = {**WEB, "image": "/srv/rootfs/web"}


async def test_an_update_that_drops_the_image_is_refused(
    hypha: Cli, backend: ScriptedBackend, tmp_path: Path
) -> None:
    backend.add(OCI_WEB, [])
    file = tmp_path / "web.toml"
    file.write_text('name = "web"\ncommand = ["serve", "--v2"]\nreplicas = 2\n')
    code, _, err = await hypha("update", "-f", str(file))
    assert code == 1
    assert err == (
        "hypha: error: the update removes the image of web (now /srv/rootfs/web) and would "
        'run its command on the host: keep it with --image DIR or image = "..." in '
        f"{file}, or pass --no-image if that is what you want\n"
    )
    assert backend.puts == []

    code, out, _ = await hypha("update", "-f", str(file), "--image", "/srv/rootfs/web")
    assert code == 0, out
    assert backend.puts[-1][0]["image"] == "/srv/rootfs/web"
    assert backend.puts[-1][0]["command"] == ["serve", "--v2"]

    code, out, _ = await hypha("update", "-f", str(file), "--no-image")
    assert code == 0
    assert backend.puts[-1][0]["image"] is None
    assert out == "workload web updated to version 2\n"


async def test_update_image_takes_a_relative_path_as_run_does(
    hypha: Cli, backend: ScriptedBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend.add(OCI_WEB, [])
    file = tmp_path / "web.toml"
    file.write_text('name = "web"\nimage = "/old"\ncommand = ["serve"]\n')
    monkeypatch.chdir(tmp_path)
    code, _, err = await hypha("update", "-f", str(file), "--image", "rootfs")
    assert code == 0, err
    assert backend.puts[-1][0]["image"] == str(tmp_path / "rootfs")
    code, _, err = await hypha("update", "-f", str(file), "--image", "/x", "--no-image")
    assert code == 1
    assert err == "hypha: error: give --image or --no-image, not both\n"


# -- following: logs -f across restarts and moves, events -f when the agent stops ------


async def test_logs_follow_goes_on_across_a_restart_and_a_move(
    hypha: Cli, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workload_commands, "LOG_FOLLOW_POLL", 0.0)
    backend.add(WEB, [row("web-0", "running", started_at=100.0)])

    def killed() -> None:
        # n1's report lags: first still the old container, then its exit, then the new one.
        backend.rows_ahead = [
            [row("web-0", "running", started_at=100.0)],
            [row("web-0", "backoff", exit_code=137, started_at=100.0)],
            [row("web-0", "running", started_at=200.0, restarts=1)],
        ]

    def drained() -> None:
        backend.rows_ahead = [[row("web-0", "running", node="n2", started_at=300.0)]]

    def removed() -> None:
        backend.workloads.clear()
        backend.rows = []

    backend.log_streams = [(b"one\n", killed), (b"two\n", drained), (b"three\n", removed)]
    code, out, err = await hypha("logs", "web-0", "-f", "--tail", "5")
    assert out == "one\ntwo\nthree\n"
    assert err.splitlines() == [
        "hypha: web-0 restarted on n1; following",
        "hypha: web-0 moved to n2; following",
        "hypha: error: web-0 is gone: workload web was removed",
    ]
    assert code == 1
    # The first stream from --tail, the next ones from their start.
    assert backend.log_calls == [("web-0", 5, True), ("web-0", None, True), ("web-0", None, True)]


@pytest.mark.parametrize(
    ("after", "code", "last"),
    [
        ([row("web-0", "completed", exit_code=0)], 0, "hypha: web-0 completed"),
        (
            [row("web-0", "exited", exit_code=3)],
            1,
            "hypha: error: web-0 exited with code 3 on n1 and will not restart",
        ),
        ([row("web-1", "running")], 1, "hypha: error: web-0 is gone: web now has 1 replica(s)"),
    ],
)
async def test_logs_follow_ends_with_what_became_of_the_replica(
    hypha: Cli,
    backend: ScriptedBackend,
    monkeypatch: pytest.MonkeyPatch,
    after: list[dict[str, Any]],
    code: int,
    last: str,
) -> None:
    monkeypatch.setattr(workload_commands, "LOG_FOLLOW_POLL", 0.0)
    backend.add(WEB, [row("web-0", "running", started_at=100.0)])
    backend.log_streams = [(b"out\n", lambda: setattr(backend, "rows", after))]
    result = await hypha("logs", "web-0", "-f")
    assert (result[0], result[1], result[2].splitlines()) == (code, "out\n", [last])


async def test_logs_without_follow_print_once(hypha: Cli, backend: ScriptedBackend) -> None:
    backend.add(WEB, [row("web-0", "running", started_at=100.0)])
    backend.log_streams = [(b"out\n", lambda: None)]
    assert await hypha("logs", "web-0") == (0, "out\n", "")
    assert backend.log_calls == [("web-0", None, False)]


async def test_events_follow_says_when_the_agent_ends_the_stream(
    hypha: Cli, backend: ScriptedBackend
) -> None:
    backend.events = [{"seq": 1, "time": 0, "kind": "member.joined", "message": "node n2 joined"}]
    code, out, err = await hypha("events", "-f")
    assert code == 1
    assert "member.joined" in out
    assert err == "hypha: error: the agent closed the event stream (did it stop?)\n"
    # Without --follow the end of the history is the end asked for.
    code, out, err = await hypha("events")
    assert (code, err) == (0, "")
    assert "member.joined" in out


# -- drains ----------------------------------------------------------------------------


async def test_drain_wait_ends_when_the_node_has_no_container_left(
    hypha: Cli, backend: ScriptedBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(workload_commands, "DRAIN_POLL", 0.0)
    # web-0 moved to n2 and runs there; n1 still reports its old container (in its
    # stop grace) twice more, then nothing.
    backend.rows = [row("web-0", "running", node="n2")]
    backend.nodes_ahead = [
        {"name": "n1", "replicas": ["web-0"]},
        {"name": "n1", "replicas": ["web-0"]},
        {"name": "n1", "replicas": []},
    ]
    code, out, err = await hypha("drain", "n1", "--wait")
    assert code == 0
    assert out == "node n1: draining, eligible\n"
    assert err.splitlines() == [
        "n1: 0 replica(s) to move, 1 handing off or stopping",
        "n1: 0 replica(s) to move, 0 handing off or stopping",
        "n1 is drained: no replica is placed on it and no container is left",
    ]
    assert backend.nodes_ahead == [{"name": "n1", "replicas": []}]  # it asked until then


async def test_drain_undo_refuses_wait_and_eligible_points_to_it(
    hypha: Cli, backend: ScriptedBackend
) -> None:
    code, out, err = await hypha("drain", "n1", "--undo", "--wait")
    assert (code, out) == (2, "")
    assert err == (
        "hypha: error: --wait waits until a drain has emptied the node; --undo takes effect "
        "at once (see `hypha drain --help`)\n"
    )
    assert backend.admin == {}  # refused before anything changed

    assert (await hypha("drain", "n1"))[:2] == (0, "node n1: draining, eligible\n")
    code, out, err = await hypha("eligible", "n1")
    assert (code, out) == (0, "node n1: draining, eligible\n")
    assert err == (
        "hypha: n1 still drains and takes no new work; `hypha drain n1 --undo` ends the drain\n"
    )
    assert await hypha("drain", "n1", "--undo") == (0, "node n1: not draining, eligible\n", "")
    assert await hypha("eligible", "n1") == (0, "node n1: not draining, eligible\n", "")


@pytest.mark.parametrize(
    ("command", "text"),
    [
        (["scale"], "Seconds --wait waits before giving up"),
        (["drain"], "Seconds --wait waits before giving up"),
        (["update"], "Seconds --wait waits before giving up"),
        (["update"], "--image ROOTFS_OR_LAYOUT"),
        (["run"], "CPU per replica in cores"),
        (["agent"], "in millicores (4000 = 4 cores)"),
    ],
)
async def test_help_says_what_each_option_means(hypha: Cli, command: list[str], text: str) -> None:
    code, out, _ = await hypha(*command, "--help")
    assert code == 0
    assert text in " ".join(out.split()), out


# -- the oci driver and specs without an image ---------------------------------------


def views(*nodes: tuple[str, str | None, dict[str, str]]) -> dict[str, NodeView]:
    return {
        name: NodeView(name=name, liveness="alive", driver=driver, labels=labels)
        for name, driver, labels in nodes
    }


OCI = "oci: runc 1.1.12 at /usr/sbin/runc (asked for)"
PROCESS = "process: plain child processes (asked for)"


def test_a_spec_without_an_image_is_refused_when_only_oci_nodes_could_take_it() -> None:
    spec = WorkloadSpec.from_dict(WEB)
    with pytest.raises(ConfigError) as info:
        refuse_host_command_on_oci(spec, views(("n1", OCI, {}), ("n2", OCI, {})))
    assert str(info.value) == (
        "image: web has none, so its command would run on the host, but every node that "
        "could take it runs the oci driver (n1, n2): give an image (--image DIR, or "
        'image = "..." in the spec file), or run the agents with --driver process'
    )
    # A process node the spec may use: fine.
    refuse_host_command_on_oci(spec, views(("n1", OCI, {}), ("n2", PROCESS, {})))
    # ... but not one its constraints keep it off.
    constrained = WorkloadSpec.from_dict({**WEB, "constraints": ["disk==ssd"]})
    with pytest.raises(ConfigError, match=r"oci driver \(n1\)"):
        refuse_host_command_on_oci(
            constrained, views(("n1", OCI, {"disk": "ssd"}), ("n2", PROCESS, {}))
        )
    # A node that has not published its driver yet, an image, no node at all: fine.
    refuse_host_command_on_oci(spec, views(("n1", OCI, {}), ("n2", None, {})))
    refuse_host_command_on_oci(WorkloadSpec.from_dict(OCI_WEB), views(("n1", OCI, {})))
    refuse_host_command_on_oci(spec, {})
