"""Gate errors, importable without torch (the controller runs without a gate too)."""


class GateError(ValueError):
    """A gate checkpoint that cannot be used."""
