"""Read commands that ask the local agent: ``members`` and ``status``.

More commands register themselves on ``agent.cli.cli`` from their own modules.
"""

from __future__ import annotations

import time

import click

from agent.cli import CliState, cli, emit_json, json_option, print_table


@cli.command()
@json_option
@click.pass_obj
def members(state: CliState, as_json: bool) -> None:
    """Show the cluster's members as this agent's gossip sees them."""
    data = state.client().get("/v1/members")
    if as_json:
        emit_json(data)
        return
    rows = [
        (
            m.get("name"),
            m.get("address"),
            m.get("state"),
            m.get("incarnation"),
            m.get("generation"),
            _since(m.get("since")),
        )
        for m in data.get("members", [])
    ]
    print_table(["NAME", "ADDRESS", "STATE", "INCARNATION", "GENERATION", "SINCE"], rows)


def _since(stamp: float | None) -> str:
    """How long ago a member's state last changed, for people (``--json`` has the time)."""
    if not stamp:
        return "-"
    seconds = max(0, int(time.time() - stamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@cli.command()
@json_option
@click.pass_obj
def status(state: CliState, as_json: bool) -> None:
    """Show the cluster: Raft leader, term, commit index, voters and replicas."""
    data = state.client().get("/v1/status")
    if as_json:
        emit_json(data)
        return
    shown = [
        ("node", "node"),
        ("state", "raft role"),
        ("leader_node", "leader"),
        ("last_leader_node", "last leader"),
        ("leader", "leader raft"),
        ("term", "term"),
        ("commit_index", "commit index"),
        ("voters", "voters"),
        ("replicas", "raft replicas"),
        ("members_alive", "members alive"),
        ("workloads", "workloads"),
        ("placements", "placements"),
        ("driver", "driver"),
        ("api", "api"),
        ("version", "version"),
        ("rescheduling_paused", "paused"),
    ]
    keys = [(k, label) for k, label in shown if k in data] or [(k, k) for k in sorted(data)]
    for key, label in keys:
        value = data[key]
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "-"
        elif value is None:
            value = "- (none in sight)" if key == "leader_node" else "-"
        click.echo(f"{label + ':':<15}{value}")
