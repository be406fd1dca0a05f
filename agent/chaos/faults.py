"""Faults to inject into agents on this machine: signals and iptables rules.

Discovery reads ``/proc``: every process running ``hypha agent`` (or
``python -m agent agent``) is an agent; its ``--name``, ``--bind``/``--advertise``
and ``--data-dir`` come from its command line (or its ``--config`` file). Network
faults are iptables DROP rules on INPUT (a DROP on OUTPUT makes ``sendto`` fail
with EPERM instead of losing the packet), matched on the agents' own addresses,
tagged with a comment so ``heal`` removes exactly what chaos added: ``hypha-chaos``
and the directory of the cluster's data dirs (``cluster_tag``), so that the rules
of one local cluster can be removed without another's. The kernel here
has no netem, so loss is the ``statistic`` match in random mode.

Partitions match on source and destination address, so they need each agent to
have its own IP and to send from it (Hypha binds every outgoing socket to the
advertised address; see docs/decisions/002-chaos-on-loopback.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import HyphaError

TAG = "hypha-chaos"


class ChaosError(HyphaError):
    """A fault could not be applied: unknown node, foreign address, missing iptables."""


@dataclass(frozen=True, slots=True)
class LocalAgent:
    """An agent process on this machine, as its command line describes it."""

    name: str
    pid: int
    ip: str
    gossip_port: int | None
    data_dir: Path | None
    argv: tuple[str, ...] = field(repr=False)
    cwd: str = field(repr=False, default="/")


def _flag(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg[len(name) + 1 :]
    return None


def _is_agent(argv: Sequence[str]) -> bool:
    """``hypha agent ...`` or ``python -m agent agent ...`` (global options may come first)."""
    for i, arg in enumerate(argv[:-1]):
        base = os.path.basename(arg)
        if base == "hypha" and "agent" in argv[i + 1 :]:
            return True
        if arg == "-m" and argv[i + 1] == "agent" and "agent" in argv[i + 2 :]:
            return True
    return False


def parse_agent(pid: int, argv: Sequence[str], cwd: str = "/") -> LocalAgent | None:
    """Describe the agent that ``argv`` starts, or ``None`` if it is not one or has no name."""
    if not _is_agent(argv):
        return None
    name = _flag(argv, "--name")
    address = _flag(argv, "--advertise") or _flag(argv, "--bind")
    data_dir = _flag(argv, "--data-dir")
    config_path = _flag(argv, "--config")
    if config_path and not (name and address):
        from agent.config import load_config

        try:
            config = load_config(Path(cwd, config_path))
        except HyphaError:
            return None
        name = name or config.name
        address = address or config.advertise or config.bind
        data_dir = data_dir or str(config.data_dir)
    if not name or not address:
        return None
    host, _, port = address.rpartition(":")
    return LocalAgent(
        name=name,
        pid=pid,
        ip=host or address,
        gossip_port=int(port) if port.isdigit() else None,
        data_dir=Path(cwd, data_dir) if data_dir else None,
        argv=tuple(argv),
        cwd=cwd,
    )


def discover_local_agents(proc: Path = Path("/proc")) -> list[LocalAgent]:
    """Every running agent on this machine, by pid. Names repeat when several local
    clusters run (each has its n1, n2, ...): ``resolve`` refuses an ambiguous one."""
    agents: list[LocalAgent] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            cwd = os.readlink(entry / "cwd")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if ") Z" in stat:  # a zombie: already dead
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        agent = parse_agent(int(entry.name), argv, cwd)
        if agent is not None:
            agents.append(agent)
    return sorted(agents, key=lambda a: a.pid)


def under(agents: Iterable[LocalAgent], directory: Path) -> list[LocalAgent]:
    """The agents whose data dir is ``directory`` or inside it (one local cluster)."""
    top = directory.resolve()
    return [
        a for a in agents if a.data_dir is not None and a.data_dir.resolve().is_relative_to(top)
    ]


def address_of(agent: LocalAgent) -> str:
    return f"{agent.ip}:{agent.gossip_port}" if agent.gossip_port is not None else agent.ip


def describe(agent: LocalAgent) -> str:
    return f"pid {agent.pid} at {address_of(agent)}, data dir {agent.data_dir or '?'}"


def _matches(agent: LocalAgent, spec: str) -> bool:
    """NAME, ADDRESS (IP:PORT, or IP) or DATA_DIR names the agent."""
    if spec in (agent.name, address_of(agent), agent.ip):
        return True
    if "/" in spec and agent.data_dir is not None:
        return Path(agent.cwd, spec).resolve() == agent.data_dir.resolve()
    return False


def resolve(names: Iterable[str], agents: Sequence[LocalAgent]) -> list[LocalAgent]:
    """One agent for each of ``names`` (a name, an address or a data dir); an unknown
    or ambiguous one is an error that lists what there is to choose from."""
    found = []
    for name in names:
        candidates = [a for a in agents if _matches(a, name)]
        if not candidates:
            known = ", ".join(sorted({a.name for a in agents})) or "none running"
            raise ChaosError(f"no local agent named {name!r} (agents here: {known})")
        if len(candidates) > 1:
            raise ChaosError(
                f"{len(candidates)} local agents match {name!r} (two local clusters?): "
                + "; ".join(describe(a) for a in candidates)
                + ". Name one by its address or data dir, or give --cluster DIR"
            )
        found.append(candidates[0])
    return found


#: iptables keeps at most 256 bytes of a comment.
MAX_COMMENT = 255


def cluster_tag(directory: Path, tag: str = TAG) -> str:
    """The comment of the rules for the local cluster whose data dirs are under
    ``directory``: ``heal`` with it removes only them, ``heal`` with ``tag`` all."""
    scoped = f"{tag} {directory.resolve()}"
    if len(scoped.encode()) <= MAX_COMMENT and '"' not in scoped:
        return scoped
    return f"{tag} sha1:{hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]}"


def tag_for(agents: Iterable[LocalAgent], tag: str = TAG) -> str:
    """``cluster_tag`` of the directory holding every one of ``agents``' data dirs (as
    `hypha up` lays them out), or the bare ``tag`` if they have no one such parent."""
    parents = {a.data_dir.resolve().parent if a.data_dir else None for a in agents}
    if len(parents) == 1:
        (parent,) = parents
        if parent is not None:
            return cluster_tag(parent, tag)
    return tag


# Signals ---------------------------------------------------------------------


def kill(agent: LocalAgent) -> None:
    """SIGKILL, as a power cut would."""
    _signal(agent.pid, signal.SIGKILL)


def pause(agent: LocalAgent, seconds: float) -> None:
    """SIGSTOP for ``seconds``, then SIGCONT, even if interrupted."""
    _signal(agent.pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        _signal(agent.pid, signal.SIGCONT)


def restart(
    agent: LocalAgent, *, grace: float = 10.0, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Stop the agent (SIGTERM, SIGKILL after ``grace``), start it again the same way.

    Returns the new process; a long-lived caller must ``wait()`` for it in the end.
    It runs in its own session, so it outlives a one-shot chaos command; its output
    goes to ``log`` (default: DATA_DIR/agent.log).
    """
    env = _environ(agent.pid)
    _signal(agent.pid, signal.SIGTERM)
    if not _wait_gone(agent.pid, grace):
        _signal(agent.pid, signal.SIGKILL)
        _wait_gone(agent.pid, 5.0)
    log_path = log or (agent.data_dir / "agent.log" if agent.data_dir else Path(os.devnull))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        child = subprocess.Popen(
            list(agent.argv),
            cwd=agent.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return child


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        raise ChaosError(f"process {pid} is gone") from None


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            stat = Path(f"/proc/{pid}/stat").read_text()
            if ") Z" in stat:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # our own child: reap it
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return dict(os.environ)
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


# iptables --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    """One INPUT rule, as the arguments after ``-A INPUT``."""

    args: tuple[str, ...]

    def describe(self) -> str:
        return " ".join(self.args)


def _iptables() -> str:
    path = shutil.which("iptables")
    if path is None:
        raise ChaosError("iptables is not installed (apt-get install iptables)")
    if os.geteuid() != 0:
        raise ChaosError("network faults need root (iptables)")
    return path


def _run_iptables(*args: str) -> str:
    result = subprocess.run(
        [_iptables(), "-w", *args], capture_output=True, text=True, timeout=30, check=False
    )
    if result.returncode != 0:
        raise ChaosError(f"iptables {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def check_cluster_addresses(ips: Iterable[str], cluster_ips: Iterable[str]) -> None:
    """Refuse any address that is not one of the cluster's own agents'."""
    allowed = set(cluster_ips)
    for ip in ips:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise ChaosError(f"{ip!r} is not an IP address") from None
        if ip not in allowed:
            raise ChaosError(f"refusing to touch {ip}: it is not an address of the cluster")


def partition_rules(groups: Sequence[Sequence[LocalAgent]], tag: str = TAG) -> list[Rule]:
    """DROP on INPUT between every pair of agents in different groups, both ways."""
    if len(groups) < 2:
        raise ChaosError("a partition needs at least two groups, e.g. `partition n1,n2 n3`")
    seen: dict[str, int] = {}
    for index, group in enumerate(groups):
        if not group:
            raise ChaosError("a partition group is empty")
        for agent in group:
            if seen.get(agent.ip, index) != index:
                raise ChaosError(
                    f"{agent.name} shares address {agent.ip} with an agent in another group; "
                    "give each agent its own address (127.0.0.2, 127.0.0.3, ...)"
                )
            seen[agent.ip] = index
    rules = []
    for i, left in enumerate(groups):
        for right in groups[i + 1 :]:
            for a in left:
                for b in right:
                    for src, dst in ((a.ip, b.ip), (b.ip, a.ip)):
                        rules.append(_drop(("-s", src, "-d", dst), tag))
    return _unique(rules)


def loss_rules(
    target: LocalAgent, peers: Sequence[LocalAgent], percent: float, tag: str = TAG
) -> list[Rule]:
    """Drop ``percent`` of what ``target`` receives from its peers (and they from it)."""
    if not 0 < percent <= 100:
        raise ChaosError(f"loss: percent must be in (0, 100], got {percent}")
    probability = f"{percent / 100:.4f}"
    rules = []
    for peer in peers:
        if peer.ip == target.ip:
            continue
        for src, dst in ((peer.ip, target.ip), (target.ip, peer.ip)):
            match = ("-s", src, "-d", dst, "-m", "statistic", "--mode", "random")
            rules.append(_drop((*match, "--probability", probability), tag))
    if not rules:
        raise ChaosError(f"{target.name} has no peers at another address to lose packets from")
    return _unique(rules)


def _drop(match: tuple[str, ...], tag: str) -> Rule:
    return Rule((*match, "-m", "comment", "--comment", tag, "-j", "DROP"))


def _unique(rules: list[Rule]) -> list[Rule]:
    return list(dict.fromkeys(rules))


def apply_rules(rules: Sequence[Rule]) -> None:
    """Insert ``rules`` at the top of INPUT; on any failure remove the ones inserted."""
    added: list[Rule] = []
    try:
        for rule in rules:
            _run_iptables("-I", "INPUT", *rule.args)
            added.append(rule)
    except BaseException:
        remove_rules(added)
        raise


def remove_rules(rules: Sequence[Rule]) -> None:
    for rule in rules:
        with contextlib.suppress(ChaosError):  # already gone
            _run_iptables("-D", "INPUT", *rule.args)


def _comment(line: str) -> str | None:
    try:
        args = shlex.split(line)
    except ValueError:
        return None
    for i, arg in enumerate(args[:-1]):
        if arg == "--comment":
            return args[i + 1]
    return None


def carries(comment: str | None, tag: str) -> bool:
    """Whether a rule's comment is ``tag`` or one of its clusters' (``cluster_tag``)."""
    return comment is not None and (comment == tag or comment.startswith(tag + " "))


def tagged_rules(tag: str = TAG) -> list[str]:
    """The INPUT rules carrying ``tag`` (or a cluster's tag under it), as ``iptables
    -S`` prints them."""
    lines = _run_iptables("-S", "INPUT").splitlines()
    return [line for line in lines if carries(_comment(line), tag)]


def heal(tag: str = TAG) -> int:
    """Remove every INPUT rule carrying ``tag``; return how many were removed. The bare
    ``TAG`` removes every cluster's rules; a ``cluster_tag`` only that cluster's."""
    removed = 0
    for line in tagged_rules(tag):
        args = shlex.split(line)
        if args[:2] != ["-A", "INPUT"]:
            continue
        try:
            _run_iptables("-D", "INPUT", *args[2:])
            removed += 1
        except ChaosError:
            pass
    return removed
