"""``hypha agent`` (run one agent) and ``hypha up`` (a local cluster of several)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import click

from agent import logs as log_setup
from agent.cli import CliState, cli
from agent.config import load_config, parse_size
from agent.errors import ConfigError, HyphaError
from agent.localcluster import Layout, LocalCluster
from agent.secrets import check_private

log = logging.getLogger("hypha.agent")


def _labels(items: tuple[str, ...]) -> dict[str, str] | None:
    if not items:
        return None
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--label: expected KEY=VALUE, got {item!r}")
        labels[key] = value
    return labels


@cli.command("agent")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file (flat or under [agent]); flags override it.",
)
@click.option("--name", help="This node's name [host name].")
@click.option("--bind", metavar="HOST:PORT", help="Gossip UDP address [0.0.0.0:7946].")
@click.option("--advertise", metavar="HOST:PORT", help="Address others reach this agent at.")
@click.option(
    "--join",
    multiple=True,
    metavar="HOST:PORT",
    help="An agent of the cluster to join (repeatable); none starts a new cluster.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Raft journal, container state, logs and the API socket.",
)
@click.option(
    "--driver",
    type=click.Choice(["auto", "oci", "process", "mock"]),
    help="How containers run [auto: oci if youki/runc/crun exists, else process].",
)
@click.option(
    "--runtime-path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The OCI runtime binary (default: youki, runc or crun on PATH).",
)
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Cluster secret from `hypha keygen` (mode 0600) [DATA_DIR/secret].",
)
@click.option(
    "--keyring",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Gossip keyring file with rotated keys (mode 0600), one base64 key per line, the "
    "sealing key first; SIGHUP re-reads it.",
)
@click.option(
    "--api-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The API's Unix socket [DATA_DIR/api.sock].",
)
@click.option("--api-tcp", metavar="HOST:PORT", help="Also serve the API on TCP (needs a token).")
@click.option(
    "--api-token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Bearer token file (mode 0600) for --api-tcp.",
)
@click.option("--raft-bind", metavar="HOST:PORT", help="Raft TCP address [advertise port + 1].")
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Node label for placement rules (repeatable).",
)
@click.option("--zone", help="Failure domain for spreading replicas.")
@click.option(
    "--cpu",
    "cpu_millicores",
    type=click.IntRange(1),
    metavar="MILLICORES",
    help="Capacity override: CPU for replicas in millicores (4000 = 4 cores).",
)
@click.option("--memory", "memory", metavar="SIZE", help="Capacity override: memory (8Gi).")
@click.option("--pids", type=click.IntRange(1), help="Capacity override: process count.")
@click.option(
    "--gossip-preset", type=click.Choice(["lan", "wan", "local"]), help="Gossip timers [lan]."
)
@click.option("--voters", type=click.Choice(["1", "3", "5"]), help="Raft voters to keep [3].")
@click.option(
    "--stop-on-exit/--no-stop-on-exit",
    default=None,
    help="Stop this node's containers when the agent exits [no].",
)
@click.option("--log-format", type=click.Choice(["text", "json"]), help="Log lines [text].")
@click.pass_obj
def agent_command(state: CliState, /, config_path: Path | None, **flags: Any) -> None:
    """Run the Hypha agent on this host (gossip, Raft, scheduler, containers, API)."""
    memory = flags.pop("memory")
    if memory is not None:
        flags["memory_bytes"] = parse_size(memory, key="--memory")
    flags["labels"] = _labels(flags["labels"])
    flags["join"] = flags["join"] or None
    if flags.get("voters") is not None:
        flags["voters"] = int(flags["voters"])
    for key in (
        "data_dir",
        "secret_file",
        "keyring",
        "api_socket",
        "api_token_file",
        "runtime_path",
    ):
        if flags.get(key) is not None:
            flags[key] = str(flags[key])
    config = load_config(config_path, flags)
    log_setup.configure(max(1, state.verbose), config.log_format)
    token = None
    if config.api_token_file is not None:
        check_private(config.api_token_file, "api token file")
        token = config.api_token_file.read_text().strip()
        if len(token) < 16:
            raise ConfigError(
                f"api_token_file: {config.api_token_file} holds a token shorter than 16 characters"
            )
    import trio

    from agent.daemon import run_agent

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(partial(run_agent, config, api_token=token))


# -- hypha up ------------------------------------------------------------------------
@cli.command()
@click.option(
    "--nodes",
    "-n",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="How many agents.",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the agents' data dirs go [a new temporary dir, removed on exit].",
)
@click.option(
    "--driver",
    type=click.Choice(["auto", "oci", "process", "mock"]),
    default="auto",
    show_default=True,
    help="How containers run.",
)
@click.option(
    "--gossip-preset", type=click.Choice(["lan", "wan", "local"]), default="lan", show_default=True
)
@click.option(
    "--first-address",
    default="127.0.0.2",
    show_default=True,
    help="Agent i listens on this address + i (loopback aliases).",
)
@click.option(
    "--zones",
    type=click.IntRange(1, 50),
    help="Spread the agents over N zones: agent nI gets zone z((I-1) mod N).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="[NODE:]KEY=VALUE",
    help="Node label for placement rules, on every agent or on NODE only (repeatable).",
)
@click.pass_obj
def up(
    state: CliState,
    nodes: int,
    base_dir: Path | None,
    driver: str,
    gossip_preset: str,
    first_address: str,
    zones: int | None,
    labels: tuple[str, ...],
) -> None:
    """Start a local cluster of N agents on 127.0.0.2.. in the foreground; Ctrl-C stops it.

    Each agent gets its own data dir (DIR/nI) and API socket (DIR/nI/api.sock); they
    share a generated secret. Containers stop with their agents, also those of an
    agent that died. `hypha up --dir DIR` again restarts the same cluster.
    """
    temporary = base_dir is None
    base = Path(tempfile.mkdtemp(prefix="hypha-up-")) if base_dir is None else base_dir.resolve()
    prefix, _, last = first_address.rpartition(".")
    if not last.isdigit() or int(last) + nodes > 255:
        raise ConfigError(f"--first-address: {first_address} leaves no room for {nodes} agents")
    hosts = [f"{prefix}.{int(last) + i}" for i in range(nodes)]
    per_agent = _up_node_args(nodes, zones, labels)
    port = None if temporary else _saved_port(base, hosts)
    cluster = LocalCluster(
        base,
        nodes,
        driver=driver,
        preset=gossip_preset,
        hosts=hosts,
        name_prefix="",
        verbose=False,
        per_agent_args=per_agent,
        port=port,
    )

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    dead: set[str] = set()
    try:
        # A restart starts them all at once: each needs the others for a Raft quorum
        # before it serves (one by one, that took 15 s an agent).
        restart = port is not None
        if restart:
            for agent in cluster.agents:
                agent.start(stop_on_exit=True, wait=False)
        for agent in cluster.agents:
            try:
                if restart:
                    agent.wait_ready()
                else:
                    agent.start(stop_on_exit=True)
            except HyphaError:
                reason = agent.log_tail(1).strip() or "no output"
                log_path = agent.data_dir / "agent.log"
                raise HyphaError(
                    f"agent {agent.name} did not start: {reason} (log: {log_path})"
                ) from None
            click.echo(f"{agent.name}  {agent.seed_address}  api {agent.api}", err=True)
        cluster.started = True
        api = cluster.agents[0].api
        (base / "env").write_text(f"export HYPHA_API={api}\n")
        click.echo(
            f"cluster of {nodes} running; in another shell:\n"
            f"  export HYPHA_API={api}\n"
            f"  hypha members; hypha run ...\n"
            f"logs: {base}/nI/agent.log. Ctrl-C stops everything.",
            err=True,
        )
        sys.stderr.flush()
        # An agent that dies is reported and left dead (a chaos test may kill one on
        # purpose); the others go on, and its containers are stopped on the way out.
        # From here a signal only asks the loop to end: raised in a handler, it could
        # land between noting an agent dead and saying so.
        stopping: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
        previous_int = signal.signal(signal.SIGINT, lambda signum, frame: stopping.append(signum))
        try:
            while not stopping:
                time.sleep(0.5)
                _report_dead(cluster, dead)
        finally:
            signal.signal(signal.SIGINT, previous_int)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        _report_dead(cluster, dead)
        click.echo("stopping the cluster...", err=True)
        cluster.shutdown(timeout=30)
        dead |= {a.name for a in cluster.agents if a.proc is not None and a.proc.returncode}
        # Together, so they have a Raft quorum and serve (and so stop) at once.
        cleaned = cluster.stop_leftovers(dead, everyone=bool(dead))
        if cleaned:
            click.echo(f"stopped the containers left by {', '.join(cleaned)}", err=True)
        if temporary:
            shutil.rmtree(base, ignore_errors=True)
        click.echo("stopped", err=True)


def _report_dead(cluster: LocalCluster, dead: set[str]) -> None:
    """One line for each agent that died since the last look (added to ``dead``)."""
    for agent in cluster.agents:
        if agent.name in dead or agent.proc is None or agent.proc.poll() is None:
            continue
        dead.add(agent.name)
        click.echo(
            f"agent {agent.name} exited ({_how(agent.proc.returncode)}); the others keep "
            f"running; log: {agent.data_dir / 'agent.log'}",
            err=True,
        )


def _how(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def _up_node_args(nodes: int, zones: int | None, labels: tuple[str, ...]) -> dict[int, list[str]]:
    """``hypha agent`` flags per agent index for ``--zones`` and ``--label``."""
    names = [f"n{i + 1}" for i in range(nodes)]
    args: dict[int, list[str]] = {i: [] for i in range(nodes)}
    for item in labels:
        node, sep, pair = item.partition(":")
        if not sep or "=" in node:
            node, pair = "", item
        elif node not in names:
            raise ConfigError(f"--label {item}: no agent {node} (they are n1..n{nodes})")
        _labels((pair,))  # checks KEY=VALUE
        for i, name in enumerate(names):
            if not node or node == name:
                args[i] += ["--label", pair]
    if zones is not None:
        for i in range(nodes):
            args[i] += ["--zone", f"z{i % zones}", "--label", f"zone=z{i % zones}"]
    return args


def _saved_port(base: Path, hosts: list[str]) -> int | None:
    """The port of the cluster saved in ``base`` (agents are bound to their addresses),
    or ``None`` for a new one; refuses at once what cannot start."""
    saved = Layout.load(base)
    if saved is None:
        return None
    if list(saved.hosts) != hosts:
        raise ConfigError(
            f"--dir {base} holds a cluster of {len(saved.hosts)} agents on {saved.hosts[0]}..: "
            f"run `hypha up -n {len(saved.hosts)} --first-address {saved.hosts[0]} --dir {base}`"
            ", or use a new --dir"
        )
    busy = saved.busy()
    if busy is not None:
        raise ConfigError(
            f"--dir {base}: its agents' address {busy} is in use (is this cluster still "
            "running?); stop that first, or use a new --dir"
        )
    return saved.port
