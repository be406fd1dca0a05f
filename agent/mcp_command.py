"""``hypha mcp``: registered here so the CLI never imports the optional ``mcp`` SDK itself."""

from __future__ import annotations

import click

from agent.cli import CliState, cli
from agent.errors import HyphaError


@cli.command()
@click.pass_obj
def mcp(state: CliState) -> None:
    """Serve Hypha's tools to AI agents over MCP on stdio (needs hypha[mcp])."""
    try:
        from agent.mcp_server import serve_stdio
    except ImportError as exc:
        raise HyphaError(
            f"`hypha mcp` needs the mcp extra ({exc.name} is missing): pip install 'hypha[mcp]'"
        ) from exc
    serve_stdio(state.client)
