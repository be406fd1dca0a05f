"""Workload and node commands: ``run``, ``ps``, ``inspect``, ``scale``, ``rm``, ``logs``,
``drain``, ``eligible``, ``nodes``. Each is a thin client of the local agent's API."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from agent.cli import CliState, ReplicaCount, Seconds, cli, emit_json, json_option, print_table
from agent.client import ApiClient, path_of
from agent.errors import ConfigError, HyphaError, NotFoundError
from agent.spec import (
    Constraint,
    RestartPolicy,
    WorkloadSpec,
    parse_cpu,
    parse_env_flags,
    split_replica_id,
)


def _ago(stamp: float | None) -> str:
    if not stamp:
        return "-"
    seconds = max(0, int(time.time() - stamp))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _size(value: int | None) -> str:
    if not value:
        return "-"
    for unit, size in (("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if value >= size:
            return f"{value / size:.0f}{unit}" if value % size == 0 else f"{value / size:.1f}{unit}"
    return str(value)


def spec_from_flags(
    name: str | None,
    file: Path | None,
    image: str | None,
    replicas: int | None,
    cpu: str | None,
    memory: str | None,
    env: tuple[str, ...],
    restart: str | None,
    constraints: tuple[str, ...],
    command: tuple[str, ...],
) -> WorkloadSpec:
    """Build a spec from ``-f FILE`` and/or flags (flags override the file)."""
    data: dict[str, Any] = {}
    if file is not None:
        data = WorkloadSpec.load(file).to_dict()
    elif name is None:
        raise ConfigError("give a workload NAME (and a command after --), or -f FILE")
    if name is not None:
        data["name"] = name
    if image is not None:
        data["image"] = (
            str(Path(image).expanduser().resolve()) if not image.startswith("/") else image
        )
    if replicas is not None:
        data["replicas"] = replicas
    if cpu is not None or memory is not None:
        resources = dict(data.get("resources", {}))
        if cpu is not None:
            resources.pop("cpu_millicores", None)
            resources["cpu_millicores"] = parse_cpu(cpu, key="--cpu")
        if memory is not None:
            resources.pop("memory_bytes", None)
            resources["memory"] = memory
        data["resources"] = resources
    if env:
        data["env"] = {**data.get("env", {}), **parse_env_flags(env)}
    if restart is not None:
        data["restart"] = RestartPolicy.parse(restart).to_dict()
    if constraints:
        data["constraints"] = [
            *data.get("constraints", []),
            *(Constraint.parse(c).to_dict() for c in constraints),
        ]
    if command:
        data["command"] = list(command)
    return WorkloadSpec.from_dict(data)


def wait_timeout_option(default: float, after: str = "") -> Callable[[Any], Any]:
    """``--timeout``: how long ``--wait`` waits (what goes on after it gives up)."""
    note = f"; {after}" if after else ""
    return click.option(
        "--timeout",
        type=Seconds(),
        default=default,
        show_default=True,
        help=f"Seconds --wait waits before giving up (exit 1{note}).",
    )


@cli.command(context_settings={"ignore_unknown_options": False})
@click.argument("name", required=False)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option(
    "-f",
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A workload spec file (TOML or JSON); flags override its fields.",
)
@click.option(
    "--image",
    metavar="ROOTFS_OR_LAYOUT",
    help="Root filesystem dir or OCI image layout (same path on every node); "
    "leave out with the process driver to run on the host.",
)
@click.option("--replicas", "-n", type=ReplicaCount(), help="How many copies [1].")
@click.option(
    "--cpu",
    metavar="CORES",
    help="CPU per replica in cores (0.5, 2) or millicores with an m suffix (250m) [100m].",
)
@click.option("--memory", metavar="SIZE", help="Memory per replica: 64Mi, 1Gi [64Mi].")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", help="Environment (repeatable).")
@click.option("--restart", metavar="POLICY", help="always | on-failure[:N] | never [always].")
@click.option(
    "--constraint",
    "constraints",
    multiple=True,
    metavar="RULE",
    help="Node label rule: zone==a, disk!=hdd, 'zone in a,b', gpu, !gpu.",
)
@click.option("--wait/--no-wait", default=False, help="Wait until every replica runs.")
@wait_timeout_option(60.0)
@click.option("--dry-run", is_flag=True, help="Only show where the replicas would go, and why.")
@json_option
@click.pass_obj
def run(
    state: CliState,
    name: str | None,
    command: tuple[str, ...],
    file: Path | None,
    image: str | None,
    replicas: int | None,
    cpu: str | None,
    memory: str | None,
    env: tuple[str, ...],
    restart: str | None,
    constraints: tuple[str, ...],
    wait: bool,
    timeout: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Run a workload: `hypha run web --replicas 3 -- httpd -f -p 8080`, or `-f web.toml`."""
    if file is not None and name is not None and not command and Path(name).suffix:
        raise ConfigError("give either -f FILE or NAME, not a file name as NAME")
    spec = spec_from_flags(
        name, file, image, replicas, cpu, memory, env, restart, constraints, command
    )
    client = state.client()
    if dry_run:
        planned = client.post("/v1/plan", {"spec": spec.to_dict()})
        if as_json:
            emit_json(planned)
            return
        rows = [
            (r["replica_id"], r.get("node") or "-", r.get("reason") or "")
            for r in planned["replicas"]
        ]
        print_table(["REPLICA", "NODE", "WHY NOT"], rows)
        if planned.get("text"):
            click.echo("")
            click.echo(planned["text"])
        return
    result = client.post("/v1/workloads", {"spec": spec.to_dict()})
    if not wait:
        if as_json:
            emit_json(result)
        else:
            count = (
                "one replica per eligible node"
                if spec.type == "system"
                else f"{spec.replicas} replicas"
            )
            click.echo(f"workload {spec.name} created (version {result.get('version')}, {count})")
        return
    if spec.type == "batch":
        status = wait_for_batch(state, spec.name, timeout, quiet=as_json)
        if as_json:
            emit_json({**result, "status": status})
        if status != "complete":
            raise HyphaError(f"batch job {spec.name} ended {status} (see `hypha ps {spec.name}`)")
        return
    replicas = spec.replicas
    if spec.type == "system":
        time.sleep(1.0)  # the leader sets the count
        replicas = client.get(path_of("v1", "workloads", spec.name))["replicas"]
    ok = wait_for_replicas(state, spec.name, replicas, timeout, quiet=as_json)
    if as_json:
        emit_json({**result, "running": ok})
    if not ok:
        raise HyphaError(
            f"not every replica of {spec.name} was running after {timeout:.0f}s "
            f"(see `hypha inspect {spec.name}`)"
        )


def wait_for_batch(state: CliState, name: str, timeout: float, *, quiet: bool = False) -> str:
    """Poll a batch job until it is complete or failed; print each change."""
    client = state.client()
    deadline = time.monotonic() + timeout
    last = ""
    status = "running"
    while time.monotonic() < deadline:
        rows = client.get(path_of("v1", "workloads", name, "replicas"))["replicas"]
        status = str(client.get(path_of("v1", "workloads", name)).get("status", "running"))
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        line = (
            f"{name}: {status} (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ")"
        )
        if not quiet and line != last:
            click.echo(line, err=True)
            last = line
        if status in ("complete", "failed"):
            return status
        time.sleep(0.5)
    return status


def wait_for_replicas(
    state: CliState, name: str, replicas: int, timeout: float, *, quiet: bool = False
) -> bool:
    """Poll until ``replicas`` replicas run; print a progress line. True if they all did."""
    client = state.client()
    deadline = time.monotonic() + timeout
    tty = sys.stderr.isatty()
    last = ""
    while True:
        rows = client.get(path_of("v1", "workloads", name, "replicas"))["replicas"]
        counts: dict[str, int] = {}
        for row in rows:
            counts[row["state"]] = counts.get(row["state"], 0) + 1
        running = counts.get("running", 0)
        detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()) if s != "running")
        line = f"{name}: {running}/{replicas} running" + (f" ({detail})" if detail else "")
        if not quiet and line != last:
            if tty:
                click.echo("\r\033[K" + line, nl=False, err=True)
            else:
                click.echo(line, err=True)
            last = line
        if running >= replicas and len(rows) == replicas:
            if tty and not quiet:
                click.echo("", err=True)
            return True
        given_up = [r for r in rows if r["state"] != "running" and failed_for_good(r)]
        waiting = [r for r in rows if r["state"] != "running" and not failed_for_good(r)]
        if given_up and not waiting:
            if tty and not quiet:
                click.echo("", err=True)
            raise ReplicasFailedError(name, given_up)
        if time.monotonic() >= deadline:
            if tty and not quiet:
                click.echo("", err=True)
            return False
        time.sleep(0.25)


#: A start the runtime refused this many times in a row is taken as refused for good.
START_FAILURES_FOR_GOOD = 2


def failed_for_good(row: dict[str, Any]) -> bool:
    """Whether waiting longer for this replica to run is pointless.

    ``exited``: it ended and its restart policy starts it no more. ``failed``: the
    runtime refused to start it (a missing image or binary, a bad rootfs); its node
    retries with backoff for ever, but the same spec on the same node fails the same
    way, so after ``START_FAILURES_FOR_GOOD`` refusals in a row (``restarts`` counts
    them) only a change of the spec or of the node helps."""
    if row.get("state") == "exited":
        return True
    return row.get("state") == "failed" and int(row.get("restarts") or 0) >= (
        START_FAILURES_FOR_GOOD
    )


def failure_reason(row: dict[str, Any]) -> str:
    """``web-0 on n1: <the full error>`` for the error line."""
    where = f"{row['replica_id']} on {row.get('node') or '-'}"
    if row.get("state") == "exited":
        what = f"exited with code {row.get('exit_code')} and will not restart"
        return f"{where}: {what}" + (f" ({row['error']})" if row.get("error") else "")
    return f"{where}: failed to start {row.get('restarts')} times: {row.get('error') or '?'}"


class ReplicasFailedError(HyphaError):
    """Every replica that does not run has failed for good: ``--wait`` stops early."""

    def __init__(self, name: str, rows: list[dict[str, Any]]) -> None:
        count = f"{len(rows)} replica{'s' if len(rows) != 1 else ''}"
        super().__init__(f"{count} of {name} failed for good; {failure_reason(rows[0])}")
        self.rows = rows


@cli.command()
@click.argument("workload", required=False)
@click.option("--all", "-a", "show_all", is_flag=True, help="(kept for habit; ps shows all).")
@json_option
@click.pass_obj
def ps(state: CliState, workload: str | None, show_all: bool, as_json: bool) -> None:
    """List replicas: where each runs, its state, restarts and exit code."""
    client = state.client()
    if workload:
        # This route answers 404 for an unknown workload, as inspect, scale and rm do.
        data = client.get(path_of("v1", "workloads", workload, "replicas"))
    else:
        data = client.get("/v1/replicas")
    if as_json:
        emit_json(data)
        return
    rows = []
    for r in data["replicas"]:
        state_text = r["state"]
        if r.get("exit_code") is not None and state_text != "running":
            state_text += f" ({r['exit_code']})"
        rows.append(
            (
                r["replica_id"],
                r["workload"],
                r.get("node") or "-",
                state_text,
                r.get("health") or "-",
                r.get("restarts", 0),
                _ago(r.get("started_at")) if r["state"] == "running" else "-",
                r.get("error") or "",  # last column: never cut, the terminal wraps it
            )
        )
    print_table(["REPLICA", "WORKLOAD", "NODE", "STATE", "HEALTH", "RESTARTS", "UP", "NOTE"], rows)


@cli.command()
@click.argument("name")
@json_option
@click.pass_obj
def inspect(state: CliState, name: str, as_json: bool) -> None:
    """Show a workload: its spec, version and every replica."""
    data = state.client().get(path_of("v1", "workloads", name))
    if as_json:
        emit_json(data)
        return
    spec = data["spec"]
    res = spec.get("resources", {})
    restart = spec.get("restart", {})
    click.echo(f"name:        {data['name']}")
    click.echo(f"version:     {data['version']}")
    click.echo(f"replicas:    {data['running']}/{data['replicas']} running")
    click.echo(f"tenant:      {data.get('tenant')}")
    click.echo(f"image:       {spec.get('image') or '(host, process driver)'}")
    click.echo(f"command:     {' '.join(spec.get('command', []))}")
    click.echo(
        f"resources:   cpu {res.get('cpu_millicores')}m, memory "
        f"{_size(res.get('memory_bytes'))}, pids {res.get('pids') or '-'}"
    )
    attempts = restart.get("max_attempts")
    click.echo(
        f"restart:     {restart.get('policy')}"
        + (f" (at most {attempts} attempts)" if attempts is not None else "")
    )
    if spec.get("env"):
        click.echo("env:         " + " ".join(f"{k}={v}" for k, v in sorted(spec["env"].items())))
    if spec.get("constraints"):
        click.echo(
            "constraints: "
            + ", ".join(
                f"{c['label']} {c['op']} {','.join(c['values'])}" for c in spec["constraints"]
            )
        )
    inspect_extras(spec)
    click.echo("")
    rows = [
        (
            r["replica_id"],
            r.get("node") or "-",
            r["state"],
            r.get("health") or "-",
            r.get("version") if r.get("version") is not None else "-",
            r.get("exit_code") if r.get("exit_code") is not None else "-",
            r.get("restarts", 0),
            r.get("error") or "",  # last column: never cut, the terminal wraps it
        )
        for r in data.get("replica_states", [])
    ]
    print_table(["REPLICA", "NODE", "STATE", "HEALTH", "VERSION", "EXIT", "RESTARTS", "NOTE"], rows)
    inspect_deployment(data)


def inspect_extras(spec: dict[str, Any]) -> None:
    """The issue-8 parts of a spec: job type, health check, update and drain policies."""
    click.echo(f"type:        {spec.get('type', 'service')}")
    health = spec.get("health")
    if health:
        what = (
            " ".join(health["command"])
            if health.get("command")
            else f"tcp {health.get('host')}:{health.get('tcp')}"
        )
        click.echo(
            f"health:      {what} every {health['interval']:g}s (timeout "
            f"{health['timeout']:g}s, {health['retries']} retries, start period "
            f"{health['start_period']:g}s)"
        )
    update = spec.get("update")
    if update:
        click.echo(
            f"update:      {update['max_parallel']} at a time, healthy for "
            f"{update['min_healthy']:g}s within {update['healthy_deadline']:g}s"
            + (", auto-revert" if update.get("auto_revert") else "")
        )
    drain = spec.get("drain")
    if drain:
        click.echo(f"drain:       at most {drain['max_unavailable']} unavailable at a time")


def inspect_deployment(data: dict[str, Any]) -> None:
    """The rolling update in progress (if any) and the history of versions."""
    deployment = data.get("deployment")
    if deployment:
        click.echo("")
        click.echo(
            f"update:      version {deployment.get('version')}: {deployment.get('status')}"
            f" ({deployment.get('updated', 0)}/{deployment.get('total', 0)} replicas updated"
            f", {deployment.get('healthy', 0)} healthy)"
            + (f": {deployment['message']}" if deployment.get("message") else "")
        )
    history = data.get("history") or []
    if history:
        click.echo("")
        print_table(
            ["VERSION", "STATUS", "CHANGE"],
            [
                (
                    h.get("version_range") or h.get("version"),
                    h.get("status", ""),
                    h.get("change", ""),
                )
                for h in history
            ],
        )


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("replicas", type=ReplicaCount())
@click.option("--wait/--no-wait", default=False, help="Wait until that many replicas run.")
@wait_timeout_option(60.0)
@json_option
@click.pass_obj
def scale(
    state: CliState, name: str, replicas: int, wait: bool, timeout: float, as_json: bool
) -> None:
    """Change how many replicas of a workload run."""
    result = state.client().post(path_of("v1", "workloads", name, "scale"), {"replicas": replicas})
    if wait and not wait_for_replicas(state, name, replicas, timeout, quiet=as_json):
        raise HyphaError(f"{name} did not reach {replicas} running replicas in {timeout:.0f}s")
    if as_json:
        emit_json(result)
    else:
        click.echo(f"workload {name} scaled to {replicas} (version {result.get('version')})")


@cli.command()
@click.argument("names", nargs=-1, required=True)
@json_option
@click.pass_obj
def rm(state: CliState, names: tuple[str, ...], as_json: bool) -> None:
    """Remove workloads; their containers are stopped everywhere."""
    client = state.client()
    results = [client.delete(path_of("v1", "workloads", name)) for name in names]
    if as_json:
        emit_json(results)
    else:
        for name in names:
            click.echo(f"workload {name} removed")


@cli.command()
@click.argument("replica")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Keep printing new output until Ctrl-C, across restarts and moves to other nodes.",
)
@click.option("--tail", "-n", type=click.IntRange(0), default=None, help="Only the last N lines.")
@click.pass_obj
def logs(state: CliState, replica: str, follow: bool, tail: int | None) -> None:
    """Print a replica's output (stdout and stderr), from whichever node runs it.

    With --follow, when its container ends and the replica runs again (restarted, or
    moved to another node by a drain or a node failure), a line on stderr says so and
    the new container's output follows from its start. It ends with exit 1 when the
    replica is gone (its workload removed or scaled down) or exited for good, with
    exit 0 when it completed."""
    client = state.client()
    if not follow:
        _print_log_stream(client, replica, tail=tail, follow=False)
        return
    workload, _ = split_replica_id(replica)
    # What we follow: a container is its node and its start time. Looked up before the
    # stream opens, so a restart in between is seen as one after it.
    try:
        row = _replica_row(client, workload, replica)
    except HyphaError:
        row = None  # the stream below says what is wrong
    _print_log_stream(client, replica, tail=tail, follow=True)
    seen = _container_of(row)
    while True:
        row = _wait_for_next_container(client, workload, replica, seen)
        if row is None:
            return  # completed: its whole output is printed
        how = "restarted on" if row.get("node") == seen[0] else "moved to"
        click.echo(f"hypha: {replica} {how} {row.get('node')}; following", err=True)
        seen = _container_of(row)
        try:
            _print_log_stream(client, replica, tail=None, follow=True)
        except NotFoundError:
            continue  # gone again before its output could be read: look once more


def _print_log_stream(client: ApiClient, replica: str, *, tail: int | None, follow: bool) -> None:
    query = {"tail": tail, "follow": "1" if follow else None}
    for item in client.stream(path_of("v1", "logs", replica), query=query):
        if "error" in item:
            raise HyphaError(str(item["error"]))
        click.echo(item.get("line", ""))


def _container_of(row: dict[str, Any] | None) -> tuple[str | None, float | None]:
    """Which container a replica row is about: its node and when it started."""
    if row is None:
        return (None, None)
    return (row.get("node"), row.get("started_at"))


class ReplicaGoneError(HyphaError):
    """The replica a command follows no longer exists (workload removed or scaled down)."""


def _replica_row(client: ApiClient, workload: str, replica: str) -> dict[str, Any]:
    try:
        rows = client.get(path_of("v1", "workloads", workload, "replicas"))["replicas"]
    except NotFoundError:
        raise ReplicaGoneError(f"{replica} is gone: workload {workload} was removed") from None
    for row in rows:
        if row["replica_id"] == replica:
            return dict(row)
    raise ReplicaGoneError(f"{replica} is gone: {workload} now has {len(rows)} replica(s)")


#: How often ``logs -f`` asks whether a replica whose container ended runs again.
LOG_FOLLOW_POLL = 0.5


def _wait_for_next_container(
    client: ApiClient, workload: str, replica: str, seen: tuple[str | None, float | None]
) -> dict[str, Any] | None:
    """After a followed container ended: wait until the replica runs in another one (a
    restart, or a move to another node) and return its row; None if it completed.
    Raises when it is gone or exited for good. A row that still shows the container
    just followed as running is its node's report lagging behind: wait for the next."""
    while True:
        row = _replica_row(client, workload, replica)
        if row["state"] == "running" and _container_of(row) != seen:
            return row
        if row["state"] == "completed":
            click.echo(f"hypha: {replica} completed", err=True)
            return None
        if row["state"] == "exited":
            raise HyphaError(
                f"{replica} exited with code {row.get('exit_code')} on {row.get('node')} "
                "and will not restart"
            )
        time.sleep(LOG_FOLLOW_POLL)


def _node_admin(
    state: CliState, node: str, route: str, body: dict[str, Any], as_json: bool
) -> dict[str, Any]:
    result: dict[str, Any] = state.client().post(path_of("v1", "nodes", node, route), body)
    if as_json:
        emit_json(result)
        return result
    flags = []
    flags.append("draining" if result.get("draining") else "not draining")
    flags.append("eligible" if result.get("eligible") else "ineligible")
    click.echo(f"node {node}: {', '.join(flags)}")
    return result


@cli.command()
@click.argument("node")
@click.option("--undo", is_flag=True, help="Stop draining (the node takes work again).")
@click.option(
    "--wait",
    is_flag=True,
    help="Show progress until no replica is placed on NODE and no container is left on it "
    "(not with --undo).",
)
@wait_timeout_option(300.0, "the drain goes on")
@json_option
@click.pass_obj
def drain(
    state: CliState, node: str, undo: bool, wait: bool, timeout: float, as_json: bool
) -> None:
    """Move every replica off NODE and give it no new work.

    Replicas move at most their workload's drain.max_unavailable at a time, and a
    service's old replica keeps running until its replacement runs elsewhere.
    `--undo` ends the drain: NODE takes new work again (what moved away stays away)."""
    if undo and wait:
        # Nothing comes back to an undrained node by itself: there is nothing to wait for.
        raise click.UsageError(
            "--wait waits until a drain has emptied the node; --undo takes effect at once"
        )
    _node_admin(state, node, "drain", {"draining": not undo}, as_json and not wait)
    if wait:
        left = wait_for_drain(state, node, timeout, quiet=as_json)
        if as_json:
            emit_json({"name": node, "draining": True, "left": left})
        if left:
            raise HyphaError(
                f"{node} still holds {left} replica(s) after {timeout:.0f}s "
                f"(see `hypha ps` for why they cannot move)"
            )


def wait_for_drain(state: CliState, node: str, timeout: float, *, quiet: bool = False) -> int:
    """Poll until no replica is placed on NODE (completed batch replicas stay where
    they ran) and NODE reports no container (a moved replica's old container stays
    until its replacement runs and then for its stop grace); print each change.
    Returns how many replicas were left (0: drained)."""
    client = state.client()
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        data = client.get(path_of("v1", "nodes", node))
        rows = client.get("/v1/replicas")["replicas"]
        here = [r for r in rows if r.get("node") == node and r["state"] != "completed"]
        placed_here = {r["replica_id"] for r in rows if r.get("node") == node}
        leaving = [rid for rid in data.get("replicas") or [] if rid not in placed_here]
        moving = [
            r for r in rows if r.get("node") != node and r["state"] in ("assigned", "starting")
        ]
        line = f"{node}: {len(here)} replica(s) to move, {len(leaving)} handing off or stopping"
        if moving:
            line += f", {len(moving)} starting elsewhere"
        if not quiet and line != last:
            click.echo(line, err=True)
            last = line
        left = len(here) + len(leaving)
        if left == 0:
            if not quiet:
                click.echo(
                    f"{node} is drained: no replica is placed on it and no container is left",
                    err=True,
                )
            return 0
        if time.monotonic() >= deadline:
            if not quiet:
                for r in here:
                    why = r.get("error") or "waiting for others of its workload to run again"
                    click.echo(f"  {r['replica_id']} still on {node}: {why}", err=True)
            return left
        time.sleep(DRAIN_POLL)


#: How often ``drain --wait`` looks at the node.
DRAIN_POLL = 0.5


@cli.command()
@click.option(
    "-f",
    "--file",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The workload's new spec file (TOML or JSON).",
)
@click.option("--wait", is_flag=True, help="Show the rolling update until it ends.")
@wait_timeout_option(300.0, "the update goes on")
@click.option(
    "--image",
    metavar="ROOTFS_OR_LAYOUT",
    help="Root filesystem dir or OCI image layout (same path on every node); "
    "overrides the file's image, as in `hypha run`.",
)
@click.option(
    "--no-image",
    is_flag=True,
    help="Run the command on the host (process driver) although the workload has an image.",
)
@json_option
@click.pass_obj
def update(
    state: CliState,
    file: Path,
    image: str | None,
    no_image: bool,
    wait: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Change a workload's spec. The file replaces the whole spec (give every field);
    a new template (image, command, env, resources, health) rolls out
    update.max_parallel replicas at a time; see `hypha inspect NAME`.

    A file without an image for a workload that has one is refused unless --no-image
    says so: the new replicas would run on the host, which no oci node can do."""
    if image is not None and no_image:
        raise ConfigError("give --image or --no-image, not both")
    spec = spec_from_flags(None, file, image, None, None, None, (), None, (), ())
    client = state.client()
    if spec.image is None and not no_image:
        try:
            current = client.get(path_of("v1", "workloads", spec.name))
        except NotFoundError:
            current = {}  # the update below says there is no such workload
        current_image = (current.get("spec") or {}).get("image")
        if current_image:
            raise ConfigError(
                f"the update removes the image of {spec.name} (now {current_image}) and "
                "would run its command on the host: keep it with --image DIR or "
                f'image = "..." in {file}, or pass --no-image if that is what you want'
            )
    result = client.put(path_of("v1", "workloads", spec.name), {"spec": spec.to_dict()})
    if not wait:
        if as_json:
            emit_json(result)
        elif not result.get("changed", True):
            click.echo(f"workload {spec.name} unchanged (version {result.get('version')})")
        else:
            click.echo(f"workload {spec.name} updated to version {result.get('version')}")
        return
    status = wait_for_rollout(
        state, spec.name, int(result.get("version") or 0), timeout, quiet=as_json
    )
    if as_json:
        emit_json({**result, "status": status})
    if status != "complete":
        message = last_rollout_message(state, spec.name) if status == "failed" else ""
        raise HyphaError(
            f"the update of {spec.name} ended {status}"
            + (f": {message}" if message else "")
            + f" (see `hypha inspect {spec.name}`)"
        )


def wait_for_rollout(
    state: CliState, name: str, version: int, timeout: float, *, quiet: bool = False
) -> str:
    """Poll the workload's rolling update from ``version`` on; print each change.
    Returns its last status."""
    client = state.client()
    deadline = time.monotonic() + timeout
    last = ""
    status = "running"
    while time.monotonic() < deadline:
        data = client.get(path_of("v1", "workloads", name))
        if int(data.get("version", 0)) < version:
            time.sleep(0.2)  # this agent has not applied the new version yet
            continue
        d = data.get("deployment") or {}
        status = str(d.get("status", data.get("status", "complete")))
        line = (
            f"{name} version {data['version']}: {status}, {d.get('updated', 0)}/"
            f"{d.get('total', 0)} updated, {d.get('healthy', 0)} healthy"
            + (f" ({d['message']})" if d.get("message") else "")
        )
        if not quiet and line != last:
            click.echo(line, err=True)
            last = line
        auto_revert = bool(((data.get("spec") or {}).get("update") or {}).get("auto_revert"))
        if status == "complete" or (status == "failed" and not auto_revert):
            if status == "complete" and d.get("message", "").startswith("rolled back"):
                return "rolled back"
            return status
        time.sleep(0.5)
    return status


def last_rollout_message(state: CliState, name: str) -> str:
    """The rolling update's last message (which replicas failed), and the full reason
    of the first replica that failed to start or exited."""
    client = state.client()
    data = client.get(path_of("v1", "workloads", name))
    message = str((data.get("deployment") or {}).get("message") or "")
    rows = client.get(path_of("v1", "workloads", name, "replicas"))["replicas"]
    failed = [r for r in rows if r["state"] in ("failed", "exited") and r.get("error")]
    if failed:
        message += ("; " if message else "") + failure_reason(failed[0])
    return message


@cli.command()
@click.argument("node")
@click.option("--off", is_flag=True, help="Make the node ineligible for new work.")
@json_option
@click.pass_obj
def eligible(state: CliState, node: str, off: bool, as_json: bool) -> None:
    """Let NODE take new work again (or not, with --off); its replicas stay.

    A draining node takes no new work whether eligible or not: `hypha drain NODE
    --undo` ends the drain."""
    result = _node_admin(state, node, "eligibility", {"eligible": not off}, as_json)
    if result.get("draining") and not off:
        click.echo(
            f"hypha: {node} still drains and takes no new work; "
            f"`hypha drain {node} --undo` ends the drain",
            err=True,
        )


@cli.command()
@json_option
@click.pass_obj
def nodes(state: CliState, as_json: bool) -> None:
    """Show nodes: liveness, admin state, capacity and how many replicas each holds."""
    data = state.client().get("/v1/nodes")
    if as_json:
        emit_json(data)
        return
    rows = []
    for n in data["nodes"]:
        cap = n.get("capacity") or {}
        admin = (
            "draining" if n.get("draining") else ("eligible" if n.get("eligible") else "ineligible")
        )
        rows.append(
            (
                n["name"] + (" *" if n.get("leader") else ""),
                n.get("state"),
                admin,
                n.get("placed", 0),
                f"{(cap.get('cpu_millicores') or 0) / 1000:g}",
                _size(cap.get("memory_bytes")),
                n.get("credit", 0),
                json.dumps(n.get("labels") or {}, sort_keys=True) if n.get("labels") else "-",
            )
        )
    print_table(["NODE", "STATE", "ADMIN", "REPLICAS", "CPUS", "MEMORY", "CREDIT", "LABELS"], rows)
