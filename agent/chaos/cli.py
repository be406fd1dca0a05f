"""``scripts/chaos``: inject faults into the agents running on this machine."""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import click

from agent.chaos import faults
from agent.chaos.faults import ChaosError, LocalAgent
from agent.errors import HyphaError


def _agents(*, required: bool = True) -> list[LocalAgent]:
    """The agents in scope: this machine's, or only those under ``--cluster DIR``."""
    cluster: Path | None = click.get_current_context().find_root().params.get("cluster")
    agents = faults.discover_local_agents()
    if required and not agents:
        raise ChaosError("no hypha agent is running on this machine")
    if cluster is not None:
        agents = faults.under(agents, cluster)
        if required and not agents:
            raise ChaosError(f"no agent running here has its data dir under {cluster}")
    return agents


def _tag(agents: Sequence[LocalAgent]) -> str:
    """The comment of the rules for ``agents``: their cluster's (see ``heal --help``)."""
    cluster: Path | None = click.get_current_context().find_root().params.get("cluster")
    return faults.cluster_tag(cluster) if cluster is not None else faults.tag_for(agents)


def _hold_then_heal(rules: list[faults.Rule], seconds: float | None) -> None:
    """Apply ``rules``; with ``seconds``, hold them and remove them on exit or Ctrl-C."""
    faults.apply_rules(rules)
    if seconds is None:
        click.echo(f"added {len(rules)} iptables rule(s); `scripts/chaos heal` removes them")
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        click.echo(f"added {len(rules)} iptables rule(s) for {seconds:g}s (Ctrl-C heals early)")
        time.sleep(seconds)
    except KeyboardInterrupt:
        pass
    finally:
        faults.remove_rules(rules)
        signal.signal(signal.SIGTERM, previous)
        click.echo("healed")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cluster",
    type=click.Path(file_okay=False, path_type=Path),
    metavar="DIR",
    help="Only the agents whose data dir is under DIR (the --dir of `hypha up`), when "
    "several local clusters run; their rules are tagged with DIR.",
)
def chaos(cluster: Path | None) -> None:
    """Break the Hypha agents on this machine on purpose.

    Agents are found among this machine's processes. NODE is an agent's name, or,
    when two local clusters both have that name, its address (IP:PORT) or its data
    dir (see `list`); or narrow every command to one cluster with --cluster DIR.
    Network faults are iptables rules on INPUT tagged 'hypha-chaos' and their
    cluster's directory; `heal` removes them. On real hosts, run the same command on
    every host: each adds the rules for the traffic it receives.
    """


@chaos.command("list")
def list_agents() -> None:
    """Show the local agents chaos can reach, and the chaos rules in force."""
    for agent in sorted(_agents(required=False), key=lambda a: (a.name, a.pid)):
        click.echo(
            f"{agent.name:<16} pid={agent.pid:<8} address={faults.address_of(agent):<21} "
            f"data_dir={agent.data_dir or '?'}"
        )
    try:
        rules = faults.tagged_rules()
    except ChaosError:
        rules = []
    click.echo(f"{len(rules)} chaos rule(s) in force")
    for line in rules:
        click.echo(f"  {line}")


@chaos.command()
@click.argument("node")
def kill(node: str) -> None:
    """SIGKILL the agent NODE (its containers keep running)."""
    (agent,) = faults.resolve([node], _agents())
    faults.kill(agent)
    click.echo(f"killed {agent.name} (pid {agent.pid})")


@chaos.command()
@click.argument("node")
@click.argument("seconds", type=click.FloatRange(min=0, min_open=True))
def pause(node: str, seconds: float) -> None:
    """SIGSTOP the agent NODE for SECONDS, then SIGCONT (also on Ctrl-C)."""
    (agent,) = faults.resolve([node], _agents())
    click.echo(f"pausing {agent.name} (pid {agent.pid}) for {seconds:g}s")
    with contextlib.suppress(KeyboardInterrupt):
        faults.pause(agent, seconds)
    click.echo(f"resumed {agent.name}")


@chaos.command()
@click.argument("node")
@click.option("--grace", type=float, default=10.0, show_default=True, help="Seconds to SIGKILL.")
def restart(node: str, grace: float) -> None:
    """Stop the agent NODE (SIGTERM) and start it again with the same command line."""
    (agent,) = faults.resolve([node], _agents())
    child = faults.restart(agent, grace=grace)
    click.echo(f"restarted {agent.name}: pid {agent.pid} -> {child.pid}")


def _groups(specs: Sequence[str], agents: list[LocalAgent]) -> list[list[LocalAgent]]:
    groups = [faults.resolve([n for n in spec.split(",") if n], agents) for spec in specs]
    faults.check_cluster_addresses((a.ip for g in groups for a in g), (a.ip for a in agents))
    return groups


@chaos.command()
@click.argument("groups", nargs=-1, required=True)
@click.option("--for", "seconds", type=float, help="Heal by itself after SECONDS.")
def partition(groups: tuple[str, ...], seconds: float | None) -> None:
    """Cut the network between GROUPS of agents, e.g. `partition n1,n2 n3,n4,n5`.

    Agents not named in any group keep talking to everyone.
    """
    agents = _agents()
    chosen = _groups(groups, agents)
    rules = faults.partition_rules(chosen, tag=_tag([a for g in chosen for a in g]))
    _hold_then_heal(rules, seconds)


@chaos.command()
@click.argument("node")
@click.argument("percent", type=float)
@click.option("--for", "seconds", type=float, help="Heal by itself after SECONDS.")
def loss(node: str, percent: float, seconds: float | None) -> None:
    """Drop PERCENT of the packets between NODE and the other agents (both ways)."""
    agents = _agents()
    (target,) = faults.resolve([node], agents)
    # Its peers: the agents in scope, or without --cluster those of its own cluster
    # (their data dirs in one directory, as `hypha up` makes them) if it has one.
    tag = _tag([target])
    peers = agents
    if click.get_current_context().find_root().params.get("cluster") is None and tag != faults.TAG:
        peers = [a for a in agents if faults.tag_for([a]) == tag]
    rules = faults.loss_rules(target, peers, percent, tag=tag)
    _hold_then_heal(rules, seconds)


@chaos.command("heal")
@click.pass_context
def heal_command(ctx: click.Context) -> None:
    """Remove the iptables rules chaos added. `scripts/chaos --cluster DIR heal`
    removes only the rules for the agents under DIR; plain `heal` removes every rule
    tagged 'hypha-chaos' on this host, another local cluster's too (`list` shows each
    rule with its cluster's directory)."""
    cluster: Path | None = ctx.find_root().params.get("cluster")
    removed = faults.heal(faults.cluster_tag(cluster) if cluster is not None else faults.TAG)
    click.echo(f"removed {removed} chaos rule(s)")


@chaos.command()
@click.option("--seed", type=int, default=1, show_default=True, help="Same seed, same faults.")
@click.option(
    "--duration", type=click.FloatRange(min=10), default=600, show_default=True, help="Seconds."
)
@click.option("--nodes", type=click.IntRange(3, 9), default=5, show_default=True)
@click.option(
    "--driver",
    type=click.Choice(["process", "oci", "auto"]),
    default="process",
    show_default=True,
    help="How the agents run replicas.",
)
@click.option(
    "--preset",
    type=click.Choice(["lan", "local"]),
    default="lan",
    show_default=True,
    help="Gossip timers of the agents.",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Data dirs of the agents [a new temporary dir, removed after unless a check failed].",
)
@click.option("--first-address", default="127.0.3.2", show_default=True)
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write here.")
def soak(
    seed: int,
    duration: float,
    nodes: int,
    driver: str,
    preset: str,
    base_dir: Path | None,
    first_address: str,
    report: Path | None,
) -> None:
    """Start NODES agents, run a workload mix, inject the seed's faults for DURATION
    seconds, heal, and check the invariants. Exits 1 if any was violated."""
    from agent.chaos.soak import Soak

    faults._iptables()  # fail now, not after the cluster started
    temporary = base_dir is None
    base = Path(tempfile.mkdtemp(prefix="hypha-soak-")) if base_dir is None else base_dir
    try:
        run = Soak(
            seed=seed,
            duration=duration,
            nodes=nodes,
            base=base,
            driver=driver,
            preset=preset,
            first_host=first_address,
            log=lambda line: click.echo(line, err=True),
            tag=faults.cluster_tag(base),  # its heal leaves other clusters' rules alone
        )
        result = run.run()
    except BaseException:
        if temporary:
            shutil.rmtree(base, ignore_errors=True)
        raise
    if temporary and not result.violations:
        shutil.rmtree(base, ignore_errors=True)
    text = result.summary()
    click.echo(text)
    if temporary and result.violations:
        click.echo(f"agent logs kept for a post-mortem: {base}/n*/agent.log", err=True)
    if report is not None:
        report.write_text(text + "\n")
    if result.violations:
        sys.exit(1)


def main(argv: Sequence[str] | None = None) -> None:
    try:
        chaos.main(args=argv, prog_name="chaos", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(130)
    except HyphaError as exc:
        click.echo(f"chaos: error: {exc}", err=True)
        sys.exit(1)
