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
    budget: float  # energy_j, or the delay budget as a fraction of each category's slowest expert
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


def slowest(instance: SelectionInstance) -> dict[str, float]:
    """Per category, the delay of the slowest expert."""
    categories = sorted({c for e in instance.experts for c in e.delay_s})
    return {c: max(e.delay_s[c] for e in instance.experts) for c in categories}


def budget_grid(instance: SelectionInstance, points: int) -> tuple[list[float], list[float]]:
    """Energy budgets from the cheapest expert to all of them (geometric steps). Delay budgets
    as a fraction f of each category's slowest expert, from the smallest f at which some
    expert fits every category to 1."""
    energies = sorted(e.energy_j for e in instance.experts)
    energy = np.geomspace(energies[0], sum(energies), points).tolist()
    top = slowest(instance)
    tightest = min(max(e.delay_s[c] / top[c] for c in top if top[c] > 0) for e in instance.experts)
    delay = np.geomspace(tightest, 1.0, points).tolist()
    return energy, delay


def sweep(
    val: SelectionInstance, test: SelectionInstance, points: int = 10, seed: int = 0
) -> list[SweepPoint]:
    ids = [e.id for e in val.experts]
    if ids != [e.id for e in test.experts]:
        raise ValueError("validation and test instances must list the same experts in order")
    energy_grid, delay_grid = budget_grid(val, points)
    unlimited_energy = sum(e.energy_j for e in val.experts) + 1.0
    top = slowest(val)
    rows = []
    for axis, grid in (("energy", energy_grid), ("delay", delay_grid)):
        for budget in grid:
            if axis == "energy":
                energy_j, delay_s = budget, {}
            else:
                # a whisker of slack so that the expert defining the grid point fits
                energy_j = unlimited_energy
                delay_s = {c: budget * top[c] * (1 + 1e-9) - val.aggregation_delay_s for c in top}
                delay_s = {c: max(0.0, v) for c, v in delay_s.items()}
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
    """One PNG per axis: test accuracy (left) and test loss (right) against the budget."""
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
        ("delay", "delay budget (fraction of each category's slowest expert)"),
    ):
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
        for algorithm, label in labels.items():
            pts = [r for r in rows if r.axis == axis and r.algorithm == algorithm and r.feasible]
            if not pts:
                continue
            style = dict(marker="o", linewidth=2.5 if algorithm == "moe2" else 1.2, label=label)
            left.plot([p.budget for p in pts], [p.test_accuracy for p in pts], **style)
            right.plot([p.budget for p in pts], [p.test_loss for p in pts], **style)
        for ax, ylabel in ((left, "test accuracy"), (right, "test loss (mixture cross-entropy)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
        fig.suptitle(f"Chosen on the validation split, scored on the test split: {axis} budget")
        fig.tight_layout()
        path = out_dir / f"sweep_{axis}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def report_markdown(rows: list[SweepPoint], per_axis: int = 3) -> str:
    """Tables of every algorithm at a few budgets per axis (low, middle, high of the grid)."""
    lines = []
    for axis, unit in (("energy", "J per query"), ("delay", "× slowest expert per category")):
        budgets = sorted({r.budget for r in rows if r.axis == axis})
        if not budgets:
            continue
        picks = sorted(
            {budgets[round(i * (len(budgets) - 1) / (per_axis - 1))] for i in range(per_axis)}
        )
        lines.append(f"### {axis.capitalize()} budget\n")
        lines.append(
            "| budget | algorithm | selected | test accuracy | test loss | energy J | delay s |"
        )
        lines.append("|---|---|---|---|---|---|---|")
        for budget in picks:
            for r in (x for x in rows if x.axis == axis and x.budget == budget):
                if not r.feasible:
                    lines.append(f"| {budget:.3g} {unit} | {r.algorithm} | none fits | | | | |")
                    continue
                lines.append(
                    f"| {budget:.3g} {unit} | {r.algorithm} | {r.selected.replace('+', ', ')} | "
                    f"{r.test_accuracy:.3f} | {r.test_loss:.3f} | {r.energy_j:.2f} | "
                    f"{r.max_delay_s:.3f} |"
                )
        lines.append("")
    return "\n".join(lines)
