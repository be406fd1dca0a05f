"""``hypha keyring init FILE``: the first gossip keyring file of a running cluster."""

from __future__ import annotations

import base64
from pathlib import Path

import click

from agent.cli import cli
from agent.config import default_data_dir
from agent.secrets import GOSSIP_KEY_PURPOSE, derive_key, load_secret, write_secret


@cli.group()
def keyring() -> None:
    """Gossip keyrings: files of keys that rotate without a restart (see `--keyring`)."""


@keyring.command("init")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The cluster secret [DATA_DIR/secret].",
)
@click.option("--force", is_flag=True, help="Replace an existing file.")
def keyring_init(file: Path, secret_file: Path | None, force: bool) -> None:
    """Write a keyring FILE (mode 0600) holding the gossip key the cluster secret gives.

    Agents seal gossip with that key when they run without `--keyring`, so agents can
    move to `--keyring FILE` one at a time with nobody lost; after that, keys rotate by
    editing the file and sending the agent SIGHUP (README: "Key rotation").
    """
    secret = load_secret(secret_file or default_data_dir() / "secret")
    key = base64.b64encode(derive_key(secret, GOSSIP_KEY_PURPOSE)).decode()
    write_secret(file, key, force=force)
    click.echo(f"wrote {file} (mode 0600): the cluster's current gossip key")
