"""Command-line options and the error exit that several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

EXIT_BAD_INPUT = 2


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Every command's clean error: one ``error:`` line on stderr and an exit status."""
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
