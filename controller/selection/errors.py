"""The selection's errors, apart from the solver so that a controller without a gate can catch
them without importing numpy."""

from __future__ import annotations


class BudgetError(ValueError):
    """Budgets that cannot be used (unknown category, nothing fits); the plan stays as it was."""
