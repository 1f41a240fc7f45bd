"""The gate's prompt encoder as the controller service sees it: loaded in the background once the
configured selection is in place, its state in the controller's status, its news in the
controller's events (issue 24; the loading itself is controller/gate/encoder_loader.py).

Importing this module loads nothing heavy: a controller without a gate never imports numpy."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from controller.selection.live import LiveSelection

GateState = Literal["loading", "ready", "failed"]


def start_loading(report: Callable[[str], None]) -> None:
    """Start loading the process's prompt encoder in the background; ``report`` hears when
    prompts start being weighted equally meanwhile, and when the encoder is ready (or failed).
    EncoderUnavailable at once when its package is not installed."""
    from controller.gate.encoder_loader import shared

    loader = shared()
    loader.report_to(report)
    loader.start()


def gate_state(selection: LiveSelection | None) -> GateState | None:
    """The state of the gate's encoder (None without a gate): loading, ready or failed."""
    if selection is None:
        return None
    from controller.gate.encoder_loader import EncoderLoader

    encoder = getattr(selection.gated.gate, "encoder", None)
    if not isinstance(encoder, EncoderLoader):
        return "ready"  # a plain encoder embeds when asked
    if encoder.failure is not None:
        return "failed"
    return "loading" if encoder.in_background and not encoder.ready else "ready"
