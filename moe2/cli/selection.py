"""``moe2 select``: the experts to activate for a selection instance (docs/design.md section 6).

Exit status: 0 with a feasible selection, 3 when not even one expert fits the budgets, 2 for a bad
instance file or flag (an ``error:`` line on stderr, never a traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from moe2.cli.options import DelayOpt, EnergyOpt, GateOpt, ProfileOpt, TopKOpt, fail, parse_delays

if TYPE_CHECKING:
    from controller.selection import SelectionInstance, SelectionResult

EXIT_INFEASIBLE = 3


def result_table(result: SelectionResult) -> Table:
    """A short human-readable view of a selection result."""
    title = f"{result.algorithm}: " + (
        f"{len(result.selected)} expert(s)" if result.feasible else "[red]infeasible[/]"
    )
    table = Table(title=title, show_header=False)
    table.add_column("field")
    table.add_column("value")
    if not result.feasible:
        table.add_row("selected", "none: no single expert fits the budgets")
    else:
        assert result.loss is not None and result.accuracy is not None
        table.add_row("selected", ", ".join(result.selected))
        table.add_row("loss", f"{result.loss:.6f}")
        table.add_row("accuracy", f"{result.accuracy:.4f}")
        table.add_row("energy J", f"{result.energy_j:.4g}")
        for category, delay in result.delay_s.items():
            table.add_row(f"delay s ({category})", f"{delay:.4g}")
    table.add_row("optimal (proven)", "yes" if result.optimal else "no")
    if result.bound is not None and result.gap is not None:
        table.add_row("lower bound", f"{result.bound:.6f}")
        table.add_row("gap", f"{100 * result.gap:.2f} %")
    table.add_row("subsets evaluated", str(result.subsets_evaluated))
    if result.monotonicity_violations is not None:
        table.add_row("monotonicity violations", str(result.monotonicity_violations))
    table.add_row("runtime s", f"{result.runtime_s:.4f}")
    return table


def select(
    instance: Annotated[
        Path | None,
        typer.Option("--instance", help="Selection instance, JSON (docs/design.md section 6)"),
    ] = None,
    profile: ProfileOpt = None,
    gate: GateOpt = None,
    energy_j: EnergyOpt = None,
    delay_s: DelayOpt = None,
    top_k: TopKOpt = None,
    split: Annotated[
        str, typer.Option("--split", help="Profile split the instance is built on")
    ] = "val",
    write_instance: Annotated[
        Path | None, typer.Option("--write-instance", help="Also save the built instance here")
    ] = None,
    algorithm: Annotated[
        str,
        typer.Option(
            "--algorithm",
            help="moe2 (branch and bound), exhaustive, greedy, random, best_single or uniform",
        ),
    ] = "moe2",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline")] = 0,
    time_limit: Annotated[
        float | None,
        typer.Option(
            "--time-limit",
            help="Seconds for moe2: then the best set found, with its proven gap and bound",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result object as JSON")
    ] = False,
) -> None:
    """Choose the experts to activate under energy and delay budgets (MoE² selection)."""
    from controller.selection import (
        ALGORITHMS,
        SelectionInstanceError,
        load_instance,
        solve,
    )

    if algorithm not in ALGORITHMS:
        fail(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    if time_limit is not None and not time_limit > 0:
        fail(f"--time-limit must be positive, not {time_limit}")
    if (instance is None) == (profile is None):
        fail("give either --instance FILE or --profile FILE --gate FILE")
    try:
        if instance is not None:
            problem = load_instance(instance)
        else:
            problem = _from_profile(profile, gate, energy_j, delay_s or [], top_k, split)  # type: ignore[arg-type]
            if write_instance is not None:
                write_instance.write_text(problem.model_dump_json(indent=1))
        result = solve(problem, algorithm, seed=seed, time_limit_s=time_limit)
    except SelectionInstanceError as exc:
        fail(str(exc))
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        Console().print(result_table(result))
    if not result.feasible:
        raise typer.Exit(EXIT_INFEASIBLE)


def _from_profile(
    profile: Path,
    gate: Path | None,
    energy_j: float | None,
    delay_s: list[str],
    top_k: int | None,
    split: str,
) -> SelectionInstance:
    """The instance of a profile's split under the given budgets, with the gate's logits."""
    from controller.gate.errors import GateError
    from controller.profile import ProfileError
    from controller.selection.from_profile import load_gated_profile

    if gate is None:
        fail("--profile needs --gate")
    if split not in ("train", "val", "test"):
        fail(f"--split {split!r}: choose train, val or test")
    delays = parse_delays(delay_s)
    try:
        gated = load_gated_profile(profile, gate)  # type: ignore[arg-type]
    except (ProfileError, GateError) as exc:
        fail(str(exc))
    categories = sorted({c for cost in gated.costs.values() for c in cost.delay_s})
    unknown = sorted(set(delays) - set(categories))
    if unknown:
        fail(f"unknown delay categories {unknown}; the profile has {categories}")
    if energy_j is None:
        energy_j = sum(c.energy_j for c in gated.costs.values()) + 1.0
    return gated.instance(split, energy_j, delays, top_k=top_k)
