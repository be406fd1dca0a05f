"""``GET /v1/status`` on an agent that sees no leader: it names the last one as such."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from agent.daemon import Agent


def _agent(current_leader: str | None) -> Any:
    agent = Agent.__new__(Agent)
    agent.name = "n2"
    agent.api_address = "http://127.0.0.3:1"
    agent.driver_reason = "process"
    agent.leader_loop = None
    agent.raft = SimpleNamespace(
        status=lambda: {"state": "follower", "leader": current_leader, "term": 2},
        leader=current_leader,
        # The replicated state (Agent.state) still names the last leader it applied.
        state=SimpleNamespace(leader="127.0.0.3:7947", workloads=list, placements=list),
    )
    agent.gossip = SimpleNamespace(
        states=lambda: {
            "n1": {"raft": '"127.0.0.2:7947"'},
            "n2": {"raft": '"127.0.0.3:7947"'},
        },
        members=list,
    )
    return agent


async def test_a_cut_off_former_leader_shows_no_leader_and_the_last_one() -> None:
    # n2 led term 2, then lost the others: raft sees no leader; the state still says n2.
    status = await _agent(None).status()
    assert status["leader_node"] is None
    assert status["last_leader_node"] == "n2"


async def test_a_follower_that_sees_the_leader_names_it() -> None:
    status = await _agent("127.0.0.2:7947").status()
    assert status["leader_node"] == "n1"
    assert "last_leader_node" not in status
