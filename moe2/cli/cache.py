"""``moe2 cache-plan``: which experts each edge server caches (SlimCaching; docs/design.md
section 6).

Reads a caching instance (``--instance FILE``), runs one algorithm and prints the result object
(``--json``) or a table. Exit status: 0 with a placement (an empty one when nothing fits anywhere),
2 for a bad instance file or an unknown or inapplicable algorithm (an ``error:`` line on stderr,
never a traceback), 1 when the broker cannot be reached or the controller refuses ``--apply``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, GateOpt, ProfileOpt, fail

if TYPE_CHECKING:
    from controller.caching import CachingResult
    from messages.settings import FleetSettings


def result_table(result: CachingResult) -> Table:
    """A short human-readable view of a caching result."""
    table = Table(title=f"{result.algorithm}: expected latency {result.expected_latency_s:.6g} s")
    table.add_column("server")
    table.add_column("experts cached", justify="right")
    table.add_column("capacity used", justify="right")
    table.add_column("experts (layer:id)")
    for server, pairs in result.placement.items():
        shown = ", ".join(f"{layer}:{expert}" for layer, expert in pairs[:12])
        more = f" (+{len(pairs) - 12})" if len(pairs) > 12 else ""
        table.add_row(
            server, str(len(pairs)), f"{result.capacity_used[server]:.4g}", escape(shown) + more
        )
    table.caption = (
        f"saving {result.saving_s:.6g} s against caching nothing; runtime {result.runtime_s:.3f} s"
    )
    return table


def plan_from_file(path: Path, algorithm: str | None, seed: int) -> CachingResult:
    """Load, validate and solve; raises CachingInstanceError or CachingAlgorithmError."""
    from controller.caching import load_instance, plan

    return plan(load_instance(path), algorithm, seed=seed)


@with_connection()
def cache_plan(
    instance: Annotated[
        Path | None,
        typer.Option("--instance", help="Caching instance, JSON (docs/design.md section 6)"),
    ] = None,
    algorithm: Annotated[
        str | None,
        typer.Option(
            "--algorithm",
            help="exact, greedy (top_k = 1), sgd, sgd_maxconv, popular, random or independent "
            "(default: greedy when top_k = 1, else sgd_maxconv)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random baseline")] = 0,
    fleet: Annotated[
        str | None, typer.Option("--fleet", help="Build the instance from this live fleet")
    ] = None,
    *,
    connection: Connection,
    profile: ProfileOpt = None,
    gate: GateOpt = None,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts the gate routes each prompt to (--fleet)")
    ] = 2,
    fallback_latency_s: Annotated[
        float | None,
        typer.Option(
            "--fallback-latency-s",
            help="Latency of an expert cached nowhere (--fleet) [default: 2 x the slowest agent]",
        ),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Hand the placement to the controller (--fleet)")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result object as JSON")
    ] = False,
    lift: Annotated[
        bool,
        typer.Option(
            "--lift",
            help="Lift the cache plan in force on --fleet: the controller plans without it",
        ),
    ] = False,
) -> None:
    """Decide which experts each edge server caches under its storage capacity (SlimCaching)."""
    from controller.caching import CachingAlgorithmError, CachingInstanceError

    if lift:
        if fleet is None or instance is not None or apply:
            fail("--lift goes with --fleet NAME alone")
        settings = connection.settings()
        _lift(settings)
        return
    if (instance is None) == (fleet is None):
        fail("give --instance FILE, or --fleet NAME with --profile FILE --gate FILE")
        return
    if instance is not None:
        try:
            result = plan_from_file(instance, algorithm, seed)
        except (CachingInstanceError, CachingAlgorithmError) as exc:
            fail(str(exc))
            return
    else:
        settings = connection.settings()
        result = _plan_fleet(settings, profile, gate, top_k, fallback_latency_s, algorithm, seed)
    if as_json:
        print(result.model_dump_json(indent=2))
    else:
        Console().print(result_table(result))
    if apply:
        if fleet is None:
            fail("--apply needs --fleet")
        _apply(settings, result)


def _plan_fleet(  # type: ignore[no-untyped-def]
    settings, profile, gate, top_k, fallback_latency_s, algorithm, seed
) -> CachingResult:
    from controller.caching import CachingAlgorithmError, CachingInstanceError
    from controller.caching.from_fleet import FleetCachingError
    from controller.gate.errors import GateError
    from controller.profile import ProfileError
    from moe2.client.cache_fleet import plan_from_fleet

    if profile is None or gate is None:
        fail("--fleet needs --profile FILE and --gate FILE (the gate's routing gives the traffic)")
    try:
        result, excluded = plan_from_fleet(
            settings.endpoint,
            settings.fleet,
            profile,
            gate,
            top_k,
            fallback_latency_s,
            algorithm,
            seed,
        )
    except (
        CachingInstanceError,
        CachingAlgorithmError,
        FleetCachingError,
        ProfileError,
        GateError,
    ) as exc:
        fail(str(exc))
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    if excluded:
        Console(stderr=True).print(
            f"left out (not on every agent with a budget): {', '.join(excluded)}", soft_wrap=True
        )
    return result


def _lift(settings: FleetSettings) -> None:
    from messages import topics
    from moe2.client.fleet_reader import clear_retained

    try:
        clear_retained(settings.endpoint, settings.fleet, [(topics.CONTROLLER_CACHE_PLAN, {})])
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    Console(stderr=True).print(
        f"cache plan of fleet {settings.fleet} lifted: the controller plans without it"
    )


def _apply(settings: FleetSettings, result: CachingResult) -> None:
    from moe2.client.cache_fleet import apply_cache_plan, cache_plan_message
    from moe2.client.fleet_reader import PlanRefused

    message = cache_plan_message(result.placement, result.algorithm, result.expected_latency_s)
    try:
        plan = apply_cache_plan(settings.endpoint, settings.fleet, message)
    except (PlanRefused, ConnectionError) as exc:
        fail(str(exc), code=EXIT_FAILURE)
    Console(stderr=True).print(
        f"applied: plan epoch {plan.epoch}: "
        + "; ".join(f"{a}: {', '.join(e) or '-'}" for a, e in plan.assignments.items()),
        soft_wrap=True,
    )
