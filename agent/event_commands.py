"""``hypha events``: what happened in the cluster, from the agent's event stream."""

from __future__ import annotations

import json
import time
from typing import Any

import click

from agent.cli import CliState, cli
from agent.errors import ApiError, HyphaError
from agent.events import KINDS

KIND_HELP = "Only these kinds, or a prefix (repeatable): " + ", ".join(
    sorted({k.split(".")[0] for k in KINDS})
)


def format_event(event: dict[str, Any]) -> str:
    """One line for people: local time, kind, the event's message (warnings marked)."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(event.get("time", 0))))
    mark = "!" if event.get("level") == "warning" else " "
    return f"{stamp} {mark} {event.get('kind', '?'):<17} {event.get('message', '')}"


@cli.command()
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they happen.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
@click.option("--kind", "-k", "kinds", multiple=True, metavar="KIND", help=KIND_HELP)
@click.option(
    "--tail",
    "-n",
    type=click.IntRange(min=0),
    default=None,
    help="Only the last N events of the history (0: only new ones, with --follow).",
)
@click.option(
    "--since", type=click.IntRange(min=0), default=0, help="Only events after this sequence number."
)
@click.pass_obj
def events(
    state: CliState,
    follow: bool,
    as_json: bool,
    kinds: tuple[str, ...],
    tail: int | None,
    since: int,
) -> None:
    """Show cluster events: members joining and dying, leader changes, placements,
    replicas starting, moving and failing.

    The agent keeps the last 1000 events; `--follow` then streams new ones until
    Ctrl-C. Every agent sees the whole cluster's events.
    """
    query: dict[str, Any] = {
        "follow": "1" if follow else None,
        "kind": ",".join(kinds) or None,
        "limit": tail,
        "since": since or None,
    }
    try:
        for event in state.client().stream("/v1/events", query=query):
            if "error" in event and "kind" not in event:
                raise ApiError(str(event["error"]))
            if as_json:
                click.echo(json.dumps(event, sort_keys=True))
            else:
                click.echo(format_event(event))
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how a followed stream ends: not an error.
        return
    if follow:
        # Only the user ends a followed stream; the agent ending it means it stopped
        # (or is stopping): say so rather than exit 0 as if all were well.
        raise HyphaError("the agent closed the event stream (did it stop?)")
