"""Trade-off curves (``moe2 sweep``): test accuracy of MoE² and every baseline as the energy
budget, or the delay budget, grows. Sets are chosen on the validation split and scored on the
test split, like the paper's figures."""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from controller.selection.instance import SelectionInstance
from controller.selection.loss import Evaluator
from controller.selection.solver import ALGORITHMS, solve


@dataclass(frozen=True)
class SweepPoint:
    axis: str  # "energy" or "delay"
    budget: float  # energy_j, or the delay budget applied to every category
    algorithm: str
    feasible: bool
    selected: str
    test_accuracy: float | None
    test_loss: float | None
    energy_j: float | None
    max_delay_s: float | None


def _with_budgets(
    instance: SelectionInstance, energy_j: float, delay_s: dict[str, float]
) -> SelectionInstance:
    budgets = instance.budgets.model_copy(update={"energy_j": energy_j, "delay_s": delay_s})
    return instance.model_copy(update={"budgets": budgets})


def budget_grid(instance: SelectionInstance, points: int) -> tuple[list[float], list[float]]:
    """Energy budgets from the cheapest expert to all of them; delay budgets from the fastest
    expert's slowest category to the slowest expert's."""
    energies = sorted(e.energy_j for e in instance.experts)
    delays = [max(e.delay_s.values()) for e in instance.experts]
    energy = np.geomspace(energies[0], sum(energies), points).tolist()
    delay = np.geomspace(min(delays), max(delays), points).tolist()
    return energy, delay


def sweep(
    val: SelectionInstance, test: SelectionInstance, points: int = 10, seed: int = 0
) -> list[SweepPoint]:
    ids = [e.id for e in val.experts]
    if ids != [e.id for e in test.experts]:
        raise ValueError("validation and test instances must list the same experts in order")
    energy_grid, delay_grid = budget_grid(val, points)
    unlimited_energy = sum(e.energy_j for e in val.experts) + 1.0
    categories = sorted({c for e in val.experts for c in e.delay_s})
    rows = []
    for axis, grid in (("energy", energy_grid), ("delay", delay_grid)):
        for budget in grid:
            if axis == "energy":
                energy_j, delay_s = budget, {}
            else:
                energy_j, delay_s = unlimited_energy, {c: budget for c in categories}
            chooser = _with_budgets(val, energy_j, delay_s)
            scorer = _with_budgets(test, energy_j, delay_s)
            for algorithm in ALGORITHMS:
                if algorithm == "exhaustive":
                    continue  # the same optimum as moe2, proven in the tests
                result = solve(chooser, algorithm, seed=seed)
                if not result.feasible:
                    rows.append(
                        SweepPoint(axis, budget, algorithm, False, "", None, None, None, None)
                    )
                    continue
                idx = [ids.index(s) for s in result.selected]
                ev = Evaluator(scorer, uniform=algorithm == "uniform")
                rows.append(
                    SweepPoint(
                        axis=axis,
                        budget=budget,
                        algorithm=algorithm,
                        feasible=True,
                        selected="+".join(result.selected),
                        test_accuracy=ev.accuracy(idx),
                        test_loss=ev.loss(idx),
                        energy_j=ev.energy_j(idx),
                        max_delay_s=max(max(scorer.experts[i].delay_s.values()) for i in idx)
                        + scorer.aggregation_delay_s,
                    )
                )
    return rows


def write_csv(rows: list[SweepPoint], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


def plot(rows: list[SweepPoint], out_dir: Path, energy_estimated: bool) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    labels = {
        "moe2": "MoE² (optimal set, gate weights)",
        "greedy": "greedy (loss gain per J)",
        "random": "random feasible set",
        "best_single": "best single expert",
        "uniform": "uniform weights on the MoE² set",
    }
    for axis, xlabel in (
        ("energy", "energy budget per query (J" + (", estimated)" if energy_estimated else ")")),
        ("delay", "delay budget per category (s)"),
    ):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for algorithm, label in labels.items():
            pts = [r for r in rows if r.axis == axis and r.algorithm == algorithm and r.feasible]
            if pts:
                ax.plot(
                    [p.budget for p in pts],
                    [p.test_accuracy for p in pts],
                    marker="o",
                    linewidth=2.5 if algorithm == "moe2" else 1.2,
                    label=label,
                )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Test accuracy against the {axis} budget")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"sweep_{axis}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
