"""What ``moe2 export-onnx`` writes and the ONNX Runtime backend reads: one folder per model.

DIR/model.onnx       the decoder: (input_ids, position_ids, past.{i}.key/value) ->
                     (logits, present.{i}.key/value), KV cache as explicit tensors
DIR/tokenizer.json   the GGUF's tokenizer as a Hugging Face ``tokenizers`` file
DIR/moe2-onnx.json   this module's ``OnnxArtifact``: shapes, special tokens, chat template,
                     where the weights came from; written last, so a folder without it is
                     an unfinished export and is refused
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.models import ModelNotFound

MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "moe2-onnx.json"
FORMAT_VERSION = 1


class OnnxArtifact(BaseModel):
    """The facts the backend needs about an exported decoder, and its provenance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format_version: Literal[1] = FORMAT_VERSION
    model: str = Field(description="The model as given to moe2 export-onnx (name or .gguf path)")
    source_file: str = Field(description="The GGUF file the weights came from")
    source_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    source_quantisation: str | None = Field(
        description="The GGUF's quantisation; the ONNX weights are that, dequantised to float32"
    )
    architecture: str
    dtype: Literal["float32"] = "float32"
    num_layers: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    context_length: int = Field(ge=1, description="The model's trained context, tokens")
    bos_token_id: int | None = Field(ge=0)
    add_bos: bool = Field(description="Whether prompts start with the BOS token")
    eog_token_ids: list[int] = Field(min_length=1, description="Tokens that end a generation")
    bos_token: str | None = None
    eos_token: str | None = None
    chat_template: str | None = None
    opset: int = Field(ge=1)
    exported_with: dict[str, str] = Field(description="Package versions of the export")
    verified_max_abs_logit_diff: float = Field(
        ge=0, description="ONNX Runtime (CPU) against PyTorch on a probe prompt, at export"
    )

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * 4


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order (the module docstring's interface)."""
    kv = [f"{{}}.{i}.{part}" for i in range(layers) for part in ("key", "value")]
    return (
        ["input_ids", "position_ids"] + [n.format("past") for n in kv],
        ["logits"] + [n.format("present") for n in kv],
    )


def weights_bytes(folder: Path) -> int:
    """Size of the graph and its weights (``model.onnx``, and external data beside it)."""
    return sum(p.stat().st_size for p in folder.glob(MODEL_FILE + "*") if p.is_file())


def is_export(path: Path) -> bool:
    """A folder that holds (or was meant to hold) an ONNX export."""
    return path.is_dir() and ((path / MODEL_FILE).exists() or (path / META_FILE).exists())


def read_artifact(folder: Path) -> OnnxArtifact:
    """The export's metadata, after checking that every file is there."""
    folder = folder.expanduser()
    if not folder.is_dir():
        raise ModelNotFound(
            f"ONNX model {folder} is not a folder; make one with: moe2 export-onnx MODEL --out DIR"
        )
    meta = folder / META_FILE
    if not meta.is_file():
        raise ModelNotFound(
            f"{folder} holds no {META_FILE}: not a finished moe2 export-onnx folder "
            "(run moe2 export-onnx again)"
        )
    for name in (MODEL_FILE, TOKENIZER_FILE):
        if not (folder / name).is_file():
            raise ModelNotFound(f"ONNX export {folder} lacks {name}; run moe2 export-onnx again")
    try:
        return OnnxArtifact.model_validate(json.loads(meta.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as exc:
        raise ModelNotFound(f"{meta} is not a valid moe2 ONNX export description: {exc}") from None


def write_artifact(folder: Path, artifact: OnnxArtifact) -> None:
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(artifact.model_dump_json(indent=2) + "\n")
    tmp.replace(folder / META_FILE)
