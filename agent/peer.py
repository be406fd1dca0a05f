"""An async HTTP/1.1 client (h11 over trio streams) for agent-to-agent calls.

Agents call each other's TCP API to forward writes to the leader and to read a
replica's logs from the node that runs it. Each call is one connection (they are
rare), authenticated with the cluster's API token. Transport failures become
``AgentUnreachableError``; error answers become the matching ``ApiError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode, urlsplit

import h11
import trio

from agent.errors import AgentUnreachableError, ApiError, ConflictError, NotFoundError

MAX_BODY = 16 * 1024 * 1024
FORWARDED_HEADER = "x-hypha-forwarded"
# The id of one API write, carried when a follower forwards it to the leader (and
# accepted from clients): the Raft command keeps it, so a write retried after an
# unknown outcome is applied once and answered with its first result.
REQUEST_ID_HEADER = "x-hypha-request-id"


class PeerConnectError(AgentUnreachableError):
    """Could not connect at all: nothing was sent, so retrying elsewhere is safe."""


def error_for(status: int, message: str) -> ApiError:
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    return ApiError(message, status=status)


class PeerResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.headers = headers

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == b"content-type":
                return value.decode("latin-1")
        return "application/json"


class PeerConnection:
    """One request on one connection; ``chunks()`` streams the body."""

    def __init__(self, stream: trio.abc.Stream, address: str) -> None:
        self._stream = stream
        self._conn = h11.Connection(h11.CLIENT)
        self._address = address

    async def _send(self, event: Any) -> None:
        data = self._conn.send(event)
        if data:
            await self._stream.send_all(data)

    async def _next_event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = await self._stream.receive_some(65536)
                self._conn.receive_data(bytes(data))
                continue
            return event

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes | None
    ) -> PeerResponse:
        all_headers = [("host", "hypha"), ("connection", "close"), *headers]
        if body is not None:
            all_headers.append(("content-length", str(len(body))))
        await self._send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                return PeerResponse(event.status_code, list(event.headers))
            if isinstance(event, h11.ConnectionClosed):
                raise AgentUnreachableError(f"{self._address} closed the connection")

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def read_all(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        async for chunk in self.chunks():
            size += len(chunk)
            if size > MAX_BODY:
                raise AgentUnreachableError(f"{self._address} sent more than {MAX_BODY} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def open_peer(address: str, timeout: float, local_host: str | None = None) -> PeerConnection:
    """Connect to ``http://HOST:PORT`` or ``unix:PATH`` (from ``local_host`` if given:
    agents send from their own address, docs/decisions/002)."""
    try:
        with trio.fail_after(timeout):
            if address.startswith("unix:"):
                stream: trio.abc.Stream = await trio.open_unix_socket(address[5:])
            else:
                parts = urlsplit(address)
                if not parts.hostname or not parts.port:
                    raise AgentUnreachableError(f"not an agent address: {address!r}")
                stream = await trio.open_tcp_stream(
                    parts.hostname, parts.port, local_address=local_host
                )
    except (OSError, trio.TooSlowError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise PeerConnectError(f"cannot reach the agent at {address}: {reason}") from exc
    return PeerConnection(stream, address)


class PeerClient:
    """Calls another agent's API with the cluster token."""

    def __init__(
        self, token: str | None, timeout: float = 30.0, local_host: str | None = None
    ) -> None:
        self.token = token
        self.timeout = timeout
        self.local_host = local_host

    def _headers(self, extra: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
        headers = [("accept", "application/json"), (FORWARDED_HEADER, "1")]
        if self.token:
            headers.append(("authorization", f"Bearer {self.token}"))
        return headers + (extra or [])

    async def call(
        self,
        address: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        raw_body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One JSON request; returns ``(status, decoded)``, raising only for transport errors."""
        target = path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        payload = raw_body
        extra: list[tuple[str, str]] = list((headers or {}).items())
        if payload is None and body is not None:
            payload = json.dumps(body).encode()
        if payload is not None:
            extra.append(("content-type", "application/json"))
        conn = await open_peer(address, self.timeout, self.local_host)
        try:
            with trio.fail_after(self.timeout):
                response = await conn.request(method, target, self._headers(extra), payload)
                data = await conn.read_all()
        except (OSError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as exc:
            raise AgentUnreachableError(
                f"the agent at {address} did not answer: {type(exc).__name__}"
            ) from exc
        finally:
            await conn.aclose()
        try:
            decoded = json.loads(data) if data else None
        except ValueError:
            decoded = {"error": data.decode(errors="replace")}
        return response.status, decoded

    async def json(
        self, address: str, method: str, path: str, body: Any = None, **query: Any
    ) -> Any:
        status, decoded = await self.call(address, method, path, body, query=query or None)
        if status >= 400:
            message = decoded.get("error") if isinstance(decoded, dict) else None
            raise error_for(status, message or f"{address} answered HTTP {status}")
        return decoded

    async def stream(
        self, address: str, path: str, query: dict[str, Any] | None = None
    ) -> AsyncIterator[bytes]:
        """GET a streamed body, yielding its chunks as they come."""
        target = path
        if query:
            target += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        conn = await open_peer(address, self.timeout, self.local_host)
        try:
            try:
                with trio.fail_after(self.timeout):
                    response = await conn.request("GET", target, self._headers(), None)
            except (OSError, trio.BrokenResourceError, h11.ProtocolError, trio.TooSlowError) as exc:
                raise AgentUnreachableError(f"the agent at {address} did not answer") from exc
            if response.status >= 400:
                data = await conn.read_all()
                try:
                    message = json.loads(data).get("error")
                except (ValueError, AttributeError):
                    message = None
                raise error_for(response.status, message or f"HTTP {response.status}")
            try:
                async for chunk in conn.chunks():
                    yield chunk
            except (OSError, trio.BrokenResourceError, h11.ProtocolError):
                return
        finally:
            await conn.aclose()
