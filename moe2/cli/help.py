"""How ``moe2`` help reads: the command groups (``HelpGroup``) escape their help strings when
help is shown, name values as click does (TEXT, INTEGER, PATH, a choice's values; a flag none),
and import their lazy commands when named (moe2/cli/lazy.py)."""

from __future__ import annotations

from typing import Any, ClassVar, get_args

import typer
from typer.core import TyperArgument, TyperGroup

from moe2.cli.lazy import Lazy, LazyCommands


class HelpGroup(TyperGroup):
    """The command tree with help that says what it means. Typer's rich help reads every help
    string as rich markup, so "[@AGENT]" or "[default: ...]" vanished: help strings are escaped
    when help is shown (HelpContext; none uses markup). And Typer names each value by its
    Python type ("<str>", "<list[str]>", "<bool>" beside a flag that takes no value): values get
    click's names (TEXT, INTEGER, FLOAT, PATH, a choice's values), flags none, arguments their
    own name. The commands in ``lazy`` are imported when named, and listed in help by their
    summaries without being imported (moe2/cli/lazy.py)."""

    lazy: ClassVar[Lazy] = Lazy()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tidy_help(self)
        self.commands = LazyCommands(self.commands, self.lazy, self, tidy_help)

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)  # the names, in order: Typer's own looks at every command

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        commands = self.commands
        if getattr(ctx, "listing", False) and isinstance(commands, LazyCommands):
            return commands.listed(cmd_name) if cmd_name in commands else None
        return super().get_command(ctx, cmd_name)


class HelpContext(typer.Context):
    """A command's context that escapes the help strings of its command and of the commands it
    lists before its help is made: rich (which reads them) is imported only when help is shown,
    never by a service run."""

    listing = False  # help is being made: a lazy group lists its commands unloaded

    def get_help(self) -> str:
        escape_help(self.command)
        commands = getattr(self.command, "commands", {})
        if isinstance(commands, LazyCommands):
            subs = [commands.listed(name) for name in commands]
        else:
            subs = list(commands.values())
        for sub in subs:
            escape_help(sub)
        self.listing = True
        try:
            return super().get_help()
        finally:
            self.listing = False


# The names click gives values, by Python type.
VALUE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "Path": "PATH", "bool": "BOOLEAN"}


def tidy_help(command: Any) -> None:
    """Set every metavar of ``command`` and of its subcommands built so far, and the context
    that escapes their help strings when help is shown."""
    command.context_class = HelpContext
    for param in _params_and_help(command):
        if param.metavar is None:
            param.metavar = value_name(param)
        if isinstance(param, TyperArgument):  # its name says it: no "<str>" beside it
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    commands = getattr(command, "commands", {})
    for sub in commands.built() if isinstance(commands, LazyCommands) else commands.values():
        tidy_help(sub)


def escape_help(command: Any) -> None:
    """Escape the help strings of ``command`` and its parameters, once."""
    from rich.markup import escape

    if getattr(command, "help_escaped", False):
        return
    command.help_escaped = True
    if command.help:
        command.help = escape(command.help)
    for param in _params_and_help(command):
        if getattr(param, "help", None):
            param.help = escape(param.help)


def _params_and_help(command: Any) -> list[Any]:
    help_option = _help_option(command)
    return [*command.params, *([help_option] if help_option is not None else [])]


def _help_option(command: Any) -> Any:
    """The command's --help option, made now (the command keeps it) so that it can be tidied
    like the others; None where there is none."""
    try:
        return command.get_help_option(command.context_class(command))
    except Exception:  # noqa: BLE001 - an older Typer or click without it: help still works
        return None


def value_name(param: Any) -> str:
    """What a parameter's value is called in help: an argument by its name, a flag by nothing,
    a choice by its values, any other value by click's name of its type."""
    if isinstance(param, TyperArgument):
        return (param.name or "value").upper()
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is None:  # a Typer built on click: click's parameter type has the name
        return str(param.type.name).upper()
    if desc.is_choice:
        return "|".join(str(c) for c in desc.choices or ())
    annotation = get_args(desc.annotation)[0] if desc.is_list else desc.annotation
    name = getattr(annotation, "__name__", str(annotation))
    return VALUE_NAMES.get(name, name.upper())
