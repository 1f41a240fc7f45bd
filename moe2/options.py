"""Command-line options that several commands share, declared once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ProfileOpt = Annotated[Path | None, typer.Option("--profile", help="Fleet profile (moe2 profile)")]
GateOpt = Annotated[Path | None, typer.Option("--gate", help="Gate checkpoint (moe2 gate train)")]
EnergyOpt = Annotated[float | None, typer.Option("--energy-j", help="Energy budget per query, J")]
DelayOpt = Annotated[
    list[str] | None,
    typer.Option("--delay-s", help="CATEGORY=SECONDS delay budget (repeat for each category)"),
]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Experts run per prompt")]
