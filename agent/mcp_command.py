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
    try:
        serve_stdio(state.client)
    except BaseExceptionGroup as group:
        # The client closed its end of stdio while a reply was being written: it has
        # gone, which ends the session; anything else is a real error.
        _gone, rest = group.split((BrokenPipeError, ConnectionResetError))
        if rest is not None:
            raise
