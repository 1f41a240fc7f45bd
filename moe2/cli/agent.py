"""``moe2 agent ...``: ``agent run`` serves this device's experts to the fleet; ``agent probe``
(probe.py) is imported only when named."""

from __future__ import annotations

from typing import Annotated

import typer

from moe2.cli.connection import Connection, with_connection
from moe2.cli.help import HelpGroup
from moe2.cli.lazy import Lazy
from moe2.cli.options import LogOpt, fail, log_to_stderr
from moe2.cli.serve import serve


class AgentGroup(HelpGroup):
    lazy = Lazy(commands={"probe": "moe2.cli.probe:probe"})


agent_app = typer.Typer(
    cls=AgentGroup, help="Run or inspect the agent on this device.", no_args_is_help=True
)


@agent_app.command("run")
@with_connection(config_first=True)
def agent_run(
    connection: Connection,
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

    log_to_stderr(log_level)
    settings = connection.settings(
        AgentSettings,
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
    serve(service)
