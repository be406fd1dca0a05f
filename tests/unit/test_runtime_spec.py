"""ContainerSpec validation: bad specs are refused with the field's name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runtime import ContainerSpec, ContainerStatus, SpecError, open_driver
from runtime.driver import check_prefix


def make(**overrides: Any) -> ContainerSpec:
    fields: dict[str, Any] = {"id": "web-1", "command": ("sh", "-c", "true")}
    fields.update(overrides)
    return ContainerSpec(**fields)


def test_a_good_spec_round_trips() -> None:
    spec = make(
        image=Path("/srv/rootfs"),
        env={"A": "1"},
        cwd="/app",
        user=(1000, 1000),
        hostname="web-1",
        writable_root=True,
        cpu_millicores=500,
        memory_bytes=64 * 1024 * 1024,
        pids_limit=64,
        labels={"hypha/workload": "web"},
    )
    assert ContainerSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(ContainerSpec.from_dict(spec.to_dict()))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"id": "../etc"}, "id"),
        ({"id": "a/b"}, "id"),
        ({"id": ".hidden"}, "id"),
        ({"id": "a..b"}, "id"),
        ({"id": ""}, "id"),
        ({"id": "x" * 64}, "id"),
        ({"command": ()}, "command"),
        ({"command": "sh -c true"}, "command"),
        ({"command": ("",)}, "command[0]"),
        ({"command": ("a\0b",)}, "command[0]"),
        ({"image": Path("rootfs")}, "image"),
        ({"image": "relative/dir"}, "image"),
        ({"cwd": "app"}, "cwd"),
        ({"env": {"BAD=NAME": "x"}}, "env.BAD=NAME"),
        ({"env": {"OK": 1}}, "env.OK"),
        ({"user": (-1, 0)}, "user.uid"),
        ({"user": (0,)}, "user"),
        ({"hostname": "no_underscores"}, "hostname"),
        ({"cpu_millicores": 0}, "cpu_millicores"),
        ({"cpu_millicores": 10**9}, "cpu_millicores"),
        ({"memory_bytes": 1024}, "memory_bytes"),
        ({"memory_bytes": 1 << 60}, "memory_bytes"),
        ({"memory_bytes": 1.5}, "memory_bytes"),
        ({"pids_limit": 0}, "pids_limit"),
        ({"pids_limit": True}, "pids_limit"),
        ({"writable_root": "yes"}, "writable_root"),
        ({"labels": {"/bad": "x"}}, "labels./bad"),
    ],
)
def test_bad_fields_are_named(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as info:
        make(**overrides)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_unknown_and_missing_fields_are_refused() -> None:
    with pytest.raises(SpecError) as info:
        ContainerSpec.from_dict({"id": "a", "command": ["true"], "memory": 5})
    assert info.value.field == "memory" and "unknown field" in str(info.value)
    with pytest.raises(SpecError) as info:
        ContainerSpec.from_dict({"id": "a"})
    assert info.value.field == "command"


def test_spec_is_frozen() -> None:
    spec = make(env={"A": "1"})
    with pytest.raises(AttributeError):
        spec.id = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        spec.env["A"] = "2"  # type: ignore[index]


def test_status_defaults() -> None:
    status = ContainerStatus(id="a", state="running", pid=5)
    assert status.exit_code is None and not status.oom_killed


@pytest.mark.parametrize("prefix", ["", "UPPER", "a/b", "x" * 32, "-lead"])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(SpecError) as info:
        check_prefix(prefix)
    assert info.value.field == "prefix"


def test_open_driver_refuses_relative_state_dir_and_bad_kind() -> None:
    with pytest.raises(SpecError) as info:
        open_driver("process", state_dir=Path("relative"), prefix="a")
    assert info.value.field == "state_dir"
    with pytest.raises(SpecError) as info:
        open_driver("docker", state_dir=Path("/tmp"), prefix="a")  # type: ignore[arg-type]
    assert info.value.field == "driver"


async def test_open_mock_and_process(tmp_path: Path) -> None:
    driver, why = open_driver("mock", state_dir=tmp_path, prefix="a")
    assert driver.name == "mock" and "mock" in why
    driver, why = open_driver("process", state_dir=tmp_path, prefix="a")
    try:
        assert driver.name == "process" and why.startswith("process")
    finally:
        await driver.close()


def test_an_unusable_state_dir_is_a_driver_error(tmp_path: Path) -> None:
    from runtime import DriverError

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DriverError, match="cannot use state_dir"):
        open_driver("process", state_dir=blocker / "sub", prefix="a")


def test_busybox_rootfs_refuses_relative_and_foreign_dirs(tmp_path: Path) -> None:
    from runtime import build_busybox_rootfs
    from tests.conftest import require

    with pytest.raises(SpecError):
        build_busybox_rootfs(Path("relative"))
    require(Path("/bin/busybox").exists(), "busybox-static is not installed")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious").write_text("x")
    with pytest.raises(SpecError) as info:
        build_busybox_rootfs(tmp_path / "mine")
    assert info.value.field == "dest"
