"""``moe2 budgets``: set the fleet's budgets at run time (the controller re-solves and pushes a
new plan), or clear them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import (
    EXIT_FAILURE,
    DelayOpt,
    EnergyOpt,
    TopKOpt,
    console,
    fail,
    parse_delays,
)

if TYPE_CHECKING:
    from messages.controller import FleetPlan
    from messages.settings import FleetSettings


@with_connection()
def budgets(
    connection: Connection,
    energy_j: EnergyOpt = None,
    delay_s: DelayOpt = None,
    top_k: TopKOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the new plan")] = 10.0,
    clear: Annotated[
        bool,
        typer.Option(
            "--clear",
            help="Remove the budgets set at run time: the controller goes back to those it was "
            "started with",
        ),
    ] = False,
) -> None:
    """Set the fleet's budgets at run time: the controller re-solves and pushes a new plan."""
    from pydantic import ValidationError

    from messages import topics
    from messages.budgets import Budgets
    from moe2.client.fleet_reader import PlanRefused, request_plan

    settings = connection.settings()
    if clear:
        if energy_j is not None or delay_s or top_k is not None:
            fail("--clear takes no budgets")
        _clear(settings)
        return
    try:
        wanted = Budgets(energy_j=energy_j, delay_s=parse_delays(delay_s or []), top_k=top_k)
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        plan = request_plan(
            settings.endpoint, settings.fleet, topics.CONTROLLER_BUDGETS, wanted, wait
        )
    except (PlanRefused, ConnectionError) as exc:
        fail(str(exc), code=EXIT_FAILURE)
    _print_plan(plan)


def _clear(settings: FleetSettings) -> None:
    """Clear the retained run-time budgets: the controller's own are in force again."""
    from messages import topics
    from moe2.client.fleet_reader import clear_retained

    try:
        clear_retained(settings.endpoint, settings.fleet, [(topics.CONTROLLER_BUDGETS, {})])
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    console().print(f"budgets of fleet {settings.fleet} cleared: the controller's own are in force")


def _print_plan(plan: FleetPlan) -> None:
    console().print(f"plan epoch {plan.epoch} ({plan.algorithm}):")
    for agent, experts in plan.assignments.items():
        console().print(f"  {agent}: {', '.join(experts) or '-'}")
    if plan.energy_j is not None:
        delays = ", ".join(f"{c} {s:.2f} s" for c, s in plan.delay_s.items())
        console().print(f"expected energy {plan.energy_j:.2f} J per query; delay {delays or 'n/a'}")
