"""MoE² expert selection under energy and delay budgets (docs/design.md sections 3 and 6)."""

from controller.selection.instance import (
    SelectionInstance,
    SelectionInstanceError,
    load_instance,
    parse_instance,
)
from controller.selection.loss import Evaluator
from controller.selection.solver import ALGORITHMS, SelectionResult, solve

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
