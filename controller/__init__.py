"""The moe2 controller: tracks the fleet, plans which experts run, answers prompts."""

from messages.version import __version__

__all__ = ["__version__"]
