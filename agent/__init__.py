"""The Hypha node agent: composes ``gossip``, ``runtime`` and ``scheduler`` with Raft."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hypha")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
