"""``hypha keyring init``: a keyring file holding the key agents seal with by default."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

import gossip
from agent.cli import main
from agent.secrets import GOSSIP_KEY_PURPOSE, derive_key, generate_secret, load_secret, write_secret


def test_init_writes_the_key_an_agent_without_keyring_seals_with(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    write_secret(secret_file, generate_secret())
    ring_file = tmp_path / "keyring"
    main(["keyring", "init", str(ring_file), "--secret-file", str(secret_file)])
    assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600
    ring = gossip.Keyring.load(ring_file)
    assert ring.keys() == [derive_key(load_secret(secret_file), GOSSIP_KEY_PURPOSE)]
    # What one seals, the default agent's keyring opens: agents move over one at a time.
    default = gossip.Keyring(derive_key(load_secret(secret_file), GOSSIP_KEY_PURPOSE))
    assert default.open(ring.seal(b"ping", b"cluster"), b"cluster") == b"ping"


def test_init_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "secret"
    write_secret(secret_file, generate_secret())
    ring_file = tmp_path / "keyring"
    ring_file.write_text("keep\n")
    with pytest.raises(SystemExit) as done:
        main(["keyring", "init", str(ring_file), "--secret-file", str(secret_file)])
    assert done.value.code == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    assert ring_file.read_text() == "keep\n"
