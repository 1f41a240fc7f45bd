"""`moe2 select` on instance files: the result object printed, an infeasible instance reported
with exit code 3, bad instances, a missing file and an unknown algorithm as clean errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.selection import (
    ALGORITHMS,
    SelectionInstanceError,
    load_instance,
    parse_instance,
    solve,
)
from tests.controller.selection.instances import moe2, nonmonotone_instance, topk_instance, write


def test_infeasible_instance_is_reported_and_exits_3(tmp_path: Path) -> None:
    data = topk_instance(None)
    data["budgets"]["energy_j"] = 0.5
    instance = parse_instance(data)
    for algorithm in ALGORITHMS:
        result = solve(instance, algorithm)
        assert not result.feasible and result.selected == []
        assert result.loss is None and result.accuracy is None
    run = moe2("--instance", str(write(tmp_path, data)), "--json")
    assert run.returncode == 3, run.stderr
    out = json.loads(run.stdout)
    assert out["feasible"] is False and out["selected"] == [] and out["loss"] is None
    assert moe2("--instance", str(write(tmp_path, data))).returncode == 3


def test_cli_prints_the_result_object(tmp_path: Path) -> None:
    path = write(tmp_path, nonmonotone_instance())
    run = moe2("--instance", str(path), "--json", "--algorithm", "exhaustive")
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    keys = {
        "selected",
        "loss",
        "accuracy",
        "energy_j",
        "delay_s",
        "feasible",
        "optimal",
        "subsets_evaluated",
        "algorithm",
        "runtime_s",
    }
    assert keys <= set(out)
    assert out["selected"] == ["sharp"] and out["optimal"] is True
    assert out["algorithm"] == "exhaustive"
    table = moe2("--instance", str(path))
    assert table.returncode == 0 and "sharp" in table.stdout
    assert load_instance(path) == parse_instance(nonmonotone_instance())


def _bad(mutate: Any) -> dict[str, Any]:
    data = topk_instance(None)
    mutate(data)
    return data


BAD_INSTANCES: dict[str, tuple[Any, str]] = {
    "unknown top-level field": (_bad(lambda d: d.update(bogus=1)), "bogus: Extra inputs"),
    "unknown expert field": (
        _bad(lambda d: d["experts"][0].update(power_w=3)),
        "experts.0.power_w: Extra inputs",
    ),
    "negative energy": (
        _bad(lambda d: d["experts"][1].update(energy_j=-1.0)),
        "experts.1.energy_j",
    ),
    "negative delay budget": (
        _bad(lambda d: d["budgets"]["delay_s"].update(math=-0.1)),
        "budgets.delay_s.math",
    ),
    "NaN energy": (
        json.dumps(topk_instance(None)).replace('"energy_j": 2.0', '"energy_j": NaN'),
        "experts.1.energy_j: Input should be a finite number",
    ),
    "infinite budget": (
        json.dumps(topk_instance(None)).replace('"energy_j": 5.0', '"energy_j": Infinity'),
        "budgets.energy_j: Input should be a finite number",
    ),
    "missing budget category": (
        _bad(lambda d: d["budgets"]["delay_s"].update(chat=1.0)),
        "no delay_s for budget category 'chat'",
    ),
    "duplicate expert ids": (
        _bad(lambda d: d["experts"][2].update(id="a")),
        "duplicate expert id 'a'",
    ),
    "row not summing to 1": (
        _bad(lambda d: d["samples"]["choice_probs"][1].__setitem__(0, [0.3, 0.6])),
        "samples.choice_probs[1][0]: probabilities sum to 0.9",
    ),
    "negative probability": (
        _bad(lambda d: d["samples"]["choice_probs"][0].__setitem__(2, [1.5, -0.5])),
        "samples.choice_probs[0][2]: negative probability",
    ),
    "missing expert row": (
        _bad(lambda d: d["samples"]["choice_probs"][0].pop()),
        "samples.choice_probs[0]: 2 rows for 3 experts",
    ),
    "wrong number of logits": (
        _bad(lambda d: d["samples"]["gate_logits"][1].append(0.0)),
        "samples.gate_logits[1]: 4 logits for 3 experts",
    ),
    "label out of range": (
        _bad(lambda d: d["samples"]["labels"].__setitem__(1, 2)),
        "samples.labels[1]: label 2 out of range for 2 choices",
    ),
    "sample count mismatch": (
        _bad(lambda d: d["samples"]["labels"].append(0)),
        "samples.choice_probs: 2 samples",
    ),
    "no experts": (_bad(lambda d: d.update(experts=[])), "experts: List should have at least 1"),
    "invalid JSON": ('{"experts": [', "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_INSTANCES))
def test_bad_instances_are_clean_errors(case: str, tmp_path: Path) -> None:
    data, needle = BAD_INSTANCES[case]
    path = write(tmp_path, data)
    with pytest.raises(SelectionInstanceError, match="invalid selection instance|not valid JSON"):
        load_instance(path)
    run = moe2("--instance", str(path))
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert run.stderr.startswith("error: ")
    assert needle in run.stderr, run.stderr


def test_missing_file_and_unknown_algorithm_are_clean_errors(tmp_path: Path) -> None:
    run = moe2("--instance", str(tmp_path / "missing.json"))
    assert run.returncode == 2 and "does not exist" in run.stderr
    assert "Traceback" not in run.stderr
    path = write(tmp_path, topk_instance(None))
    run = moe2("--instance", str(path), "--algorithm", "simulated-annealing")
    assert run.returncode == 2 and "unknown algorithm 'simulated-annealing'" in run.stderr
    assert "Traceback" not in run.stderr
    with pytest.raises(ValueError, match="unknown algorithm"):
        solve(parse_instance(topk_instance(None)), "simulated-annealing")
