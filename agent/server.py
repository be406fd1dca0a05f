"""Serve the API with hypercorn's trio worker on a Unix socket (mode 0600) and TCP.

We create the listening sockets ourselves, so the Unix socket is never readable
by others even for an instant (created under umask 0177, then checked) and a TCP
port of 0 can be reported back as the port the kernel chose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import wrap_app

from agent.errors import ConfigError

log = logging.getLogger("hypha.api")


def unix_listener(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600, replacing a stale one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
            except OSError:
                os.unlink(path)  # stale: nobody listens
            else:
                raise ConfigError(
                    f"api_socket: another agent is already listening on {path}; "
                    "give each agent its own --data-dir"
                )
            finally:
                probe.close()
        else:
            raise ConfigError(f"api_socket: {path} exists and is not a socket")
    if len(str(path).encode()) > 107:
        raise ConfigError(f"api_socket: {path} is longer than a Unix socket path may be (107)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    sock.setblocking(False)
    return sock


def tcp_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"api_tcp: cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _config() -> Config:
    config = Config()
    config.accesslog = None
    config.errorlog = logging.getLogger("hypha.api.server")
    config.graceful_timeout = 2.0
    config.keep_alive_timeout = 30.0
    config.include_server_header = False
    return config


async def serve_api(
    app: Any,
    sock: socket.socket,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on the already-listening ``sock`` until cancelled."""
    config = _config()
    sockets = Sockets(secure_sockets=[], insecure_sockets=[sock], quic_sockets=[])
    try:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            task_status=task_status,
        )
    finally:
        sock.close()
