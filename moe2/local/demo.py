"""``moe2 demo``: the lab fleet on this machine, doing MoE²: two agents and six experts (as
``examples/edge-a.toml`` and ``edge-b.toml``), the controller with the shipped profile and gate,
prompts answered under two energy budgets (the optimal set, the gate weights, the estimated
joules), and the budget changed at run time with the re-plan it causes.

The budgets come from the costs the controller holds (the shipped profile's, then what it
learns from this machine's answers), not from fixed numbers: the first fits one expert, the
second most of them, wherever the demo runs.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from messages import topics
from messages.budgets import Budgets
from messages.bus import BrokerEndpoint, Bus
from messages.controller import ControllerEvent, FleetPlan
from messages.costs import CostTable
from messages.expert_key import expert_key
from messages.prompts import Prompt
from moe2.cli.tables import answer_table, costs_table
from moe2.client.ask import Asker, AskError
from moe2.local.broker import start_local_broker
from moe2.local.fleet import AgentSpec, FleetError, LocalFleet

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]  # the repository: moe2/local/demo.py
FLEET = "lab"  # the shipped profile's fleet
PROFILE = ROOT / "data" / "profile-lab.json"
GATE = ROOT / "data" / "gate-lab.pt"
EXAMPLES = [ROOT / "examples" / "edge-a.toml", ROOT / "examples" / "edge-b.toml"]
PROMPTS = [
    Prompt(
        prompt="The capital of France is",
        question="What is the capital of France?",
        choices=["Berlin", "Paris", "Madrid", "Rome"],
        category="geography",
    ),
    Prompt(
        prompt="The chemical symbol for gold is",
        question="What is the chemical symbol for gold?",
        choices=["Ag", "Au", "Fe", "Cu"],
        category="science",
    ),
]


class DemoError(RuntimeError):
    pass


def lab_agents() -> list[AgentSpec]:
    """The agents of examples/edge-a.toml and edge-b.toml: their experts and power model."""
    specs = []
    for path in EXAMPLES:
        config = tomllib.loads(path.read_text())
        settings = {"power_model_w": config["power_model_w"]}
        specs.append(AgentSpec(config["agent_id"], list(config["experts"]), settings))
    return specs


class Watcher:
    """The controller's plans, events and cost table as they arrive."""

    def __init__(self, endpoint: BrokerEndpoint) -> None:
        self.plans: list[FleetPlan] = []
        self.events: list[ControllerEvent] = []
        self.costs: list[CostTable] = []
        self.gates: list[str | None] = []  # the controllers' gate states, as their statuses say
        self.bus = Bus(endpoint, FLEET, client_id=f"moe2-demo-{uuid.uuid4().hex[:8]}")
        self.bus.subscribe(topics.CONTROLLER_STATUS, lambda i: self.gates.append(i.message.gate))
        self.bus.subscribe(topics.CONTROLLER_PLAN, lambda i: self.plans.append(i.message))
        self.bus.subscribe(topics.CONTROLLER_EVENTS, lambda i: self.events.append(i.message))
        self.bus.subscribe(topics.CONTROLLER_COSTS, lambda i: self.costs.append(i.message))

    def __enter__(self) -> Watcher:
        self.bus.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()

    def wait(self, what: Any, timeout_s: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = what()
            if found:
                return found
            time.sleep(0.1)
        raise DemoError(f"the controller did not answer within {timeout_s:g} s")


def _energies(table: CostTable) -> dict[str, float]:
    return {r.key: r.energy_j for r in table.experts if r.energy_j is not None and r.online}


def show_plan(console: Console, plan: FleetPlan, budgets: Budgets) -> None:
    chosen = [expert_key(a, e) for a, experts in plan.assignments.items() for e in experts]
    gap = "" if plan.optimal else f", gap {plan.gap:.3f}" if plan.gap is not None else ""
    console.print(
        f"[bold]plan epoch {plan.epoch}[/] under {budgets.energy_j:.2f} J per query: "
        f"optimal set ({plan.algorithm}{gap}) = {', '.join(chosen) or 'none'}; expected "
        f"{plan.energy_j:.2f} J per query (estimate: a 15 W power model, no sensor). The budget "
        "bounds the expected energy per query, from the costs learnt so far: on a busy machine "
        "an answer may spend more, and then says so"
    )


def ask_all(console: Console, asker: Asker, label: str, overruns: list[str]) -> list[str]:
    """Ask the demo's prompts and show each answer; the failures (returned) and the answers
    over their budgets (added to ``overruns``), in words."""
    failures = []
    for prompt in PROMPTS:
        answer = asker.ask(prompt)
        console.print(answer_table(answer, prompt.choices))
        weights = ", ".join(
            f"{expert_key(e.agent_id, e.expert_id)} {e.weight:.3f}" for e in answer.experts
        )
        energy = "n/a" if answer.energy_j is None else f"{answer.energy_j:.2f} J"
        mark = " (estimate)" if answer.energy_estimated else ""
        console.print(
            f"[bold]answer:[/] {answer.answer}  gate weights: {weights or '-'}; energy "
            f"{energy}{mark}; {answer.latency_s:.2f} s"
        )
        for overrun in answer.over_budget:
            console.print(f"[yellow]over budget:[/] {overrun.reason}")
            overruns.append(f"{label} {prompt.prompt!r}: {overrun.reason}")
        if answer.status != "ok":
            failures.append(f"{label} {prompt.prompt!r}: {answer.status} {answer.error or ''}")
    return failures


def run_demo(console: Console, prefer_mosquitto: bool = True) -> None:
    from controller.profile import load_profile
    from controller.selection.from_profile import expert_costs

    profile = load_profile(PROFILE)
    seeds = expert_costs(profile, list(profile.experts))
    first = round(1.25 * min(c.energy_j for c in seeds.values()), 2)  # one expert fits
    workdir = Path(tempfile.mkdtemp(prefix="moe2-demo-"))
    failures: list[str] = []
    overruns: list[str] = []
    with start_local_broker(prefer_mosquitto) as broker:
        console.print(
            f"broker: {broker.kind} on {broker.url} (MQTT {broker.mqtt_version}); logs in {workdir}"
        )
        fleet = LocalFleet(broker.endpoint, FLEET, workdir)
        agents = lab_agents()
        try:
            with Watcher(broker.endpoint) as watch:
                _start_lab(console, fleet, agents, first)
                # the gate's encoder loads in the background; the demo shows the gate's weights
                watch.wait(lambda: {"ready", "failed"} & set(watch.gates), timeout_s=600)
                show_plan(console, watch.plans[-1], Budgets(energy_j=first))
                with Asker(broker.endpoint, FLEET) as asker:
                    asker.require_controller()
                    failures += ask_all(console, asker, "first budget", overruns)
                    _change_budget(console, broker.endpoint, watch)
                    fleet.wait_ready([a.agent_id for a in agents])
                    failures += ask_all(console, asker, "second budget", overruns)
        except (FleetError, AskError, ConnectionError) as exc:
            raise DemoError(f"{exc}\n(logs in {workdir})") from None
        finally:
            fleet.stop()
    if failures:
        raise DemoError("not every prompt was answered:\n" + "\n".join(failures))
    shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        "\n[green]demo done:[/] the gate weighted the optimal set under each budget, and the "
        "budget change re-planned the fleet. Energy is an estimate (a declared power model)."
    )
    if overruns:
        console.print(
            f"[yellow]{len(overruns)} of {2 * len(PROMPTS)} answers ran over their budget[/] "
            "(this machine was slower than the costs the plan was solved with; the controller "
            "re-planned with the costs it learnt):\n" + "\n".join(overruns)
        )


def _start_lab(console: Console, fleet: LocalFleet, agents: list[AgentSpec], first: float) -> None:
    """The controller with the shipped profile and gate under the first budget, and the two
    agents; back when all are ready."""
    fleet.start_controller(
        # every planned expert answers, so the gate's weights over the whole set show
        extra=[
            "--profile",
            str(PROFILE),
            "--gate",
            str(GATE),
            "--energy-j",
            f"{first:.2f}",
            "--no-early-answers",
        ]  # fmt: skip
    )
    for spec in agents:
        fleet.start_agent(spec)
    with console.status("starting the controller (profile, gate) and 2 agents with 6 experts..."):
        fleet.wait_ready([a.agent_id for a in agents])
    console.print(
        "fleet lab: edge-a (SmolLM2-135M × cloze, qa, letter) and edge-b (Gemma 3 "
        "270M × cloze, qa, letter); profile data/profile-lab.json, gate "
        "data/gate-lab.pt\n"
    )


def _change_budget(console: Console, endpoint: BrokerEndpoint, watch: Watcher) -> None:
    """Show the costs the controller learnt from the answers just given, then raise the budget
    at run time so that most experts fit, and show the re-plan it causes."""
    from moe2.client.fleet_reader import PlanRefused, request_plan

    asked = time.time()
    table = watch.wait(
        lambda: next((t for t in watch.costs[::-1] if t.time_s > asked), None)
    )  # a table that counts the answers just given
    console.print(costs_table(table))
    energies = _energies(table)
    second = round(0.8 * sum(energies.values()), 2)  # most of the experts fit
    console.print(
        f"\n[bold]budget changed at run time[/] to {second:.2f} J per query "
        "(as `moe2 budgets --energy-j` does):"
    )
    try:
        plan = request_plan(
            endpoint, FLEET, topics.CONTROLLER_BUDGETS, Budgets(energy_j=second), 30
        )
    except PlanRefused as exc:
        raise DemoError(str(exc)) from None
    replans = [e for e in watch.events if e.kind == "replan"]
    if replans:
        console.print(f"controller/events: {replans[-1].reason}")
    show_plan(console, plan, Budgets(energy_j=second))
