"""``moe2 export-onnx``: a GGUF model to an ONNX decoder that the ONNX Runtime backend serves.

The weights are loaded through transformers' GGUF support (dequantised to float32), the model
is traced with its KV cache as explicit inputs and outputs (``past.{i}.key``/``value`` in,
``present.{i}.key``/``value`` out, sequence axes dynamic, batch 1), and the graph is checked
against PyTorch under ONNX Runtime on a probe prompt, prefill and one cached decoding step,
before the folder is declared finished (``artifact``). Needs the ``export`` extra (torch,
transformers, gguf, onnx); the agent that serves the result needs only onnxruntime and
tokenizers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from agent.models import quantisation_name, resolve_model
from agent.onnx.artifact import (
    META_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    OnnxArtifact,
    io_names,
    write_artifact,
)

DEFAULT_OPSET = 17
# float32 graphs agree with PyTorch to ~1e-4 in the logits; beyond this the export is wrong.
MAX_LOGIT_DIFF = 1e-2
PROBE = "The capital of France is Paris. The capital of Italy is"
# Texts of the tokens that end a turn, as llama.cpp's vocabulary also treats them.
_END_OF_TURN = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>", "<|end|>", "</s>")


class ExportError(RuntimeError):
    """The model cannot be exported, or its graph disagrees with PyTorch."""


def _gguf_fields(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    return {k: f.contents() for k, f in reader.fields.items() if k not in skip}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    names = ("torch", "transformers", "gguf", "onnx", "onnxruntime", "onnxruntime-gpu")
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _eog_ids(fields: dict[str, Any], tokenizer: Any) -> list[int]:
    ids = {
        int(fields[k])
        for k in (
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        )
        if k in fields
    }
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in _END_OF_TURN if t in vocab}
    return sorted(ids)


def _decoder(model: Any) -> Any:
    """The causal LM as a module f(input_ids, position_ids, *past) -> (logits, *present)."""
    import torch
    from transformers import DynamicCache

    layers = model.config.num_hidden_layers

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, position_ids: Any, *past: Any) -> tuple[Any, ...]:
            cache = DynamicCache()
            for i in range(layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            total = past[0].shape[2] + input_ids.shape[1]
            mask = torch.ones((input_ids.shape[0], total), dtype=torch.int64)
            out = self.model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=True,
            )
            kv = getattr(out, "cache", None) or out.past_key_values
            present = [t for layer in kv.layers for t in (layer.keys, layer.values)]
            return (out.logits, *present)

    return Decoder()


class _Shape(NamedTuple):
    """What the KV cache's tensors look like: (1, kv_heads, sequence, head_dim), two a layer."""

    layers: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config: Any) -> _Shape:
        head_dim = getattr(config, "head_dim", None) or (
            config.hidden_size // config.num_attention_heads
        )
        return cls(int(config.num_hidden_layers), int(config.num_key_value_heads), int(head_dim))


def export_onnx(
    model: str,
    out_dir: Path,
    *,
    opset: int = DEFAULT_OPSET,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> OnnxArtifact:
    """Export ``model`` (a shipped model name or a .gguf path) into ``out_dir``."""
    torch = _import_torch()
    gguf_path = resolve_model(model)
    out_dir = out_dir.expanduser()
    _prepare(out_dir, force)
    say(f"reading {gguf_path.name}")
    fields = _gguf_fields(gguf_path)
    tokenizer, lm = _load(gguf_path, say)
    shape = _Shape.of(lm.config)
    decoder = _decoder(lm)
    ids = torch.tensor([tokenizer.encode(PROBE, add_special_tokens=False)])
    say(f"exporting {shape.layers} layers to ONNX (opset {opset})")
    _trace(decoder, ids, shape, out_dir / MODEL_FILE, opset)
    tokenizer.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    say("checking ONNX Runtime against PyTorch")
    diff = _verify(decoder, out_dir / MODEL_FILE, ids, *shape)
    if not diff <= MAX_LOGIT_DIFF:
        shutil.rmtree(out_dir)
        raise ExportError(
            f"the exported graph disagrees with PyTorch (max logit difference {diff:.3g} > "
            f"{MAX_LOGIT_DIFF}); nothing kept"
        )
    artifact = _describe(model, gguf_path, fields, lm.config, tokenizer, shape, opset, diff)
    write_artifact(out_dir, artifact)
    say(f"done: {out_dir} (max logit difference to PyTorch {diff:.2e})")
    return artifact


def _import_torch() -> Any:
    """torch, once the export's libraries are known to be there (else an ExportError that says
    what to install)."""
    try:
        import onnxruntime  # noqa: F401  (the check at the end runs the graph)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    except ImportError as exc:
        raise ExportError(
            "moe2 export-onnx needs the export extra and one ONNX Runtime extra "
            f"(pip install 'moe2[export,onnx]'): {exc}"
        ) from None
    return torch


def _prepare(out_dir: Path, force: bool) -> None:
    """``out_dir`` made, and marked unfinished; an earlier export is replaced only with
    ``force``, anything else there never."""
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / META_FILE).exists() and not (out_dir / MODEL_FILE).exists():
            raise ExportError(f"{out_dir} exists and is not an ONNX export; choose another --out")
        if not force:
            raise ExportError(f"{out_dir} already holds an export; pass --force to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # unfinished until the new one is written


def _load(gguf_path: Path, say: Callable[[str], None]) -> tuple[Any, Any]:
    """The tokenizer and the causal LM of a GGUF file, its weights dequantised to float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        say("dequantising the weights to float32 (transformers)")
        lm = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent),
            gguf_file=gguf_path.name,
            dtype=torch.float32,
            attn_implementation="eager",  # plain ops: traceable, same maths
        ).eval()
    return tokenizer, lm


def _trace(decoder: Any, ids: Any, shape: _Shape, path: Path, opset: int) -> None:
    """Trace ``decoder`` to an ONNX graph at ``path``, the KV cache in and out with dynamic
    sequence axes. Traced with both a past and several new tokens, so neither special case is
    baked in."""
    import torch

    names_in, names_out = io_names(shape.layers)
    dynamic = {"input_ids": {1: "sequence"}, "position_ids": {1: "sequence"}}
    dynamic["logits"] = {1: "sequence"}
    dynamic |= {n: {2: "past_sequence"} for n in names_in[2:]}
    dynamic |= {n: {2: "total_sequence"} for n in names_out[1:]}
    split = ids.shape[1] // 2
    past = [torch.zeros(1, shape.kv_heads, split, shape.head_dim) for _ in range(2 * shape.layers)]
    pos = torch.arange(split, ids.shape[1])[None]
    tmp = path.with_name(path.name + ".tmp")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            decoder,
            (ids[:, split:], pos, *past),
            str(tmp),
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=opset,
            dynamo=False,
        )
    tmp.replace(path)


def _describe(
    model: str,
    gguf_path: Path,
    fields: dict[str, Any],
    config: Any,
    tokenizer: Any,
    shape: _Shape,
    opset: int,
    diff: float,
) -> OnnxArtifact:
    """The export's description (``artifact``): its source, shape, tokens and checks."""
    template = fields.get("tokenizer.chat_template")
    bos_id = fields.get("tokenizer.ggml.bos_token_id")
    return OnnxArtifact(
        model=model,
        source_file=gguf_path.name,
        source_sha256=_sha256(gguf_path),
        source_quantisation=quantisation_name(fields.get("general.file_type")),
        architecture=str(fields.get("general.architecture", config.model_type)),
        num_layers=shape.layers,
        num_kv_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        vocab_size=int(config.vocab_size),
        context_length=int(getattr(config, "max_position_embeddings", 2048)),
        bos_token_id=None if bos_id is None else int(bos_id),
        add_bos=bool(fields.get("tokenizer.ggml.add_bos_token", False)) and bos_id is not None,
        eog_token_ids=_eog_ids(fields, tokenizer),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        chat_template=str(template) if template else None,
        opset=opset,
        exported_with=_versions(),
        verified_max_abs_logit_diff=diff,
    )


def _verify(decoder: Any, path: Path, ids: Any, layers: int, kv_heads: int, head_dim: int) -> float:
    """Largest |logit| difference, ONNX Runtime (CPU) vs PyTorch: a prefill of the probe from an
    empty cache, then one decoding step on the cache the graph returned."""
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names_in, _ = io_names(layers)
    n = ids.shape[1]
    empty = [torch.zeros(1, kv_heads, 0, head_dim) for _ in range(2 * layers)]
    steps = [
        (ids[:, : n - 1], torch.arange(n - 1)[None]),
        (ids[:, n - 1 :], torch.tensor([[n - 1]])),
    ]
    past_torch, past_ort = empty, [t.numpy() for t in empty]
    worst = 0.0
    with torch.no_grad():
        for step_ids, pos in steps:
            ref = decoder(step_ids, pos, *past_torch)
            feeds = dict(zip(names_in, [step_ids.numpy(), pos.numpy(), *past_ort], strict=True))
            got = session.run(None, feeds)
            worst = max(worst, float(np.abs(got[0] - ref[0].numpy()).max()))
            past_torch, past_ort = list(ref[1:]), got[1:]
    return worst
