"""``hypha mcp``: an MCP server over stdio so AI agents can operate a Hypha cluster.

It is a thin client of the local agent's HTTP API, built on the official ``mcp``
Python SDK (install ``hypha[mcp]``). Each tool has a JSON schema generated from
its annotated parameters and a description written for a model: what it does,
when to use it, what it returns. Errors from the agent (a bad field, an unknown
workload, no leader) come back as tool errors carrying the agent's message, never
as a crashed server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import anyio
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from agent import __version__
from agent.client import ApiClient, path_of
from agent.errors import HyphaError

INSTRUCTIONS = """\
Hypha is a container orchestrator with no central control plane. These tools talk
to one Hypha agent's API; writes are forwarded to the Raft leader and return once
committed. A workload is a named set of identical replicas (containers or
processes); the scheduler places each replica on a node. Use cluster_status first
to see nodes and their free capacity, scheduler_hint to ask where a workload would
go (and what would make it fit) before creating it, and workload_list to see what
runs and where."""

Name = Annotated[
    str,
    Field(
        description="Workload name: lowercase letters, digits and '-', 1-48 characters.",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,46}[a-z0-9])?$",
    ),
]
Replicas = Annotated[int, Field(ge=0, le=10_000, description="How many replicas should run.")]


def build_spec(
    name: str,
    command: list[str],
    replicas: int,
    image: str | None,
    cpu: str | None,
    memory: str | None,
    env: dict[str, str] | None,
    restart: str,
    labels: dict[str, str] | None,
) -> dict[str, Any]:
    """The API's workload spec from the tool's flat arguments."""
    spec: dict[str, Any] = {"name": name, "command": list(command), "replicas": replicas}
    if image:
        spec["image"] = image
    resources = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    if resources:
        spec["resources"] = resources
    if env:
        spec["env"] = dict(env)
    if labels:
        spec["labels"] = dict(labels)
    spec["restart"] = {"policy": restart}
    return spec


def create_server(client_factory: Callable[[], ApiClient]) -> FastMCP:
    """The MCP server with every Hypha tool, talking to the agent ``client_factory`` gives."""
    # WARNING: the SDK logs every request at INFO on stderr, which an MCP client shows.
    server = FastMCP("hypha", instructions=INSTRUCTIONS, log_level="WARNING")
    # FastMCP takes no version; without one the SDK reports its own in serverInfo.
    server._mcp_server.version = __version__

    async def call(method: str, path: str, body: Any = None) -> Any:
        def blocking() -> Any:
            return client_factory().request(method, path, body)

        try:
            return await anyio.to_thread.run_sync(blocking)
        except HyphaError as exc:
            raise ToolError(str(exc)) from exc

    writes = ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=False)

    @server.tool(
        description="Create a workload: run REPLICAS copies of COMMAND, placed by the "
        "scheduler across the cluster. Returns the committed workload (spec and version). "
        "Fails with the agent's message if a field is invalid or the name is taken.",
        annotations=writes,
    )
    async def workload_create(
        name: Name,
        command: Annotated[
            list[str],
            Field(min_length=1, description="Program and arguments, e.g. ['sleep', '3600']."),
        ],
        replicas: Replicas = 1,
        image: Annotated[
            str | None,
            Field(
                description="Root filesystem directory or OCI image layout on every node. "
                "Leave out with the process driver (runs the command on the host)."
            ),
        ] = None,
        cpu: Annotated[
            str | None, Field(description="CPU per replica: cores ('0.5') or millicores ('250m').")
        ] = None,
        memory: Annotated[
            str | None, Field(description="Memory per replica, e.g. '64Mi' or '1Gi'.")
        ] = None,
        env: Annotated[
            dict[str, str] | None, Field(description="Environment variables for the command.")
        ] = None,
        restart: Annotated[
            Literal["always", "on-failure", "never"],
            Field(description="Restart policy when a replica exits."),
        ] = "always",
        labels: Annotated[
            dict[str, str] | None, Field(description="Free-form labels on the workload.")
        ] = None,
    ) -> dict[str, Any]:
        spec = build_spec(name, command, replicas, image, cpu, memory, env, restart, labels)
        result: dict[str, Any] = await call("POST", "/v1/workloads", {"spec": spec})
        return result

    @server.tool(
        description="Change how many replicas of a workload should run (0 keeps the "
        "workload but stops every replica). Returns the committed workload.",
        annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True),
    )
    async def workload_scale(name: Name, replicas: Replicas) -> dict[str, Any]:
        path = path_of("v1", "workloads", name, "scale")
        result: dict[str, Any] = await call("POST", path, {"replicas": replicas})
        return result

    @server.tool(
        description="Delete a workload: every replica is stopped and removed. Cannot be undone.",
        annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True),
    )
    async def workload_delete(name: Name) -> dict[str, Any]:
        result = await call("DELETE", path_of("v1", "workloads", name))
        return result if isinstance(result, dict) else {"deleted": name}

    @server.tool(
        description="List every workload with its desired replica count, version, and each "
        "replica's node and state (running, exited with code, pending).",
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    async def workload_list() -> dict[str, Any]:
        workloads = await call("GET", "/v1/workloads")
        replicas = await call("GET", "/v1/replicas")
        return {
            "workloads": _items(workloads, "workloads"),
            "replicas": _items(replicas, "replicas"),
        }

    @server.tool(
        description="The cluster at a glance: Raft leader, term and voters; every node with "
        "its liveness (alive, suspect, dead, left), admin state (eligible, draining), "
        "capacity and allocation.",
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    async def cluster_status() -> dict[str, Any]:
        status = await call("GET", "/v1/status")
        nodes = await call("GET", "/v1/nodes")
        return {"status": status, "nodes": _items(nodes, "nodes")}

    @server.tool(
        description="Drain a node: its replicas move to other nodes and it gets no new work "
        "(draining=false makes it take work again). Returns the node's admin state.",
        annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True),
    )
    async def node_drain(
        node: Annotated[str, Field(description="The node's name, as cluster_status shows it.")],
        draining: Annotated[bool, Field(description="true to drain, false to undo.")] = True,
    ) -> dict[str, Any]:
        path = path_of("v1", "nodes", node, "drain")
        result: dict[str, Any] = await call("POST", path, {"draining": draining})
        return result

    @server.tool(
        description="Ask the scheduler where a workload would go without creating it: the "
        "node chosen for each replica and why, or, when it does not fit, which rule or "
        "resource blocked it and what would make it fit.",
        annotations=ToolAnnotations(readOnlyHint=True),
    )
    async def scheduler_hint(
        name: Name,
        replicas: Replicas = 1,
        cpu: Annotated[str | None, Field(description="CPU per replica, e.g. '500m'.")] = None,
        memory: Annotated[str | None, Field(description="Memory per replica, e.g. '1Gi'.")] = None,
        command: Annotated[
            list[str] | None, Field(description="Program and arguments (optional for a hint).")
        ] = None,
    ) -> dict[str, Any]:
        spec = build_spec(
            name, command or ["true"], replicas, None, cpu, memory, None, "always", None
        )
        result: dict[str, Any] = await call("POST", "/v1/plan", {"spec": spec})
        return result

    return server


def _items(data: Any, key: str) -> Any:
    return data.get(key, data) if isinstance(data, dict) else data


def serve_stdio(client_factory: Callable[[], ApiClient]) -> None:
    """Run the server on stdin/stdout until the client closes it."""
    create_server(client_factory).run("stdio")
