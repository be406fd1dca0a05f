"""``hypha agent``: one trio nursery owning gossip, Raft, the leader loop, the node
reconciler and the API.

The agent composes the libraries and translates their errors where they enter
(docs/decisions/001-error-roots.md). It is also the API's ``Backend``: reads are
answered from the local copy of the replicated state and the gossip view; writes
are proposed to Raft when this agent leads, and otherwise raise ``NotLeaderError``
with the leader's API address so the API forwards them.

Shutdown (SIGTERM/SIGINT, or ``Agent.shutdown()``): stop accepting API requests,
stop this node's containers only with ``stop_on_exit``, leave the gossip cluster,
close Raft and the driver. A task that crashes takes the whole agent down (the
nursery re-raises), so it is never half alive. SIGHUP re-reads the gossip keyring
file (``--keyring``) without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

import gossip
import runtime
import scheduler
from agent import __version__
from agent.api import ApiApp, current_request_id
from agent.config import PREFIX_FILE, AgentConfig, parse_host_port
from agent.consensus import state as cstate
from agent.consensus.raft import RaftNode, discover_voters
from agent.errors import (
    ConfigError,
    ConflictError,
    ConsensusError,
    GossipUnavailableError,
    HyphaError,
    NotFoundError,
    NotLeaderError,
    RuntimeUnavailableError,
    SecretError,
)
from agent.events import EventBus
from agent.leader import LeaderLoop, PlacementView, WorkloadView, plan, request_for
from agent.metrics import AgentCollector, AgentMetrics
from agent.nodes import (
    REPLICA_PREFIX,
    NodeView,
    encode,
    host_capacity,
    host_load,
    node_from_state,
    replica_value,
)
from agent.observe_api import routes as observe_routes
from agent.observer import Observer
from agent.peer import PeerClient
from agent.reconciler import DesiredReplica, Reconciler, ReplicaReport
from agent.secrets import GOSSIP_KEY_PURPOSE, derive_key, load_secret
from agent.server import serve_api, tcp_listener, unix_listener
from agent.spec import WorkloadSpec, split_replica_id
from agent.workloads import (
    batch_status,
    history_rows,
    is_available,
    is_current,
    join_spec,
    meta_for_put,
    new_workload_meta,
    rollout_plan,
    spec_dict_at,
    split_spec,
    workload_uid,
)
from runtime.driver import check_prefix

log = logging.getLogger("hypha.agent")

PROPOSE_TIMEOUT = 10.0
JOIN_TIMEOUT = 30.0
PUBLISH_INTERVAL = 5.0
LEADER_WAIT = 5.0
RAFT_SYNC_TIMEOUT = 30.0
PEERS_FILE = "gossip-peers.json"
PENDING_BYTES = 900


def container_prefix(name: str, data_dir: Path) -> str:
    """This agent's container id prefix (also its cgroup dir, ``/hypha/<prefix>``):
    readable, <= 31 chars, and unique per agent *instance*, not per node name, so
    two local clusters with a node ``n1`` never share cgroups or container ids.

    Made once with a random suffix and kept in ``data_dir`` (``container-prefix``),
    so a restarted agent adopts its own containers. A data dir that ran containers
    before that file existed keeps the old name-only prefix for the same reason."""
    path = data_dir / PREFIX_FILE
    with contextlib.suppress(FileNotFoundError):
        return check_prefix(path.read_text().strip())
    clean = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:20] or "node"
    if (data_dir / "runtime").exists():
        digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    else:
        digest = secrets.token_hex(3)
    prefix = f"hy-{clean}-{digest}"[:31].strip("-")
    data_dir.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    staging.write_text(prefix + "\n")
    staging.replace(path)
    return prefix


async def _run_in(scope: trio.CancelScope, run: Callable[[], Awaitable[None]]) -> None:
    with scope:
        await run()


def cluster_token(secret: bytes) -> str:
    """The bearer token agents use with each other's TCP API (derived, never stored)."""
    return derive_key(secret, "api-token").hex()


class Agent:
    """One node of a Hypha cluster. ``await Agent(config, secret=...).run()``."""

    def __init__(self, config: AgentConfig, *, secret: bytes, api_token: str | None = None) -> None:
        self.config = config
        self.name = config.name
        self._secret = secret
        self._api_token = api_token
        self.cluster_token = cluster_token(secret)
        self.advertise_host, self.gossip_port = config.advertise_address
        self.peer = PeerClient(self.cluster_token, local_host=self.advertise_host)
        self.api_address: str | None = None
        self.raft_address: str | None = None
        self.driver_reason = ""
        self.container_prefix = ""
        self.started_at = time.time()
        self._spec_cache: dict[str, WorkloadSpec] = {}
        self._published: dict[str, str] = {}
        self._shutdown = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.gossip: Any = None
        self.raft: Any = None
        self.driver: Any = None
        self.reconciler: Reconciler | None = None
        self.leader_loop: LeaderLoop | None = None
        self.capacity = host_capacity(config.cpu_millicores, config.memory_bytes, config.pids)
        # Observability (agent/metrics.py, events.py, observer.py): a registry of our
        # own, never the process-global one, so agents sharing a process stay apart.
        self.version = __version__
        self.metrics = AgentMetrics()
        self.metrics.add_view(AgentCollector(self))
        self.events = EventBus(self.name)
        self.observer = Observer(self, self.events, self.metrics)

    # -- lifecycle ---------------------------------------------------------------------
    def shutdown(self) -> None:
        self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[Agent] = trio.TASK_STATUS_IGNORED) -> None:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(config.data_dir, 0o700)
        unix_sock = unix_listener(config.api_socket_path)
        tcp_sock = self._tcp_listener()
        try:
            self.driver = self._open_driver()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._start_gossip(nursery)
                await self._start_raft(nursery)
                self._publish_static()
                self.reconciler = Reconciler(
                    self.driver,
                    node=self.name,
                    desired=self._desired_replicas,
                    on_report=self._publish_replicas,
                    keep_running=self._keep_running,
                    on_start=self._container_started,
                    agent=self.container_prefix,
                )
                self.leader_loop = self._make_leader_loop()
                await self._wait_for_raft_sync()
                reconciler_scope = trio.CancelScope()
                await nursery.start(self._run_reconciler, reconciler_scope)
                leader_scope = trio.CancelScope()
                nursery.start_soon(_run_in, leader_scope, self.leader_loop.run)
                nursery.start_soon(self._pump_raft_events)
                nursery.start_soon(self._pump_gossip_events)
                nursery.start_soon(self.observer.run)
                nursery.start_soon(self._publish_loop)
                tokens = [self.cluster_token] + ([self._api_token] if self._api_token else [])
                extra = observe_routes(self.events, self.metrics)
                app = ApiApp(
                    self, tokens=tokens, peer=self.peer, extra_routes=extra, observe=self._api_done
                )
                local_app = ApiApp(self, peer=self.peer, extra_routes=extra, observe=self._api_done)
                api_scope = trio.CancelScope()
                nursery.start_soon(self._serve_api, api_scope, local_app, unix_sock, app, tcp_sock)
                nursery.start_soon(self._watch_signals)
                log.info(
                    "agent running",
                    extra={
                        "node": self.name,
                        "api": self.api_address,
                        "raft": self.raft_address,
                        "driver": self.driver_reason,
                    },
                )
                task_status.started(self)
                await self._shutdown.wait()
                log.info("shutting down", extra={"node": self.name})
                api_scope.cancel()
                reconciler_scope.cancel()
                # An agent on its way out plans nothing more: as the others of a local
                # cluster stopped together left one by one, the last leader moved every
                # replica onto itself, and the restarted cluster had them all on one node.
                leader_scope.cancel()
                if config.stop_on_exit:
                    await self.reconciler.stop_all()
                with trio.move_on_after(3):
                    try:
                        await self.gossip.leave(timeout=2.0)
                    except gossip.GossipError as exc:
                        log.warning("leave failed", extra={"error": str(exc)})
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self._close()
            unix_sock.close()
            with contextlib.suppress(OSError):
                config.api_socket_path.unlink()

    async def _close(self) -> None:
        if self.driver is not None:
            with trio.move_on_after(5):
                await self.driver.close()

    async def _run_reconciler(
        self,
        scope: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        assert self.reconciler is not None
        with scope:
            await self.reconciler.run(task_status=task_status)

    async def _serve_api(
        self, scope: trio.CancelScope, local_app: ApiApp, unix_sock: Any, app: ApiApp, tcp_sock: Any
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve_api, local_app, unix_sock)
                nursery.start_soon(serve_api, app, tcp_sock)

    async def _watch_signals(self) -> None:
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                log.info("signal received", extra={"signal": signal.Signals(signum).name})
                if signum == signal.SIGHUP:
                    self.reload_keyring()
                    continue
                self.shutdown()
                return

    def reload_keyring(self) -> bool:
        """Re-read ``--keyring`` into the running gossip service (on SIGHUP): the next
        datagram is sealed with the file's first key, and every key listed (plus the
        one derived from the cluster secret) opens. A file that cannot be read changes
        nothing. Returns whether the keys were replaced."""
        if self.config.keyring is None or self.gossip is None:
            log.info("keyring not reloaded: the agent runs without --keyring")
            return False
        try:
            fresh = self._keyring()
        except SecretError as exc:
            log.warning("keyring not reloaded", extra={"error": str(exc)})
            return False
        self.gossip.keyring.replace(fresh)
        log.info("keyring reloaded", extra={"keys": len(fresh.keys())})
        return True

    def _tcp_listener(self) -> Any:
        if self.config.api_tcp is not None:
            host, port = parse_host_port(self.config.api_tcp, key="api_tcp")
        else:
            host, port = self.advertise_host, 0
        sock = tcp_listener(host, port)
        bound_port = sock.getsockname()[1]
        public_host = self.advertise_host if host in ("0.0.0.0", "::") else host
        self.api_address = f"http://{public_host}:{bound_port}"
        return sock

    def _open_driver(self) -> Any:
        self.container_prefix = container_prefix(self.name, self.config.data_dir)
        try:
            driver, reason = runtime.open_driver(
                self.config.driver,
                state_dir=(self.config.data_dir / "runtime").resolve(),
                prefix=self.container_prefix,
                runtime_path=self.config.runtime_path,
            )
        except runtime.DriverError as exc:
            raise RuntimeUnavailableError(f"driver: {exc}") from exc
        self.driver_reason = reason
        return driver

    # -- gossip ------------------------------------------------------------------------
    def _gossip_config(self) -> Any:
        preset = self.config.gossip_preset
        return getattr(gossip.GossipConfig, preset)()

    def _keyring(self) -> Any:
        primary = derive_key(self._secret, GOSSIP_KEY_PURPOSE)
        if self.config.keyring is not None:
            try:
                keyring = gossip.Keyring.load(self.config.keyring)
            except gossip.GossipError as exc:
                raise SecretError(f"--keyring: {exc}") from exc
            known: list[bytes] = keyring.keys()
            if primary not in known:
                keyring.install(primary)
            return keyring
        return gossip.Keyring(primary)

    async def _start_gossip(self, nursery: trio.Nursery) -> None:
        bind = parse_host_port(self.config.bind, key="bind")
        self.gossip = gossip.GossipService(
            self._gossip_config(),
            name=self.name,
            bind=bind,
            advertise=(self.advertise_host, self.gossip_port),
            keyring=self._keyring(),
        )
        try:
            await nursery.start(self.gossip.serve)
        except gossip.GossipError as exc:
            raise GossipUnavailableError(f"bind: {exc}") from exc
        self.gossip.set("api", encode(self.api_address))
        if self.config.join:
            seeds = [parse_host_port(s, key="join", default_port=7946) for s in self.config.join]
            try:
                known = await self.gossip.join(seeds, timeout=JOIN_TIMEOUT)
            except gossip.GossipError as exc:
                raise GossipUnavailableError(f"join: {exc}") from exc
            log.info("joined the cluster", extra={"members": known})
        else:
            remembered = self._remembered_peers()
            if remembered:
                # A restart without --join: find the cluster where we last saw it.
                try:
                    known = await self.gossip.join(remembered, timeout=10.0)
                    log.info("rejoined remembered peers", extra={"members": known})
                except gossip.GossipError as exc:
                    log.warning("no remembered peer answered", extra={"error": str(exc)})

    def _peers_path(self) -> Path:
        return self.config.data_dir / PEERS_FILE

    def _remembered_peers(self) -> list[tuple[str, int]]:
        try:
            data = json.loads(self._peers_path().read_text())
        except (OSError, ValueError):
            return []
        own = (self.advertise_host, self.gossip_port)
        peers = []
        for item in data if isinstance(data, list) else []:
            if isinstance(item, list) and len(item) == 2:
                address = (str(item[0]), int(item[1]))
                if address != own:
                    peers.append(address)
        return peers

    def _remember_peers(self) -> None:
        peers = sorted(
            [m.address[0], m.address[1]]
            for m in self.gossip.members()
            if m.state == "alive" and m.name != self.name
        )
        if not peers:
            return
        path = self._peers_path()
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(peers))
        os.replace(tmp, path)

    # -- raft --------------------------------------------------------------------------
    def _raft_addr(self) -> str:
        if self.config.raft_bind is not None:
            host, port = parse_host_port(self.config.raft_bind, key="raft_bind")
            if host in ("0.0.0.0", "::"):
                host = self.advertise_host
            return f"{host}:{port}"
        return f"{self.advertise_host}:{self.gossip_port + 1}"

    def _known_peer_raft_addresses(self) -> list[str]:
        """Raft addresses other agents publish in gossip, as far as we know them now."""
        found = []
        for name, state in self.gossip.states().items():
            raft = state.get("raft")
            if name != self.name and raft:
                found.append(str(_json(raft)))
        return sorted(found)

    async def _peer_raft_addresses(self, password: str) -> list[str]:
        """Raft addresses other agents publish in gossip, once one of them answers with
        the voter set. Only voters listen: the first keys to arrive may all be replicas'
        (the chaos soak saw a fifth agent give up on three replicas while the voter's
        key was one gossip round away), so ask again as more keys arrive."""
        last_error: ConsensusError | None = None
        with trio.move_on_after(JOIN_TIMEOUT):
            while True:
                found = self._known_peer_raft_addresses()
                if found:
                    try:
                        await trio.to_thread.run_sync(
                            discover_voters, found, password.encode(), 2.0
                        )
                        return found
                    except ConsensusError as exc:
                        last_error = exc
                await trio.sleep(0.5 if found else 0.1)
        if last_error is not None:
            raise last_error
        raise GossipUnavailableError(
            "join: reached the cluster but no agent published its Raft address within "
            f"{JOIN_TIMEOUT:.0f}s"
        )

    async def _start_raft(self, nursery: trio.Nursery) -> None:
        self.raft_address = self._raft_addr()
        password = derive_key(self._secret, "raft-password").hex()
        data_dir = self.config.data_dir / "raft"
        data_dir.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if RaftNode.has_local_state(data_dir):
            # A restart comes back in its old role from its own files (a replica asks
            # the peers gossip already knows for the voters). Waiting for peers' `raft`
            # keys here hung a whole-cluster restart: each agent publishes its key only
            # once its Raft has started.
            known = self._known_peer_raft_addresses()
            if known:
                kwargs["join_via"] = known
        elif self.config.join:
            kwargs["join_via"] = await self._peer_raft_addresses(password)
        else:
            kwargs["bootstrap"] = True
        self.raft = RaftNode(
            self.raft_address,
            data_dir,
            password,
            membership=self._raft_membership,
            present=self._raft_present,
            target_voters=self.config.voters,
            **kwargs,
        )
        await nursery.start(self.raft.serve)
        self.gossip.set("raft", encode(self.raft_address))

    async def _wait_for_raft_sync(self) -> None:
        """Before acting on placements, hear from a leader and apply what it committed:
        a restarted agent's journal may be stale (its replicas may have moved), and
        acting on it would start a replica that now runs elsewhere."""
        with trio.move_on_after(RAFT_SYNC_TIMEOUT) as scope:
            while not (
                self.raft.leader is not None and self.raft.last_applied >= self.raft.commit_index
            ):
                await trio.sleep(0.05)
        if scope.cancelled_caught:
            log.warning(
                "raft not in sync; reconciling from the local state",
                extra={"timeout": RAFT_SYNC_TIMEOUT},
            )

    def _raft_membership(self) -> list[str]:
        """Raft addresses of the members gossip sees alive: the autopilot's candidates."""
        return self._raft_addresses(("alive",))

    def _raft_present(self) -> list[str]:
        """Raft addresses of the members not known dead (alive or only suspect): the
        autopilot replaces a voter only when it is missing from these."""
        return self._raft_addresses(("alive", "suspect"))

    def _raft_addresses(self, states_wanted: tuple[str, ...]) -> list[str]:
        result = []
        states = self.gossip.states()
        for member in self.gossip.members():
            if member.state not in states_wanted:
                continue
            raft = _json(states.get(member.name, {}).get("raft"))
            if raft:
                result.append(str(raft))
        return result

    @property
    def state(self) -> cstate.DesiredState:
        return self.raft.state

    def _leader_api(self) -> str | None:
        # A read-only replica may not know the leader from pysyncobj; the replicated
        # state records who the last leader announced itself as.
        leader = self.raft.leader or getattr(self.state, "leader", None)
        if not leader:
            return None
        for _name, state in self.gossip.states().items():
            if _json(state.get("raft")) == leader:
                api = _json(state.get("api"))
                return str(api) if api else None
        return None

    async def propose(self, command: cstate.Command) -> dict[str, Any]:
        """Commit ``command`` through Raft (this agent must lead) and return its result."""
        from agent.consensus.raft import NotLeaderError as RaftNotLeader

        started = time.perf_counter()
        proposals = self.metrics.raft_proposals
        try:
            result: dict[str, Any] = await self.raft.propose(command, timeout=PROPOSE_TIMEOUT)
        except RaftNotLeader as exc:
            proposals.labels(command.op, "not_leader").inc()
            raise NotLeaderError(str(exc), self._leader_api()) from exc
        except ConsensusError:
            proposals.labels(command.op, "not_committed").inc()
            raise
        self.metrics.raft_apply.labels(command.op).observe(time.perf_counter() - started)
        proposals.labels(command.op, "ok" if result.get("ok", True) else "rejected").inc()
        if not result.get("ok", True):
            code = result.get("error")
            message = result.get("message") or str(code)
            if code == "not_found":
                raise NotFoundError(message)
            if code == "conflict":
                raise ConflictError(message)
            if code == "invalid":
                raise ConfigError(message)
            raise ConsensusError(message)
        return result

    def applied_index(self) -> int:
        """The Raft index this agent has applied (the leader's, in a forwarded answer)."""
        return int(self.raft.last_applied)

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Wait (at most ``timeout``) until this agent has applied ``index``: a write
        forwarded to the leader is then visible in reads from this agent."""
        with trio.move_on_after(timeout):
            while self.raft.last_applied < index:
                await trio.sleep(0.02)

    async def _require_leader(self) -> None:
        """Return once this agent leads and has applied everything committed before its
        term (``is_leader_ready``: the state it checks a write against is current).
        Raise ``NotLeaderError`` with the leader's API (the API forwards the write there),
        waiting a few seconds for an election first."""
        with trio.move_on_after(LEADER_WAIT):
            while True:
                if self.raft.is_leader_ready:
                    return
                if not self.raft.is_leader:
                    leader_api = self._leader_api()
                    if leader_api is not None and leader_api != self.api_address:
                        raise NotLeaderError("this agent is not the leader", leader_api)
                await trio.sleep(0.05)
        raise NotLeaderError("this agent is not the leader and no leader is known", None)

    def _write_id(self) -> tuple[str, bool]:
        """The request id for the command of the API write being served, and whether the
        state already holds its result (a retry of a write that committed: the checks
        made before proposing are skipped, and the proposal answers the first result)."""
        request_id = current_request_id() or uuid.uuid4().hex
        return request_id, self.state.result_of(request_id) is not None

    # -- events ------------------------------------------------------------------------
    async def _pump_raft_events(self) -> None:
        async for _event in self.raft.subscribe():
            assert self.reconciler is not None and self.leader_loop is not None
            self.reconciler.poke()
            self.leader_loop.poke()

    async def _pump_gossip_events(self) -> None:
        async for event in self.gossip.subscribe():
            assert self.leader_loop is not None
            if getattr(event, "key", None) is not None and str(event.key).startswith(
                REPLICA_PREFIX
            ):
                continue
            self.leader_loop.poke()

    # -- node state ------------------------------------------------------------------
    def _publish_static(self) -> None:
        g = self.gossip
        g.set("api", encode(self.api_address))
        g.set("raft", encode(self.raft_address))
        g.set("capacity", encode(self.capacity))
        g.set("labels", encode(dict(self.config.labels)))
        g.set("zone", encode(self.config.zone or self.config.labels.get("zone", "")))
        g.set("driver", encode(self.driver_reason))
        g.set("version", encode(__version__))
        self._publish_dynamic()

    def _publish_dynamic(self) -> None:
        allocated = {"cpu_millicores": 0, "memory_bytes": 0, "pids": 0}
        for want in self._desired_replicas().values():
            res = want.spec.resources
            allocated["cpu_millicores"] += res.cpu_millicores
            allocated["memory_bytes"] += res.memory_bytes
            allocated["pids"] += res.pids or 0
        allocatable = {k: max(0, self.capacity[k] - allocated[k]) for k in self.capacity}
        self._set_if_changed("allocatable", encode(allocatable))
        self._set_if_changed("load", encode(host_load()))
        credit = 0
        with contextlib.suppress(AttributeError):
            credit = int(self.state.credits().get(self.name, 0))
        self._set_if_changed("credit", encode(credit))

    def _set_if_changed(self, key: str, value: str) -> None:
        if self._published.get(key) != value:
            self._published[key] = value
            self.gossip.set(key, value)

    def _publish_replicas(self, reports: dict[str, ReplicaReport]) -> None:
        self.observer.local_reports(reports)
        current = {
            f"{REPLICA_PREFIX}{rid}": replica_value(r.to_dict()) for rid, r in reports.items()
        }
        for key in [k for k in self._published if k.startswith(REPLICA_PREFIX)]:
            if key not in current:
                del self._published[key]
                self.gossip.delete(key)
        for key, value in current.items():
            self._set_if_changed(key, value)

    async def _publish_loop(self) -> None:
        while True:
            await trio.sleep(PUBLISH_INTERVAL)
            self._publish_dynamic()
            with contextlib.suppress(OSError):
                self._remember_peers()

    # -- views -------------------------------------------------------------------------
    def _spec(self, spec_json: str, spec_dict: Mapping[str, Any]) -> WorkloadSpec:
        """The parsed spec, cached by its canonical JSON text.

        Not by (name, version): versions start again at 1 when a workload is deleted
        and created again, and a cache keyed that way handed the leader the old
        workload's spec, so it placed replicas the state refused for ever (found by
        the chaos soak)."""
        spec = self._spec_cache.get(spec_json)
        if spec is None:
            spec = WorkloadSpec.from_dict(split_spec(spec_dict)[0])
            if len(self._spec_cache) > 1000:
                self._spec_cache.clear()
            self._spec_cache[spec_json] = spec
        return spec

    def _workload_views(self) -> list[WorkloadView]:
        views = []
        for record in self.state.workloads():
            try:
                spec = self._spec(record.spec_json, record.spec)
            except ConfigError as exc:
                log.error(
                    "bad spec in the replicated state",
                    extra={"workload": record.name, "error": str(exc)},
                )
                continue
            views.append(WorkloadView(record.name, spec, record.version, record.spec))
        return views

    def _read_desired(self) -> tuple[list[WorkloadView], list[PlacementView]]:
        placements = [
            PlacementView(
                p.replica_id,
                p.workload,
                p.node,
                p.spec_version,
                completed=self.state.completed(p.replica_id),
            )
            for p in self.state.placements()
        ]
        return self._workload_views(), placements

    def _desired_replicas(self) -> dict[str, DesiredReplica]:
        if self.raft is None:
            return {}
        workloads = {w.name: w for w in self._workload_views()}
        result = {}
        for p in self.state.placements_for(self.name):
            workload = workloads.get(p.workload)
            if workload is None:
                continue
            spec = self._spec_at(workload, p.spec_version)
            uid = workload_uid(workload.spec_dict)
            result[p.replica_id] = DesiredReplica(
                p.replica_id, spec, p.spec_version, uid, done=self.state.completed(p.replica_id)
            )
        return result

    def _spec_at(self, workload: WorkloadView, version: int) -> WorkloadSpec:
        """The spec a placement at ``version`` runs (an older template during a rolling
        update; see agent/workloads.py)."""
        if workload.spec_dict is None or version >= workload.version:
            return workload.spec
        data = spec_dict_at(workload.spec_dict, version)
        key = json.dumps(data, sort_keys=True, separators=(",", ":"))
        spec = self._spec_cache.get(key)
        if spec is None:
            try:
                spec = WorkloadSpec.from_dict(data)
            except ConfigError:
                spec = workload.spec
            self._spec_cache[key] = spec
        return spec

    def _keep_running(self, rid: str) -> bool:
        """Hand-off during a drain: a service replica that moved from this draining node
        to another live node keeps running here until it runs (and is healthy) there.
        Only a drain hands off: after a failure or a partition the old copy stops at
        once, so no replica runs twice once things settle."""
        if not self.state.node_admin(self.name).draining:
            return False
        placement = self.state.placement(rid)
        if placement is None or placement.node == self.name:
            return False
        record = self.state.workload(placement.workload)
        if record is None or record.spec.get("type", "service") != "service":
            return False
        view = self.node_views().get(placement.node)
        if view is None or view.liveness != "alive":
            return False
        return not is_available(view.replicas.get(rid))

    def node_views(self) -> dict[str, NodeView]:
        states = self.gossip.states()
        views: dict[str, NodeView] = {}
        for member in self.gossip.members():
            host, port = member.address
            view = node_from_state(
                member.name,
                member.state,
                states.get(member.name, {}),
                address=f"{host}:{port}",
                since=member.since,
            )
            views[member.name] = view
        for admin in self.state.node_admins():
            admin_view = views.get(admin.node)
            if admin_view is None:
                admin_view = views[admin.node] = NodeView(name=admin.node, liveness="unknown")
            admin_view.eligible = admin.eligible
            admin_view.draining = admin.draining
        for p in self.state.placements():
            if p.node not in views:
                views[p.node] = NodeView(name=p.node, liveness="unknown")
        return views

    def _make_leader_loop(self) -> LeaderLoop:
        def entries_of(batch: list[tuple[str, str, int]]) -> tuple[cstate.PlacementEntry, ...]:
            return tuple(cstate.PlacementEntry(*item) for item in batch)

        async def commit_placements(term: int, batch: list[tuple[str, str, int]]) -> Any:
            entries = entries_of(batch)
            kinds = {"new": 0, "move": 0, "update": 0}
            for rid, node, _version in batch:
                before = self.state.placement(rid)
                kinds["new" if before is None else "move" if before.node != node else "update"] += 1
            result = await self._propose_quietly(
                cstate.SetPlacements(term=term, placements=entries)
            )
            if result is not None:
                self.observer.placements_committed(kinds)
            return result

        async def remove_placements(term: int, rids: list[str]) -> Any:
            return await self._propose_quietly(
                cstate.RemovePlacements(term=term, replica_ids=tuple(rids))
            )

        async def mark_completed(term: int, batch: list[tuple[str, str, int]]) -> Any:
            replicas = entries_of(batch)
            return await self._propose_quietly(cstate.MarkCompleted(term=term, replicas=replicas))

        async def commit_credits(term: int, snapshot: scheduler.Snapshot) -> Any:
            balances = scheduler.epoch(snapshot)
            if not balances:
                return None
            epoch = int(getattr(self.state, "credit_epoch", 0)) + 1
            return await self._propose_quietly(
                cstate.SetCredits(term=term, epoch=epoch, balances=balances)
            )

        async def scale_workloads(counts: dict[str, int]) -> None:
            for name, replicas in sorted(counts.items()):
                log.info("scaling system job", extra={"workload": name, "replicas": replicas})
                await self._propose_quietly(cstate.ScaleWorkload(name=name, replicas=replicas))

        async def revert_workloads(reverts: dict[str, tuple[dict[str, Any], int]]) -> None:
            for name, (spec, version) in sorted(reverts.items()):
                log.warning("rolling back", extra={"workload": name, "from_version": version})
                await self._propose_quietly(cstate.PutWorkload(spec=spec, expected_version=version))

        return LeaderLoop(
            is_leader=lambda: bool(self.raft.is_leader_ready),
            term=lambda: int(self.raft.term),
            read=self._read_desired,
            nodes=self.node_views,
            commit_placements=commit_placements,
            remove_placements=remove_placements,
            commit_credits=commit_credits,
            mark_completed=mark_completed,
            on_step=self.observer.leader_step,
            on_pending=self._publish_pending,
            scale_workloads=scale_workloads,
            revert_workloads=revert_workloads,
        )

    def _publish_pending(self, pending: dict[str, str]) -> None:
        """The leader tells everyone why replicas have no home (as much as fits a datagram)."""
        shown: dict[str, str] = {}
        size = 2
        for rid in sorted(pending):
            reason = pending[rid][:160]
            size += len(rid) + len(reason) + 8
            if size > PENDING_BYTES:
                break
            shown[rid] = reason
        self._set_if_changed("pending", encode(shown))

    async def _propose_quietly(self, command: cstate.Command) -> dict[str, Any] | None:
        """The leader's own writes: a lost leadership or a timeout is retried next step."""
        try:
            return await self.propose(command)
        except (ConsensusError, ConflictError, NotFoundError) as exc:
            log.info("leader write not committed", extra={"op": command.op, "error": str(exc)})
            return None

    # -- observability hooks -----------------------------------------------------------
    def _api_done(self, method: str, route: str, status: int, seconds: float) -> None:
        self.metrics.api_requests.labels(method, route, str(status)).inc()
        self.metrics.api_latency.labels(method, route).observe(seconds)

    def _container_started(
        self, replica: str, restarts: int, seconds: float, error: str | None
    ) -> None:
        self.metrics.container_starts.labels("error" if error else "ok").inc()
        if error is None:
            self.metrics.container_start.observe(seconds)
            if restarts > 0:
                self.metrics.restarts.inc()

    # -- Backend: reads ----------------------------------------------------------------
    def _workload_dict(self, record: Any, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        running = sum(
            1
            for i in range(record.replicas)
            if reports.get(f"{record.name}-{i}", {}).get("state") == "running"
        )
        user_spec, _ = split_spec(record.spec)
        data = {
            "name": record.name,
            "version": record.version,
            "replicas": record.replicas,
            "running": running,
            "tenant": record.tenant,
            "spec": user_spec,
            "type": user_spec.get("type", "service"),
        }
        data.update(self._workload_status(record, reports))
        return data

    def _workload_status(self, record: Any, reports: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Batch status, or a service's rolling update and version history."""
        try:
            spec = self._spec(record.spec_json, record.spec)
        except ConfigError:
            return {}
        rids = [f"{record.name}-{i}" for i in range(record.replicas)]
        if spec.type == "batch":
            return {"status": batch_status(spec, [reports.get(rid) for rid in rids])}
        placements = {
            p.replica_id: (p.node, p.spec_version)
            for p in self.state.placements()
            if p.workload == record.name
        }
        rollout = rollout_plan(
            record.spec, record.version, spec, placements, self.node_views(), time.time()
        )
        return {
            "status": rollout.status,
            "deployment": rollout.to_dict(),
            "history": history_rows(record.spec, record.version),
        }

    def _reports(self) -> dict[str, dict[str, Any]]:
        """Replica reports from the node each replica is placed on."""
        views = self.node_views()
        uids = {r.name: workload_uid(r.spec) for r in self.state.workloads()}
        reports = {}
        for p in self.state.placements():
            report = self._report_of(p, views.get(p.node), uids.get(p.workload, ""))
            if report is not None:
                reports[p.replica_id] = report
        return reports

    def _report_of(
        self, p: cstate.PlacementRecord, view: NodeView | None, uid: str
    ) -> dict[str, Any] | None:
        """The report of placement ``p``: its node's, if it is of this workload (not of
        a removed one of the same name); else, for a replica the state records as
        completed, one saying so (its node, and so its own report, may be gone)."""
        report = view.replicas.get(p.replica_id) if view is not None else None
        if report is not None and is_current(report, uid):
            return dict(report)
        if self.state.completed(p.replica_id):
            return _completed_report(p.replica_id, p.spec_version)
        return None

    async def list_workloads(self) -> list[dict[str, Any]]:
        reports = self._reports()
        return [
            self._workload_dict(r, reports)
            for r in sorted(self.state.workloads(), key=lambda r: r.name)
        ]

    async def get_workload(self, name: str) -> dict[str, Any]:
        record = self.state.workload(name)
        if record is None:
            raise NotFoundError(f"no workload named {name!r} (see `hypha ps`)")
        data = self._workload_dict(record, self._reports())
        data["replica_states"] = await self.list_replicas(name)
        return data

    async def list_replicas(self, workload: str | None) -> list[dict[str, Any]]:
        views = self.node_views()
        placements = {p.replica_id: p for p in self.state.placements()}
        pending = self._pending_reasons()
        rows = []
        for record in sorted(self.state.workloads(), key=lambda r: r.name):
            if workload is not None and record.name != workload:
                continue
            uid = workload_uid(record.spec)
            for index in range(record.replicas):
                rid = f"{record.name}-{index}"
                p = placements.get(rid)
                row: dict[str, Any] = {
                    "replica_id": rid,
                    "workload": record.name,
                    "index": index,
                    "node": p.node if p else None,
                    "state": "pending",
                    "version": p.spec_version if p else None,
                    "exit_code": None,
                    "restarts": 0,
                    "health": None,
                    "error": pending.get(rid),
                    "started_at": None,
                }
                if p is not None:
                    view = views.get(p.node)
                    report = self._report_of(p, view, uid)
                    if report is not None:
                        row.update({k: v for k, v in report.items() if k != "replica_id"})
                        row["workload"] = record.name
                    else:
                        row["state"] = "assigned"
                    gone = view is not None and view.liveness in ("dead", "left", "unknown")
                    if gone and p is not None and not self.state.completed(rid):
                        row["state"] = "lost"
                    if not row.get("error") and rid in pending:
                        # placed, but it should move (its node drains) and cannot
                        row["error"] = f"cannot move: {pending[rid]}"
                rows.append(row)
        return rows

    def _pending_reasons(self) -> dict[str, str]:
        if self.raft.is_leader and self.leader_loop is not None:
            return dict(self.leader_loop.pending)
        leader = self.raft.leader or getattr(self.state, "leader", None)
        for state in self.gossip.states().values():
            if leader and _json(state.get("raft")) == leader:
                found = _json(state.get("pending"))
                return found if isinstance(found, dict) else {}
        return {}

    async def list_nodes(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for p in self.state.placements():
            counts[p.node] = counts.get(p.node, 0) + 1
        rows = []
        for view in sorted(self.node_views().values(), key=lambda v: v.name):
            data = view.to_dict()
            data["placed"] = counts.get(view.name, 0)
            data["leader"] = view.raft is not None and view.raft == self.raft.leader
            rows.append(data)
        return rows

    async def get_node(self, name: str) -> dict[str, Any]:
        for node in await self.list_nodes():
            if node["name"] == name:
                return node
        raise NotFoundError(f"no node named {name!r} (see `hypha members`)")

    async def plan_workload(self, spec: dict[str, Any]) -> dict[str, Any]:
        """A dry run: where the replicas of ``spec`` would go now, and why."""
        parsed = WorkloadSpec.from_dict(spec)
        refuse_host_command_on_oci(parsed, self.node_views())
        workloads, placements = self._read_desired()
        others = [w for w in workloads if w.name != parsed.name]
        kept = [p for p in placements if p.workload != parsed.name]
        _, snapshot = plan(others, kept, self.node_views(), seed=1, unknown_is_lost=False)
        requests = [request_for(rid, parsed) for rid in parsed.replica_ids()]
        seed = int(self.raft.term) or 1
        decisions = scheduler.place(snapshot, requests, seed) if requests else []
        rows = [
            {"replica_id": d.replica_id, "node": d.node_id, "reason": d.reason, "rule": d.rule}
            for d in decisions
        ]
        result: dict[str, Any] = {
            "name": parsed.name,
            "replicas": rows,
            "placed": sum(1 for d in decisions if d.node_id is not None),
            "exists": self.state.workload(parsed.name) is not None,
        }
        if requests:
            explanation = scheduler.explain(snapshot, requests[0], seed)
            result["explanation"] = explanation.to_dict()
            result["text"] = str(explanation)
        return result

    async def members(self) -> list[dict[str, Any]]:
        states = self.gossip.states()
        rows = []
        for m in sorted(self.gossip.members(), key=lambda m: m.name):
            host, port = m.address
            rows.append(
                {
                    "name": m.name,
                    "address": f"{host}:{port}",
                    "state": m.state,
                    "incarnation": m.incarnation,
                    "generation": m.generation,
                    "since": m.since,
                    "api": _json(states.get(m.name, {}).get("api")),
                }
            )
        return rows

    async def status(self) -> dict[str, Any]:
        raft_status = dict(self.raft.status())
        leader_name = None
        current = self.raft.leader
        # With no leader in sight (cut off, an election) the state still names the last
        # one it applied; shown as that, never as the leader.
        leader = current or getattr(self.state, "leader", None)
        for name, state in self.gossip.states().items():
            if leader and _json(state.get("raft")) == leader:
                leader_name = name
        if not current:
            raft_status["last_leader_node"] = leader_name
        raft_status.update(
            {
                "node": self.name,
                "leader_node": leader_name if current else None,
                "api": self.api_address,
                "driver": self.driver_reason,
                "version": __version__,
                "workloads": len(self.state.workloads()),
                "placements": len(self.state.placements()),
                "members_alive": sum(1 for m in self.gossip.members() if m.state == "alive"),
            }
        )
        if self.leader_loop is not None and self.leader_loop.paused:
            raft_status["rescheduling_paused"] = self.leader_loop.paused
        return raft_status

    # -- Backend: writes ---------------------------------------------------------------
    async def put_workload(
        self, spec: dict[str, Any], *, create: bool, expected_version: int | None
    ) -> dict[str, Any]:
        parsed = WorkloadSpec.from_dict(spec)
        refuse_host_command_on_oci(parsed, self.node_views())
        await self._require_leader()
        request_id, replay = self._write_id()
        existing_record = self.state.workload(parsed.name)
        if parsed.type == "system":
            # One replica per eligible node: the leader sets the count.
            count = existing_record.replicas if existing_record is not None else 0
            parsed = parsed.with_replicas(count)
        if create:
            existing = self.state.workload(parsed.name)
            if existing is not None and not replay:
                raise ConflictError(
                    f"workload {parsed.name!r} already exists (version {existing.version}); "
                    f"change its spec with `hypha update -f FILE`, its count with "
                    f"`hypha scale`, or remove it with `hypha rm {parsed.name}`"
                )
            expected: int | None = 0
        else:
            if self.state.workload(parsed.name) is None and not replay:
                raise NotFoundError(f"no workload named {parsed.name!r} to update")
            expected = expected_version
        spec_dict = parsed.to_dict()
        if existing_record is not None and not create:
            meta = meta_for_put(existing_record.spec, existing_record.version, spec_dict)
            spec_dict = join_spec(spec_dict, meta)
            if expected is None:
                expected = existing_record.version  # the history is made from this version
        elif existing_record is None:
            spec_dict = join_spec(spec_dict, new_workload_meta())
        result = await self.propose(
            cstate.PutWorkload(spec=spec_dict, expected_version=expected, request_id=request_id)
        )
        assert self.leader_loop is not None
        self.leader_loop.poke()
        return {
            "name": parsed.name,
            "version": result.get("version"),
            "changed": result.get("changed", True),
        }

    async def scale_workload(self, name: str, replicas: int) -> dict[str, Any]:
        await self._require_leader()
        request_id, replay = self._write_id()
        if self.state.workload(name) is None and not replay:
            raise NotFoundError(f"no workload named {name!r} (see `hypha ps`)")
        result = await self.propose(
            cstate.ScaleWorkload(name=name, replicas=replicas, request_id=request_id)
        )
        assert self.leader_loop is not None
        self.leader_loop.poke()
        return {"name": name, "replicas": replicas, "version": result.get("version")}

    async def delete_workload(self, name: str) -> dict[str, Any]:
        await self._require_leader()
        request_id, replay = self._write_id()
        if self.state.workload(name) is None and not replay:
            raise NotFoundError(f"no workload named {name!r} (see `hypha ps`)")
        result = await self.propose(cstate.DeleteWorkload(name=name, request_id=request_id))
        return {
            "name": name,
            "deleted": True,
            "removed_placements": result.get("removed_placements", 0),
        }

    async def set_node_admin(
        self, name: str, *, draining: bool | None, eligible: bool | None
    ) -> dict[str, Any]:
        if name not in self.node_views():
            raise NotFoundError(f"no node named {name!r} (see `hypha members`)")
        await self._require_leader()
        request_id, _replay = self._write_id()
        await self.propose(
            cstate.SetNodeAdmin(
                node=name, eligible=eligible, draining=draining, request_id=request_id
            )
        )
        assert self.leader_loop is not None
        self.leader_loop.poke()
        admin = self.state.node_admin(name)
        return {"name": name, "eligible": admin.eligible, "draining": admin.draining}

    # -- Backend: logs -----------------------------------------------------------------
    async def logs(self, replica: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]:
        split_replica_id(replica)
        placement = self.state.placement(replica)
        if placement is None:
            raise NotFoundError(f"no replica named {replica!r} is placed (see `hypha ps`)")
        if placement.node == self.name:
            try:
                async for chunk in self.driver.logs(replica, tail=tail, follow=follow):
                    yield chunk
            except runtime.ContainerNotFoundError:
                report = self.reconciler.reports.get(replica) if self.reconciler else None
                if report is not None and report.state == "failed":
                    raise NotFoundError(
                        f"replica {replica!r} has no output: it failed to start on "
                        f"{self.name} ({report.restarts} time(s); the node retries with "
                        f"backoff): {report.error}"
                    ) from None
                raise NotFoundError(
                    f"replica {replica!r} has no container on {self.name} yet"
                ) from None
            return
        view = self.node_views().get(placement.node)
        if view is None or not view.api:
            raise NotFoundError(f"node {placement.node!r} of replica {replica!r} is not reachable")
        query = {"tail": tail, "follow": "1" if follow else None, "raw": "1"}
        async for chunk in self.peer.stream(view.api, f"/v1/logs/{replica}", query):
            yield chunk


def refuse_host_command_on_oci(spec: WorkloadSpec, views: Mapping[str, NodeView]) -> None:
    """Refuse a spec without an image when every node that could take it runs the oci
    driver: it would be placed, then fail on its node ("the oci driver needs an image").
    Nodes publish their driver in gossip (``driver``: "oci: ...", "process: ...");
    a node that has not published one yet gives the spec the benefit of the doubt."""
    if spec.image is not None:
        return
    candidates = [
        view
        for view in views.values()
        if view.liveness in ("alive", "suspect")
        and view.eligible
        and not view.draining
        and all(c.matches(view.labels) for c in spec.constraints)
    ]
    if not candidates or any(not (v.driver or "").startswith("oci:") for v in candidates):
        return
    names = ", ".join(sorted(v.name for v in candidates))
    raise ConfigError(
        f"image: {spec.name} has none, so its command would run on the host, but every "
        f"node that could take it runs the oci driver ({names}): "
        'give an image (--image DIR, or image = "..." in the spec file), or run the '
        "agents with --driver process"
    )


def _completed_report(replica_id: str, version: int) -> dict[str, Any]:
    """What the views show for a replica the state records as completed, once its node
    (and so the node's own report) is gone."""
    return {
        "replica_id": replica_id,
        "state": "completed",
        "version": version,
        "exit_code": 0,
        "error": "completed on a node that is gone",
    }


def _json(text: Any) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


async def run_agent(config: AgentConfig, *, api_token: str | None = None) -> None:
    """Run one agent until it is told to stop. An expected failure of any task (a join
    nobody answers, a port in use) surfaces as that ``HyphaError``; anything else is a
    bug: logged with its traceback, and it takes the agent down."""
    secret = load_secret(config.secret_path)
    try:
        await Agent(config, secret=secret, api_token=api_token).run()
    except BaseExceptionGroup as group:
        leaves = _leaves(group)
        expected = [e for e in leaves if isinstance(e, HyphaError)]
        if expected and all(isinstance(e, HyphaError | trio.Cancelled) for e in leaves):
            raise expected[0] from group
        if not all(isinstance(e, KeyboardInterrupt | trio.Cancelled) for e in leaves):
            log.critical("agent crashed", exc_info=group)
        raise


__all__ = ["Agent", "cluster_token", "container_prefix", "run_agent"]
