"""``moe2 demo``: a whole fleet on this machine answering a few prompts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from messages.prompts import Prompt
from moe2.ask import Asker, AskError
from moe2.broker import start_local_broker
from moe2.local_fleet import AgentSpec, FleetError, LocalFleet

FLEET = "demo"
AGENTS = [
    AgentSpec("edge-a", [{"id": "smollm2", "model": "smollm2-135m", "n_ctx": 1024}]),
    # Gemma 3 270M is a base model with no chat template: stop at the end of the first line.
    AgentSpec("edge-b", [{"id": "gemma3", "model": "gemma3-270m", "n_ctx": 1024, "stop": ["\n"]}]),
]
PROMPTS = [
    Prompt(prompt="The capital of France is", choices=["Berlin", "Paris", "Madrid", "Rome"]),
    Prompt(
        prompt="The largest planet in the solar system is", choices=["Mars", "Jupiter", "Venus"]
    ),
    Prompt(prompt="Question: What is the capital of Japan?\nAnswer:", max_tokens=24),
]


class DemoError(RuntimeError):
    pass


def run_demo(console: Console, prefer_mosquitto: bool = True) -> None:
    from moe2.cli import answer_table

    workdir = Path(tempfile.mkdtemp(prefix="moe2-demo-"))
    with start_local_broker(prefer_mosquitto) as broker:
        console.print(
            f"broker: {broker.kind} on {broker.url} (MQTT {broker.mqtt_version}); logs in {workdir}"
        )
        fleet = LocalFleet(broker.endpoint, FLEET, workdir)
        try:
            fleet.start_controller()
            for spec in AGENTS:
                fleet.start_agent(spec)
            with console.status("starting 2 agents and the controller, loading models..."):
                fleet.wait_ready([a.agent_id for a in AGENTS])
            failures = []
            with Asker(broker.endpoint, FLEET) as asker:
                asker.require_controller()
                for prompt in PROMPTS:
                    console.print(f"\n[bold]prompt:[/] {prompt.prompt!r}")
                    answer = asker.ask(prompt)
                    console.print(answer_table(answer, prompt.choices))
                    console.print(f"[bold]answer:[/] {answer.answer}  ({answer.latency_s:.2f} s)")
                    if answer.status != "ok" or len(answer.experts) != len(AGENTS):
                        failures.append(f"{prompt.prompt!r}: {answer.status} {answer.error or ''}")
        except (FleetError, AskError, ConnectionError) as exc:
            raise DemoError(f"{exc}\n(logs in {workdir})") from None
        finally:
            fleet.stop()
    if failures:
        raise DemoError(
            "not every expert answered:\n" + "\n".join(failures) + f"\n(logs in {workdir})"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    console.print("\n[green]demo fleet answered every prompt with both experts[/]")
