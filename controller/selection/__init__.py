"""MoE² expert selection under energy and delay budgets (docs/design.md sections 3 and 6).

The names below are loaded on first use (PEP 562): the solver brings numpy and a compiled
kernel (numba), which a controller without a gate never needs, and importing any submodule
(``controller.selection.errors``, ``controller.selection.from_profile``) runs this file first.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.selection.instance import (
        SelectionInstance,
        SelectionInstanceError,
        load_instance,
        parse_instance,
    )
    from controller.selection.loss import Evaluator
    from controller.selection.solver import ALGORITHMS, SelectionResult, solve

# Each public name and the submodule that defines it.
_HOMES = {
    "ALGORITHMS": "solver",
    "Evaluator": "loss",
    "SelectionInstance": "instance",
    "SelectionInstanceError": "instance",
    "SelectionResult": "solver",
    "load_instance": "instance",
    "parse_instance": "instance",
    "solve": "solver",
}

__all__ = [
    "ALGORITHMS",
    "Evaluator",
    "SelectionInstance",
    "SelectionInstanceError",
    "SelectionResult",
    "load_instance",
    "parse_instance",
    "solve",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value
