from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import AgentConfig, load_config, parse_host_port, parse_size
from agent.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_flat_and_table_files_load(tmp_path: Path) -> None:
    flat = load_config(write(tmp_path, 'name = "n1"\nbind = "127.0.0.2:7946"\n'))
    assert flat.name == "n1" and flat.bind == "127.0.0.2:7946"
    table = load_config(write(tmp_path, '[agent]\nname = "n2"\njoin = ["127.0.0.2:7946"]\n'))
    assert table.name == "n2" and table.join == ("127.0.0.2:7946",)


def test_flags_override_file_and_none_means_unset(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "n1"\ndriver = "mock"\n')
    config = load_config(path, {"name": "n9", "driver": None})
    assert config.name == "n9" and config.driver == "mock"


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "name = \n")
    with pytest.raises(ConfigError, match=r"agent\.toml: not valid TOML"):
        load_config(path)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.toml")


def test_unknown_key_is_named_with_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'bnd'.*bind"):
        load_config(write(tmp_path, 'bnd = "1.2.3.4:5"\n'))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("voters = '3'", "voters: must be a whole number"),
        ("voters = 4", "voters: must be 1, 3 or 5"),
        ("driver = 'docker'", "driver: must be one of 'auto', 'oci', 'process', 'mock'"),
        ("stop_on_exit = 'yes'", "stop_on_exit: must be true or false"),
        ("join = [1]", "join: must be a list of strings"),
        ("labels = {zone = 1}", "labels: must be a table of string values"),
        ("bind = 'nohost'", "bind: expected HOST:PORT"),
        ("bind = '1.2.3.4:99999'", "bind: port must be 0-65535"),
        ("name = 'bad name'", "name: must be 1-63 letters"),
        ("advertise = '0.0.0.0:7946'", "advertise: must be an address others can reach"),
        ("api_tcp = '127.0.0.1:8080'", "api_tcp: a TCP API needs api_token_file"),
        ("memory_bytes = 'lots'", "memory_bytes: expected a size"),
        ("cpu_millicores = -5", "cpu_millicores: must be positive"),
    ],
)
def test_wrong_values_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text + "\n"))
    assert message in str(info.value)


def test_sizes() -> None:
    assert parse_size("512Mi") == 512 * 1024**2
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1G") == 10**9
    assert parse_size(4096) == 4096
    with pytest.raises(ConfigError):
        parse_size("-1")


def test_memory_accepts_a_size_string(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "memory_bytes = '8Gi'\n")).memory_bytes == 8 * 1024**3


def test_host_port_default() -> None:
    assert parse_host_port("10.0.0.1", key="join", default_port=7946) == ("10.0.0.1", 7946)


def test_config_is_frozen() -> None:
    config = AgentConfig(name="n1")
    with pytest.raises(AttributeError):
        config.name = "n2"  # type: ignore[misc]


def test_advertise_needed_when_binding_everywhere() -> None:
    with pytest.raises(ConfigError, match="set --advertise"):
        _ = AgentConfig(name="n1", bind="0.0.0.0:7946").advertise_address


def test_the_readme_lists_every_config_key() -> None:
    """The README's Configuration table is the user's reference: it must not miss a key."""
    import dataclasses

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("`")[1] for line in section.splitlines() if line.startswith("| `")}
    assert listed == {f.name for f in dataclasses.fields(AgentConfig)}
