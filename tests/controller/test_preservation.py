"""Optimality preservation on the measured lab fleet (data/profile-lab.json, data/gate-lab.pt).

For 20 random subsets S, a gate trained on S alone is compared on the test split with the gate
trained once on all six experts and restricted to S (docs/design.md section 3).

Tolerances. Both gates are scored on the same 277 test prompts, so each gap is a paired
difference. Measured on this profile (docs/moe2.md): mean gap +0.026 nats, largest +0.060 nats,
accuracy at most 4.7 points better for the gate trained on S. Luce's axiom makes the *form*
of the restricted gate right, but the full gate is an empirical minimiser on 831 training
prompts: where S lacks the strong experts, the gate trained on S alone leans more on the
near-chance "letter" experts as a hedge against overconfident wrong answers, which the full gate
never had to learn. The losses of different subsets spread over 0.43 nats (0.78 to 1.21), so we
call a gap material at a quarter of that spread: we allow a mean gap of 0.05 nats, any single
gap of 0.10 nats and 7 accuracy points, about 1.7 times the largest measured. A gate that must
be retrained for every subset would fail them; the numbers are reported, not hidden.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.gate.dataset import GateData
from controller.gate.encoder import PromptEncoder
from controller.gate.gate import Gate
from controller.gate.preservation import preservation_table
from controller.profile import load_profile

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.skipif(not (DATA / "gate-lab.pt").exists(), reason="no lab gate committed")
def test_the_full_gate_restricted_is_as_good_as_one_trained_on_the_subset() -> None:
    profile = load_profile(DATA / "profile-lab.json")
    gate = Gate.load(DATA / "gate-lab.pt")
    data = GateData.from_profile(profile, PromptEncoder(), keys=gate.expert_keys)
    rows = preservation_table(gate, data, subsets=20, seed=0)
    assert len(rows) == 20 and len({tuple(r.subset) for r in rows}) == 20
    gaps = [r.loss_gap for r in rows]
    assert sum(gaps) / len(gaps) <= 0.05, gaps
    assert max(gaps) <= 0.10, gaps
    assert max(r.acc_gap for r in rows) <= 0.07
