"""``moe2 select``: choose the experts to activate for a selection instance (DESIGN.md section 6).

Exit status: 0 with a feasible selection, 3 when not even one expert fits the budgets, 2 for a bad
instance file or flag (an ``error:`` line on stderr, never a traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from controller.selection import SelectionResult

EXIT_BAD_INPUT = 2
EXIT_INFEASIBLE = 3


def _fail(message: str) -> None:
    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(EXIT_BAD_INPUT)


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
    table.add_row("subsets evaluated", str(result.subsets_evaluated))
    if result.monotonicity_violations is not None:
        table.add_row("monotonicity violations", str(result.monotonicity_violations))
    table.add_row("runtime s", f"{result.runtime_s:.4f}")
    return table


def select(
    instance: Annotated[
        Path, typer.Option("--instance", help="Selection instance, JSON (DESIGN.md section 6)")
    ],
    algorithm: Annotated[
        str,
        typer.Option(
            "--algorithm",
            help="moe2 (branch and bound), exhaustive, greedy, random, best_single or uniform",
        ),
    ] = "moe2",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline")] = 0,
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
        _fail(f"unknown algorithm {algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
    try:
        result = solve(load_instance(instance), algorithm, seed=seed)
    except SelectionInstanceError as exc:
        _fail(str(exc))
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        Console().print(result_table(result))
    if not result.feasible:
        raise typer.Exit(EXIT_INFEASIBLE)
