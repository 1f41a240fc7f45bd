"""Re-quantised copies of GGUF models, made once with llama.cpp's own quantizer and cached.

Why an agent would serve a model in another quantisation than it was shipped in: llama.cpp's CPU
backend has batched matrix kernels (repacked or tinyBLAS) for some weight types and not for
others. Decoding several sequences in one step (``parallel`` > 1) only pays where the weights
have one: on an AVX2 CPU, SmolLM2's shipped Q4_1 weights decode 8 sequences at about 2x the
tokens/s of one, the same weights as Q8_0 or Q4_0 at 2.6-2.8x (docs/measurements.md). Q8_0 keeps
the shipped Q4_1 values almost exactly (8 bits per weight for values that had 4); Q4_0 is
smaller but quantises a second time.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
from pathlib import Path
from typing import Literal

from messages.settings import cache_root

log = logging.getLogger(__name__)

RequantizeType = Literal["Q8_0", "Q4_0"]
# llama_ftype values (llama.h): LLAMA_FTYPE_MOSTLY_Q4_0 = 2, LLAMA_FTYPE_MOSTLY_Q8_0 = 7.
_FTYPES: dict[str, int] = {"Q4_0": 2, "Q8_0": 7}


class RequantizeFailed(RuntimeError):
    """llama.cpp could not re-quantise a model file (not a GGUF, unreadable, disk full)."""


def cache_dir() -> Path:
    """Where re-quantised models are kept: ``models`` under the cache every process shares
    ($MOE2_CACHE_DIR, else $XDG_CACHE_HOME/moe2, else ~/.cache/moe2)."""
    return cache_root() / "models"


def requantized_path(source: Path, target: str, folder: Path) -> Path:
    """The cache file for ``source`` as ``target``: named after the source's path, size and
    modification time, so a changed source is converted again and never served stale."""
    stat = source.stat()
    key = f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return folder / f"{source.stem}.{digest}.{target}.gguf"


def requantize(source: Path, target: str, folder: Path | None = None) -> Path:
    """``source`` re-quantised to ``target`` (Q8_0 or Q4_0): made on first use (a second or two
    for a 135M model), then taken from the cache. Agents starting together on one box convert
    once: the others wait on a lock. A failed conversion leaves no file behind."""
    if target not in _FTYPES:
        known = ", ".join(sorted(_FTYPES))
        raise ValueError(f"cannot re-quantise to {target!r} (supported: {known})")
    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    out = requantized_path(source, target, folder)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file():
            return out
        # Left by an agent killed while converting (the lock is ours, so no one is writing it).
        for stale in folder.glob(out.with_suffix(".partial-*").name):
            stale.unlink(missing_ok=True)
        partial = out.with_suffix(f".partial-{os.getpid()}")
        log.info("re-quantising %s to %s (once; cached as %s)", source.name, target, out)
        try:
            _quantize(source, partial, _FTYPES[target])
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
    return out


def _quantize(source: Path, out: Path, ftype: int) -> None:
    from llama_cpp import llama_cpp as lib

    # llama.cpp logs every tensor it converts through llama-cpp-python's logger: keep it quiet.
    logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)
    params = lib.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source is itself quantised
    params.nthread = max(1, os.cpu_count() or 1)
    rc = lib.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        raise RequantizeFailed(f"llama.cpp could not re-quantise {source} (status {rc})")
