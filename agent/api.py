"""The agent's HTTP/JSON API: an ASGI app served by hypercorn on trio.

Routes (all JSON; errors are ``{"error": message, "status": code}``)::

    GET    /v1/workloads                     list
    POST   /v1/workloads                     create  {spec}           -> 201
    GET    /v1/workloads/{name}              get (spec, version, replicas)
    PUT    /v1/workloads/{name}              replace the spec {spec, expected_version?}
    POST   /v1/workloads/{name}/scale        {"replicas": N}
    DELETE /v1/workloads/{name}              delete
    GET    /v1/workloads/{name}/replicas     its replicas with node, state, exit code
    GET    /v1/replicas                      every replica
    GET    /v1/nodes                         nodes: liveness, admin state, capacity
    GET    /v1/nodes/{name}
    POST   /v1/nodes/{name}/drain            {"draining": true|false}
    POST   /v1/nodes/{name}/eligibility      {"eligible": true|false}
    POST   /v1/plan                          dry run {spec}: where replicas would go, and why
    GET    /v1/members                       gossip's view
    GET    /v1/status                        Raft and this agent
    GET    /v1/logs/{replica}?tail=N&follow=1  newline-delimited {"line": ...} objects

Writes that reach a follower are forwarded to the leader's API (the backend raises
``NotLeaderError`` with its address); a write is answered only once committed.
The app knows nothing of gossip or Raft: it calls a ``Backend``.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote

import trio

from agent.errors import (
    AgentUnreachableError,
    ApiError,
    ConfigError,
    ConsensusError,
    HyphaError,
    NotFoundError,
    NotLeaderError,
    RuntimeUnavailableError,
)
from agent.peer import FORWARDED_HEADER, REQUEST_ID_HEADER, PeerClient

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_write_request_id: ContextVar[str | None] = ContextVar("hypha_write_request_id", default=None)


def current_request_id() -> str | None:
    """The id of the API write being served (``None`` outside one). The backend gives it
    to the Raft command it proposes, so the same write forwarded or retried twice is
    applied once."""
    return _write_request_id.get()


log = logging.getLogger("hypha.api")

MAX_REQUEST_BODY = 1024 * 1024
FORWARD_RETRY_SECONDS = 15.0

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class Backend(Protocol):
    """What the API needs from the agent. Writes raise ``NotLeaderError`` off the leader."""

    async def list_workloads(self) -> list[dict[str, Any]]: ...
    async def get_workload(self, name: str) -> dict[str, Any]: ...
    async def put_workload(
        self, spec: dict[str, Any], *, create: bool, expected_version: int | None
    ) -> dict[str, Any]: ...
    async def scale_workload(self, name: str, replicas: int) -> dict[str, Any]: ...
    async def delete_workload(self, name: str) -> dict[str, Any]: ...
    async def list_replicas(self, workload: str | None) -> list[dict[str, Any]]: ...
    async def list_nodes(self) -> list[dict[str, Any]]: ...
    async def get_node(self, name: str) -> dict[str, Any]: ...
    async def set_node_admin(
        self, name: str, *, draining: bool | None, eligible: bool | None
    ) -> dict[str, Any]: ...
    async def plan_workload(self, spec: dict[str, Any]) -> dict[str, Any]: ...
    async def members(self) -> list[dict[str, Any]]: ...
    async def status(self) -> dict[str, Any]: ...
    def logs(self, replica: str, *, tail: int | None, follow: bool) -> AsyncIterator[bytes]: ...


class Request:
    def __init__(self, scope: Scope, body: bytes, params: dict[str, str]) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.body = body
        self.params = params
        self.query = {
            k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()
        }
        self.headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
        }

    def json(self) -> Any:
        if not self.body:
            return {}
        try:
            return json.loads(self.body)
        except ValueError as exc:
            raise ConfigError(f"request body: not valid JSON: {exc}") from None

    def query_int(self, key: str, default: int | None) -> int | None:
        if key not in self.query:
            return default
        try:
            value = int(self.query[key])
        except ValueError:
            raise ConfigError(f"{key}: must be a whole number, got {self.query[key]!r}") from None
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
        return value

    def query_bool(self, key: str) -> bool:
        return self.query.get(key, "").lower() in ("1", "true", "yes")


class JsonResponse:
    def __init__(self, data: Any, status: int = 200) -> None:
        self.data = data
        self.status = status


class StreamResponse:
    def __init__(self, chunks: AsyncIterator[bytes], content_type: str) -> None:
        self.chunks = chunks
        self.content_type = content_type


Handler = Callable[[Request], Awaitable[JsonResponse | StreamResponse]]


def _status_for(exc: HyphaError) -> int:
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, ConfigError):
        return 400
    if isinstance(exc, AgentUnreachableError):
        return 502
    if isinstance(exc, ConsensusError | RuntimeUnavailableError):
        return 503
    return 500


class ApiApp:
    """The ASGI application. ``tokens``: bearer tokens of which one is required on every
    request (the TCP API: the user's token and the cluster's); none for the Unix socket,
    whose 0600 mode is the access control. ``peer`` forwards writes to the leader."""

    def __init__(
        self,
        backend: Backend,
        *,
        tokens: Sequence[str] = (),
        peer: PeerClient | None = None,
        extra_routes: list[tuple[str, str, Handler]] | None = None,
        observe: Callable[[str, str, int, float], None] | None = None,
    ) -> None:
        self.backend = backend
        self._tokens = [t for t in tokens if t]
        self._require_token = bool(self._tokens)
        self.peer = peer or PeerClient(None)
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        # regex -> the route's template ("/v1/workloads/{name}"), the label metrics use
        self._templates: dict[re.Pattern[str], str] = {}
        self._observe = observe
        b = self
        self._add("GET", "/v1/workloads", b.h_list_workloads)
        self._add("POST", "/v1/workloads", b.h_create_workload, write=True)
        self._add("GET", "/v1/workloads/{name}", b.h_get_workload)
        self._add("PUT", "/v1/workloads/{name}", b.h_update_workload, write=True)
        self._add("POST", "/v1/workloads/{name}/scale", b.h_scale_workload, write=True)
        self._add("DELETE", "/v1/workloads/{name}", b.h_delete_workload, write=True)
        self._add("GET", "/v1/workloads/{name}/replicas", b.h_workload_replicas)
        self._add("GET", "/v1/replicas", b.h_replicas)
        self._add("GET", "/v1/nodes", b.h_list_nodes)
        self._add("GET", "/v1/nodes/{name}", b.h_get_node)
        self._add("POST", "/v1/nodes/{name}/drain", b.h_drain_node, write=True)
        self._add("POST", "/v1/nodes/{name}/eligibility", b.h_node_eligibility, write=True)
        self._add("POST", "/v1/plan", b.h_plan)
        self._add("GET", "/v1/members", b.h_members)
        self._add("GET", "/v1/status", b.h_status)
        self._add("GET", "/v1/logs/{replica}", b.h_logs)
        for method, pattern, handler in extra_routes or []:
            self._add(method, pattern, handler)

    def _add(self, method: str, pattern: str, handler: Handler, *, write: bool = False) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self.routes.append((method, regex, handler, write))
        self._templates[regex] = pattern

    # -- ASGI --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        started = trio.current_time()
        status = 500
        try:
            status = await self._respond(scope, receive, send)
        finally:
            if self._observe is not None:
                self._observe(
                    scope["method"],
                    scope.get("hypha.route", "unmatched"),
                    status,
                    trio.current_time() - started,
                )

    async def _respond(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Answer one request; returns the status sent."""
        try:
            response = await self._dispatch(scope, receive)
        except HyphaError as exc:
            response = JsonResponse(
                {"error": str(exc), "status": _status_for(exc)}, _status_for(exc)
            )
        except Exception as exc:
            # A bug in Hypha: log the traceback, answer JSON the CLI shows in one line.
            log.exception("internal error", extra={"path": scope.get("path")})
            detail = f"internal error in the agent: {type(exc).__name__}: {exc} (see its log)"
            response = JsonResponse({"error": detail, "status": 500}, 500)
        if isinstance(response, JsonResponse):
            await _send_json(send, response.status, response.data)
            return response.status
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", response.content_type.encode())],
            }
        )
        # hypercorn drops what is sent after the client hung up, so a followed stream
        # would wait forever for its next chunk: watch for the disconnect and cancel
        # the stream when it comes.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                async for chunk in response.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except HyphaError as exc:
                # Headers are gone: end the stream with an error object the client can show.
                line = json.dumps({"error": str(exc)}).encode() + b"\n"
                await send({"type": "http.response.body", "body": line, "more_body": False})
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away
            finally:
                nursery.cancel_scope.cancel()
        return 200

    def _authorized(self, headers: dict[str, str]) -> bool:
        if not self._require_token:
            return True
        given = headers.get("authorization", "")
        if not given.startswith("Bearer "):
            return False
        presented = given[len("Bearer ") :].strip().encode()
        return any(hmac.compare_digest(presented, t.encode()) for t in self._tokens)

    async def _dispatch(self, scope: Scope, receive: Receive) -> JsonResponse | StreamResponse:
        body = await _read_body(receive)
        path = scope["path"]
        method = scope["method"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._authorized(headers):
            return JsonResponse(
                {"error": "missing or wrong bearer token (see --token-file)", "status": 401}, 401
            )
        allowed: list[str] = []
        for route_method, regex, handler, write in self.routes:
            match = regex.match(path)
            if not match:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            scope["hypha.route"] = self._templates[regex]
            params = {k: unquote(v) for k, v in match.groupdict().items()}
            request = Request(scope, body, params)
            if not write:
                return await handler(request)
            request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
            if not _REQUEST_ID_RE.match(request_id):
                raise ConfigError(
                    f"{REQUEST_ID_HEADER}: expected 1-64 characters [A-Za-z0-9._:-], "
                    f"got {request_id!r}"
                )
            token = _write_request_id.set(request_id)
            try:
                if FORWARDED_HEADER in request.headers:
                    return await handler(request)
                return await self._write(handler, request, request_id)
            finally:
                _write_request_id.reset(token)
        if allowed:
            return JsonResponse(
                {
                    "error": f"{method} is not allowed on {path}; use {', '.join(allowed)}",
                    "status": 405,
                },
                405,
            )
        return JsonResponse({"error": f"no such API route: {method} {path}", "status": 404}, 404)

    async def _write(
        self, handler: Handler, request: Request, request_id: str
    ) -> JsonResponse | StreamResponse:
        """Run a write here if this agent leads, else forward it to the leader.

        The write keeps its request id wherever it goes, so trying again is always safe:
        a leader that cannot be reached (it just died), an answer cut short, or a leader
        that lost its office before committing (503) are retried against whoever leads
        next, for up to ``FORWARD_RETRY_SECONDS``; one that did commit is answered from
        the state's memory of that request id, not applied again."""
        deadline = trio.current_time() + FORWARD_RETRY_SECONDS
        while True:
            try:
                return await handler(request)
            except NotLeaderError as exc:
                try:
                    response = await self._forward(request, exc, request_id)
                except AgentUnreachableError:
                    if trio.current_time() >= deadline:
                        raise
                    await trio.sleep(0.5)
                    continue
                if response.status != 503 or trio.current_time() >= deadline:
                    return response
                await trio.sleep(0.5)

    async def _forward(
        self, request: Request, exc: NotLeaderError, request_id: str
    ) -> JsonResponse:
        if exc.leader_api is None:
            raise ConsensusError(f"no leader to take this write yet ({exc}); try again shortly")
        query = request.scope.get("query_string", b"").decode()
        target = request.path + (f"?{query}" if query else "")
        log.debug("forwarding write", extra={"path": target, "leader": exc.leader_api})
        status, decoded = await self.peer.call(
            exc.leader_api,
            request.method,
            target,
            raw_body=request.body or None,
            headers={REQUEST_ID_HEADER: request_id},
        )
        return JsonResponse(decoded, status)

    # -- handlers ----------------------------------------------------------------------
    async def h_list_workloads(self, request: Request) -> JsonResponse:
        return JsonResponse({"workloads": await self.backend.list_workloads()})

    async def h_get_workload(self, request: Request) -> JsonResponse:
        return JsonResponse(await self.backend.get_workload(request.params["name"]))

    def _spec_from(self, body: Any) -> tuple[dict[str, Any], int | None]:
        if not isinstance(body, dict):
            raise ConfigError("request body: expected a JSON object with a spec")
        spec = body.get("spec", body) if "spec" in body else body
        expected = body.get("expected_version") if "spec" in body else None
        if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
            raise ConfigError(f"expected_version: must be a whole number, got {expected!r}")
        if not isinstance(spec, dict):
            raise ConfigError("spec: expected a JSON object")
        return spec, expected

    async def h_create_workload(self, request: Request) -> JsonResponse:
        spec, expected = self._spec_from(request.json())
        result = await self.backend.put_workload(spec, create=True, expected_version=expected)
        return JsonResponse(result, 201)

    async def h_update_workload(self, request: Request) -> JsonResponse:
        spec, expected = self._spec_from(request.json())
        name = request.params["name"]
        if spec.get("name", name) != name:
            raise ConfigError(f"name: the spec says {spec.get('name')!r} but the URL says {name!r}")
        spec = {**spec, "name": name}
        return JsonResponse(
            await self.backend.put_workload(spec, create=False, expected_version=expected)
        )

    async def h_scale_workload(self, request: Request) -> JsonResponse:
        body = request.json()
        if not isinstance(body, dict) or "replicas" not in body:
            raise ConfigError('replicas: is required, e.g. {"replicas": 3}')
        replicas = body["replicas"]
        if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
            raise ConfigError(f"replicas: must be a whole number >= 0, got {replicas!r}")
        return JsonResponse(await self.backend.scale_workload(request.params["name"], replicas))

    async def h_delete_workload(self, request: Request) -> JsonResponse:
        return JsonResponse(await self.backend.delete_workload(request.params["name"]))

    async def h_workload_replicas(self, request: Request) -> JsonResponse:
        name = request.params["name"]
        await self.backend.get_workload(name)  # 404 for an unknown workload
        return JsonResponse({"replicas": await self.backend.list_replicas(name)})

    async def h_replicas(self, request: Request) -> JsonResponse:
        return JsonResponse(
            {"replicas": await self.backend.list_replicas(request.query.get("workload"))}
        )

    async def h_list_nodes(self, request: Request) -> JsonResponse:
        return JsonResponse({"nodes": await self.backend.list_nodes()})

    async def h_get_node(self, request: Request) -> JsonResponse:
        return JsonResponse(await self.backend.get_node(request.params["name"]))

    def _flag(self, request: Request, key: str, default: bool) -> bool:
        body = request.json()
        if not isinstance(body, dict):
            raise ConfigError("request body: expected a JSON object")
        value = body.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, got {value!r}")
        return value

    async def h_drain_node(self, request: Request) -> JsonResponse:
        draining = self._flag(request, "draining", True)
        return JsonResponse(
            await self.backend.set_node_admin(
                request.params["name"], draining=draining, eligible=None
            )
        )

    async def h_node_eligibility(self, request: Request) -> JsonResponse:
        eligible = self._flag(request, "eligible", True)
        return JsonResponse(
            await self.backend.set_node_admin(
                request.params["name"], draining=None, eligible=eligible
            )
        )

    async def h_plan(self, request: Request) -> JsonResponse:
        spec, _ = self._spec_from(request.json())
        return JsonResponse(await self.backend.plan_workload(spec))

    async def h_members(self, request: Request) -> JsonResponse:
        return JsonResponse({"members": await self.backend.members()})

    async def h_status(self, request: Request) -> JsonResponse:
        return JsonResponse(await self.backend.status())

    async def h_logs(self, request: Request) -> StreamResponse:
        tail = request.query_int("tail", None)
        follow = request.query_bool("follow")
        raw = request.query_bool("raw")
        chunks = self.backend.logs(request.params["replica"], tail=tail, follow=follow)
        # Fail before the 200 goes out when the replica is unknown.
        first = await _first_chunk(chunks)
        if raw:
            return StreamResponse(_prepend(first, chunks), "application/octet-stream")
        return StreamResponse(_as_json_lines(_prepend(first, chunks)), "application/x-ndjson")


async def _cancel_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _first_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


async def _prepend(first: bytes | None, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first is None:
        return
    yield first
    async for chunk in rest:
        yield chunk


async def _as_json_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Raw log bytes -> one ``{"line": ...}`` object per complete line."""
    pending = b""
    async for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if lines:
            yield b"".join(
                json.dumps({"line": line.decode(errors="replace")}).encode() + b"\n"
                for line in lines
            )
    if pending:
        yield json.dumps({"line": pending.decode(errors="replace")}).encode() + b"\n"


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BODY:
            raise ApiError(f"request body larger than {MAX_REQUEST_BODY} bytes", status=413)
        parts.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(parts)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"not JSON-able: {type(value).__name__}")


async def _send_json(send: Send, status: int, data: Any) -> None:
    body = json.dumps(data, default=_json_default).encode() + b"\n"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def not_found(what: str, name: str, hint: str = "") -> NotFoundError:
    return NotFoundError(f"no {what} named {name!r}{'; ' + hint if hint else ''}")
