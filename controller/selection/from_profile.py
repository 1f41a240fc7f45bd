"""Selection instances from a fleet profile and a trained gate (``moe2 select --profile``).

Each expert's energy per query is the median of its measured (or declared-model) energy over the
profile's training items, and its delay in a category the median compute time plus the median
transmission time over that category's training items: medians, so that a few prompts slowed by
something else on the device do not set the budget.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from controller.profile import Profile, ProfileError
from controller.selection.instance import SelectionInstance, parse_instance

if TYPE_CHECKING:  # numpy and torch are imported only when a gate is loaded
    import numpy as np

    from controller.gate.dataset import GateData
    from controller.gate.encoder import Encoder
    from controller.gate.gate import Gate


@dataclass(frozen=True)
class ExpertCost:
    energy_j: float
    delay_s: dict[str, float]
    energy_estimated: bool


def expert_costs(profile: Profile, keys: list[str], split: str = "train") -> dict[str, ExpertCost]:
    items = [i for i in profile.complete_items(keys) if i.split == split]
    if not items:
        raise ProfileError(f"the profile has no {split} item measured on every expert")
    categories = sorted({i.category for i in items})
    costs = {}
    for key in keys:
        rows = [profile.records[i.id][key] for i in items]
        energies = [r.energy_j for r in rows]
        if any(e is None for e in energies):
            raise ProfileError(
                f"expert {key} reported no energy: give its agent a power sensor or a declared "
                "power model (power_model_w) and profile again"
            )
        delay = {}
        for category in categories:
            in_cat = [profile.records[i.id][key] for i in items if i.category == category]
            delay[category] = statistics.median(r.compute_s for r in in_cat) + statistics.median(
                r.transmission_s for r in in_cat
            )
        costs[key] = ExpertCost(
            energy_j=statistics.median(e for e in energies if e is not None),
            delay_s=delay,
            energy_estimated=any(r.energy_source == "estimate" for r in rows),
        )
    return costs


def build_instance(
    profile: Profile,
    gate: Gate,
    data: GateData,
    energy_j: float,
    delay_s: dict[str, float],
    split: str = "val",
    top_k: int | None = None,
    aggregation_delay_s: float = 0.0,
    costs: dict[str, ExpertCost] | None = None,
) -> SelectionInstance:
    """The selection instance over ``split``'s samples with the gate's logits."""
    profile.check_fleet(gate.fleet)
    if data.expert_keys != gate.expert_keys:
        raise ProfileError("the gate was trained on other experts than these data")
    costs = costs or expert_costs(profile, gate.expert_keys)
    samples = data.splits[split]
    logits = gate.logits_of_embeddings(samples.embeddings)
    return parse_instance(
        {
            "experts": [
                {"id": key, "energy_j": costs[key].energy_j, "delay_s": costs[key].delay_s}
                for key in gate.expert_keys
            ],
            "budgets": {"energy_j": energy_j, "delay_s": delay_s},
            "aggregation_delay_s": aggregation_delay_s,
            "top_k": top_k,
            "samples": {
                "labels": [int(y) for y in samples.labels],
                "choice_probs": [_normalised(p).tolist() for p in samples.probs],
                "gate_logits": logits.tolist(),
            },
        }
    )


def _normalised(probs: np.ndarray) -> np.ndarray:
    """Rows summing to 1 to float precision (the profile stores them as JSON numbers)."""
    return probs / probs.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class GatedProfile:
    """A profile, the gate trained on it and the gate's view of its items, checked together."""

    profile: Profile
    gate: Gate
    data: GateData
    costs: dict[str, ExpertCost]

    def instance(self, split: str, energy_j: float, delay_s: dict[str, float], **kw: object):  # type: ignore[no-untyped-def]
        return build_instance(
            self.profile,
            self.gate,
            self.data,
            energy_j,
            delay_s,
            split=split,
            costs=self.costs,
            **kw,  # type: ignore[arg-type]
        )


def load_gated_profile(
    profile_path: Path, gate_path: Path, encoder: Encoder | None = None
) -> GatedProfile:
    """Raises ProfileError or GateError with a clear message (another fleet, other experts...).

    ``encoder`` (default: the process's, controller/gate/encoder_loader.py) becomes the gate's,
    for live prompts; the profile's prompts come from the embedding cache, and only those
    missing from it are encoded: the encoder is not loaded when none is (issue 24)."""
    from controller.gate.cache import CachedEncoder
    from controller.gate.dataset import GateData
    from controller.gate.encoder_loader import shared
    from controller.gate.gate import Gate
    from controller.profile import load_profile

    profile = load_profile(profile_path)
    gate = Gate.load(gate_path)
    profile.check_fleet(gate.fleet)
    unknown = [k for k in gate.expert_keys if k not in profile.experts]
    if unknown:
        raise ProfileError(f"the gate knows experts the profile lacks: {', '.join(unknown)}")
    if encoder is None:
        encoder = shared()
    gate.encoder = encoder  # live prompts are not cached: only the profile's
    data = GateData.from_profile(profile, CachedEncoder(encoder), keys=gate.expert_keys)
    return GatedProfile(profile, gate, data, expert_costs(profile, gate.expert_keys))
