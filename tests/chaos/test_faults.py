"""The chaos tools themselves, on real processes, real UDP sockets and real iptables."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.chaos import faults
from agent.chaos.faults import ChaosError, LocalAgent
from tests.conftest import require_binary, require_root

TEST_TAG = "hypha-test-chaos"
# Addresses and names of this run's own (two runs on one machine must not meet).
NET = f"127.1.{os.getpid() % 250}"
FAKE_A, FAKE_B = f"fake-a{os.getpid()}", f"fake-b{os.getpid()}"


def fake_agent(
    argv0: Path, name: str, address: str, data_dir: str = "data"
) -> subprocess.Popen[bytes]:
    """A process whose command line reads like `hypha agent --name NAME --bind ADDRESS`."""
    return subprocess.Popen(
        [
            str(argv0),
            "-c",
            "import time; time.sleep(120)",
            "agent",
            "--name",
            name,
            "--bind",
            address,
            "--data-dir",
            data_dir,
        ],  # fmt: skip
        start_new_session=True,
    )


@pytest.fixture
def hypha_named_python(tmp_path: Path) -> Path:
    link = tmp_path / "hypha"
    link.symlink_to(sys.executable)
    return link


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_parse_agent_command_lines() -> None:
    agent = faults.parse_agent(
        1, ["/x/bin/hypha", "-v", "agent", "--name", "n1", "--bind", "127.0.0.2:7946"], "/w"
    )
    assert agent is not None
    assert (agent.name, agent.ip, agent.gossip_port) == ("n1", "127.0.0.2", 7946)
    module_form = ["python", "-m", "agent", "agent", "--name=n2", "--advertise=127.0.0.3:1"]
    parsed = faults.parse_agent(2, module_form)
    assert parsed is not None and parsed.name == "n2" and parsed.ip == "127.0.0.3"
    assert faults.parse_agent(3, ["hypha", "ps"]) is None
    assert faults.parse_agent(4, ["python", "-m", "agent", "agent"]) is None  # no name


def test_parse_agent_reads_its_config_file(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('name = "n7"\nbind = "127.0.0.7:7000"\n')
    agent = faults.parse_agent(5, ["hypha", "agent", "--config", "a.toml"], str(tmp_path))
    assert agent is not None and (agent.name, agent.ip) == ("n7", "127.0.0.7")


def test_discover_kill_pause_restart(
    hypha_named_python: Path, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    procs.append(fake_agent(hypha_named_python, FAKE_A, f"{NET}.231:17001"))
    procs.append(fake_agent(hypha_named_python, FAKE_B, f"{NET}.232:17002"))
    wait_for(lambda: {FAKE_A, FAKE_B} <= {a.name for a in faults.discover_local_agents()})
    agents = faults.discover_local_agents()
    (a,) = faults.resolve([FAKE_A], agents)
    (b,) = faults.resolve([FAKE_B], agents)
    assert a.pid == procs[0].pid and a.gossip_port == 17001

    with pytest.raises(ChaosError, match="no local agent named 'nope'"):
        faults.resolve(["nope"], agents)

    # pause: stopped while paused, running after.
    states: list[str] = []

    def stopped() -> bool:
        state = Path(f"/proc/{b.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        states.append(state)
        return state == "T"

    import threading

    pauser = threading.Thread(target=faults.pause, args=(b, 1.0))
    pauser.start()
    wait_for(stopped)
    pauser.join()
    assert not stopped()

    # restart: same command line, new pid, outlives us in its own session.
    child = faults.restart(a, grace=5, log=tmp_path / "a.log")
    new_pid = child.pid
    try:
        assert not Path(f"/proc/{a.pid}").exists()  # the old process is gone (and reaped)
        wait_for(lambda: any(x.pid == new_pid for x in faults.discover_local_agents()))
        (again,) = faults.resolve([FAKE_A], faults.discover_local_agents())
        assert again.pid == new_pid != a.pid
        assert again.argv == a.argv
    finally:
        child.kill()
        child.wait(timeout=10)

    faults.kill(b)
    assert procs[1].wait(timeout=10) == -9


def agent_at(
    name: str, ip: str, port: int | None = None, data_dir: Path | None = None, pid: int = 0
) -> LocalAgent:
    return LocalAgent(name=name, pid=pid, ip=ip, gossip_port=port, data_dir=data_dir, argv=())


def test_two_local_clusters_with_the_same_names(
    hypha_named_python: Path, procs: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Both have an agent of the same name: naming it alone is an error that lists
    both; --cluster DIR, an address or a data dir picks one (a later agent used to
    replace the earlier one silently, and `kill` hit whichever came last)."""
    first, second = tmp_path / "first", tmp_path / "second"
    procs.append(fake_agent(hypha_named_python, FAKE_A, f"{NET}.238:17003", f"{first}/n1"))
    procs.append(fake_agent(hypha_named_python, FAKE_A, f"{NET}.239:17004", f"{second}/n1"))
    pids = {p.pid for p in procs}
    wait_for(lambda: pids <= {a.pid for a in faults.discover_local_agents()})

    def chaos(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent.chaos", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = chaos("kill", FAKE_A)
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    for proc, address, data_dir in (
        (procs[0], f"{NET}.238:17003", f"{first}/n1"),
        (procs[1], f"{NET}.239:17004", f"{second}/n1"),
    ):
        assert f"pid {proc.pid} at {address}, data dir {data_dir}" in result.stderr
    assert "by its address or data dir, or give --cluster DIR" in result.stderr
    assert all(p.poll() is None for p in procs)  # nobody was killed

    result = chaos("--cluster", str(second), "kill", FAKE_A)
    assert result.returncode == 0, result.stderr
    assert procs[1].wait(timeout=10) == -9
    assert procs[0].poll() is None
    procs.append(fake_agent(hypha_named_python, FAKE_A, f"{NET}.239:17004", f"{second}/n1"))
    wait_for(lambda: any(a.pid == procs[2].pid for a in faults.discover_local_agents()))
    assert chaos("kill", f"{NET}.238:17003").returncode == 0
    assert procs[0].wait(timeout=10) == -9
    assert chaos("kill", f"{second}/n1").returncode == 0
    assert procs[2].wait(timeout=10) == -9


def test_resolve_takes_a_name_an_address_or_a_data_dir(tmp_path: Path) -> None:
    a1 = agent_at("n1", "127.0.0.2", 7946, tmp_path / "a" / "n1", pid=11)
    a2 = agent_at("n2", "127.0.0.3", 7946, tmp_path / "a" / "n2", pid=12)
    b1 = agent_at("n1", "127.0.1.2", 7946, tmp_path / "b" / "n1", pid=21)
    agents = [a1, a2, b1]
    assert faults.resolve(["n2", "127.0.1.2:7946", str(tmp_path / "a" / "n1")], agents) == [
        a2,
        b1,
        a1,
    ]
    with pytest.raises(ChaosError, match=r"2 local agents match 'n1'.*pid 11 .*; pid 21 "):
        faults.resolve(["n1"], agents)
    assert faults.resolve(["n1"], faults.under(agents, tmp_path / "b")) == [b1]
    # Rules are tagged with the cluster's directory when its agents share one.
    assert faults.tag_for([a1, a2]) == f"hypha-chaos {tmp_path / 'a'}"
    assert faults.tag_for([a1, b1]) == faults.TAG


class FakeIptables:
    """INPUT as a list; ``-S`` prints it as iptables does (a comment with a space in
    double quotes)."""

    def __init__(self) -> None:
        self.rules: list[tuple[str, ...]] = []

    def __call__(self, *args: str) -> str:
        op, chain, *rule = args
        assert chain == "INPUT"
        if op == "-I":
            self.rules.insert(0, tuple(rule))
        elif op == "-D":
            if tuple(rule) not in self.rules:
                raise ChaosError("iptables: Bad rule (does a matching rule exist in that chain?)")
            self.rules.remove(tuple(rule))
        elif op == "-S":
            quoted = (" ".join(f'"{a}"' if " " in a else a for a in r) for r in self.rules)
            return "-P INPUT ACCEPT\n" + "".join(f"-A INPUT {line}\n" for line in quoted)
        return ""


def test_heal_of_one_cluster_leaves_another_clusters_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iptables = FakeIptables()
    monkeypatch.setattr(faults, "_run_iptables", iptables)
    first, second = tmp_path / "first", tmp_path / "second cluster"  # a space, quoted
    for base, net in ((first, "127.0.5"), (second, "127.0.6")):
        groups = [[agent_at("n1", f"{net}.2")], [agent_at("n2", f"{net}.3")]]
        faults.apply_rules(faults.partition_rules(groups, tag=faults.cluster_tag(base)))
    faults.apply_rules(
        faults.partition_rules([[agent_at("x", "127.0.7.2")], [agent_at("y", "127.0.7.3")]])
    )
    assert len(faults.tagged_rules()) == 6
    assert len(faults.tagged_rules(faults.cluster_tag(second))) == 2
    assert faults.heal(faults.cluster_tag(second)) == 2
    assert not any("127.0.6." in " ".join(r) for r in iptables.rules)
    assert len(iptables.rules) == 4
    assert faults.heal() == 4  # the bare tag: every cluster's, and untagged ones
    assert iptables.rules == []


def test_partition_refuses_shared_addresses_and_foreign_ones() -> None:
    a, b = agent_at("a", "127.0.0.2"), agent_at("b", "127.0.0.2")
    with pytest.raises(ChaosError, match="shares address 127.0.0.2"):
        faults.partition_rules([[a], [b]])
    with pytest.raises(ChaosError, match="at least two groups"):
        faults.partition_rules([[a]])
    with pytest.raises(ChaosError, match="refusing to touch 10.0.0.1"):
        faults.check_cluster_addresses(["10.0.0.1"], ["127.0.0.2"])
    with pytest.raises(ChaosError, match="percent must be in"):
        faults.loss_rules(a, [b], 150)


def test_partition_rules_cover_both_directions() -> None:
    groups = [
        [agent_at("a", "127.0.0.2"), agent_at("b", "127.0.0.3")],
        [agent_at("c", "127.0.0.4")],
    ]
    rules = faults.partition_rules(groups)
    pairs = {(r.args[1], r.args[3]) for r in rules}
    assert pairs == {
        ("127.0.0.2", "127.0.0.4"),
        ("127.0.0.4", "127.0.0.2"),
        ("127.0.0.3", "127.0.0.4"),
        ("127.0.0.4", "127.0.0.3"),
    }
    assert all(faults.TAG in r.args and r.args[-1] == "DROP" for r in rules)


@pytest.fixture
def iptables_clean() -> Iterator[None]:
    require_root()
    require_binary("iptables")
    faults.heal(TEST_TAG)
    yield
    faults.heal(TEST_TAG)
    assert faults.tagged_rules(TEST_TAG) == []


def udp_pair(ip_a: str, ip_b: str) -> tuple[socket.socket, socket.socket]:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind((ip_a, 0))
    b.bind((ip_b, 0))
    for s in (a, b):
        s.setblocking(False)
    return a, b


def deliveries(src: socket.socket, dst: socket.socket, count: int) -> int:
    for i in range(count):
        src.sendto(i.to_bytes(4, "big"), dst.getsockname())
    time.sleep(0.2)
    got = 0
    while True:
        try:
            dst.recv(64)
            got += 1
        except BlockingIOError:
            return got


def test_partition_and_heal_on_real_udp(iptables_clean: None) -> None:
    a, b = udp_pair(f"{NET}.233", f"{NET}.234")
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((f"{NET}.235", 0))
    other.setblocking(False)
    try:
        assert deliveries(a, b, 20) == 20
        rules = faults.partition_rules(
            [[agent_at("a", f"{NET}.233")], [agent_at("b", f"{NET}.234")]], tag=TEST_TAG
        )
        faults.apply_rules(rules)
        assert len(faults.tagged_rules(TEST_TAG)) == 2
        assert deliveries(a, b, 20) == 0
        assert deliveries(b, a, 20) == 0
        assert deliveries(a, other, 20) == 20  # not in the partition: unaffected
        assert faults.heal(TEST_TAG) == 2
        assert deliveries(a, b, 20) == 20
    finally:
        for s in (a, b, other):
            s.close()


def test_loss_drops_about_the_asked_fraction(iptables_clean: None) -> None:
    a, b = udp_pair(f"{NET}.236", f"{NET}.237")
    try:
        rules = faults.loss_rules(
            agent_at("b", f"{NET}.237"), [agent_at("a", f"{NET}.236")], 50, tag=TEST_TAG
        )
        faults.apply_rules(rules)
        got = deliveries(a, b, 400)
        assert 100 < got < 300, got  # binomial(400, 0.5): far outside 6 sigma otherwise
    finally:
        a.close()
        b.close()


def test_chaos_cli_errors_are_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent.chaos", "kill", "nobody-here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("chaos: error: ")
    assert len(result.stderr.strip().splitlines()) == 1
