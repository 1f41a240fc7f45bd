"""The ``moe2`` command line (typer for commands, rich for tables)."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, get_args

import typer
from typer.core import TyperArgument, TyperGroup

from moe2.cli.lazy import Lazy, LazyCommands
from moe2.cli.options import (
    EXIT_FAILURE,
    BrokerOpt,
    CaFileOpt,
    ConfigOpt,
    DelayOpt,
    EnergyOpt,
    FleetOpt,
    GateOpt,
    PasswordFileOpt,
    ProfileOpt,
    TopKOpt,
    UsernameOpt,
    VersionOpt,
    connection,
    console,
    fail,
    load_settings,
)

if TYPE_CHECKING:
    from rich.table import Table


class HelpGroup(TyperGroup):
    """The command tree with help that says what it means. Typer's rich help reads every help
    string as rich markup, so "[@AGENT]" or "[default: ...]" vanished: help strings are escaped
    when help is shown (HelpContext; none uses markup). And Typer names each value by its
    Python type ("<str>", "<list[str]>", "<bool>" beside a flag that takes no value): values get
    click's names (TEXT, INTEGER, FLOAT, PATH, a choice's values), flags none, arguments their
    own name. The commands in ``lazy`` are imported when named (moe2/cli/lazy.py)."""

    lazy: ClassVar[Lazy] = Lazy()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy_help(self)
        self.commands = LazyCommands(self.commands, self.lazy, self, tidy_help)


class HelpContext(typer.Context):
    """A command's context that escapes the help strings of its command and of the commands it
    lists before its help is made: rich (which reads them) is imported only when help is shown,
    never by a service run."""

    def get_help(self) -> str:
        escape_help(self.command)
        for sub in getattr(self.command, "commands", {}).values():
            escape_help(sub)
        return super().get_help()


# The names click gives values, by Python type.
VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": "BOOLEAN"}


def tidy_help(command: Any) -> None:
    """Set every metavar of ``command`` and of its subcommands built so far, and the context
    that escapes their help strings when help is shown."""
    command.context_class = HelpContext
    for param in _params_and_help(command):
        if param.metavar is None:
            param.metavar = value_name(param)
        if isinstance(param, TyperArgument):  # its name says it: no "<str>" beside it
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    commands = getattr(command, "commands", {})
    for sub in commands.built() if isinstance(commands, LazyCommands) else commands.values():
        tidy_help(sub)


def escape_help(command: Any) -> None:
    """Escape the help strings of ``command`` and its parameters, once."""
    from rich.markup import escape

    if getattr(command, "help_escaped", False):
        return
    command.help_escaped = True
    if command.help:
        command.help = escape(command.help)
    for param in _params_and_help(command):
        if getattr(param, "help", None):
            param.help = escape(param.help)


def _params_and_help(command: Any) -> list[Any]:
    help_option = _help_option(command)
    return [*command.params, *([help_option] if help_option is not None else [])]


def _help_option(command: Any) -> Any:
    """The command's --help option, made now (the command keeps it) so that it can be tidied
    like the others; None where there is none."""
    try:
        return command.get_help_option(command.context_class(command))
    except Exception:  # noqa: BLE001 - an older Typer or click without it: help still works
        return None


def value_name(param: Any) -> str:
    """What a parameter's value is called in help: an argument by its name, a flag by nothing,
    a choice by its values, any other value by click's name of its type."""
    if isinstance(param, TyperArgument):
        return (param.name or "value").upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # a Typer built on click: click's parameter type has the name
        return str(param.type.name).upper()
    if desc.is_choice:
        return "|".join(str(c) for c in desc.choices or ())
    annotation = get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    name = getattr(annotation, "__name__", str(annotation))
    return VALUE_NAMES.get(name, name.upper())


class MoeGroup(HelpGroup):
    # Commands that live in their own modules, imported when named.
    lazy = Lazy(
        commands={
            "profile": "moe2.cli.gate:profile",
            "sweep": "moe2.cli.gate:sweep",
            "select": "moe2.cli.selection:select",
            "cache-plan": "moe2.cli.cache:cache_plan",
            "gateway": "moe2.cli.gateway:gateway",
            "costs": "moe2.cli.costs:costs",
            "export-onnx": "moe2.cli.export_onnx:export_onnx_command",
        },
        groups={"gate": "moe2.cli.gate:gate_app"},
    )


app = typer.Typer(
    cls=MoeGroup,
    name="moe2",
    help="Mixture-of-Edge-Experts: a fleet of edge LLMs answering prompts over MQTT.\n\n"
    "Exit status: 0 ok; 1 a runtime failure (broker unreachable, no answer, refused); "
    "2 bad usage, config or input; 3 (select) no expert fits the budgets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"moe2 {version('moe2')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    pass


class AgentGroup(HelpGroup):
    lazy = Lazy(commands={"probe": "moe2.cli.probe:probe"})


agent_app = typer.Typer(
    cls=AgentGroup, help="Run or inspect the agent on this device.", no_args_is_help=True
)
controller_app = typer.Typer(help="Run the fleet controller.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(controller_app, name="controller")

LogOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def _logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)


def _serve(service: Any) -> None:
    """Start a service and run until SIGINT or SIGTERM. An unreachable broker is retried in the
    background (logged); a bad CA file is a clean failure."""
    try:
        service.start(wait_s=5.0)
    except ConnectionError as exc:
        fail(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()


@agent_app.command("run")
def agent_run(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    agent_id: Annotated[
        str | None,
        typer.Option("--agent-id", help="This agent's id in topics [default: host name]"),
    ] = None,
    expert: Annotated[
        list[str] | None,
        typer.Option(
            "--expert",
            help="ID=MODEL (repeat); MODEL is smollm2-135m, gemma3-270m, a .gguf path or a "
            "moe2 export-onnx folder",
        ),
    ] = None,
    keepalive_s: Annotated[
        int | None, typer.Option("--keepalive-s", help="MQTT keepalive, s [default: 10]")
    ] = None,
    telemetry_interval_s: Annotated[
        float | None,
        typer.Option(
            "--telemetry-interval-s", help="Seconds between telemetry messages [default: 2]"
        ),
    ] = None,
    log_level: LogOpt = "info",
) -> None:
    """Serve this device's experts to the fleet."""
    from agent.backends.base import BackendUnavailable
    from agent.models import ModelNotFound
    from agent.requantize import RequantizeFailed
    from agent.service import Agent
    from agent.settings import AgentSettings

    _logging(log_level)
    settings = load_settings(
        config,
        AgentSettings,
        **connection(broker, fleet, mqtt_version, username, password_file, ca_file),
        agent_id=agent_id,
        experts=expert or None,
        keepalive_s=keepalive_s,
        telemetry_interval_s=telemetry_interval_s,
    )
    if not settings.experts:
        fail("no experts configured: give --expert ID=MODEL or [[experts]] in the config file")
    try:
        service = Agent(settings)
    except (ModelNotFound, BackendUnavailable, RequantizeFailed) as exc:
        fail(str(exc))
    _serve(service)


@controller_app.command("run")
def controller_run(
    config: ConfigOpt = None,
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    profile: ProfileOpt = None,
    gate: GateOpt = None,
    energy_j: EnergyOpt = None,
    delay_s: DelayOpt = None,
    top_k: TopKOpt = None,
    controller_id: Annotated[
        str | None,
        typer.Option(
            "--controller-id",
            help="Stable id of this controller (its MQTT session and ledger); default: the "
            "host name, or HOST-2, HOST-3 when one already runs here",
        ),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir",
            help="Where the ledger of accepted prompts lives (default: "
            "$XDG_STATE_HOME/moe2, else ~/.local/state/moe2)",
        ),
    ] = None,
    max_queued: Annotated[
        int | None,
        typer.Option(
            "--max-queued",
            help="Prompts that may wait for room on the fleet; more are answered busy at once",
        ),
    ] = None,
    early_answers: Annotated[
        bool | None,
        typer.Option(
            "--early-answers/--no-early-answers",
            help="Answer as soon as the experts still out cannot change the answer (default), "
            "or wait for every expert",
        ),
    ] = None,
    suite: Annotated[
        Path | None,
        typer.Option(
            "--suite",
            help="Suite (JSONL) that experts new to the gate are profiled on before the gate is "
            "retrained [default: the bundled data/suite.jsonl]",
        ),
    ] = None,
    drift_threshold: Annotated[
        float | None,
        typer.Option(
            "--drift-threshold",
            help="Re-plan when an expert's learnt energy or delay moves by more than this "
            "fraction from the costs of the plan in force [default: 0.5]",
        ),
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(
            "--metrics",
            metavar="HOST:PORT",
            help="Serve Prometheus metrics on http://HOST:PORT/metrics (:PORT: every interface)",
        ),
    ] = None,
    log_level: LogOpt = "info",
) -> None:
    """Track the fleet, push activation plans and answer prompts.

    Several controllers may run on one fleet: one is active, the others wait as hot standbys
    and one takes over within seconds when the active one goes away."""
    from controller.gate.errors import GateError
    from controller.identity import IdentityError
    from controller.profile import ProfileError
    from controller.selection.errors import BudgetError
    from controller.service import Controller
    from controller.settings import ControllerSettings

    _logging(log_level)
    from controller.metrics import ListenError, parse_listen

    try:
        metrics_listen = parse_listen(metrics) if metrics is not None else None
    except ListenError as exc:
        fail(f"--metrics {exc}")
    settings = load_settings(
        config,
        ControllerSettings,
        **connection(broker, fleet, mqtt_version, username, password_file, ca_file),
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
    )
    try:
        service = Controller(settings)
    except (ProfileError, GateError, BudgetError, IdentityError) as exc:
        fail(str(exc))
    service.metrics_listen = metrics_listen
    _serve(service)


def parse_delays(specs: list[str]) -> dict[str, float]:
    """``CATEGORY=SECONDS`` flags; a malformed one is a clean error."""
    delays = {}
    for spec in specs:
        category, sep, value = spec.partition("=")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not sep or not category or not seconds >= 0 or seconds == float("inf"):
            fail(f"--delay-s {spec!r}: expected CATEGORY=SECONDS with SECONDS >= 0")
        delays[category] = seconds
    return delays


@app.command()
def budgets(
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    config: ConfigOpt = None,
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
    from moe2.client.fleet_reader import PlanRefused, clear_retained, request_plan

    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
    if clear:
        if energy_j is not None or delay_s or top_k is not None:
            fail("--clear takes no budgets")
        try:
            clear_retained(settings.endpoint, settings.fleet, [(topics.CONTROLLER_BUDGETS, {})])
        except ConnectionError as exc:
            fail(str(exc), code=EXIT_FAILURE)
        console().print(
            f"budgets of fleet {settings.fleet} cleared: the controller's own are in force"
        )
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
    console().print(f"plan epoch {plan.epoch} ({plan.algorithm}):")
    for agent, experts in plan.assignments.items():
        console().print(f"  {agent}: {', '.join(experts) or '-'}")
    if plan.energy_j is not None:
        delays = ", ".join(f"{c} {s:.2f} s" for c, s in plan.delay_s.items())
        console().print(f"expected energy {plan.energy_j:.2f} J per query; delay {delays or 'n/a'}")


def answer_table(answer: Any, choices: list[str] | None) -> Table:
    from rich.table import Table

    table = Table(title=f"request {answer.request_id}: {answer.status}", show_lines=False)
    table.add_column("expert")
    table.add_column("weight", justify="right")
    table.add_column("output")
    table.add_column("latency s", justify="right")
    table.add_column("energy J", justify="right")
    for e in answer.experts:
        if e.choice_probs is not None and choices:
            output = ", ".join(f"{c}={p:.2f}" for c, p in zip(choices, e.choice_probs, strict=True))
        else:
            output = (e.text or "").replace("\n", " ")[:80]
        energy = f"{e.energy_j:.2f} ({e.energy_source})" if e.energy_j is not None else "n/a"
        table.add_row(
            f"{e.expert_id}@{e.agent_id}", f"{e.weight:.2f}", output, f"{e.latency_s:.2f}", energy
        )
    for f in answer.failed:
        table.add_row(f"{f.expert_id}@{f.agent_id}", "-", f"[red]failed: {f.reason}[/]", "-", "-")
    for f in answer.left_out:
        table.add_row(f"{f.expert_id}@{f.agent_id}", "-", f"[dim]left out: {f.reason}[/]", "-", "-")
    return table


@app.command()
def ask(
    prompt: Annotated[str, typer.Argument(help="The prompt")],
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    config: ConfigOpt = None,
    choice: Annotated[
        list[str] | None, typer.Option("--choice", help="An answer choice (repeat, 2-26)")
    ] = None,
    expert: Annotated[
        list[str] | None,
        typer.Option("--expert", help="Only this expert, EXPERT or EXPERT@AGENT (repeat)"),
    ] = None,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Most tokens to generate (free-text prompts)")
    ] = 64,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the answer")
    ] = 60.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the answer object as JSON")
    ] = False,
) -> None:
    """Publish a prompt to the fleet and print the answer."""
    from pydantic import ValidationError

    from messages.prompts import Prompt
    from moe2.client.ask import Asker, AskError

    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
    try:
        request = Prompt(
            prompt=prompt,
            choices=choice or None,
            experts=expert or None,
            max_tokens=max_tokens,
            timeout_s=timeout,
        )
    except ValidationError as exc:
        fail("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    try:
        with Asker(settings.endpoint, settings.fleet) as asker:
            asker.require_controller()
            answer = asker.ask(request)
    except (AskError, ConnectionError) as exc:
        fail(str(exc), code=EXIT_FAILURE)
    if as_json:
        print(answer.model_dump_json(indent=2))
    else:
        console().print(answer_table(answer, request.choices))
        console().print(
            f"[bold]answer:[/] {answer.answer}" if answer.answer else f"[red]{answer.error}[/]"
        )
        console().print(f"end to end {answer.latency_s:.2f} s", style="dim")
    raise typer.Exit(0 if answer.status != "failed" else 1)


def _forget(settings: Any, agent_id: str) -> None:
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


@app.command()
def fleet(
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    config: ConfigOpt = None,
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
    from moe2.client.fleet_reader import read_fleet

    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
    if forget is not None:
        _forget(settings, forget)
        return
    if watch:
        from moe2.client.fleet_watch import FleetWatch

        if refresh <= 0 or age_out < 0 or (duration is not None and duration < 0):
            fail("--refresh must be > 0, --age-out and --duration >= 0")
        try:
            FleetWatch(settings.endpoint, settings.fleet, age_out).run(console(), refresh, duration)
        except ConnectionError as exc:
            fail(str(exc), code=EXIT_FAILURE)
        return
    try:
        registry, _ = read_fleet(settings.endpoint, settings.fleet, wait)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    rows = registry.snapshot()
    if as_json:
        print(json.dumps(rows, indent=2))
    if not rows:
        _no_agents(settings, wait)
    if as_json:
        return
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
            ", ".join(r["experts"]),
            ", ".join(r["loaded_experts"]),
            "n/a" if r["power_w"] is None else f"{r['power_w']:.1f} ({r['energy_source']})",
            "-" if r["last_latency_s"] is None else f"{r['last_latency_s']:.2f}",
            "-" if r["queue_depth"] is None else str(r["queue_depth"]),
        )
    console().print(table)
    from moe2.cli.costs import fleet_notes  # newcomers' profiling, budgets nothing fits

    for note in fleet_notes(settings.endpoint, settings.fleet):
        console().print(note, markup=False)


def _no_agents(settings: Any, wait: float) -> None:
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
    fail(message, code=EXIT_FAILURE)


@app.command()
def schema(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Write one JSON Schema file per message here")
    ] = None,
) -> None:
    """JSON Schemas of every message and the topic table, for non-Python clients."""
    from moe2.cli.schemas import topic_table, write_schemas

    if out_dir is None:
        print(json.dumps(topic_table(), indent=2))
        return
    written = write_schemas(out_dir)
    console().print(f"wrote {len(written)} files to {out_dir}")


@app.command()
def demo(
    embedded_broker: Annotated[
        bool,
        typer.Option("--embedded-broker", help="Use the Python broker even if mosquitto exists"),
    ] = False,
    log_level: LogOpt = "warning",
) -> None:
    """A local fleet: broker, two agents (SmolLM2, Gemma 3), controller; answers a few prompts."""
    from moe2.local.demo import DemoError, run_demo

    _logging(log_level)
    try:
        run_demo(console(), prefer_mosquitto=not embedded_broker)
    except DemoError as exc:
        fail(str(exc), code=EXIT_FAILURE)
