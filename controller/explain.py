"""Why no set of experts fits the budgets, in words: each expert's cost against each budget."""

from __future__ import annotations

from controller.selection.from_profile import ExpertCost
from messages.budgets import Budgets

SLACK = 1e-9


def _fmt_budgets(budgets: Budgets) -> str:
    parts = []
    if budgets.energy_j is not None:
        parts.append(f"energy {budgets.energy_j:g} J")
    parts += [f"{c} {s:g} s" for c, s in sorted(budgets.delay_s.items())]
    return ", ".join(parts) or "none"


def over_budget(cost: ExpertCost, budgets: Budgets, aggregation_delay_s: float = 0.0) -> list[str]:
    """What one expert alone breaks: ``["energy 2.02 J > 1 J", "math 0.53 s > 0.3 s"]``."""
    broken = []
    if budgets.energy_j is not None and cost.energy_j > budgets.energy_j * (1 + SLACK):
        est = " (est.)" if cost.energy_estimated else ""
        broken.append(f"energy {cost.energy_j:.3g} J{est} > {budgets.energy_j:g} J")
    for category, limit in sorted(budgets.delay_s.items()):
        delay = cost.delay_s.get(category)
        if delay is not None and delay + aggregation_delay_s > limit * (1 + SLACK):
            broken.append(f"{category} {delay + aggregation_delay_s:.3g} s > {limit:g} s")
    return broken


def infeasible(
    costs: dict[str, ExpertCost],
    budgets: Budgets,
    online: list[str],
    aggregation_delay_s: float = 0.0,
) -> str | None:
    """None when some online expert fits the budgets alone (then some set does); else the
    refusal, naming every online expert's cost against the budgets."""
    known = [k for k in online if k in costs]
    if not known:
        return None
    reasons = {k: over_budget(costs[k], budgets, aggregation_delay_s) for k in known}
    if any(not r for r in reasons.values()):
        return None
    each = "; ".join(f"{k}: {', '.join(r)}" for k, r in sorted(reasons.items()))
    cheapest = min(known, key=lambda k: costs[k].energy_j)
    return (
        f"no online expert fits the budgets ({_fmt_budgets(budgets)}): {each}. "
        f"The cheapest is {cheapest} at {costs[cheapest].energy_j:.3g} J "
        "(`moe2 costs` shows every expert's current costs)"
    )
