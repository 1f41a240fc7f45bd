"""Prompt embeddings cached on disk, keyed by the prompt text's SHA-256: loading a profile or
retraining the gate for a newcomer encodes each suite prompt once per machine, not each time.

The cache is ``$MOE2_CACHE_DIR`` (else ``$XDG_CACHE_HOME/moe2``, else ``~/.cache/moe2``)
``/embeddings-all-MiniLM-L6-v2.npz``; a damaged file is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from controller.gate.encoder import ENCODER_NAME
from messages.settings import cache_root


class Encoder(Protocol):
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class CachedEncoder:
    """``encode`` as the encoder's, from the cache where it can; new rows are saved at once."""

    def __init__(self, encoder: Encoder, path: Path | None = None) -> None:
        self.encoder = encoder
        self.path = path or cache_root() / f"embeddings-{ENCODER_NAME}.npz"
        self._rows: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        try:
            with np.load(self.path) as blob:
                keys, vectors = blob["keys"], blob["vectors"]
                self._rows = {str(k): v for k, v in zip(keys, vectors, strict=True)}
        except (OSError, ValueError, KeyError):
            self._rows = {}

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        digests = [_digest(t) for t in texts]
        with self._lock:
            missing = sorted(
                {d: t for d, t in zip(digests, texts, strict=True) if d not in self._rows}.items()
            )
        if missing:
            vectors = self.encoder.encode([t for _, t in missing], batch_size=batch_size)
            with self._lock:
                for (d, _), v in zip(missing, vectors, strict=True):
                    self._rows[d] = np.asarray(v, dtype=np.float32)
                self._save()
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        with self._lock:
            return np.stack([self._rows[d] for d in digests]).astype(np.float32)

    def _save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp.npz")
            keys = np.array(sorted(self._rows))
            np.savez(tmp, keys=keys, vectors=np.stack([self._rows[k] for k in keys]))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only cache only costs time
