"""``moe2 controller run``: track the fleet, push activation plans and answer prompts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import (
    DelayOpt,
    EnergyOpt,
    GateOpt,
    LogOpt,
    ProfileOpt,
    TopKOpt,
    fail,
    log_to_stderr,
    parse_delays,
)
from moe2.cli.serve import serve

if TYPE_CHECKING:
    from controller.service import Controller
    from controller.settings import ControllerSettings

controller_app = typer.Typer(help="Run the fleet controller.", no_args_is_help=True)

ControllerIdOpt = Annotated[
    str | None,
    typer.Option(
        "--controller-id",
        help="Stable id of this controller (its MQTT session and ledger); default: the "
        "host name, or HOST-2, HOST-3 when one already runs here",
    ),
]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="Where the ledger of accepted prompts lives (default: "
        "$XDG_STATE_HOME/moe2, else ~/.local/state/moe2)",
    ),
]
MaxQueuedOpt = Annotated[
    int | None,
    typer.Option(
        "--max-queued",
        help="Prompts that may wait for room on the fleet; more are answered busy at once",
    ),
]
EarlyAnswersOpt = Annotated[
    bool | None,
    typer.Option(
        "--early-answers/--no-early-answers",
        help="Answer as soon as the experts still out cannot change the answer (default), "
        "or wait for every expert",
    ),
]
SuiteOpt = Annotated[
    Path | None,
    typer.Option(
        "--suite",
        help="Suite (JSONL) that experts new to the gate are profiled on before the gate is "
        "retrained [default: the bundled data/suite.jsonl]",
    ),
]
DriftThresholdOpt = Annotated[
    float | None,
    typer.Option(
        "--drift-threshold",
        help="Re-plan when an expert's learnt energy or delay moves by more than this "
        "fraction from the costs of the plan in force [default: 0.5]",
    ),
]
ReplaceConfigOpt = Annotated[
    bool,
    typer.Option(
        "--replace-config",
        help="With --profile and --gate: make this controller's configuration (profile, gate, "
        "budgets, selection settings) the fleet's, replacing the one in force (without it, a "
        "controller whose configuration differs from the fleet's says so and does not lead)",
    ),
]
MetricsOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        metavar="HOST:PORT",
        help="Serve Prometheus metrics on http://HOST:PORT/metrics (:PORT: every interface)",
    ),
]


@controller_app.command("run")
@with_connection(config_first=True)
def controller_run(
    connection: Connection,
    profile: ProfileOpt = None,
    gate: GateOpt = None,
    energy_j: EnergyOpt = None,
    delay_s: DelayOpt = None,
    top_k: TopKOpt = None,
    controller_id: ControllerIdOpt = None,
    state_dir: StateDirOpt = None,
    max_queued: MaxQueuedOpt = None,
    early_answers: EarlyAnswersOpt = None,
    suite: SuiteOpt = None,
    drift_threshold: DriftThresholdOpt = None,
    replace_config: ReplaceConfigOpt = False,
    metrics: MetricsOpt = None,
    log_level: LogOpt = "info",
) -> None:
    """Track the fleet, push activation plans and answer prompts.

    Several controllers may run on one fleet: one is active, the others wait as hot standbys
    and one takes over within seconds when the active one goes away. The active one publishes
    the fleet's configuration (profile, gate, budgets, selection settings): a controller
    started without --profile/--gate adopts it, one started with another says so and does not
    lead (unless --replace-config)."""
    from controller.settings import ControllerSettings

    log_to_stderr(log_level)
    metrics_listen = _metrics_listen(metrics)
    settings = connection.settings(
        ControllerSettings,
        profile=profile,
        gate=gate,
        energy_budget_j=energy_j,
        delay_budget_s=parse_delays(delay_s) if delay_s else None,
        top_k=top_k,
        controller_id=controller_id,
        state_dir=state_dir,
        max_queued_prompts=max_queued,
        early_answers=early_answers,
        suite=suite,
        drift_threshold=drift_threshold,
        replace_config=replace_config or None,
    )
    service = _controller(settings)
    service.metrics_listen = metrics_listen
    serve(service)


def _metrics_listen(metrics: str | None) -> tuple[str, int] | None:
    """Where ``--metrics HOST:PORT`` serves (None: nowhere); a bad address is a clean error."""
    from controller.metrics import ListenError, parse_listen

    try:
        return parse_listen(metrics) if metrics is not None else None
    except ListenError as exc:
        fail(f"--metrics {exc}")


def _controller(settings: ControllerSettings) -> Controller:
    """The controller of these settings; a bad profile, gate, budget or identity is a clean
    error."""
    from controller.fleet_config import ConfigError
    from controller.gate.errors import GateError
    from controller.identity import IdentityError
    from controller.profile import ProfileError
    from controller.selection.errors import BudgetError
    from controller.service import Controller

    try:
        return Controller(settings)
    except (ProfileError, GateError, BudgetError, IdentityError, ConfigError) as exc:
        fail(str(exc))
