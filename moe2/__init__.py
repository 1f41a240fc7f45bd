"""moe2: the command line, the local brokers and the demo fleet that tie agent and controller."""

__version__ = "0.1.0"
