"""The moe2 agent: serves local LLM experts on one edge device and talks only MQTT."""

__version__ = "0.1.0"
