"""How the gateway answers, and the limits that keep a stranger from loading it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GatewaySettings:
    """How the gateway answers, and the limits that keep a stranger from loading it."""

    timeout_s: float = 60.0
    max_inflight: int = 64
    api_keys: set[str] | None = None
    max_body_bytes: int = 1024 * 1024
    body_timeout_s: float = 30.0
    # A request whose client went away holds its in-flight slot until the fleet has let go of
    # it (the controller's answer to the cancel), or this long at most.
    cancel_wait_s: float = 10.0
