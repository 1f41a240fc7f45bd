"""The prompt encoder, loaded when it is first needed or in a thread of its own, so that a gated
controller comes online in seconds (issue 24).

A controller plans with the gate's network and the profile's embeddings (cached on disk by
``cache.py``); only a prompt's own weights need the encoder, whose libraries and model take
seconds to load, tens of seconds on a loaded machine. The controller starts loading it in the
background (``EncoderLoader.start``) and goes online at once; until it is ready its selection
sends each prompt to the planned experts with equal weights, under the same budgets
(``LiveSelection.dispatch``), and says so: a log line and a ``gate`` controller event when the
first prompt is weighted so, and when the encoder is ready (or failed to load).

``moe2 select --profile`` never starts it: the encoder is loaded only if a profile's prompt is
missing from the embedding cache (``encode`` loads it then and there).

One encoder serves a process (``shared``): it is frozen, and every gate of the process (the
configured one, one extended for newcomers) embeds with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

from controller.gate.encoder import (
    ENCODER_NAME,
    Encoder,
    EncoderUnavailable,
    PromptEncoder,
    check_available,
)

log = logging.getLogger(__name__)

Listener = Callable[[str], None]


class EncoderLoader:
    """An ``Encoder`` that loads the real one (``make``: ``PromptEncoder``) at its first
    ``encode``, or in a thread of its own from ``start``; ``ready`` tells whether a prompt can
    be embedded without waiting."""

    name = ENCODER_NAME

    def __init__(self, make: Callable[[], Encoder] = PromptEncoder) -> None:
        self._make = make
        self._encoder: Encoder | None = None
        self._failure: str | None = None
        self._done = threading.Event()  # loaded or failed
        self._told = threading.Event()  # and said so
        self._lock = threading.Lock()  # the thread, the start time, the count: held briefly
        self._loading = threading.Lock()  # one load, by whoever comes first
        self._thread: threading.Thread | None = None
        self._started: float | None = None
        self.load_s: float | None = None  # how long the load took, once done
        self.weighed_equally = 0  # prompts given equal weights while it loaded
        self._listeners: list[Listener] = []

    def start(self) -> EncoderLoader:
        """Start loading in a background thread (once); EncoderUnavailable at once when the
        encoder's package is not installed."""
        check_available()
        with self._lock:
            if self._thread is None and not self._done.is_set():
                self._started = time.monotonic()
                self._thread = threading.Thread(
                    target=self._load, name="gate-encoder-load", daemon=True
                )
                self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """Loaded: ``encode`` will not wait for the load."""
        return self._done.is_set() and self._encoder is not None

    @property
    def in_background(self) -> bool:
        """Loading (or loaded) in a thread of its own, from ``start``."""
        return self._thread is not None

    @property
    def failure(self) -> str | None:
        """Why the load failed, once it has."""
        return self._failure

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the load to end (loaded or failed) and be reported; True when it has."""
        return self._told.wait(timeout_s)

    def report_to(self, listener: Listener) -> None:
        """Tell ``listener`` (a sentence) when prompts start being weighted equally and when
        the load ends (nothing, once loaded: there is nothing more to tell)."""
        if not self.ready:
            self._listeners.append(listener)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """The encoder's embeddings, loading it here first when no thread is (or waiting for
        the one that is); EncoderUnavailable when it could not be loaded."""
        if not self._done.is_set():
            with self._lock:
                loading = self._thread is not None
                if not loading:
                    self._started = time.monotonic()
            if loading:
                self._done.wait()
            else:
                self._load()
        if self._encoder is None:
            raise EncoderUnavailable(f"the prompt encoder could not be loaded: {self._failure}")
        return self._encoder.encode(texts, batch_size=batch_size)

    def note_equal_weights(self) -> None:
        """Count a prompt weighted equally because the encoder is not ready; the first is
        reported."""
        with self._lock:
            self.weighed_equally += 1
            first = self.weighed_equally == 1
            waited = time.monotonic() - (self._started or time.monotonic())
        if first:
            self._report(
                f"the gate's prompt encoder is still loading ({waited:.1f} s so far): prompts go "
                "to the planned experts with equal weights, under the same budgets, until it is "
                "ready"
            )

    def _load(self) -> None:
        with self._loading:
            if self._done.is_set():
                return
            try:
                encoder = self._make()
                if self._thread is not None:  # in the background: its first prompt pays for
                    encoder.encode([ENCODER_NAME])  # the libraries' lazy set-up, not a user's
                self._encoder = encoder
            except Exception as exc:  # noqa: BLE001 - said in the log, the event and encode()
                self._failure = f"{type(exc).__name__}: {exc}"
            finally:  # whatever happened, nobody waits for it any longer
                self.load_s = time.monotonic() - (self._started or time.monotonic())
                self._done.set()
        try:
            self._tell()
        finally:
            self._told.set()

    def _tell(self) -> None:
        with self._lock:
            equal = self.weighed_equally
        if self._failure is not None:
            self._report(
                f"the gate's prompt encoder failed to load ({self._failure}): prompts stay "
                "weighted equally"
            )
        elif self._thread is not None:  # loaded in the background: say when it is in use
            self._report(
                f"the gate's prompt encoder is ready (loaded in {self.load_s:.1f} s; "
                f"{equal} prompt(s) were weighted equally meanwhile)"
            )

    def _report(self, sentence: str) -> None:
        if not self._listeners:
            (log.warning if self._failure else log.info)("%s", sentence)
        for listener in list(self._listeners):
            try:
                listener(sentence)
            except Exception:  # noqa: BLE001 - a listener's failure must not stop the load
                log.exception("reporting the encoder's load failed")


_SHARED: EncoderLoader | None = None
_SHARED_LOCK = threading.Lock()


def shared() -> EncoderLoader:
    """The process's encoder (not started: loaded at its first use unless started)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = EncoderLoader()
        return _SHARED


def equal_weights_noted(encoder: object) -> bool:
    """Whether a gate with ``encoder`` must weigh a prompt equally now (its encoder is loading
    in the background, or failed to), counting the prompt when so. An encoder that is not an
    ``EncoderLoader`` (or one nobody started) embeds when asked: never."""
    if not isinstance(encoder, EncoderLoader) or encoder.ready:
        return False
    if not encoder.in_background and encoder.failure is None:
        return False  # lazy: loaded at the first encode, as before
    encoder.note_equal_weights()
    return True
