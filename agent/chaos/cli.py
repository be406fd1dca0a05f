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


def _agents() -> dict[str, LocalAgent]:
    agents = faults.discover_local_agents()
    if not agents:
        raise ChaosError("no hypha agent is running on this machine")
    return agents


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
def chaos() -> None:
    """Break the Hypha agents on this machine on purpose.

    Agents are found by name among this machine's processes. Network faults are
    iptables rules on INPUT tagged 'hypha-chaos'; `heal` removes all of them. On
    real hosts, run the same command on every host: each adds the rules for the
    traffic it receives.
    """


@chaos.command("list")
def list_agents() -> None:
    """Show the local agents chaos can reach, and the chaos rules in force."""
    for agent in sorted(faults.discover_local_agents().values(), key=lambda a: a.name):
        click.echo(f"{agent.name:<16} pid={agent.pid:<8} address={agent.ip}:{agent.gossip_port}")
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


def _groups(specs: Sequence[str], agents: dict[str, LocalAgent]) -> list[list[LocalAgent]]:
    groups = [faults.resolve([n for n in spec.split(",") if n], agents) for spec in specs]
    faults.check_cluster_addresses(
        (a.ip for g in groups for a in g), (a.ip for a in agents.values())
    )
    return groups


@chaos.command()
@click.argument("groups", nargs=-1, required=True)
@click.option("--for", "seconds", type=float, help="Heal by itself after SECONDS.")
def partition(groups: tuple[str, ...], seconds: float | None) -> None:
    """Cut the network between GROUPS of agents, e.g. `partition n1,n2 n3,n4,n5`.

    Agents not named in any group keep talking to everyone.
    """
    agents = _agents()
    rules = faults.partition_rules(_groups(groups, agents))
    _hold_then_heal(rules, seconds)


@chaos.command()
@click.argument("node")
@click.argument("percent", type=float)
@click.option("--for", "seconds", type=float, help="Heal by itself after SECONDS.")
def loss(node: str, percent: float, seconds: float | None) -> None:
    """Drop PERCENT of the packets between NODE and the other agents (both ways)."""
    agents = _agents()
    (target,) = faults.resolve([node], agents)
    rules = faults.loss_rules(target, list(agents.values()), percent)
    _hold_then_heal(rules, seconds)


@chaos.command("heal")
def heal_command() -> None:
    """Remove every iptables rule chaos added (tagged 'hypha-chaos')."""
    removed = faults.heal()
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
