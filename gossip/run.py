"""Run one gossip member as a process: ``python -m gossip.run --name n1 --bind HOST:PORT ...``.

For integration tests and ``scripts/bench-gossip`` (``hypha agent`` is the real
thing). It writes its view as JSON to ``--status`` a few times a second, reloads
``--keyring`` on SIGHUP (how the tests rotate keys on live members), and leaves
the cluster on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from gossip.config import GossipConfig
from gossip.core import MemberEvent
from gossip.errors import GossipError
from gossip.keyring import Keyring
from gossip.service import GossipService
from gossip.wire import Address

PRESETS = {"lan": GossipConfig.lan, "wan": GossipConfig.wan, "local": GossipConfig.local}


def host_port(text: str) -> Address:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return (host.strip("[]"), int(port))


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m gossip.run", description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--bind", required=True, type=host_port)
    p.add_argument("--advertise", type=host_port)
    p.add_argument("--join", action="append", default=[], type=host_port, metavar="HOST:PORT")
    p.add_argument("--join-timeout", type=float, default=10.0)
    p.add_argument("--keyring", required=True, type=Path, help="key file (mode 0600)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="lan")
    p.add_argument("--cluster", default="hypha")
    p.add_argument("--status", type=Path, help="write the member view here as JSON")
    p.add_argument(
        "--defer-join",
        action="store_true",
        help="join the --join seeds only on SIGUSR1 (benchmarks time the protocol, not startup)",
    )
    return p.parse_args(argv)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


async def main(args: argparse.Namespace) -> None:
    keyring = Keyring.load(args.keyring)
    config = PRESETS[args.preset](cluster=args.cluster)
    service = GossipService(
        config, name=args.name, bind=args.bind, advertise=args.advertise, keyring=keyring
    )
    events: dict[str, int] = {}
    changed = trio.Event()
    writing = trio.Lock()  # one writer of the status file (and its temporary) at a time

    async def write_status() -> None:
        async with writing:
            # Off the event loop: a slow disk must not delay the protocol's timers.
            await trio.to_thread.run_sync(write_json, args.status, status())

    async def watch_events() -> None:
        nonlocal changed
        async for event in service.subscribe(buffer=65536):
            if isinstance(event, MemberEvent):
                key = f"{event.kind}:{event.member.name}"
                events[key] = events.get(key, 0) + 1
                changed.set()

    def status() -> dict[str, Any]:
        return {
            "name": args.name,
            "pid": os.getpid(),
            "generation": service.generation,
            "members": [
                {
                    "name": m.name,
                    "address": list(m.address),
                    "state": m.state,
                    "incarnation": m.incarnation,
                    "generation": m.generation,
                    "since": m.since,
                }
                for m in service.members()
            ],
            "keys": len(keyring.keys()),
            "events": events,
            "counters": dict(service.counters()),
        }

    async def report() -> None:
        # Written at once when membership changes (so pollers see changes promptly),
        # and every second anyway for the counters.
        nonlocal changed
        while True:
            await write_status()
            with trio.move_on_after(1.0):
                await changed.wait()
            changed = trio.Event()
            await trio.sleep(0.02)  # coalesce a burst of events into one write

    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        nursery.start_soon(watch_events)
        if args.status:
            nursery.start_soon(report)
        if args.join and not args.defer_join:
            await service.join(args.join, args.join_timeout)
        wanted = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:
                    if args.join:
                        nursery.start_soon(service.join, args.join, args.join_timeout)
                    continue
                if signum == signal.SIGHUP:
                    try:
                        keyring.replace(Keyring.load(args.keyring))
                        logging.getLogger("hypha.gossip").info(
                            "keyring reloaded keys=%d", len(keyring.keys())
                        )
                    except GossipError as exc:
                        print(f"gossip.run: keyring not reloaded: {exc}", file=sys.stderr)
                    if args.status:
                        await write_status()
                    continue
                await service.leave(2.0)
                nursery.cancel_scope.cancel()
                return


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    failed = False
    try:
        trio.run(main, args)
    except* GossipError as group:
        for exc in group.exceptions:
            print(f"gossip.run: error: {exc}", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run())
