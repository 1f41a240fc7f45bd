"""The moe2 agent: serves local LLM experts on one edge device and talks only MQTT."""

from messages.version import __version__

__all__ = ["__version__"]
