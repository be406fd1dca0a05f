"""A small synchronous client of the agent's HTTP/JSON API, used by the CLI.

The address is ``unix:PATH`` (the default, a socket with mode 0600) or
``http://HOST:PORT`` (with a bearer token). Transport failures become
``AgentUnreachableError``; error answers become ``ApiError`` with the agent's message.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from agent.errors import (
    AgentUnreachableError,
    ApiError,
    ConfigError,
    ConflictError,
    NotFoundError,
)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _http_host_port(address: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> host and port, or one ``ConfigError`` line saying what is wrong."""
    expected = "expected http://HOST:PORT"
    try:
        parts = urlsplit(address)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError:
        raise ConfigError(
            f"--api (or HYPHA_API): {expected} with a port 1..65535, got {address!r}"
        ) from None
    if not parts.hostname:
        raise ConfigError(f"--api (or HYPHA_API): no host in {address!r}; {expected}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ConfigError(f"--api (or HYPHA_API): {expected} and nothing else, got {address!r}")
    if port == 0:
        raise ConfigError(f"--api (or HYPHA_API): {expected} with a port 1..65535, got {address!r}")
    return parts.hostname, port or 80


def path_of(*parts: str) -> str:
    """Join URL path segments, quoting each (names come from users)."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


class ApiClient:
    """Talks to one agent. ``timeout`` bounds every request except followed streams."""

    def __init__(self, address: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.address = address
        self.token = token
        self.timeout = timeout
        if address.startswith("unix:"):
            self._unix_path: str | None = address[len("unix:") :]
            if not self._unix_path:
                raise ConfigError(
                    "--api (or HYPHA_API): unix: needs a socket path, "
                    "e.g. unix:/var/lib/hypha/api.sock"
                )
            self._host = ""
            self._port = 0
        elif address.startswith("http://"):
            self._unix_path = None
            self._host, self._port = _http_host_port(address)
        else:
            raise ConfigError(
                f"--api (or HYPHA_API): expected unix:PATH or http://HOST:PORT, got {address!r}"
            )

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._unix_path is not None:
            return _UnixHTTPConnection(self._unix_path, timeout or self.timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout or self.timeout)

    def _unreachable(self, exc: OSError | http.client.HTTPException) -> AgentUnreachableError:
        """The agent is not there, or went away in the middle of an answer."""
        strerror = exc.strerror if isinstance(exc, OSError) else None
        reason = strerror or str(exc) or type(exc).__name__
        hint = "is `hypha agent` running? (set --api or HYPHA_API to reach another)"
        return AgentUnreachableError(f"cannot reach the agent at {self.address}: {reason}; {hint}")

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON answer (``None`` for an empty body)."""
        response, conn = self._send(method, path, body, query=query, timeout=timeout)
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from exc
        finally:
            conn.close()
        decoded = _decode(data)
        if response.status >= 400:
            raise _error_from(response.status, decoded)
        return decoded

    def text(self, path: str) -> tuple[str, str]:
        """GET a non-JSON resource (``/metrics``): its content type and text."""
        response, conn = self._send("GET", path, None, query=None, timeout=None)
        try:
            data = response.read()
        except OSError as exc:
            raise self._unreachable(exc) from exc
        finally:
            conn.close()
        if response.status >= 400:
            raise _error_from(response.status, _decode(data))
        return response.getheader("content-type", ""), data.decode(errors="replace")

    def stream(self, path: str, *, query: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Yield JSON objects from a newline-delimited stream until the agent closes it."""
        response, conn = self._send("GET", path, None, query=query, timeout=None, stream=True)
        try:
            if response.status >= 400:
                raise _error_from(response.status, _decode(response.read()))
            while True:
                try:
                    line = response.readline()
                except (OSError, http.client.HTTPException) as exc:
                    raise self._unreachable(exc) from exc
                if not line:
                    return
                line = line.strip()
                if line:
                    yield json.loads(line)
        finally:
            conn.close()

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        *,
        query: dict[str, Any] | None,
        timeout: float | None,
        stream: bool = False,
    ) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
        if query:
            path = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = self._connection(None if stream else timeout)
        try:
            conn.request(method, path, body=payload, headers=headers)
            if stream and conn.sock is not None:
                conn.sock.settimeout(None)
            return conn.getresponse(), conn
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise self._unreachable(exc) from exc

    # Convenience verbs -------------------------------------------------------
    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        return self.request("POST", path, body, timeout=timeout)

    def put(self, path: str, body: Any = None) -> Any:
        return self.request("PUT", path, body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)


def _decode(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"error": data.decode(errors="replace").strip()}


def _error_from(status: int, decoded: Any) -> ApiError:
    message = decoded.get("error") if isinstance(decoded, dict) else None
    message = message or f"the agent answered HTTP {status}"
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    return ApiError(message, status=status)
