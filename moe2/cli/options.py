"""Command-line options and the error exit that several commands share, declared once: the
budgets and the log level (the connection options are in connection.py)."""

from __future__ import annotations

import logging
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

if TYPE_CHECKING:
    from rich.console import Console

# Exit status of every command (README, "Command line"): 0 ok; EXIT_FAILURE when something at
# run time failed (a one-shot command cannot reach the broker, no answer came, the controller
# refused); EXIT_BAD_INPUT for bad usage, a bad config or a bad input file (click's own usage
# errors are 2 too); 3 from ``moe2 select`` when no expert fits the budgets. The services
# (``agent run``, ``controller run``) retry an unreachable broker instead of exiting.
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


@cache
def console(stderr: bool = False) -> Console:
    """The rich console a command prints on (stdout, or stderr), made at its first use: rich is
    imported only by a command that prints with it, never by a service such as ``moe2
    controller run`` (issue 22: memory at rest)."""
    from rich.console import Console

    return Console(stderr=stderr)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Every command's clean error: one ``error:`` line on stderr and an exit status
    (EXIT_BAD_INPUT unless the caller says EXIT_FAILURE)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(
        f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(code)


ProfileOpt = Annotated[Path | None, typer.Option("--profile", help="Fleet profile (moe2 profile)")]
GateOpt = Annotated[Path | None, typer.Option("--gate", help="Gate checkpoint (moe2 gate train)")]
EnergyOpt = Annotated[float | None, typer.Option("--energy-j", help="Energy budget per query, J")]
DelayOpt = Annotated[
    list[str] | None,
    typer.Option("--delay-s", help="CATEGORY=SECONDS delay budget (repeat for each category)"),
]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Experts run per prompt")]


def parse_delays(specs: list[str]) -> dict[str, float]:
    """``--delay-s CATEGORY=SECONDS`` flags; a malformed one is a clean error."""
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


LogOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning, error")]


def log_to_stderr(level: str) -> None:
    """Log at ``level`` (``--log-level``; an unknown one is info) on stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("amqtt").setLevel(logging.CRITICAL)
