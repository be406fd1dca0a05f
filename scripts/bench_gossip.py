"""The gossip benchmark behind ``scripts/bench-gossip`` (see ``--help``).

Simulation: the real core (sealed, MTU-sized packets) on the in-memory network,
virtual time, LAN preset. Real processes: ``python -m gossip.run`` vs ``serf
agent``, both with LAN defaults and encryption, on loopback aliases, with the
same faults (SIGKILL, iptables ``statistic`` loss on their own ports only).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgpack  # type: ignore[import-untyped]

from gossip import GossipConfig, KeyChanged, Keyring, MemberEvent, generate_key
from gossip.core import GossipEvent
from gossip.sim import Simulation

LAN = GossipConfig.lan()
ROUND = LAN.gossip_interval
TAG = "hypha-test-gossip"
UP = ("alive", "suspect")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


# -- simulation ---------------------------------------------------------------------


@dataclass
class SimRow:
    n: int
    join_s: float = float("nan")
    join_s_loss30: float = float("nan")
    change_s: float = float("nan")
    change_s_loss30: float = float("nan")
    detect: list[float] = field(default_factory=list)
    false_deaths: dict[float, int] = field(default_factory=dict)
    loss_seconds: dict[float, float] = field(default_factory=dict)
    bytes_per_node: float = float("nan")


class Watch:
    """Times at which observers first saw something, fed from the simulator's events."""

    def __init__(self) -> None:
        self.joined: dict[str, dict[str, float]] = {}
        self.dead: dict[str, dict[str, float]] = {}
        self.keys: dict[tuple[str, str], dict[str, float]] = {}
        self.deaths = 0
        self.crashed: set[str] = set()

    def __call__(self, observer: str, now: float, event: GossipEvent) -> None:
        if isinstance(event, MemberEvent):
            name = event.member.name
            if event.kind == "joined":
                self.joined.setdefault(name, {}).setdefault(observer, now)
            elif event.kind == "dead":
                self.dead.setdefault(name, {}).setdefault(observer, now)
                if name not in self.crashed:
                    self.deaths += 1
        elif isinstance(event, KeyChanged) and event.value is not None:
            self.keys.setdefault((event.node, event.key), {}).setdefault(observer, now)


def sim_cluster(n: int, seed: int) -> tuple[Simulation, Watch]:
    watch = Watch()
    sim = Simulation(LAN, seed=seed, record_events=False, on_event=watch)
    sim.bootstrap([f"n{i:04d}" for i in range(n)])
    sim.run_for(5)
    return sim, watch


def spread_time(sim: Simulation, seen: Callable[[], dict[str, float]], start: float) -> float:
    everyone = len(sim.live()) - 1
    if not sim.run_until_true(lambda: len(seen()) >= everyone, 60, 0.05):
        return float("nan")
    return max(seen().values()) - start


def sim_dissemination(n: int, seed: int, loss: float) -> tuple[float, float]:
    sim, watch = sim_cluster(n, seed)
    sim.loss = loss
    start = sim.now
    sim.add_node("joiner", join=["n0000"])
    join = spread_time(sim, lambda: watch.joined.get("joiner", {}), start)
    sim.run_for(2)
    start = sim.now
    sim.nodes["n0001"].set("load", "0.42", start)
    change = spread_time(sim, lambda: watch.keys.get(("n0001", "load"), {}), start)
    return join, change


def sim_detection(n: int, seed: int) -> float:
    sim, watch = sim_cluster(n, seed)
    victim = f"n{random.Random(seed).randrange(1, n):04d}"
    watch.crashed.add(victim)
    sim.crash(victim)
    start = sim.now
    if not sim.run_until_true(lambda: len(watch.dead.get(victim, {})) >= n - 1, 300, 0.1):
        return float("nan")
    return max(watch.dead[victim].values()) - start


def sim_false_deaths(n: int, seed: int, loss: float, seconds: float) -> int:
    sim, watch = sim_cluster(n, seed)
    sim.loss = loss
    sim.run_for(seconds)
    return watch.deaths


def sim_bytes(n: int, seed: int) -> float:
    sim, _ = sim_cluster(n, seed)
    before = sim.stats.bytes
    sim.run_for(30)
    return (sim.stats.bytes - before) / 30 / n


SIM_PARTS = ("dissemination", "detection", "loss", "bytes")


def simulate(quick: bool, sizes: list[int], parts: tuple[str, ...] = SIM_PARTS) -> None:
    # (crash repeats, virtual seconds at 10% loss, at 30% loss). At N=1000 and 30% loss
    # about 10% of all probes fail, the suspicions and refutations fill every
    # piggyback slot, and one virtual second costs ~7 s of CPU: that run is shorter.
    plan = {10: (20, 600.0, 600.0), 100: (10, 600.0, 600.0), 1000: (3, 60.0, 30.0)}
    if quick:
        plan = {10: (10, 120.0, 120.0), 100: (5, 60.0, 60.0), 1000: (2, 20.0, 10.0)}
    print_sim_header()
    for n in sizes:
        repeats, loss10, loss30 = plan.get(n, plan[1000])
        t0 = time.monotonic()
        row = SimRow(n, loss_seconds={0.1: loss10, 0.3: loss30})

        def step(what: str, n: int = n, t0: float = t0) -> None:
            elapsed = time.monotonic() - t0
            print(f"  N={n}: {what} ({elapsed:.0f}s)", file=sys.stderr, flush=True)

        if "dissemination" in parts:
            row.join_s, row.change_s = sim_dissemination(n, 1, 0.0)
            row.join_s_loss30, row.change_s_loss30 = sim_dissemination(n, 2, 0.3)
            step("dissemination")
        if "detection" in parts:
            row.detect = [sim_detection(n, 100 + s) for s in range(repeats)]
            step("crash detection")
        if "loss" in parts:
            for loss, seconds in row.loss_seconds.items():
                row.false_deaths[loss] = sim_false_deaths(n, 7, loss, seconds)
            step("false deaths under loss")
        if "bytes" in parts:
            row.bytes_per_node = sim_bytes(n, 9)
        print_sim_row(row)
        step("done")


def print_sim_header() -> None:
    print("\n### Simulation (LAN preset, virtual time; 1 round = gossip_interval = 0.2 s)\n")
    print(
        "| N | join known by all: rounds (s) | at 30% loss | key change: rounds (s) "
        "| at 30% loss | crash known by all p50 / p99 (s) | false deaths 10% / 30% loss "
        "| bytes/s/node |"
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)


def print_sim_row(r: SimRow) -> None:
    def rs(s: float) -> str:
        return f"{fmt(s / ROUND, 1)} ({fmt(s)})"

    print(
        f"| {r.n} | {rs(r.join_s)} | {rs(r.join_s_loss30)} | {rs(r.change_s)} "
        f"| {rs(r.change_s_loss30)} | {fmt(pct(r.detect, 50))} / {fmt(pct(r.detect, 99))} "
        f"(n={len(r.detect)}) | {r.false_deaths.get(0.1, 'not run')} / "
        f"{r.false_deaths.get(0.3, 'not run')} over "
        f"{r.loss_seconds[0.1] / 60:g} / {r.loss_seconds[0.3] / 60:g} min "
        f"| {fmt(r.bytes_per_node, 0)} |",
        flush=True,
    )


# -- real processes -------------------------------------------------------------------


def free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host`` (serf uses both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return port


class Agents:
    """N agents of one kind; ``views()`` returns observer -> {member: state}."""

    kind = ""

    def __init__(self, n: int, tmp: Path, first_host: int) -> None:
        self.n = n
        self.tmp = tmp
        self.hosts = [f"127.0.0.{first_host + i}" for i in range(n)]
        self.names = [f"{self.kind}{i:02d}" for i in range(n)]
        self.ports = {name: free_port(h) for name, h in zip(self.names, self.hosts, strict=True)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def address(self, name: str) -> str:
        return f"{self.hosts[self.names.index(name)]}:{self.ports[name]}"

    def start(self, name: str, join: str | None) -> None:
        """Start an agent that will join ``join`` when ``trigger_join`` is called."""
        raise NotImplementedError

    def trigger_join(self, name: str) -> None:
        raise NotImplementedError

    def views(self, observers: list[str]) -> dict[str, dict[str, str]]:
        raise NotImplementedError

    def live(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            proc.wait()


class Hypha(Agents):
    kind = "h"

    def __init__(self, n: int, tmp: Path, first_host: int) -> None:
        super().__init__(n, tmp, first_host)
        self.keyring = tmp / "keyring"
        Keyring(generate_key()).save(self.keyring)

    def start(self, name: str, join: str | None) -> None:
        cmd = [sys.executable, "-m", "gossip.run", "--name", name, "--bind", self.address(name)]
        cmd += ["--keyring", str(self.keyring), "--preset", "lan", "--join-timeout", "60"]
        cmd += ["--status", str(self.tmp / f"{name}.json")]
        if join:
            cmd += ["--join", join, "--defer-join"]
        self.procs[name] = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / f"{name}.log", "wb"),  # noqa: SIM115
        )

    def trigger_join(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGUSR1)

    def views(self, observers: list[str]) -> dict[str, dict[str, str]]:
        out = {}
        for name in observers:
            try:
                data = json.loads((self.tmp / f"{name}.json").read_text())
            except (OSError, ValueError):
                out[name] = {}
                continue
            out[name] = {m["name"]: m["state"] for m in data["members"]}
        return out

    def deaths(self) -> int:
        total = 0
        for name in self.live():
            try:
                data = json.loads((self.tmp / f"{name}.json").read_text())
            except (OSError, ValueError):
                continue
            total += sum(c for k, c in data["events"].items() if k.startswith("dead:"))
        return total


class Serf(Agents):
    kind = "s"

    def __init__(self, n: int, tmp: Path, first_host: int) -> None:
        super().__init__(n, tmp, first_host)
        self.key = base64.b64encode(generate_key()).decode()
        self.rpc = {name: free_port("127.0.0.1") for name in self.names}
        self._conns: dict[str, tuple[socket.socket, msgpack.Unpacker]] = {}
        self._seq = 0
        self.seed = ""

    def start(self, name: str, join: str | None) -> None:
        cmd = ["serf", "agent", "-node", name, "-bind", self.address(name)]
        cmd += ["-rpc-addr", f"127.0.0.1:{self.rpc[name]}", "-encrypt", self.key]
        cmd += ["-log-level", "warn", "-profile", "lan"]
        if join:
            self.seed = join
        self.procs[name] = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / f"{name}.log", "wb"),  # noqa: SIM115
        )

    def trigger_join(self, name: str) -> None:
        self._call(name, "join", {"Existing": [self.seed], "Replay": False})

    def _call(self, name: str, command: str, body: dict[str, object] | None = None) -> object:
        conn = self._conns.get(name)
        if conn is None:
            sock = socket.create_connection(("127.0.0.1", self.rpc[name]), timeout=2)
            unpacker = msgpack.Unpacker(raw=False)
            conn = (sock, unpacker)
            self._conns[name] = conn
            self._request(conn, "handshake", {"Version": 1})
        return self._request(conn, command, body)

    def _request(
        self, conn: tuple[socket.socket, msgpack.Unpacker], command: str, body: object
    ) -> object:
        sock, unpacker = conn
        self._seq += 1
        payload = msgpack.packb({"Command": command, "Seq": self._seq})
        if body is not None:
            payload += msgpack.packb(body)
        sock.sendall(payload)
        wanted = 1 if command == "handshake" else 2
        got: list[object] = []
        while len(got) < wanted:
            for obj in unpacker:
                got.append(obj)
                if len(got) == wanted:
                    break
            else:
                data = sock.recv(1 << 20)
                if not data:
                    raise OSError("serf closed the RPC connection")
                unpacker.feed(data)
        return got[-1]

    def views(self, observers: list[str]) -> dict[str, dict[str, str]]:
        out = {}
        for name in observers:
            try:
                reply = self._call(name, "members")
            except OSError:
                self._conns.pop(name, None)
                out[name] = {}
                continue
            assert isinstance(reply, dict)
            view = {m["Name"]: m["Status"] for m in reply["Members"]}
            out[name] = {k: ("dead" if v == "failed" else v) for k, v in view.items()}
        return out

    def stop(self) -> None:
        for sock, _ in self._conns.values():
            sock.close()
        super().stop()


def proc_stats(pid: int) -> tuple[float, float]:
    """(RSS in MB, CPU seconds so far) of ``pid``."""
    ticks = os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, cpu


def iptables(args: list[str]) -> None:
    subprocess.run(["iptables", *args], check=True, capture_output=True)


def loss_rules(agents: Agents, probability: float) -> list[list[str]]:
    rules = []
    for name in agents.names:
        host, port = agents.address(name).split(":")
        for proto in ("udp", "tcp"):
            rules.append(
                ["INPUT", "-p", proto, "-d", host, "--dport", port, "-m", "statistic",
                 "--mode", "random", "--probability", str(probability),
                 "-m", "comment", "--comment", TAG, "-j", "DROP"]
            )  # fmt: skip
    return rules


@dataclass
class RealResult:
    join: float = float("nan")
    detect: list[float] = field(default_factory=list)
    false_deaths: int = -1
    rss_mb: float = float("nan")
    cpu_pct: float = float("nan")


def poll(check: Callable[[], bool], timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def run_real(agents: Agents, kills: int, loss_seconds: float, steady: float) -> RealResult:
    res = RealResult()
    names = agents.names
    try:
        seed = names[0]
        agents.start(seed, None)
        if not poll(lambda: seed in agents.views([seed])[seed], 30):
            raise RuntimeError(f"{agents.kind}: the first agent did not start")
        for name in names[1:]:
            agents.start(name, agents.address(seed))
        # Everyone up (each knows itself), then everyone joins at once: this times
        # the protocol, not how fast an interpreter starts.
        if not poll(lambda: all(v.get(n) == "alive" for n, v in agents.views(names).items()), 120):
            raise RuntimeError(f"{agents.kind}: the agents did not all start")
        start = time.monotonic()
        for name in names[1:]:
            agents.trigger_join(name)

        def converged(live: list[str]) -> bool:
            # "Up" is alive or suspect: serf reports a member memberlist suspects as
            # alive (it has no suspect status), so hypha's suspects count the same way.
            views = agents.views(live)
            return all(sum(v.get(n) in UP for n in live) == len(live) for v in views.values())

        if poll(lambda: converged(names), 120):
            res.join = time.monotonic() - start
        time.sleep(3)
        before = {n: proc_stats(agents.procs[n].pid) for n in names}
        time.sleep(steady)
        after = {n: proc_stats(agents.procs[n].pid) for n in names}
        res.rss_mb = statistics.mean(a[0] for a in after.values())
        res.cpu_pct = statistics.mean((after[n][1] - before[n][1]) / steady * 100 for n in names)

        # 10% loss on every agent's own ports, both directions of every exchange.
        rules = loss_rules(agents, 0.10) if shutil.which("iptables") and os.geteuid() == 0 else []
        deaths_before = count_deaths(agents, names)
        try:
            for rule in rules:
                iptables(["-I", *rule])
            if rules:
                deadline = time.monotonic() + loss_seconds
                while time.monotonic() < deadline:
                    track_deaths(agents, names)
                    time.sleep(0.2)
        finally:
            for rule in rules:
                subprocess.run(["iptables", "-D", *rule], capture_output=True)
        if rules:
            res.false_deaths = count_deaths(agents, names) - deaths_before
        poll(lambda: converged(names), 60)

        rng = random.Random(5)
        for _ in range(kills):
            live = agents.live()
            victim = rng.choice([n for n in live if n != seed])
            others = [n for n in live if n != victim]
            killed_at = time.monotonic()
            agents.kill(victim)

            def seen_dead(v: str = victim, o: list[str] = others) -> bool:
                return all(view.get(v) == "dead" for view in agents.views(o).values())

            if poll(seen_dead, 120, 0.1):
                res.detect.append(time.monotonic() - killed_at)
    finally:
        agents.stop()
    return res


_seen_dead: dict[int, set[tuple[str, str]]] = {}


def track_deaths(agents: Agents, names: list[str]) -> None:
    """Serf reports no event counters over RPC: remember every (observer, member)
    pair seen failed while polling (hypha counts its own events)."""
    if isinstance(agents, Serf):
        seen = _seen_dead.setdefault(id(agents), set())
        for observer, view in agents.views(names).items():
            seen.update((observer, m) for m, s in view.items() if s == "dead")


def count_deaths(agents: Agents, names: list[str]) -> int:
    if isinstance(agents, Hypha):
        return agents.deaths()
    track_deaths(agents, names)
    return len(_seen_dead.get(id(agents), set()))


def print_real(h: RealResult, s: RealResult, n: int, loss_seconds: float) -> None:
    def ratio(a: float, b: float) -> str:
        if a != a or b != b or b == 0:
            return "n/a"
        return f"{a / b:.2f}"

    rows = [
        ("join convergence, all see all up (s)", h.join, s.join),
        ("SIGKILL detected by all, p50 (s)", pct(h.detect, 50), pct(s.detect, 50)),
        ("SIGKILL detected by all, p99 (s)", pct(h.detect, 99), pct(s.detect, 99)),
        (f"false deaths at 10% loss over {loss_seconds:g} s", h.false_deaths, s.false_deaths),
        ("RSS per agent (MB)", h.rss_mb, s.rss_mb),
        ("CPU per agent, steady (% of a core)", h.cpu_pct, s.cpu_pct),
    ]
    print(f"\n### Real processes on loopback, N={n} (LAN defaults, encrypted)\n")
    print("| measure | hypha | serf | hypha/serf |\n|---|---|---|---|")
    for label, a, b in rows:
        fa = "not run" if a == -1 else fmt(float(a))
        fb = "not run" if b == -1 else fmt(float(b))
        print(f"| {label} | {fa} | {fb} | {ratio(float(a), float(b))} |")
    print(
        f"\nSIGKILL samples: hypha {[round(x, 2) for x in h.detect]}, "
        f"serf {[round(x, 2) for x in s.detect]}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="shorter runs and fewer repeats")
    p.add_argument("--no-sim", action="store_true")
    p.add_argument("--no-real", action="store_true")
    p.add_argument("--sizes", default="10,100,1000", help="simulated cluster sizes")
    p.add_argument(
        "--only",
        default=",".join(SIM_PARTS),
        help=f"simulation columns to measure, comma-separated from {','.join(SIM_PARTS)}",
    )
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--loss-seconds", type=float, default=60.0)
    args = p.parse_args()
    print(f"# scripts/bench-gossip {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs")
    if not args.no_sim:
        parts = tuple(args.only.split(","))
        if unknown := set(parts) - set(SIM_PARTS):
            p.error(f"--only: unknown part(s) {', '.join(sorted(unknown))}")
        simulate(args.quick, [int(x) for x in args.sizes.split(",")], parts)
    if not args.no_real:
        if shutil.which("serf") is None:
            print("\n(real-process part skipped: serf is not installed; apt-get install serf)")
            return 0
        loss_seconds = 20.0 if args.quick else args.loss_seconds
        kills = 3 if args.quick else args.kills
        with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
            h = run_real(Hypha(args.agents, Path(tmp), 100), kills, loss_seconds, 10.0)
            s = run_real(Serf(args.agents, Path(tmp), 140), kills, loss_seconds, 10.0)
        print_real(h, s, args.agents, loss_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
