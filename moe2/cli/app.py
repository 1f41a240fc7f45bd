"""The ``moe2`` command line: the root Typer app, ``--version``, and where each command lives.

Every command is in a module of its own, one per command group (agent.py holds ``agent run``,
controller.py ``controller run``, ask.py ``ask``, ...), imported only when the command is named
(moe2/cli/lazy.py): a service run, ``moe2 controller run`` or ``moe2 agent run``, loads none of
the other commands' modules. ``moe2 --help`` lists the commands in the order of the table
below, then the groups, from their summaries: it imports none of them."""

from __future__ import annotations

from typing import Annotated

import typer

from moe2.cli.help import HelpGroup
from moe2.cli.lazy import Lazy


class MoeGroup(HelpGroup):
    # Every command and group by name: "module:function" or "module:typer_app".
    lazy = Lazy(
        commands={
            "budgets": "moe2.cli.budgets:budgets",
            "ask": "moe2.cli.ask:ask",
            "fleet": "moe2.cli.fleet:fleet",
            "schema": "moe2.cli.schemas:schema",
            "demo": "moe2.cli.demo:demo",
            "profile": "moe2.cli.gate:profile",
            "sweep": "moe2.cli.gate:sweep",
            "select": "moe2.cli.selection:select",
            "cache-plan": "moe2.cli.cache:cache_plan",
            "gateway": "moe2.cli.gateway:gateway",
            "costs": "moe2.cli.costs:costs",
            "export-onnx": "moe2.cli.export_onnx:export_onnx_command",
        },
        groups={
            "agent": "moe2.cli.agent:agent_app",
            "controller": "moe2.cli.controller:controller_app",
            "gate": "moe2.cli.gate:gate_app",
        },
        # What ``moe2 --help`` lists, without importing a command: the first paragraph of each
        # one's help (tests/moe2/test_cli.py checks them against the commands).
        summaries={
            "budgets": "Set the fleet's budgets at run time: the controller re-solves and pushes a "
            "new plan.",
            "ask": "Publish a prompt to the fleet and print the answer.",
            "fleet": "Agents, their experts, state, last power and latency (--watch: live).",
            "schema": "JSON Schemas of every message and the topic table, for non-Python clients.",
            "demo": "A local fleet: broker, two agents (SmolLM2, Gemma 3), controller; answers a "
            "few prompts.",
            "profile": "Send the suite to every active expert through the controller; store what "
            "each answered.",
            "sweep": "Test accuracy against the energy and the delay budget: MoE² beside every "
            "baseline.",
            "select": "Choose the experts to activate under energy and delay budgets (MoE² "
            "selection).",
            "cache-plan": "Decide which experts each edge server caches under its storage "
            "capacity (SlimCaching).",
            "gateway": "Serve the OpenAI API (chat, completions, models; SSE streaming) in front "
            "of the fleet.",
            "costs": "Each expert's current energy and delays (learnt from results, seeded from "
            "the profile),\ntheir source and sample count, next to the budgets; and why nothing "
            "fits, when nothing does.",
            "export-onnx": "Export a GGUF model to ONNX (float32, KV cache in and out) for the "
            "onnxruntime backend.",
            "agent": "Run or inspect the agent on this device.",
            "controller": "Run the fleet controller.",
            "gate": "Train and check the MoE² gate.",
        },
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
