"""The cluster keyring and the sealed envelope every datagram travels in.

A datagram on the wire is ``[0x01][12-byte nonce][ChaCha20-Poly1305(plaintext)]``
with the cluster name as associated data. The keyring holds one primary key
(used to seal) and any number of accepted keys (tried to open), which is what
makes rotation possible without losing anyone: install the new key everywhere,
make it primary everywhere, then remove the old one.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from gossip.errors import AuthError, KeyringError

KEY_BYTES = 32
SEAL_VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16


def generate_key() -> bytes:
    """A new random 32-byte key."""
    return os.urandom(KEY_BYTES)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise KeyringError(f"a gossip key must be {KEY_BYTES} raw bytes, not {size}")
    return bytes(key)


class Keyring:
    """One primary key (seals) plus accepted keys (open). Mutated in place, so a
    running node sees ``install``/``use``/``remove`` at once."""

    __slots__ = ("_keys", "_ciphers")

    def __init__(self, primary: bytes, accepted: Iterable[bytes] = ()) -> None:
        self._keys: list[bytes] = []
        self._ciphers: list[ChaCha20Poly1305] = []
        self._set([_check_key(primary), *(_check_key(k) for k in accepted)])

    def _set(self, keys: list[bytes]) -> None:
        unique: list[bytes] = []
        for key in keys:
            if key not in unique:
                unique.append(key)
        self._keys = unique
        self._ciphers = [ChaCha20Poly1305(k) for k in unique]

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    def keys(self) -> list[bytes]:
        """Every key, the primary first."""
        return list(self._keys)

    def install(self, key: bytes) -> None:
        """Accept ``key`` for opening datagrams (it does not seal until ``use``)."""
        key = _check_key(key)
        if key not in self._keys:
            self._set([*self._keys, key])

    def use(self, key: bytes) -> None:
        """Make an installed ``key`` the primary (the one that seals)."""
        key = _check_key(key)
        if key not in self._keys:
            raise KeyringError("cannot use a key that is not installed; install it first")
        self._set([key, *(k for k in self._keys if k != key)])

    def remove(self, key: bytes) -> None:
        """Stop accepting ``key``. The primary cannot be removed: ``use`` another first."""
        key = _check_key(key)
        if key == self._keys[0]:
            raise KeyringError("cannot remove the primary key; `use` another key first")
        if key not in self._keys:
            raise KeyringError("cannot remove a key that is not installed")
        self._set([k for k in self._keys if k != key])

    def replace(self, other: Keyring) -> None:
        """Take ``other``'s keys (a reloaded key file) while staying the same object."""
        self._set(other.keys())

    # -- the sealed envelope -------------------------------------------------

    def seal(self, plaintext: bytes, associated: bytes, nonce: bytes | None = None) -> bytes:
        """Encrypt and authenticate under the primary key."""
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        body = self._ciphers[0].encrypt(nonce, plaintext, associated)
        return bytes((SEAL_VERSION,)) + nonce + body

    def open(self, datagram: bytes, associated: bytes) -> bytes:
        """Return the plaintext, or raise ``AuthError`` (never anything else)."""
        if len(datagram) < 1 + NONCE_BYTES + TAG_BYTES:
            raise AuthError(f"datagram of {len(datagram)} bytes is too short to be sealed")
        if datagram[0] != SEAL_VERSION:
            raise AuthError(f"unknown seal version {datagram[0]}")
        nonce = datagram[1 : 1 + NONCE_BYTES]
        body = datagram[1 + NONCE_BYTES :]
        for cipher in self._ciphers:
            try:
                return cipher.decrypt(nonce, body, associated)
            except InvalidTag:
                continue
        raise AuthError("no key in the keyring opens the datagram (or the cluster differs)")

    # -- key files -----------------------------------------------------------

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a key file: one base64 key per line, the primary first, ``#`` comments.

        The file must be mode 0600 (or stricter): others reading it could join or
        forge the cluster's gossip.
        """
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise KeyringError(f"keyring file {path} does not exist") from None
        except OSError as exc:
            raise KeyringError(f"keyring file {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(mode):
            raise KeyringError(f"keyring file {path} is not a regular file")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyringError(
                f"keyring file {path} is mode {stat.S_IMODE(mode):04o}; "
                f"it must be 0600 (chmod 600 {path})"
            )
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyringError(f"cannot read keyring file {path}: {exc}") from exc
        keys: list[bytes] = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                key = base64.b64decode(line, validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"{path}:{number}: not a base64 key") from None
            if len(key) != KEY_BYTES:
                raise KeyringError(
                    f"{path}:{number}: a key must be {KEY_BYTES} bytes, this one is {len(key)}"
                )
            keys.append(key)
        if not keys:
            raise KeyringError(
                f"{path} holds no key (one base64 key per line, the sealing key first)"
            )
        return cls(keys[0], keys[1:])

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring (primary first) to ``path`` with mode 0600, atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        lines = ["# hypha gossip keyring: primary key first, one base64 key per line"]
        lines += [base64.b64encode(k).decode() for k in self._keys]
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(lines) + "\n")
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except OSError as exc:
            raise KeyringError(f"cannot write keyring file {path}: {exc.strerror}") from exc

    def __repr__(self) -> str:  # never print key material
        return f"Keyring({len(self._keys)} keys)"
