"""Who answers a prompt that names experts (controller/routing.py): an expert online on an
agent that can load it within its memory budget answers, planned or not (a newcomer being
profiled); one larger than its agent's budget is named as not active, with the reason."""

from __future__ import annotations

import pytest

from controller.dispatch import Refused
from controller.registry import AgentRecord
from controller.routing import loadable, named
from messages.expert_key import ExpertOnAgent
from tests.controller.test_registry import capabilities, status


def _record(budget: int | None, sizes: dict[str, int]) -> AgentRecord:
    caps = capabilities("edge-c", *sizes)
    caps = caps.model_copy(
        update={
            "expert_memory_budget_bytes": budget,
            "experts": [
                e.model_copy(update={"file_size_bytes": sizes[e.expert_id]}) for e in caps.experts
            ],
        }
    )
    return AgentRecord("edge-c", status=status("edge-c"), capabilities=caps)


def test_an_expert_is_loadable_when_it_fits_its_agents_budget_alone() -> None:
    record = _record(300, {"small": 100, "big": 400})
    assert loadable(record, "small")
    assert not loadable(record, "big")
    assert not loadable(record, "absent")
    assert loadable(_record(None, {"big": 400}), "big")  # no budget announced


def test_a_named_expert_usable_but_unplanned_answers() -> None:
    active = [ExpertOnAgent("edge-a", "x")]
    usable = [*active, ExpertOnAgent("edge-c", "new")]
    known = {("edge-a", "x"), ("edge-c", "new"), ("edge-d", "new")}
    chosen, failed = named(["new"], usable, known)
    assert chosen == [("edge-c", "new")]
    assert [(f.agent_id, f.reason) for f in failed] == [
        ("edge-d", "not active (offline or unplanned)")
    ]
    chosen, failed = named(["new@edge-c", "x"], usable, known)
    assert chosen == [("edge-c", "new"), ("edge-a", "x")] and failed == []
    with pytest.raises(Refused, match="unknown expert"):
        named(["nobody"], usable, known)
