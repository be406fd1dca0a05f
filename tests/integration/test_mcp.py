"""``hypha mcp`` through the MCP SDK's own client over stdio."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from agent import __version__
from agent.errors import HyphaError
from tests.integration.agents import LocalCluster

TOOLS = {
    "workload_create",
    "workload_scale",
    "workload_delete",
    "workload_list",
    "cluster_status",
    "node_drain",
    "scheduler_hint",
}


def server_params(api: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "agent", "--api", api, "mcp"])


async def with_session(api: str, fn: Any) -> Any:
    async with (
        stdio_client(server_params(api)) as (read, write),
        ClientSession(read, write) as session,
    ):
        hello = await session.initialize()
        # Hypha's own version, not the SDK's.
        assert (hello.serverInfo.name, hello.serverInfo.version) == ("hypha", __version__)
        return await fn(session)


@pytest.mark.trio
async def test_tools_have_precise_schemas(tmp_path: Path) -> None:
    async def check(session: ClientSession) -> None:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        assert set(tools) == TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40
            assert tool.inputSchema["type"] == "object"
        create = tools["workload_create"].inputSchema
        assert set(create["required"]) == {"name", "command"}
        assert create["properties"]["replicas"]["maximum"] == 10_000
        assert create["properties"]["restart"]["enum"] == ["always", "on-failure", "never"]
        assert "pattern" in create["properties"]["name"]
        assert tools["workload_delete"].annotations.destructiveHint is True

    await with_session(f"unix:{tmp_path / 'none.sock'}", check)


@pytest.mark.trio
async def test_agent_errors_come_back_as_tool_errors(tmp_path: Path) -> None:
    async def check(session: ClientSession) -> None:
        result = await session.call_tool("workload_list", {})
        assert result.isError
        text = result.content[0].text  # type: ignore[union-attr]
        assert "cannot reach the agent" in text
        bad = await session.call_tool("workload_scale", {"name": "Bad Name!", "replicas": 1})
        assert bad.isError
        assert "name" in bad.content[0].text  # type: ignore[union-attr]

    await with_session(f"unix:{tmp_path / 'none.sock'}", check)


def _data(result: Any) -> Any:
    """A tool's answer (JSON text in its first content block), or fail with its error."""
    text = result.content[0].text if result.content else ""
    assert not result.isError, text
    return json.loads(text)


LOOP = ["sh", "-c", "while true; do sleep 1; done"]


@pytest.mark.slow
@pytest.mark.trio
async def test_tools_end_to_end_against_real_agents(shared_cluster: LocalCluster) -> None:
    """Through the SDK's stdio client against three real agents: status, a hint,
    create, list, scale, drain a node, undrain it, delete, and an agent error."""
    cluster = shared_cluster
    names = {a.name for a in cluster.agents}

    async def replicas_of(session: ClientSession, name: str) -> list[dict[str, Any]]:
        listed = _data(await session.call_tool("workload_list", {}))
        return [r for r in listed["replicas"] if r["workload"] == name]

    async def until(
        session: ClientSession, name: str, what: str, ok: Callable[[list[dict[str, Any]]], bool]
    ) -> list[dict[str, Any]]:
        with trio.move_on_after(90):
            while True:
                rows = await replicas_of(session, name)
                if ok(rows):
                    return rows
                await trio.sleep(0.5)
        raise AssertionError(f"timed out waiting for {what}: {rows}")

    def all_running(count: int) -> Callable[[list[dict[str, Any]]], bool]:
        return lambda rows: len(rows) == count and all(r["state"] == "running" for r in rows)

    async def flow(session: ClientSession) -> None:
        status = _data(await session.call_tool("cluster_status", {}))
        assert {n["name"] for n in status["nodes"]} == names
        assert status["status"]["leader_node"] in names

        hint = _data(
            await session.call_tool(
                "scheduler_hint", {"name": "mcp-web", "replicas": 2, "cpu": "50m", "memory": "16Mi"}
            )
        )
        assert hint["placed"] == 2 and not hint["exists"]
        assert {r["node"] for r in hint["replicas"]} <= names
        assert "would go on" in hint["text"]
        too_big = _data(
            await session.call_tool("scheduler_hint", {"name": "mcp-huge", "cpu": "100000"})
        )
        assert too_big["placed"] == 0
        assert "cannot be placed" in too_big["text"]
        assert too_big["replicas"][0]["rule"] == "resources"

        created = _data(
            await session.call_tool(
                "workload_create",
                {
                    "name": "mcp-web",
                    "command": LOOP,
                    "replicas": 2,
                    "cpu": "50m",
                    "memory": "16Mi",
                    "env": {"GREETING": "hello"},
                },
            )
        )
        assert created["name"] == "mcp-web" and created["version"] == 1
        await until(session, "mcp-web", "2 running", all_running(2))
        listed = _data(await session.call_tool("workload_list", {}))
        (web,) = [w for w in listed["workloads"] if w["name"] == "mcp-web"]
        assert web["replicas"] == 2 and web["spec"]["env"] == {"GREETING": "hello"}

        scaled = _data(
            await session.call_tool("workload_scale", {"name": "mcp-web", "replicas": 3})
        )
        assert scaled["replicas"] == 3
        rows = await until(session, "mcp-web", "3 running", all_running(3))

        node = rows[0]["node"]
        drained = _data(await session.call_tool("node_drain", {"node": node}))
        assert drained == {"name": node, "eligible": True, "draining": True}
        try:
            await until(
                session,
                "mcp-web",
                f"every replica off {node}",
                lambda rows: all_running(3)(rows) and all(r["node"] != node for r in rows),
            )
        finally:
            undrained = _data(
                await session.call_tool("node_drain", {"node": node, "draining": False})
            )
            assert undrained["draining"] is False

        deleted = _data(await session.call_tool("workload_delete", {"name": "mcp-web"}))
        assert deleted["deleted"] is True
        assert await replicas_of(session, "mcp-web") == []
        gone = await session.call_tool("workload_scale", {"name": "mcp-web", "replicas": 1})
        assert gone.isError
        assert "no workload named 'mcp-web'" in gone.content[0].text  # type: ignore[union-attr]

    try:
        await with_session(cluster.agents[1].api, flow)
    finally:
        with contextlib.suppress(HyphaError):
            cluster.client().delete("/v1/workloads/mcp-web")
