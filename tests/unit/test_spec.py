"""WorkloadSpec: every field parsed and validated with a message naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.spec import SPEC_FIELDS, Constraint, RestartPolicy, WorkloadSpec, split_replica_id

FULL = """
name = "web"
image = "/srv/rootfs/busybox"
command = ["httpd", "-f", "-p", "8080"]
replicas = 3
tenant = "team-a"

[env]
GREETING = "hello"

[resources]
cpu = "250m"
memory = "64Mi"
pids = 32

[restart]
policy = "on-failure"
max_attempts = 5

[placement]
spread_by = "zone"
max_skew = 2

[[constraints]]
label = "disk"
value = "ssd"

[labels]
app = "web"
"""


def test_full_toml_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "web.toml"
    path.write_text(FULL)
    spec = WorkloadSpec.load(path)
    assert spec.resources.cpu_millicores == 250
    assert spec.resources.memory_bytes == 64 * 1024 * 1024
    assert spec.restart == RestartPolicy("on-failure", 5)
    assert spec.constraints == (Constraint("disk", "==", ("ssd",)),)
    assert spec.placement.max_skew == 2
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    assert spec.replica_ids() == ["web-0", "web-1", "web-2"]


def test_json_file(tmp_path: Path) -> None:
    path = tmp_path / "w.json"
    path.write_text('{"name": "w", "command": ["true"], "resources": {"cpu": 2}}')
    assert WorkloadSpec.load(path).resources.cpu_millicores == 2000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"command": ["x"]}, "name: is required"),
        ({"name": "Web", "command": ["x"]}, "name: must be"),
        ({"name": "w"}, "command: is required"),
        ({"name": "w", "command": "sleep 1"}, "command: must be a list"),
        ({"name": "w", "command": ["x"], "replicas": -1}, "replicas: must be 0..10000"),
        ({"name": "w", "command": ["x"], "replicas": "3"}, "replicas: must be a whole number"),
        ({"name": "w", "command": ["x"], "image": "rel/path"}, "image: must be an absolute"),
        ({"name": "w", "command": ["x"], "resources": {"cpu": "lots"}}, "resources.cpu:"),
        ({"name": "w", "command": ["x"], "resources": {"memory": "1K"}}, "resources.memory:"),
        ({"name": "w", "command": ["x"], "resources": {"gpu": 1}}, "resources.gpu: unknown"),
        ({"name": "w", "command": ["x"], "restart": {"policy": "sometimes"}}, "restart.policy"),
        ({"name": "w", "command": ["x"], "restart": "never:3"}, "restart: only on-failure"),
        ({"name": "w", "command": ["x"], "env": {"1X": "y"}}, "env.1X"),
        ({"name": "w", "command": ["x"], "constraints": [{"op": "=="}]}, "constraints[0].label"),
        ({"name": "w", "command": ["x"], "replica": 3}, "replica: unknown field"),
        ({"name": "w", "command": ["x"], "health": {}}, "health: give exactly one"),
        ({"name": "w", "command": ["x"], "type": "cron"}, "type: must be one of"),
        (
            {"name": "w", "command": ["x"], "type": "batch", "restart": "always"},
            "restart.policy: a batch job runs to completion",
        ),
        ({"name": "w", "command": ["x"], "health": {"tcp": 0}}, "health.tcp: must be 1..65535"),
        (
            {"name": "w", "command": ["x"], "health": {"tcp": 80, "command": ["true"]}},
            "health: give exactly one",
        ),
        (
            {"name": "w", "command": ["x"], "health": {"command": "true"}},
            "health.command: must be a list",
        ),
        (
            {"name": "w", "command": ["x"], "health": {"tcp": 80, "interval": 0}},
            "health.interval: must be 0.1..3600",
        ),
        (
            {"name": "w", "command": ["x"], "health": {"tcp": 80, "retry": 2}},
            "health.retry: unknown field",
        ),
        (
            {"name": "w", "command": ["x"], "update": {"max_parallel": 0}},
            "update.max_parallel: must be",
        ),
        (
            {"name": "w", "command": ["x"], "update": {"min_healthy": 500}},
            "update.healthy_deadline: must be more than",
        ),
        (
            {"name": "w", "command": ["x"], "update": {"auto_revert": "yes"}},
            "update.auto_revert: must be true or false",
        ),
        ({"name": "w", "command": ["x"], "drain": {"max_unavailable": 0}}, "drain.max_unavailable"),
    ],
)
def test_bad_fields_are_named(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkloadSpec.from_dict(data)
    assert message in str(info.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = 'w'\ncommand = ['x']\nreplicas = 'many'\n")
    with pytest.raises(ConfigError, match=r"bad.toml: replicas: must be a whole number"):
        WorkloadSpec.load(path)
    path.write_text("name = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        WorkloadSpec.load(path)


def test_restart_policy_decisions() -> None:
    always = RestartPolicy.parse("always")
    assert always.should_restart(0, 100)
    on_failure = RestartPolicy.parse("on-failure:2")
    assert on_failure.should_restart(1, 1)
    assert not on_failure.should_restart(1, 2)
    assert not on_failure.should_restart(0, 0)
    assert not RestartPolicy.parse("never").should_restart(1, 0)
    assert [always.backoff(n) for n in range(3)] == [1.0, 2.0, 4.0]
    assert always.backoff(100) == 60.0


def test_constraint_strings() -> None:
    assert Constraint.parse("zone==a").matches({"zone": "a"})
    assert Constraint.parse("zone in a,b").matches({"zone": "b"})
    assert Constraint.parse("!gpu").matches({})
    assert not Constraint.parse("gpu").matches({})


def test_replica_ids() -> None:
    assert split_replica_id("my-web-12") == ("my-web", 12)
    with pytest.raises(ConfigError, match="replica: expected WORKLOAD-INDEX"):
        split_replica_id("web")


def test_health_update_drain_and_types_round_trip() -> None:
    spec = WorkloadSpec.from_dict(
        {
            "name": "api",
            "command": ["sleep", "60"],
            "health": {"tcp": 8080, "interval": 2, "retries": 2, "start_period": 1},
            "update": {"max_parallel": 2, "min_healthy": 3, "auto_revert": True},
            "drain": {"max_unavailable": 2},
        }
    )
    assert spec.health is not None and spec.health.tcp_port == 8080
    assert spec.health.describe().startswith("tcp 127.0.0.1:8080 every 2s")
    assert spec.update.auto_revert and spec.update.max_parallel == 2
    assert spec.drain.max_unavailable == 2
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec


def test_batch_defaults_to_retrying_failures() -> None:
    spec = WorkloadSpec.from_dict({"name": "job", "command": ["true"], "type": "batch"})
    assert spec.restart == RestartPolicy("on-failure", 3)
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
    system = WorkloadSpec.from_dict({"name": "agent", "command": ["true"], "type": "system"})
    assert system.type == "system" and system.restart.mode == "always"


def test_the_example_spec_file_is_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(root.glob("*.toml")):
        WorkloadSpec.load(path)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"cpu": float("nan")}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": float("inf")}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": "1e400"}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": "nan"}, "resources.cpu: must be a finite number of cores"),
        ({"cpu": "-infm"}, "resources.cpu: expected cores like 0.5"),
        ({"memory": 1.5}, "resources.memory: expected a size like 512Mi"),
        ({"memory": ["64Mi"]}, "resources.memory: expected a size like 512Mi"),
        ({"memory_bytes": float("nan")}, "resources.memory_bytes: expected a size"),
    ],
)
def test_non_finite_and_mistyped_resources_are_field_errors(
    resources: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        WorkloadSpec.from_dict({"name": "w", "command": ["x"], "resources": resources})
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"memory": "9" * 400 + "Mi"}, "resources.memory: at most 4194304Ti (4 EiB), got '999"),
        ({"memory": 10**30}, "resources.memory: at most 4194304Ti"),
        ({"memory_bytes": (1 << 62) + 1}, "resources.memory_bytes: at most 4194304Ti"),
        ({"pids": 10**9}, "resources.pids: must be 1..4194304, got 1000000000"),
    ],
)
def test_sizes_beyond_int64_and_pids_beyond_pid_max_are_refused(
    resources: dict[str, Any], message: str
) -> None:
    """They could be scheduled nowhere, and a size past int64 breaks msgpack."""
    with pytest.raises(ConfigError) as info:
        WorkloadSpec.from_dict({"name": "w", "command": ["x"], "resources": resources})
    assert message in str(info.value)
    largest = WorkloadSpec.from_dict(
        {"name": "w", "command": ["x"], "resources": {"memory": "4194304Ti", "pids": 4194304}}
    )
    assert largest.resources.memory_bytes == 1 << 62


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"restart": {"backoff_initial": float("nan")}}, "restart.backoff_initial: must be"),
        ({"restart": {"backoff_max": float("inf")}}, "restart.backoff_max: must be"),
        ({"stop_grace": float("nan")}, "stop_grace: must be 0..3600 seconds"),
        ({"health": {"tcp": 80, "timeout": float("nan")}}, "health.timeout: must be"),
        ({"update": {"min_healthy": float("inf")}}, "update.min_healthy: must be"),
    ],
)
def test_non_finite_seconds_are_field_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        WorkloadSpec.from_dict({"name": "w", "command": ["x"], **data})
    assert message in str(info.value)


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("name = 'w'\ncommand = ['caf\u00e9']\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 26 is 0xe9\)"):
        WorkloadSpec.load(path)


# Every value TOML or JSON can carry, nested a little: a spec made of them either
# parses or raises ConfigError, never anything else (a crash is exit 70 in the CLI
# and HTTP 500 in the API).
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["250m", "0.5", "1e400", "nan", "-1", "64Mi", "1.5Gi", "/x", "==", "in"])
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=6,
)
_TABLE_FIELDS = {
    "resources": ("cpu", "cpu_millicores", "memory", "memory_bytes", "pids"),
    "restart": ("policy", "max_attempts", "backoff_initial", "backoff_max"),
    "placement": ("spread_by", "max_skew", "distinct_nodes", "priority"),
    "health": ("command", "tcp", "host", "interval", "timeout", "retries", "start_period"),
    "update": ("max_parallel", "min_healthy", "healthy_deadline", "auto_revert"),
    "drain": ("max_unavailable",),
}


@st.composite
def _specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": "w", "command": ["x"]}
    for key in draw(st.lists(st.sampled_from(SPEC_FIELDS), max_size=4)):
        if key in _TABLE_FIELDS and draw(st.booleans()):
            keys = st.sampled_from(_TABLE_FIELDS[key])
            spec[key] = draw(st.dictionaries(keys, _VALUES, max_size=3))
        elif key == "constraints" and draw(st.booleans()):
            keys = st.sampled_from(("label", "op", "value", "values"))
            spec[key] = draw(st.lists(st.dictionaries(keys, _VALUES, max_size=3), max_size=2))
        else:
            spec[key] = draw(_VALUES)
    return spec


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_specs())
def test_any_value_in_any_field_parses_or_is_a_config_error(data: dict[str, Any]) -> None:
    try:
        spec = WorkloadSpec.from_dict(data)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    assert WorkloadSpec.from_dict(spec.to_dict()) == spec
