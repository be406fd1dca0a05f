"""``hypha rootfs DIR``: a busybox root filesystem to try the oci driver with."""

from __future__ import annotations

from pathlib import Path

import click

from agent.cli import cli
from agent.errors import HyphaError


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def rootfs(directory: Path) -> None:
    """Build a busybox root filesystem in DIRECTORY, for trying the oci driver.

    It comes from Debian's static busybox (apt-get install busybox-static). Give it
    to a workload as its image: `hypha run web --image DIRECTORY -- httpd -f -p 8080`,
    or `image = "DIRECTORY"` in a spec file. Every node must have the same path.
    Running it again on a rootfs it built reuses it. Prints the directory.
    """
    from runtime.errors import DriverError, SpecError
    from runtime.rootfs import build_busybox_rootfs

    try:
        path = build_busybox_rootfs(directory.absolute())
    except SpecError as exc:
        raise HyphaError(f"rootfs: {exc.message}; give a new or empty directory") from exc
    except DriverError as exc:
        raise HyphaError(f"rootfs: {exc}") from exc
    except OSError as exc:
        raise HyphaError(f"rootfs: {directory}: {exc.strerror or exc}") from exc
    click.echo(str(path))
