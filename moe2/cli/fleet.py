"""``moe2 fleet``: the agents of a fleet, their experts, state, last power and latency (a table,
JSON, or a live table with ``--watch``); ``--forget`` clears what the broker retains of an agent
gone for good."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from messages.expert_key import agent_of, expert_of
from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, console, fail

if TYPE_CHECKING:
    from messages.costs import ExpertCostRow
    from messages.fleet_config import FleetConfig
    from messages.settings import FleetSettings


@with_connection()
def fleet(
    connection: Connection,
    wait: Annotated[float, typer.Option("--wait", help="Seconds to listen for telemetry")] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the agents as JSON")] = False,
    forget: Annotated[
        str | None,
        typer.Option(
            "--forget",
            metavar="AGENT",
            help="Clear what the broker retains of an agent that is gone for good (its status, "
            "capabilities and plan)",
        ),
    ] = None,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="A live table, refreshed from the bus until Ctrl-C"),
    ] = False,
    refresh: Annotated[
        float, typer.Option("--refresh", help="With --watch: seconds between refreshes")
    ] = 1.0,
    age_out: Annotated[
        float,
        typer.Option("--age-out", help="With --watch: drop agents offline this many seconds"),
    ] = 60.0,
    duration: Annotated[
        float | None,
        typer.Option("--duration", help="With --watch: stop after this many seconds"),
    ] = None,
) -> None:
    """Agents, their experts, state, last power and latency (--watch: live)."""
    from moe2.client.fleet_reader import ReadRefused, read_fleet

    settings = connection.settings()
    if forget is not None:
        _forget(settings, forget)
        return
    if watch:
        _watch(settings, refresh, age_out, duration)
        return
    configs: list[FleetConfig] = []
    try:
        registry, _ = read_fleet(settings.endpoint, settings.fleet, wait, configs)
    except (ConnectionError, ReadRefused) as exc:  # ReadRefused: the ACL, not the agents
        fail(str(exc), code=EXIT_FAILURE)
    rows = registry.snapshot()
    if not rows:
        if as_json:
            print(json.dumps(rows, indent=2))
        _no_agents(settings, wait)
    from moe2.cli.costs import fleet_notes

    profiled, notes = fleet_notes(settings.endpoint, settings.fleet)
    for row in rows:
        row["profiling"] = _profiling(row["agent_id"], profiled)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    _print_fleet(settings, rows, notes)
    _print_config(configs[-1] if configs else None)


def _print_config(config: FleetConfig | None) -> None:
    """The fleet's configuration in force: id, profile and gate (names, hashes), budgets."""
    from controller.fleet_config import describe

    if config is None:
        console().print(
            "no fleet configuration heard: no controller with a profile and gate published one "
            "(or this login may not read controller/config)"
        )
        return
    console().print(f"in force: {describe(config)} (from {config.controller_id})", markup=False)


def _profiling(agent_id: str, profiled: dict[str, ExpertCostRow]) -> dict[str, dict[str, Any]]:
    """The agent's experts being profiled for the gate: expert -> how far (``--json``)."""
    return {
        expert_of(key): {
            "in_gate": row.in_gate,
            "profiled": row.profiled,
            "of": row.profile_of,
            "progress": row.profiling,
        }
        for key, row in profiled.items()
        if agent_of(key) == agent_id
    }


def _watch(settings: FleetSettings, refresh: float, age_out: float, duration: float | None) -> None:
    from moe2.client.fleet_watch import FleetWatch

    if refresh <= 0 or age_out < 0 or (duration is not None and duration < 0):
        fail("--refresh must be > 0, --age-out and --duration >= 0")
    try:
        FleetWatch(settings.endpoint, settings.fleet, age_out).run(console(), refresh, duration)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)


def _print_fleet(settings: FleetSettings, rows: list[dict[str, Any]], notes: list[str]) -> None:
    """The agents as a table (an expert that failed to load: a line on stderr; one being
    profiled: how far), then what the cost table adds: newcomers being profiled, budgets that
    nothing fits."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"fleet {settings.fleet} on {settings.endpoint.url}")
    for col in ("agent", "state", "experts", "loaded", "power W", "last latency s", "queue"):
        table.add_column(col)
    for r in rows:
        state = (
            "[green]online[/]" if r["state"] == "online" else f"[red]offline[/] {r['reason'] or ''}"
        )
        if r["state"] == "online" and r["warning"]:
            state = f"[yellow]online: {escape(r['warning'])}[/]"
        for expert, why in r["failed_experts"].items():
            console(stderr=True).print(
                f"{r['agent_id']}: expert {expert} failed to load: {why}", markup=False
            )
        table.add_row(
            r["agent_id"],
            state,
            ", ".join(_expert(e, r["profiling"]) for e in r["experts"]),
            ", ".join(r["loaded_experts"]),
            "n/a" if r["power_w"] is None else f"{r['power_w']:.1f} ({r['energy_source']})",
            "-" if r["last_latency_s"] is None else f"{r['last_latency_s']:.2f}",
            "-" if r["queue_depth"] is None else str(r["queue_depth"]),
        )
    console().print(table)
    for note in notes:
        console().print(note, markup=False)


def _expert(expert: str, profiling: dict[str, dict[str, Any]]) -> str:
    """An expert of the table, with its profiling progress (n/N) while it is profiled."""
    how = profiling.get(expert)
    if how is None or how["profiled"] is None:
        return expert
    return f"{expert} (profiling {how['profiled']}/{how['of']})"


def _forget(settings: FleetSettings, agent_id: str) -> None:
    """Clear an offline agent's retained status, capabilities and plan."""
    from messages import topics
    from messages.topics import TopicError, check_level
    from moe2.client.fleet_reader import agent_online, clear_retained

    try:
        check_level("agent id", agent_id)
    except TopicError as exc:
        fail(str(exc))
    try:
        if agent_online(settings.endpoint, settings.fleet, agent_id):
            fail(
                f"agent {agent_id} is online: stop it first (a running agent announces itself "
                "again at once)",
                code=EXIT_FAILURE,
            )
        who = {"agent_id": agent_id}
        clear_retained(
            settings.endpoint,
            settings.fleet,
            [(t, who) for t in (topics.AGENT_STATUS, topics.AGENT_CAPABILITIES, topics.AGENT_PLAN)],
        )
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    console().print(f"agent {agent_id} forgotten in fleet {settings.fleet}")


def _no_agents(settings: FleetSettings, wait: float) -> None:
    """Nothing retained under this fleet: say so, name the fleets that do have agents on this
    broker, and exit 1."""
    from moe2.client.fleet_reader import fleets_with_agents

    prefix = f"moe2/{settings.fleet}/agents/"
    message = (
        f"no agent under {prefix} on {settings.endpoint.url} within {wait:g} s: nothing is "
        f"retained there, so no agent of fleet {settings.fleet!r} has announced itself to this "
        "broker since it started"
    )
    try:
        others = sorted(fleets_with_agents(settings.endpoint) - {settings.fleet})
    except ConnectionError:
        others = []
    if others:
        message += f"; agents are retained under fleet(s) {', '.join(others)}: wrong --fleet?"
    else:
        message += (
            "; none under any fleet either: are the agents running, and started with this "
            "--broker? (Mosquitto without a config listens on 127.0.0.1 only)"
        )
        if settings.endpoint.username:  # or they are there, and this login may not see them
            message += (
                f"; or the broker's ACL does not let login {settings.endpoint.username!r} read "
                f"{prefix}+/status (a client login of setup-broker.sh may not)"
            )
    fail(message, code=EXIT_FAILURE)
