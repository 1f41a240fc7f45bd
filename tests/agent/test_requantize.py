"""Re-quantised models: made once by llama.cpp's quantizer, cached, served; bad input refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions
from agent.experts import ExpertPool
from agent.models import resolve_model
from agent.requantize import RequantizeFailed, requantize, requantized_path
from agent.settings import ExpertConfig
from agent.templates import choice_prompt


@pytest.fixture(scope="module")
def q8_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return requantize(resolve_model("smollm2-135m"), "Q8_0", tmp_path_factory.mktemp("cache"))


def test_q8_copy_is_a_q8_model_that_still_answers(q8_model: Path) -> None:
    assert q8_model.name.endswith(".Q8_0.gguf")
    backend = LlamaCppBackend(q8_model, LlamaOptions(n_ctx=256))
    try:
        assert backend.quantisation == "Q8_0"
        rendered = choice_prompt(
            "cloze", "The capital of France is", None, ["Berlin", "Paris", "Madrid", "Rome"]
        )
        scores = backend.score_choices(rendered.prefix, rendered.continuations)
        best = max(range(4), key=lambda i: scores.logprobs[i])
        assert best == 1  # Paris, as the shipped Q4_1 weights answer
    finally:
        backend.close()


def test_second_request_takes_the_cached_file(q8_model: Path) -> None:
    made_ns = q8_model.stat().st_mtime_ns
    again = requantize(resolve_model("smollm2-135m"), "Q8_0", q8_model.parent)
    assert again == q8_model
    assert again.stat().st_mtime_ns == made_ns  # not converted a second time


def test_a_changed_source_gets_a_new_cache_file(tmp_path: Path) -> None:
    source = tmp_path / "model.gguf"
    shutil.copyfile(resolve_model("smollm2-135m"), source)
    before = requantized_path(source, "Q4_0", tmp_path / "cache")
    os.utime(source, ns=(1_000_000_000, 1_000_000_000))
    assert requantized_path(source, "Q4_0", tmp_path / "cache") != before


def test_a_file_that_is_not_gguf_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    source = tmp_path / "broken.gguf"
    source.write_bytes(b"not a model at all" * 100)
    cache = tmp_path / "cache"
    with pytest.raises(RequantizeFailed, match="could not re-quantise .*broken.gguf"):
        requantize(source, "Q8_0", cache)
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_conversion_killed_half_way_leaves_nothing_behind_the_next(tmp_path: Path) -> None:
    source = resolve_model("smollm2-135m")
    cache = tmp_path / "cache"
    cache.mkdir()
    out = requantized_path(source, "Q4_0", cache)
    stale = out.with_suffix(".partial-99999")  # an agent SIGKILLed while converting
    stale.write_bytes(b"half a model")
    assert requantize(source, "Q4_0", cache) == out and out.is_file()
    assert not stale.exists()


def test_unsupported_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="supported: Q4_0, Q8_0"):
        requantize(resolve_model("smollm2-135m"), "Q5_1", tmp_path)


def test_settings_refuse_unknown_types_and_onnx_experts(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="quantize"):
        ExpertConfig(id="smol", model="smollm2-135m", quantize="Q5_1")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="quantize is a llama.cpp option"):
        ExpertConfig(id="smol", model=str(tmp_path), backend="onnxruntime", quantize="Q8_0")


def test_an_expert_with_quantize_serves_the_converted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOE2_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config = ExpertConfig(id="smol8", model="smollm2-135m", quantize="Q8_0", n_ctx=256)
    pool = ExpertPool([config])
    assert pool.paths["smol8"].parent == tmp_path / "moe2" / "models"
    # the cache every process shares, when set, holds the models too
    monkeypatch.setenv("MOE2_CACHE_DIR", str(tmp_path / "shared"))
    assert ExpertPool([config]).paths["smol8"].parent == tmp_path / "shared" / "models"
    pool.get("smol8")
    try:
        (info,) = pool.info()
        assert info.quantisation == "Q8_0"
    finally:
        pool.unload("smol8")


def test_agent_run_says_when_a_conversion_fails(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF but nothing after it")
    config = tmp_path / "agent.toml"
    config.write_text(
        'broker = "mqtt://127.0.0.1:1"\n[[experts]]\nid = "b"\n'
        f'model = "{broken}"\nquantize = "Q8_0"\n'
    )
    run = subprocess.run(
        [sys.executable, "-m", "moe2", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )
    assert run.returncode == 2, run.stderr
    assert "could not re-quantise" in run.stderr and "Traceback" not in run.stderr
