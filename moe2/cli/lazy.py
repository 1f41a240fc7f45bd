"""Sub-commands imported when they are named, so that a service run (``moe2 controller run``,
``moe2 agent run``) loads none of the other commands' modules: the gateway's, the agent's
probe with its power meters, the selection's and the gate's, and the rich tables they print
(issue 22: memory at rest). A look-up by name loads a lazy command; help lists a group's
commands without loading them, from the summary each is declared with (``Lazy.summaries``: the
first paragraph of its help, checked against the command's own by tests/moe2/test_cli.py), so
``moe2 --help`` imports none of them (issue 24)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import typer
from typer.core import TyperCommand
from typer.main import get_group


@dataclass(frozen=True)
class Lazy:
    """A group's commands that live in other modules, by name: ``"module:function"`` for a
    command, ``"module:typer_app"`` for a group of commands, each in the order registered."""

    commands: dict[str, str] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    # What help lists for a command: the first paragraph of its help (a command without one is
    # loaded to be listed).
    summaries: dict[str, str] = field(default_factory=dict)


def build(name: str, where: str, group: Any) -> Any:
    """The click command ``name`` made from ``where`` as Typer makes a registered one, with
    the settings of the group it belongs to."""
    module, _, attribute = where.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    holder = typer.Typer(
        rich_markup_mode=group.rich_markup_mode, suggest_commands=group.suggest_commands
    )
    if isinstance(target, typer.Typer):
        holder.add_typer(target, name=name)
    else:
        holder.command(name)(target)
    return get_group(holder).commands[name]


class LazyCommands(MutableMapping[str, Any]):
    """A group's commands by name in Typer's help order (commands, then groups; those built
    already before the lazy ones): a lazy one is imported, built and passed to ``tidy`` at its
    first look-up. ``keys()`` (command suggestions) imports nothing."""

    def __init__(
        self, built: MutableMapping[str, Any], lazy: Lazy, group: Any, tidy: Callable[[Any], None]
    ) -> None:
        def is_group(command: Any) -> bool:
            return hasattr(command, "commands")

        self._built = dict(built)
        self._where = {**lazy.commands, **lazy.groups}
        self._summaries = dict(lazy.summaries)
        self._listed: dict[str, Any] = {}
        self._group = group
        self._tidy = tidy
        self._order = [
            *(n for n, c in built.items() if not is_group(c)),
            *(n for n in lazy.commands if n not in built),
            *(n for n, c in built.items() if is_group(c)),
            *(n for n in lazy.groups if n not in built),
        ]

    def built(self) -> list[Any]:
        """The commands made so far, without importing any other."""
        return list(self._built.values())

    def listed(self, name: str) -> Any:
        """The command as help lists it: the command itself once built, else a stand-in with
        its name and summary only (nothing imported); a command without a summary is built."""
        if name in self._built or name not in self._summaries:
            return self[name]
        if name not in self._listed:
            self._listed[name] = TyperCommand(name, help=self._summaries[name])
        return self._listed[name]

    def __getitem__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._where:
                raise KeyError(name)
            command = build(name, self._where[name], self._group)
            self._tidy(command)
            self._built[name] = command
        return self._built[name]

    def __setitem__(self, name: str, command: Any) -> None:
        if name not in self._order:
            self._order.append(name)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        if name not in self._order:
            raise KeyError(name)
        self._order.remove(name)
        self._built.pop(name, None)
        self._where.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._order))

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, name: object) -> bool:
        return name in self._order
