"""The moe2 controller: tracks the fleet, plans which experts run, answers prompts."""

__version__ = "0.1.0"
