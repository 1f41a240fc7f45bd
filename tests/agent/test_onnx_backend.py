"""The ONNX Runtime backend on SmolLM2-135M exported by ``moe2 export-onnx``: agreement with
llama.cpp on the same weights, generation, the prefix cache, providers, broken exports."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from agent.backends.base import PromptTooLong
from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions
from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions, choose_providers
from agent.models import ModelNotFound, resolve_model
from agent.onnx.artifact import META_FILE, MODEL_FILE, TOKENIZER_FILE, read_artifact
from agent.settings import ExpertConfig
from agent.templates import choice_prompt
from controller.suite import DEFAULT_SUITE, load_suite


@pytest.fixture(scope="module")
def onnx(smollm2_onnx: Path) -> Iterator[OnnxBackend]:
    backend = OnnxBackend(smollm2_onnx, OnnxOptions(n_ctx=512, n_threads=2))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaCppBackend]:
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=512))
    yield backend
    backend.close()


def test_export_describes_itself(smollm2_onnx: Path) -> None:
    artifact = read_artifact(smollm2_onnx)
    assert (smollm2_onnx / MODEL_FILE).stat().st_size > 400_000_000  # float32 weights
    assert artifact.architecture == "llama" and artifact.num_layers == 30
    assert artifact.source_quantisation == "Q4_1"
    assert artifact.verified_max_abs_logit_diff < 1e-3
    assert 2 in artifact.eog_token_ids  # <|im_end|>
    assert artifact.chat_template and "<|im_start|>" in artifact.chat_template


def test_choices_agree_with_llama_cpp_on_the_same_weights(
    onnx: OnnxBackend, llama: LlamaCppBackend
) -> None:
    """The ONNX graph holds the GGUF's weights dequantised: the same answers as llama.cpp."""
    items = load_suite(DEFAULT_SUITE)[:12]
    diffs, agree = [], 0
    for item in items:
        rendered = choice_prompt("cloze", item.prompt, item.question, item.choices)
        a = onnx.score_choices(rendered.prefix, rendered.continuations)
        b = llama.score_choices(rendered.prefix, rendered.continuations)
        assert a.prompt_tokens == b.prompt_tokens  # the same tokenizer
        diffs.append(np.abs(np.array(a.probs) - np.array(b.probs)).max())
        agree += int(np.argmax(a.probs) == np.argmax(b.probs))
    assert agree >= 11, agree
    assert float(np.median(diffs)) < 0.03, diffs


def test_multi_token_choices_and_reused_prefix(onnx: OnnxBackend) -> None:
    prefix = "Question: What is the largest planet?\nAnswer:"
    first = onnx.score_choices(prefix, [" Jupiter", " the planet Mars"])
    again = onnx.score_choices(prefix, [" Jupiter", " the planet Mars"])
    assert first.logprobs == pytest.approx(again.logprobs, abs=1e-4)
    assert first.probs[0] > first.probs[1]
    longer = onnx.score_choices(prefix + " It is", [" Jupiter", " Mars"])  # extends the cache
    fresh = OnnxBackend(onnx.folder, OnnxOptions(n_ctx=512, n_threads=2))
    try:
        alone = fresh.score_choices(prefix + " It is", [" Jupiter", " Mars"])
    finally:
        fresh.close()
    assert longer.logprobs == pytest.approx(alone.logprobs, abs=1e-3)


def test_generates_greedily_within_limits(onnx: OnnxBackend) -> None:
    deadline = time.monotonic() + 60
    a = onnx.generate("What is the capital of France?", 12, deadline)
    b = onnx.generate("What is the capital of France?", 12, deadline)
    assert a.text == b.text and a.text  # greedy: deterministic
    assert "Paris" in a.text
    assert a.completion_tokens <= 12 and a.finish_reason in ("length", "stop")
    assert a.first_token_s is not None and a.prompt_tokens > 10  # the chat template is applied
    late = onnx.generate("Tell me a long story about a dragon.", 200, time.monotonic() + 0.3)
    assert late.finish_reason == "deadline" and late.completion_tokens < 200


def test_stop_strings(smollm2_onnx: Path) -> None:
    backend = OnnxBackend(smollm2_onnx, OnnxOptions(n_ctx=512, stop=(".",)))
    try:
        gen = backend.generate("Why is the sky blue?", 64, time.monotonic() + 60)
    finally:
        backend.close()
    assert gen.finish_reason == "stop" and "." not in gen.text


def test_prompt_too_long(smollm2_onnx: Path) -> None:
    backend = OnnxBackend(smollm2_onnx, OnnxOptions(n_ctx=64))
    try:
        with pytest.raises(PromptTooLong):
            backend.generate("word " * 200, 8, time.monotonic() + 30)
        with pytest.raises(PromptTooLong):
            backend.score_choices("word " * 200, [" a", " b"])
        with pytest.raises(ValueError, match="at least one token"):
            backend.score_choices("The sky is", [" blue", ""])
    finally:
        backend.close()


def test_reports_the_providers_the_session_uses(smollm2_onnx: Path) -> None:
    """Asking for CUDA on an onnxruntime without it runs on the CPU, and says so."""
    backend = OnnxBackend(
        smollm2_onnx, OnnxOptions(n_ctx=128, providers=("CUDAExecutionProvider",))
    )
    try:
        import onnxruntime

        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            pytest.skip("this onnxruntime has CUDA: see tests/agent/test_gpu.py")
        assert backend.providers == ["CPUExecutionProvider"]
    finally:
        backend.close()


def test_provider_order() -> None:
    available = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, available) == available
    assert choose_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    trt = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(None, trt) == trt
    assert choose_providers(("CUDAExecutionProvider",), ["CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_broken_exports_are_refused(smollm2_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="not a folder"):
        read_artifact(tmp_path / "absent")
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / MODEL_FILE).write_bytes(b"")
    with pytest.raises(ModelNotFound, match="not a finished moe2 export-onnx folder"):
        read_artifact(partial)
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(smollm2_onnx / META_FILE, no_tokenizer / META_FILE)
    (no_tokenizer / MODEL_FILE).write_bytes(b"")
    with pytest.raises(ModelNotFound, match=f"lacks {TOKENIZER_FILE}"):
        read_artifact(no_tokenizer)
    (no_tokenizer / TOKENIZER_FILE).write_text("{}")
    meta = json.loads((smollm2_onnx / META_FILE).read_text())
    (no_tokenizer / META_FILE).write_text(json.dumps({**meta, "num_layers": 0}))
    with pytest.raises(ModelNotFound, match="not a valid moe2 ONNX export description"):
        read_artifact(no_tokenizer)
    (no_tokenizer / META_FILE).write_text("{not json")
    with pytest.raises(ModelNotFound, match="not a valid"):
        read_artifact(no_tokenizer)


def test_expert_config_backend_and_options(smollm2_onnx: Path) -> None:
    onnx = ExpertConfig(id="smol-ort", model=str(smollm2_onnx))
    assert onnx.backend == "onnxruntime"  # an export folder: onnxruntime by default
    assert ExpertConfig.parse_flag(f"x={smollm2_onnx}").backend == "onnxruntime"
    assert ExpertConfig(id="smol", model="smollm2-135m").backend == "llama.cpp"
    with pytest.raises(ValidationError, match="n_gpu_layers is a llama.cpp option"):
        ExpertConfig(id="x", model=str(smollm2_onnx), n_gpu_layers=-1)
    with pytest.raises(ValidationError, match="providers is an onnxruntime option"):
        ExpertConfig(id="x", model="smollm2-135m", providers=["CPUExecutionProvider"])
    with pytest.raises(ValidationError):
        ExpertConfig(id="x", model=str(smollm2_onnx), providers=["MetalExecutionProvider"])


def test_exactly_one_onnxruntime_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    from agent.backends.base import BackendUnavailable
    from agent.backends.onnx_runtime import check_onnxruntime

    check_onnxruntime()  # this install has one
    real = importlib.metadata.version

    def both(dist: str) -> str:
        return "1.20.0" if dist in ("onnxruntime", "onnxruntime-gpu") else real(dist)

    monkeypatch.setattr(importlib.metadata, "version", both)
    with pytest.raises(BackendUnavailable, match="both onnxruntime and onnxruntime-gpu"):
        check_onnxruntime()

    def neither(dist: str) -> str:
        if dist.startswith("onnxruntime"):
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", neither)
    with pytest.raises(BackendUnavailable, match=r"pip install 'moe2\[onnx\]'"):
        check_onnxruntime()


def test_export_cli_refuses_to_overwrite(smollm2_onnx: Path, tmp_path: Path) -> None:
    from tests.moe2.test_cli import _clean_error, moe2

    _clean_error(moe2("export-onnx", "smollm2-135m", "--out", str(smollm2_onnx)), 2, "pass --force")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    _clean_error(
        moe2("export-onnx", "smollm2-135m", "--out", str(other)), 2, "is not an ONNX export"
    )
    assert (other / "cat.jpg").exists()
    _clean_error(moe2("export-onnx", "no-such-model", "--out", str(tmp_path / "x")), 2, "neither")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / MODEL_FILE).write_bytes(b"")
    _clean_error(
        moe2("agent", "run", "--expert", f"x={unfinished}"), 2, "not a finished moe2 export-onnx"
    )


def test_a_graph_that_disagrees_with_its_description_is_refused(
    smollm2_onnx: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mismatch"
    folder.mkdir()
    for name in (MODEL_FILE, TOKENIZER_FILE):
        (folder / name).symlink_to(smollm2_onnx / name)
    meta = json.loads((smollm2_onnx / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "num_layers": 29}))
    with pytest.raises(ModelNotFound, match="does not have the inputs and outputs"):
        OnnxBackend(folder, OnnxOptions(n_ctx=128))
