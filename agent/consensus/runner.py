"""One Raft node as a process, driven by JSON lines on stdin/stdout (tests and benchmarks).

    python -m agent.consensus.runner --addr 127.0.0.2:7001 --data-dir D \\
        --secret-file S (--bootstrap | --join 127.0.0.3:7001,...)

Each request is a JSON object with an ``id`` and a ``cmd``; each answer is one JSON line
with the same ``id``. Requests run concurrently. The first line written is
``{"event": "started", ...}`` (or ``{"event": "error", "message": ...}`` and exit 1).

Commands: ``status``; ``propose`` (``wire``, ``deadline`` seconds); ``state`` (the fingerprint);
``workload`` (``name``); ``membership`` (``alive``: the fake gossip view);
``bench_commit`` (``n``); ``bench_placements`` (``total``, ``batch``, ``concurrency``);
``exit``. The agent does not use this module: it embeds ``RaftNode`` directly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from agent.consensus.raft import NotLeaderError, RaftNode, RaftTimings
from agent.consensus.state import InvalidCommandError, PlacementEntry, PutWorkload, SetPlacements
from agent.errors import ConsensusError, HyphaError
from agent.secrets import derive_key, load_secret


class Runner:
    def __init__(self, node: RaftNode) -> None:
        self.node = node
        self.alive: list[str] | None = None
        self.suspect: list[str] = []
        self.out = trio.lowlevel.FdStream(os.dup(1))
        self.lock = trio.Lock()

    def membership(self) -> list[str]:
        return list(self.alive or [])

    def present(self) -> list[str]:
        return list(self.alive or []) + self.suspect

    async def write(self, obj: dict[str, Any]) -> None:
        async with self.lock:
            await self.out.send_all((json.dumps(obj, default=str) + "\n").encode())

    async def handle(self, request: dict[str, Any]) -> None:
        rid = request.get("id")
        try:
            answer = await self.dispatch(request)
        except NotLeaderError as exc:
            answer = {"error": "not_leader", "leader": exc.leader, "message": str(exc)}
        except InvalidCommandError as exc:
            answer = {"error": "invalid", "message": str(exc)}
        except ConsensusError as exc:
            answer = {"error": "consensus", "message": str(exc)}
        await self.write({"id": rid, **answer})

    async def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        cmd = request.get("cmd")
        node = self.node
        if cmd == "status":
            return {"status": node.status()}
        if cmd == "propose":
            result = await node.propose(request["wire"], timeout=float(request.get("deadline", 5)))
            return {"result": result}
        if cmd == "state":
            return {"fingerprint": node.state.fingerprint()}
        if cmd == "workload":
            record = node.state.workload(request["name"])
            return {"workload": record.to_dict() if record else None}
        if cmd == "membership":
            self.alive = list(request["alive"])
            self.suspect = list(request.get("suspect", []))
            node.membership = self.membership
            node.present = self.present
            return {"ok": True}
        if cmd == "bench_commit":
            return await self.bench_commit(int(request["n"]))
        if cmd == "bench_placements":
            return await self.bench_placements(
                int(request["total"]), int(request["batch"]), int(request["concurrency"])
            )
        return {"error": "unknown", "message": f"unknown cmd {cmd!r}"}

    async def bench_commit(self, n: int) -> dict[str, Any]:
        latencies = []
        for i in range(n):
            spec = {"name": "bench-commit", "replicas": 1, "seq": i}
            start = time.perf_counter()
            await self.node.propose(PutWorkload(spec), timeout=10)
            latencies.append(time.perf_counter() - start)
        return {"latencies": latencies}

    async def bench_placements(self, total: int, batch: int, concurrency: int) -> dict[str, Any]:
        """Place ``total`` replicas (workloads of up to 5,000) in batches of ``batch``."""
        node = self.node
        per_workload = 5000
        entries: list[PlacementEntry] = []
        for w, first in enumerate(range(0, total, per_workload)):
            count = min(per_workload, total - first)
            name = f"bench-place-{w}"
            result = await node.propose(PutWorkload({"name": name, "replicas": count}), timeout=10)
            version = int(result["version"])
            entries += [
                PlacementEntry(f"{name}-{i}", f"node-{i % 50}", version) for i in range(count)
            ]
        batches = [
            SetPlacements(node.term, tuple(entries[start : start + batch]))
            for start in range(0, len(entries), batch)
        ]
        applied = 0
        limiter = trio.Semaphore(concurrency)

        async def one(command: SetPlacements) -> None:
            nonlocal applied
            async with limiter:
                r = await node.propose(command, timeout=30)
                applied += len(r.get("applied", []))

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for command in batches:
                nursery.start_soon(one, command)
        return {"seconds": time.perf_counter() - start, "applied": applied}


async def main_async(args: argparse.Namespace) -> int:
    secret = load_secret(Path(args.secret_file))
    password = derive_key(secret, "raft-password")
    node = RaftNode(
        args.addr,
        args.data_dir,
        password,
        bootstrap=args.bootstrap,
        join_via=[a for a in (args.join or "").split(",") if a],
        target_voters=args.target_voters,
        timings=RaftTimings.local(),
        autopilot_interval=args.autopilot_interval,
        log_compaction_entries=args.compaction_entries,
    )
    runner = Runner(node)
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        await runner.write({"event": "started", "addr": args.addr, "role": node.role})
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffer = b""
        while True:
            chunk = await stdin.receive_some(65536)
            if not chunk:
                break
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not line.strip():
                    continue
                request = json.loads(line)
                if request.get("cmd") == "exit":
                    nursery.cancel_scope.cancel()
                    break
                nursery.start_soon(runner.handle, request)
        nursery.cancel_scope.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent.consensus.runner")
    parser.add_argument("--addr", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--secret-file", required=True)
    parser.add_argument("--bootstrap", action="store_true")
    parser.add_argument("--join", default="")
    parser.add_argument("--target-voters", type=int, default=3)
    parser.add_argument("--autopilot-interval", type=float, default=0.3)
    parser.add_argument("--compaction-entries", type=int, default=5000)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return trio.run(main_async, args)
    except BaseException as exc:
        found = _find_hypha_error(exc)
        if found is None:
            raise
        sys.stdout.write(json.dumps({"event": "error", "message": str(found)}) + "\n")
        sys.stdout.flush()
        return 1


def _find_hypha_error(exc: BaseException) -> HyphaError | None:
    if isinstance(exc, HyphaError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_hypha_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
