"""The ``process`` driver: the command as a plain child process (like Nomad's raw_exec).

It needs no root and no OCI runtime, so Hypha runs on any Linux box. Each command
gets its own process group under a per-container shim (see ``shim.py``), the
same rotated log files and the same exit codes as the oci driver. ``stop``
signals the whole group; when the command exits, whatever it left in its group
is killed. There is no isolation: ``image``, ``hostname`` and ``writable_root``
do not apply (``image`` is refused), and cpu, memory and pids limits are not
enforced. The environment is ``PATH`` and ``HOME`` plus the spec's ``env``: the
agent's own environment (and its secrets) is not passed on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime._monitor import pidfd_exited
from runtime._shimdriver import Record, ShimDriver
from runtime.errors import SpecError
from runtime.spec import ContainerSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProcessDriver(ShimDriver):
    """Runs each spec's command on the host, in its own process group."""

    kind = "process"

    @property
    def version(self) -> str:
        return f"process (Linux {os.uname().release})"

    def check_spec(self, spec: ContainerSpec) -> None:
        if spec.image is not None:
            raise SpecError(
                "image", "the process driver runs commands on the host and takes no image"
            )
        if (
            spec.user is not None
            and os.geteuid() != 0
            and spec.user
            != (
                os.getuid(),
                os.getgid(),
            )
        ):
            raise SpecError("user", f"{spec.user} needs root; the agent runs as {os.getuid()}")

    async def prepare(self, spec: ContainerSpec, directory: Path) -> dict[str, Any]:
        env = {"PATH": DEFAULT_PATH, "HOME": spec.cwd}
        env.update(spec.env)
        return {
            "mode": "process",
            "argv": list(spec.command),
            "env": env,
            "cwd": spec.cwd,
            "user": None if spec.user is None else list(spec.user),
            "own_group": True,
        }

    def exec_command(
        self, record: Record, command: tuple[str, ...], pid_file: Path
    ) -> tuple[list[str], dict[str, str] | None, str | None]:
        """The command in the container's environment: same env, cwd and user."""
        spec = record.spec
        env = {"PATH": DEFAULT_PATH, "HOME": spec.cwd}
        env.update(spec.env)
        argv = list(command)
        if spec.user is not None and os.geteuid() == 0 and spec.user != (0, 0):
            uid, gid = spec.user
            argv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]
        return argv, env, spec.cwd

    def signal(self, record: Record, sig: int) -> bool:
        """Signal the command's process group while its leader lives, else nothing."""
        if record.main_pid is None or record.main_pidfd is None:
            return False
        if pidfd_exited(record.main_pidfd):
            return False
        try:
            os.killpg(record.main_pid, sig)
        except ProcessLookupError:
            return False
        return True
