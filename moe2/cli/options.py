"""Command-line options and the error exit that several commands share, declared once."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

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


# Connecting to the fleet's broker: every command that does takes these, beside --config and the
# MOE2_* variables. No --password flag: a password on a command line is visible to every user of
# the box (ps); it comes from --password-file, password_file/password in the config or
# MOE2_PASSWORD.
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="TOML config file (flags and MOE2_* override it)")
]
BrokerOpt = Annotated[
    str | None, typer.Option("--broker", help="mqtt://HOST:PORT, or mqtts://HOST:PORT (TLS)")
]
FleetOpt = Annotated[str | None, typer.Option("--fleet", help="Fleet name (topic prefix)")]
VersionOpt = Annotated[
    str | None, typer.Option("--mqtt-version", help='MQTT protocol: "5" or "3.1.1"')
]
UsernameOpt = Annotated[str | None, typer.Option("--username", help="MQTT username")]
PasswordFileOpt = Annotated[
    Path | None, typer.Option("--password-file", help="File holding the MQTT password")
]
CaFileOpt = Annotated[
    Path | None, typer.Option("--ca-file", help="CA certificate of the broker's (mqtts://)")
]


def connection(
    broker: str | None,
    fleet: str | None,
    mqtt_version: str | None,
    username: str | None,
    password_file: Path | None,
    ca_file: Path | None,
) -> dict[str, Any]:
    """The connection flags as settings overrides (a flag not given overrides nothing)."""
    return dict(
        broker=broker,
        fleet=fleet,
        mqtt_version=mqtt_version,
        username=username,
        password_file=password_file,
        ca_file=ca_file,
    )


def load_settings(config: Path | None, cls: type | None = None, **flags: Any) -> Any:
    """Settings (``cls``, FleetSettings by default) from config, environment and flags; a bad
    value is a clean error that names it."""
    from messages.settings import ConfigError, FleetSettings

    try:
        return (cls or FleetSettings).load(config, **flags)
    except ConfigError as exc:
        fail(str(exc))


ProfileOpt = Annotated[Path | None, typer.Option("--profile", help="Fleet profile (moe2 profile)")]
GateOpt = Annotated[Path | None, typer.Option("--gate", help="Gate checkpoint (moe2 gate train)")]
EnergyOpt = Annotated[float | None, typer.Option("--energy-j", help="Energy budget per query, J")]
DelayOpt = Annotated[
    list[str] | None,
    typer.Option("--delay-s", help="CATEGORY=SECONDS delay budget (repeat for each category)"),
]
TopKOpt = Annotated[int | None, typer.Option("--top-k", help="Experts run per prompt")]
