"""The options that connect a command to the fleet's broker, declared once: ``--config``,
``--broker``, ``--fleet``, ``--mqtt-version``, ``--username``, ``--password-file`` and
``--ca-file``. A command takes them as one ``Connection``::

    @app.command()
    @with_connection()
    def costs(connection: Connection, wait: WaitOpt = 3.0) -> None:
        settings = connection.settings()

``with_connection`` writes the seven options into the command's signature (Typer reads the
signature) where its ``connection`` parameter stands, ``--config`` last (first with
``config_first=True``), and hands the command one Connection made of their values. A command
that declares one of them itself (``cache-plan``'s ``--fleet``, with its own help) keeps its
own, and the Connection carries its value too.

No --password flag: a password on a command line is visible to every user of the box (ps); it
comes from --password-file, password_file/password in the config or MOE2_PASSWORD.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from moe2.cli.options import fail

Command = TypeVar("Command", bound=Callable[..., Any])

# The parameter of a command that the options replace.
PARAMETER = "connection"

# The options by parameter name, in the order help lists them (--config apart: first or last).
CONFIG = (
    "config",
    Annotated[
        Path | None,
        typer.Option("--config", help="TOML config file (flags and MOE2_* override it)"),
    ],
)
OPTIONS: tuple[tuple[str, Any], ...] = (
    (
        "broker",
        Annotated[
            str | None,
            typer.Option("--broker", help="mqtt://HOST:PORT, or mqtts://HOST:PORT (TLS)"),
        ],
    ),
    ("fleet", Annotated[str | None, typer.Option("--fleet", help="Fleet name (topic prefix)")]),
    (
        "mqtt_version",
        Annotated[str | None, typer.Option("--mqtt-version", help='MQTT protocol: "5" or "3.1.1"')],
    ),
    ("username", Annotated[str | None, typer.Option("--username", help="MQTT username")]),
    (
        "password_file",
        Annotated[
            Path | None, typer.Option("--password-file", help="File holding the MQTT password")
        ],
    ),
    (
        "ca_file",
        Annotated[
            Path | None,
            typer.Option("--ca-file", help="CA certificate of the broker's (mqtts://)"),
        ],
    ),
)


@dataclass(frozen=True)
class Connection:
    """The connection flags of one run: the config file, and the settings the other flags
    override (a flag not given, None, overrides nothing)."""

    config: Path | None = None
    broker: str | None = None
    fleet: str | None = None
    mqtt_version: str | None = None
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None

    def settings(self, cls: type | None = None, **flags: Any) -> Any:
        """Settings (``cls``, FleetSettings by default) from the config file, the MOE2_*
        variables, these flags and the command's own ``flags``; a bad value is a clean error
        that names it."""
        from messages.settings import ConfigError, FleetSettings

        overrides = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "config"}
        try:
            return (cls or FleetSettings).load(self.config, **overrides, **flags)
        except ConfigError as exc:
            fail(str(exc))


def with_connection(*, config_first: bool = False) -> Callable[[Command], Command]:
    """The decorator that gives a command the connection options in place of its
    ``connection: Connection`` parameter (see the module's doc)."""
    bundle = (CONFIG, *OPTIONS) if config_first else (*OPTIONS, CONFIG)

    def decorate(command: Command) -> Command:
        return _with_options(command, bundle)

    return decorate


def _with_options(command: Command, bundle: tuple[tuple[str, Any], ...]) -> Command:
    """``command`` with the ``bundle`` options in its signature where its ``connection``
    parameter stands, less those it declares itself. Every parameter becomes keyword-only (Typer
    passes them by name), so that options with defaults may stand before one without."""
    signature = inspect.signature(command, eval_str=True)
    own = signature.parameters
    if PARAMETER not in own:
        raise TypeError(f"{command.__name__} has no {PARAMETER!r} parameter to put options in")
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=option)
        for name, option in bundle
        if name not in own
    ]
    parameters: list[inspect.Parameter] = []
    for parameter in own.values():
        if parameter.name == PARAMETER:
            parameters += added
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def run(**values: Any) -> Any:
        flags = {name: values[name] if name in own else values.pop(name) for name, _ in bundle}
        return command(**values, **{PARAMETER: Connection(**flags)})

    run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in parameters}
    run.__annotations__["return"] = signature.return_annotation
    return run  # type: ignore[return-value]
