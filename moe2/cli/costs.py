"""``moe2 costs``: each expert's current energy and delays as the controller learnt them, their
source and sample count, next to the budgets in force (the retained ``controller/costs``)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Annotated

import typer
from rich.console import Console

from messages import topics
from messages.bus import BrokerEndpoint, Bus
from messages.costs import CostTable, ExpertCostRow
from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, fail
from moe2.cli.tables import costs_table

out = Console()


def read_costs(endpoint: BrokerEndpoint, fleet: str, wait_s: float) -> CostTable | None:
    """The retained cost table, or None when no controller with a profile published one."""
    got: list[CostTable] = []
    arrived = threading.Event()

    def take(inbound: object) -> None:
        got.append(inbound.message)  # type: ignore[attr-defined]
        arrived.set()

    bus = Bus(endpoint, fleet, client_id=f"moe2-costs-{uuid.uuid4().hex[:10]}")
    bus.subscribe(topics.CONTROLLER_COSTS, take)
    bus.connect()
    try:
        arrived.wait(wait_s)
    finally:
        bus.close()
    return got[-1] if got else None


def fleet_notes(endpoint: BrokerEndpoint, fleet: str) -> tuple[dict[str, ExpertCostRow], list[str]]:
    """What ``moe2 fleet`` adds to its table: the newcomers being profiled for the gate (their
    cost rows, by ``expert@agent``), and notes for under it: how far each newcomer is, and
    budgets that nothing fits (from the retained cost table; nothing without one)."""
    try:
        table = read_costs(endpoint, fleet, 1.0)
    except ConnectionError:
        return {}, []
    if table is None:
        return {}, []
    profiled = {r.key: r for r in table.experts if r.online and _profiled(r)}
    notes = [profiling_note(r) for r in profiled.values()]
    if not table.feasible:
        notes.append(f"budgets: {table.problem}")
    return profiled, notes


def _profiled(row: ExpertCostRow) -> bool:
    """A newcomer not in the gate yet, or in it and still being profiled."""
    return not row.in_gate or row.profiled is not None


def profiling_note(row: ExpertCostRow) -> str:
    """One line on a newcomer: how far its profiling is, and that it answers when named."""
    if row.profiled is not None and row.profile_of is not None:
        if row.in_gate:
            how = f"in the gate, refined on the rest of the suite: {row.profiled}/{row.profile_of}"
        else:
            how = f"being profiled: {row.profiled}/{row.profile_of} prompts to enter the gate"
        return f"{row.key}: {how}; it answers prompts that name it"
    return f"{row.key}: new to the gate, {row.profiling or 'waiting to be profiled'}"


@with_connection()
def costs(
    connection: Connection,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the table")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON")] = False,
) -> None:
    """Each expert's current energy and delays (learnt from results, seeded from the profile),
    their source and sample count, next to the budgets; and why nothing fits, when nothing does."""
    settings = connection.settings()
    try:
        table = read_costs(settings.endpoint, settings.fleet, wait)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    if table is None:
        fail(
            f"no cost table for fleet {settings.fleet!r} within {wait:g} s: is a controller with "
            "a profile and a gate (--profile, --gate) running?",
            code=EXIT_FAILURE,
        )
    if as_json:
        print(json.dumps(table.model_dump(mode="json"), indent=2))
        return
    out.print(costs_table(table))
    out.print(
        f"costs are the profile's times the median of each expert's last {table.window} results; "
        f"a move past ±{table.drift_threshold:.0%} re-plans. J: energy per query (est.: from a "
        "power model, not a sensor); s: delay per category (≤ the budget); n d/e: results the "
        "delay/energy rest on; × d/e: delay/energy over the profile's. A newcomer answers "
        "prompts that name it while it is profiled (n/N: suite prompts measured so far)."
    )
    if not table.feasible:
        out.print(f"[red]infeasible:[/] {table.problem}")
