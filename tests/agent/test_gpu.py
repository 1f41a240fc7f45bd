"""The agent's CUDA paths for real: llama.cpp offload, onnxruntime-gpu's CUDA provider and NVML
energy on a job. Each test skips, saying why, on a machine without the piece (CI has no GPU)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions
from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions
from agent.host import nvml_gpu_names
from agent.models import resolve_model
from agent.power.nvml import NvmlSensor
from agent.power.sampler import PowerSampler

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu() -> str:
    names = nvml_gpu_names()
    if not names:
        pytest.skip("no NVIDIA GPU here: NVML finds none (CI has no GPU)")
    return names[0]


def _llama_on_gpu() -> LlamaCppBackend:
    from llama_cpp import llama_cpp as lib

    if not lib.llama_supports_gpu_offload():
        pytest.skip("llama-cpp-python is built without GPU offload (CMAKE_ARGS=-DGGML_CUDA=on)")
    return LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=512, n_gpu_layers=-1))


def test_llama_cpp_offloads_every_layer(gpu: str) -> None:
    backend = _llama_on_gpu()
    try:
        assert backend.offloads_to_gpu
        scores = backend.score_choices("The capital of France is", [" Paris", " Rome"])
        gen = backend.generate("Say hello.", 8, time.monotonic() + 60)
    finally:
        backend.close()
    assert scores.probs[0] > 0.5 and gen.completion_tokens > 0


def test_onnxruntime_runs_on_cuda(gpu: str, smollm2_onnx: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has no CUDA provider (install the onnx-gpu extra)")
    cuda = OnnxBackend(
        smollm2_onnx,
        OnnxOptions(n_ctx=512, providers=("CUDAExecutionProvider", "CPUExecutionProvider")),
    )
    cpu = OnnxBackend(smollm2_onnx, OnnxOptions(n_ctx=512, providers=("CPUExecutionProvider",)))
    try:
        assert cuda.providers[0] == "CUDAExecutionProvider", cuda.providers  # not a silent CPU
        prefix, choices = "Question: What is the largest planet?\nAnswer:", [" Jupiter", " Mars"]
        on_gpu = cuda.score_choices(prefix, choices)
        on_cpu = cpu.score_choices(prefix, choices)
        gen = cuda.generate("Say hello.", 8, time.monotonic() + 60)
    finally:
        cuda.close()
        cpu.close()
    assert on_gpu.logprobs == pytest.approx(on_cpu.logprobs, abs=0.05)
    assert gen.completion_tokens > 0


def test_nvml_measures_a_gpu_job(gpu: str) -> None:
    sensor = NvmlSensor.detect()
    if sensor is None:
        pytest.skip(f"NVML reports neither power nor energy on {gpu}")
    backend = _llama_on_gpu()
    try:
        with PowerSampler(sensor, rate_hz=10) as sampler:
            time.sleep(1.0)  # idle samples for the baseline
            with sampler.job() as energy:
                backend.generate("Write a story about a lighthouse.", 64, time.monotonic() + 60)
    finally:
        backend.close()
        sensor.close()
    reading = energy.energy_reading()
    assert reading is not None and reading.source == "nvml" and not reading.estimated
    assert reading.energy_j > 0
