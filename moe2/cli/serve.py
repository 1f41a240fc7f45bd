"""Running a service (``moe2 agent run``, ``moe2 controller run``) in the foreground until
SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from typing import Protocol

from moe2.cli.options import fail


class Service(Protocol):
    def start(self, wait_s: float = ...) -> object: ...

    def stop(self) -> object: ...


def serve(service: Service) -> None:
    """Start a service and run until SIGINT or SIGTERM. An unreachable broker is retried in the
    background (logged); a bad CA file is a clean failure."""
    try:
        service.start(wait_s=5.0)
    except ConnectionError as exc:
        fail(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()
