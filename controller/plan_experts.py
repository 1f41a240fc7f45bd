"""Which experts each agent must hold loaded: every one that fits, the SlimCaching placement
in force, or the MoE² optimal set under the budgets. Pure functions of the fleet as the
registry sees it; the controller service hands what they decide to the plan epochs
(controller/plan_epochs.py) and publishes the plans."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from controller.damping import plannable
from controller.registry import FleetRegistry
from messages.budgets import Budgets
from messages.cache_plan import CachePlan
from messages.expert_key import expert_key, parse_key

if TYPE_CHECKING:  # numpy and numba are imported only with a gate
    from controller.selection.live import LiveSelection
    from controller.selection.solver import SelectionResult

Wanted = dict[str, list[str]]


def fitting(registry: FleetRegistry, online: Wanted) -> Wanted:
    """Every expert of each agent, in its configured order, as far as its memory budget
    allows (agents without a budget get them all)."""
    records = {r.agent_id: r for r in registry.agents()}
    wanted = {}
    for agent_id, experts in online.items():
        caps = records[agent_id].capabilities
        budget = caps.expert_memory_budget_bytes if caps else None
        if caps is None or budget is None:
            wanted[agent_id] = experts
            continue
        infos = {e.expert_id: e for e in caps.experts}
        kept, used = [], 0
        for expert in experts:
            size = infos[expert].memory_bytes or infos[expert].file_size_bytes
            if used + size <= budget:
                kept.append(expert)
                used += size
        wanted[agent_id] = kept
    return wanted


def cache_plan_problem(registry: FleetRegistry, plan: CachePlan) -> str | None:
    """Why a cache plan cannot be applied: unknown agents or experts, or over a budget."""
    records = {r.agent_id: r for r in registry.agents()}
    for agent_id, expert_ids in plan.placement.items():
        record = records.get(agent_id)
        if record is None or record.capabilities is None:
            return f"unknown agent {agent_id!r}"
        infos = {e.expert_id: e for e in record.capabilities.experts}
        unknown = sorted(set(expert_ids) - set(infos))
        if unknown:
            return f"agent {agent_id} has no experts {unknown}"
        budget = record.capabilities.expert_memory_budget_bytes
        need = sum(infos[e].memory_bytes or infos[e].file_size_bytes for e in expert_ids)
        if budget is not None and need > budget:
            return (
                f"agent {agent_id} would hold {need / 1e6:.0f} MB of experts, over its "
                f"budget of {budget / 1e6:.0f} MB"
            )
    return None


def plannable_experts(registry: FleetRegistry, held: Collection[str] = ()) -> Wanted:
    """The experts of every online agent a plan may use: not ``held`` (flapping), and heard
    alive once any agent is (controller/damping.py)."""
    return plannable(registry.online_experts(), registry.heard_alive(), set(held))


def expert_keys(pool: Wanted) -> set[str]:
    """``expert@agent`` of every expert in ``pool``."""
    return {expert_key(a, e) for a, experts in pool.items() for e in experts}


def online_keys(registry: FleetRegistry, held: Collection[str] = ()) -> set[str]:
    """``expert@agent`` of every expert a plan may use: what a selection chooses from."""
    return expert_keys(plannable_experts(registry, held))


def wanted_experts(
    registry: FleetRegistry,
    selection: LiveSelection | None,
    cache_plan: CachePlan | None,
    budgets: Budgets,
    solved: SelectionResult | None = None,
    held: Collection[str] = (),
) -> tuple[Wanted, dict[str, Any], SelectionResult | None]:
    """Experts each plannable agent must hold (online, not ``held``, heard alive once any is),
    the plan's summary, and the selection result when one was solved (``solved``: a result
    found already, by a background improvement). Raises BudgetError when no set fits (the
    caller keeps the plan it has)."""
    online = plannable_experts(registry, held)
    if cache_plan is not None:
        placement = cache_plan.placement
        wanted = {a: [e for e in placement.get(a, []) if e in online[a]] for a in online}
        summary = dict(
            algorithm=f"cache:{cache_plan.algorithm}", loss=None, energy_j=None, delay_s={}
        )
        return wanted, summary, None
    if selection is None:
        return fitting(registry, online), {}, None
    result = solved or selection.solve(budgets, expert_keys(online))
    wanted = {agent: [] for agent in online}
    for chosen in result.selected:
        agent, expert = parse_key(chosen)
        if agent in wanted:
            wanted[agent].append(expert)
    summary = dict(
        algorithm=result.algorithm,
        loss=result.loss,
        energy_j=result.energy_j,
        delay_s=result.delay_s,
        optimal=result.optimal,
        gap=result.gap,
    )
    return wanted, summary, result
