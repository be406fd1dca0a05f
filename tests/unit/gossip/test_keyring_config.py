"""Keyring rules, key files, and config validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gossip import AuthError, ConfigError, GossipConfig, Keyring, KeyringError, generate_key


def test_rotation_rules() -> None:
    old, new = generate_key(), generate_key()
    ring = Keyring(old)
    sealed_old = ring.seal(b"x", b"c")
    with pytest.raises(KeyringError, match="not installed"):
        ring.use(new)
    ring.install(new)
    assert ring.keys() == [old, new]
    ring.use(new)
    assert ring.primary == new and ring.open(sealed_old, b"c") == b"x"
    with pytest.raises(KeyringError, match="primary"):
        ring.remove(new)
    ring.remove(old)
    assert ring.keys() == [new]
    with pytest.raises(AuthError):
        ring.open(sealed_old, b"c")
    with pytest.raises(KeyringError, match="32 raw bytes"):
        ring.install(b"short")


def test_install_does_not_change_the_sealing_key() -> None:
    old, new = generate_key(), generate_key()
    ring = Keyring(old)
    ring.install(new)
    assert Keyring(old).open(ring.seal(b"x", b"c"), b"c") == b"x"


def test_key_files_are_0600_or_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyring"
    ring = Keyring(generate_key(), [generate_key()])
    ring.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert Keyring.load(path).keys() == ring.keys()
    os.chmod(path, 0o644)
    with pytest.raises(KeyringError, match="mode 0644; it must be 0600"):
        Keyring.load(path)
    with pytest.raises(KeyringError, match="does not exist"):
        Keyring.load(tmp_path / "missing")
    bad = tmp_path / "bad"
    bad.write_text("not base64!\n")
    os.chmod(bad, 0o600)
    with pytest.raises(KeyringError, match="bad:1: not a base64 key"):
        Keyring.load(bad)


def test_repr_hides_keys() -> None:
    assert repr(Keyring(bytes(32))) == "Keyring(1 keys)"


def test_presets_are_valid_and_ordered() -> None:
    lan, wan, local = GossipConfig.lan(), GossipConfig.wan(), GossipConfig.local()
    assert local.probe_interval < lan.probe_interval < wan.probe_interval
    assert lan.probe_interval == 1.0 and lan.probe_timeout == 0.5 and lan.indirect_checks == 3
    assert lan.suspicion_mult == 4 and lan.gossip_interval == 0.2 and lan.gossip_nodes == 3
    assert GossipConfig.local(mtu=9000).mtu == 9000


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"probe_timeout": 2.0}, "probe_timeout"),
        ({"mtu": 100}, "mtu"),
        ({"gossip_interval": 0}, "gossip_interval"),
        ({"cluster": ""}, "cluster"),
        ({"indirect_checks": -1}, "indirect_checks"),
    ],
)
def test_bad_config_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=f"^gossip config: {field}="):
        GossipConfig.lan(**changes)
