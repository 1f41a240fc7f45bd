"""``moe2 demo``: the lab fleet on this machine (moe2/local/demo.py does the work)."""

from __future__ import annotations

from typing import Annotated

import typer

from moe2.cli.options import EXIT_FAILURE, LogOpt, console, fail, log_to_stderr


def demo(
    embedded_broker: Annotated[
        bool,
        typer.Option("--embedded-broker", help="Use the Python broker even if mosquitto exists"),
    ] = False,
    log_level: LogOpt = "warning",
) -> None:
    """A local fleet: broker, two agents (SmolLM2, Gemma 3), controller; answers a few prompts."""
    from moe2.local.demo import DemoError, run_demo

    log_to_stderr(log_level)
    try:
        run_demo(console(), prefer_mosquitto=not embedded_broker)
    except DemoError as exc:
        fail(str(exc), code=EXIT_FAILURE)
