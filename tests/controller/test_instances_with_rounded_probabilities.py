"""Solver instances written by other tools: probabilities rounded to a few decimals are accepted
and renormalised; what is really not a distribution is still refused."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from controller.caching import CachingInstanceError
from controller.caching import parse_instance as parse_caching
from controller.selection import SelectionInstanceError
from controller.selection import parse_instance as parse_selection

ROOT = Path(__file__).resolve().parents[2]


def selection(rows: list[list[float]]) -> dict[str, Any]:
    return {
        "experts": [
            {"id": f"e{n}", "energy_j": 1.0, "delay_s": {"math": 0.1}} for n in range(len(rows))
        ],
        "budgets": {"energy_j": 10.0},
        "samples": {"labels": [0], "choice_probs": [rows], "gate_logits": [[0.0] * len(rows)]},
    }


def caching(probs: list[float]) -> dict[str, Any]:
    return {
        "top_k": 1,
        "servers": [{"id": "s0", "capacity": 1.0}],
        "users": [{"id": "u", "weight": 1.0, "latency_s": {"s0": 0.1}, "fallback_latency_s": 1}],
        "layers": [
            {
                "experts": [{"id": f"x{n}", "size": 1.0} for n in range(len(probs))],
                "activations": {
                    "u": [{"experts": [f"x{n}"], "prob": p} for n, p in enumerate(probs)]
                },
            }
        ],
    }


def test_six_and_three_decimal_rows_are_renormalised() -> None:
    six = [0.333333, 0.333333, 0.333333]  # sums to 0.999999: refused before
    three = [0.333, 0.333, 0.333]
    inst = parse_selection(selection([six, three, [0.5, 0.5, 0.0]]))
    for row in inst.samples.choice_probs[0]:
        assert math.fsum(row) == pytest.approx(1.0, abs=1e-12)
    assert inst.samples.choice_probs[0][0] == pytest.approx([1 / 3] * 3)
    assert inst.samples.choice_probs[0][2] == [0.5, 0.5, 0.0]  # already a distribution


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        ([0.3, 0.6], "sum to 0.9, not 1"),
        ([0.6, 0.6], "sum to 1.2, not 1"),
        ([2.0, -1.0], "negative probability"),
        ([0.0, 0.0], "sum to 0, not 1"),
    ],
)
def test_rows_that_are_not_distributions_are_refused(row: list[float], needle: str) -> None:
    with pytest.raises(SelectionInstanceError, match=needle):
        parse_selection(selection([row]))


def test_caching_probabilities_are_renormalised_or_refused() -> None:
    inst = parse_caching(caching([0.333333, 0.333333, 0.333333]))
    probs = [a.prob for a in inst.layers[0].activations["u"]]
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
    assert probs == pytest.approx([1 / 3] * 3)
    with pytest.raises(CachingInstanceError, match="sum to 0.9, not 1"):
        parse_caching(caching([0.5, 0.4]))


def test_the_example_instances_are_valid_with_rounded_probabilities() -> None:
    """examples/ holds six-decimal instances, as another tool writes them: some rows are off
    1 by more than the old tolerance of 1e-6, and they load."""
    data = json.loads((ROOT / "examples/selection-instance.json").read_text())
    off = [abs(math.fsum(r) - 1) for s in data["samples"]["choice_probs"] for r in s]
    assert max(off) > 1e-6
    inst = parse_selection(data)
    assert all(
        math.fsum(r) == pytest.approx(1.0, abs=1e-12)
        for s in inst.samples.choice_probs
        for r in s
    )
    parse_caching((ROOT / "examples/caching-instance.json").read_text())
