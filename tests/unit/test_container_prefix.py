"""Container ids and cgroup paths are per agent instance, stable across its restarts."""

from __future__ import annotations

from pathlib import Path

from agent.daemon import container_prefix


def test_two_agents_named_alike_get_different_prefixes(tmp_path: Path) -> None:
    first = container_prefix("n1", tmp_path / "a" / "n1")
    second = container_prefix("n1", tmp_path / "b" / "n1")
    assert first != second
    assert first.startswith("hy-n1-") and second.startswith("hy-n1-")


def test_a_restarted_agent_keeps_its_prefix(tmp_path: Path) -> None:
    first = container_prefix("n1", tmp_path / "n1")
    assert container_prefix("n1", tmp_path / "n1") == first
    assert (tmp_path / "n1" / "container-prefix").read_text().strip() == first


def test_a_data_dir_from_before_keeps_the_name_only_prefix(tmp_path: Path) -> None:
    """Its containers were named that way: keeping it is what lets the agent adopt them."""
    (tmp_path / "a" / "runtime").mkdir(parents=True)
    (tmp_path / "b" / "runtime").mkdir(parents=True)
    assert container_prefix("n1", tmp_path / "a") == container_prefix("n1", tmp_path / "b")
