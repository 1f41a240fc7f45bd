"""When the fleet's costs have moved enough to re-plan: a deadband around the costs the plan in
force was solved with, and a cool-down between re-plans. Pure: time comes in as ``now``.

An expert has drifted when its energy, or its delay in any category, differs from the value
the current plan used by more than ``threshold`` in either direction, measured as a log ratio
(so +100 % and -50 % are the same distance). After a re-plan the plan's costs are the new
reference: a cost that wanders back and forth by less than the threshold never re-plans
(hysteresis), and two cost re-plans are at least ``cooldown_s`` apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from controller.selection.from_profile import ExpertCost


@dataclass(frozen=True)
class Move:
    """One cost that moved past the threshold."""

    key: str
    what: str  # "energy" or "delay <category>"
    planned: float
    now: float

    def __str__(self) -> str:
        unit = "J" if self.what == "energy" else "s"
        change = (self.now / self.planned - 1) * 100 if self.planned > 0 else math.inf
        return f"{self.key} {self.what} {self.planned:.3g}→{self.now:.3g} {unit} ({change:+.0f}%)"


@dataclass
class DriftDetector:
    threshold: float = 0.5
    cooldown_s: float = 10.0
    planned: dict[str, ExpertCost] = field(default_factory=dict)
    last_replan: float | None = None

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ValueError(f"the drift threshold must be positive, not {self.threshold}")

    def adopt(self, costs: dict[str, ExpertCost], now: float | None = None) -> None:
        """The costs a new plan was solved with (every re-plan, whatever its reason)."""
        self.planned = dict(costs)
        if now is not None:
            self.last_replan = now

    def moves(self, current: dict[str, ExpertCost], keys: set[str] | None = None) -> list[Move]:
        """Costs of ``keys`` (default: all) beyond the deadband, ignoring the cool-down."""
        band = math.log1p(self.threshold)
        found = []
        for key, now_cost in sorted(current.items()):
            then = self.planned.get(key)
            if then is None or (keys is not None and key not in keys):
                continue
            pairs = [("energy", then.energy_j, now_cost.energy_j)]
            pairs += [
                (f"delay {c}", then.delay_s[c], now_cost.delay_s.get(c, then.delay_s[c]))
                for c in sorted(then.delay_s)
            ]
            for what, old, new in pairs:
                if old > 0 and new > 0 and abs(math.log(new / old)) > band:
                    found.append(Move(key, what, old, new))
        return found

    def due(
        self, current: dict[str, ExpertCost], now: float, keys: set[str] | None = None
    ) -> list[Move]:
        """The moves that call for a re-plan now: none during the cool-down."""
        if self.last_replan is not None and now - self.last_replan < self.cooldown_s:
            return []
        return self.moves(current, keys)
