"""moe2: the command line, the local brokers and the demo fleet that tie agent and controller.

``moe2.__version__`` is messages/version.py's, read when asked for: importing it here would load
the whole message contract before every command, even ``moe2 --help``."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from messages.version import __version__

        return __version__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
