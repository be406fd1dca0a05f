"""``hypha mcp`` through the MCP SDK's own client over stdio."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

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
        await session.initialize()
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
