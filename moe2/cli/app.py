"""The ``moe2`` command line: the root Typer app, ``--version``, and where each command lives.

Every command is in a module of its own, one per command group (agent.py holds ``agent run``,
controller.py ``controller run``, ask.py ``ask``, ...), imported only when the command is named
(moe2/cli/lazy.py): a service run, ``moe2 controller run`` or ``moe2 agent run``, loads none of
the other commands' modules. ``moe2 --help`` lists the commands in the order of the table
below, then the groups."""

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
