"""``moe2 costs``: each expert's current energy and delays as the controller learnt them, their
source and sample count, next to the budgets in force (the retained ``controller/costs``)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from messages import topics
from messages.bus import BrokerEndpoint, Bus
from messages.costs import CostTable
from moe2.cli.options import (
    EXIT_FAILURE,
    BrokerOpt,
    CaFileOpt,
    ConfigOpt,
    FleetOpt,
    PasswordFileOpt,
    UsernameOpt,
    VersionOpt,
    connection,
    fail,
    load_settings,
)

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


def budgets_line(table: CostTable) -> str:
    b = table.budgets
    parts = [f"energy {b.energy_j:.3g} J" if b.energy_j is not None else "energy unlimited"]
    parts += [f"{c} {s:.3g} s" for c, s in sorted(b.delay_s.items())]
    if b.top_k is not None:
        parts.append(f"top-{b.top_k}")
    return ", ".join(parts)


def costs_table(table: CostTable) -> Table:
    categories = sorted({c for r in table.experts for c in r.delay_s})
    limits = table.budgets.delay_s
    view = Table(title=f"expert costs now (budgets: {budgets_line(table)})")
    for col in ("expert", "state", "energy J", "source"):
        view.add_column(col)
    for c in categories:
        view.add_column(f"{c} s" + (f" (≤{limits[c]:g})" if c in limits else ""))
    for col in ("samples", "× profile"):
        view.add_column(col)
    for r in table.experts:
        state = ("planned" if r.planned else "online") if r.online else "offline"
        if not r.in_gate:
            state += ", " + (r.profiling or "not in the gate")
        if r.energy_j is None:
            energy = "?"
        else:
            energy = f"{r.energy_j:.2f}" + (" est." if r.energy_estimated else "")
        source = r.origin if r.origin != "live" else f"live ({r.energy_source or 'delay only'})"
        delays = [f"{r.delay_s[c]:.3f}" if c in r.delay_s else "?" for c in categories]
        view.add_row(
            r.key,
            state,
            energy,
            source,
            *delays,
            f"{r.delay_samples} delay / {r.energy_samples} energy",
            f"delay {r.delay_ratio:.2f}, energy {r.energy_ratio:.2f}",
        )
    return view


def fleet_notes(endpoint: BrokerEndpoint, fleet: str) -> list[str]:
    """What ``moe2 fleet`` adds under its table: newcomers being profiled for the gate, and
    budgets that nothing fits (from the retained cost table; none without one)."""
    try:
        table = read_costs(endpoint, fleet, 1.0)
    except ConnectionError:
        return []
    if table is None:
        return []
    notes = [
        f"{r.key}: new to the gate, {r.profiling or 'waiting to be profiled'}"
        for r in table.experts
        if r.online and not r.in_gate
    ]
    if not table.feasible:
        notes.append(f"budgets: {table.problem}")
    return notes


def costs(
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    config: ConfigOpt = None,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to wait for the table")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the table as JSON")] = False,
) -> None:
    """Each expert's current energy and delays (learnt from results, seeded from the profile),
    their source and sample count, next to the budgets; and why nothing fits, when nothing does."""
    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
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
        f"a move past ±{table.drift_threshold:.0%} re-plans. est. = estimated energy (a power "
        "model, not a sensor)."
    )
    if not table.feasible:
        out.print(f"[red]infeasible:[/] {table.problem}")
