"""Tokens per second and joules per query of every engine this machine can run, one run.

    .venv/bin/python benchmarks/device_energy.py [--model smollm2-135m] [--onnx DIR]
        [--queries 20] [--max-tokens 32] [--idle-w W --busy-w W]

Engines, each where this machine has it: llama.cpp on the CPU (the baseline), llama.cpp with
every layer offloaded (a CUDA build), ONNX Runtime on the CPU, ONNX Runtime's CUDA provider
(onnxruntime-gpu; the provider the session really uses is printed). Each engine answers the
same ``--queries`` story prompts (greedy, up to ``--max-tokens``), metered as the agent meters
jobs: the detected sensor (INA3221, NVML, RAPL) through the power sampler at 10 Hz, or, on a box
without one, a declared model given by ``--idle-w``/``--busy-w``, printed as an estimate; with
neither, energy is absent. Prints the accelerator, the sensor, tokens/s and J per query per
engine, and their ratios to the baseline.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.base import Backend  # noqa: E402
from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions  # noqa: E402
from agent.host import accelerator_name  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from agent.onnx.export import export_onnx  # noqa: E402
from agent.power.detect import detect_sensor  # noqa: E402
from agent.power.sampler import PowerSampler  # noqa: E402
from benchmarks.prompts import story_prompts  # noqa: E402

N_CTX = 1024


def engines(model: str, onnx_dir: Path) -> list[tuple[str, Callable[[], Backend]]]:
    """(label, loader) of every engine this machine can run; the CPU llama.cpp first."""
    import onnxruntime
    from llama_cpp import llama_cpp as lib

    gguf = resolve_model(model)
    found: list[tuple[str, Callable[[], Backend]]] = [
        ("llama.cpp CPU", lambda: LlamaCppBackend(gguf, LlamaOptions(n_ctx=N_CTX)))
    ]
    if lib.llama_supports_gpu_offload():
        found.append(
            (
                "llama.cpp GPU",
                lambda: LlamaCppBackend(gguf, LlamaOptions(n_ctx=N_CTX, n_gpu_layers=-1)),
            )
        )
    cpu = ("CPUExecutionProvider",)
    found.append(
        ("onnxruntime CPU", lambda: OnnxBackend(onnx_dir, OnnxOptions(N_CTX, providers=cpu)))
    )
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        cuda = ("CUDAExecutionProvider", "CPUExecutionProvider")
        found.append(
            ("onnxruntime CUDA", lambda: OnnxBackend(onnx_dir, OnnxOptions(N_CTX, providers=cuda)))
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--onnx", type=Path, help="an earlier moe2 export-onnx of --model")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--idle-w", type=float, help="declared idle power (no sensor), W")
    parser.add_argument("--busy-w", type=float, help="declared busy power (no sensor), W")
    args = parser.parse_args()
    model = None if args.busy_w is None else (args.idle_w or 0.0, args.busy_w)
    sensor = detect_sensor(power_model=model)
    if sensor is None:
        kind = "none (energy absent)"
    elif sensor.measured:
        kind = f"{sensor.source} (measured)"
    else:
        kind = f"declared model {args.idle_w or 0.0:g}/{args.busy_w:g} W (an estimate)"
    print(
        f"python {platform.python_version()}, {platform.machine()}, accelerator "
        f"{accelerator_name() or 'none'}; power sensor {kind}; model {args.model}"
    )
    prompts = story_prompts(args.queries)
    with tempfile.TemporaryDirectory(prefix="moe2-onnx-") as tmp:
        onnx_dir = args.onnx
        if onnx_dir is None:
            onnx_dir = Path(tmp) / args.model
            export_onnx(args.model, onnx_dir, say=lambda line: print(f"   export: {line}"))
        rows = []
        sampler = None if sensor is None else PowerSampler(sensor, rate_hz=10.0).start()
        try:
            for label, load in engines(args.model, onnx_dir):
                backend = load()
                backend.generate("Hello.", 4, time.monotonic() + 60)  # warm-up
                if sampler is not None:
                    time.sleep(1.0)  # idle samples for the baseline
                tokens, seconds, joules = 0, 0.0, []
                for text in prompts:
                    start = time.perf_counter()
                    if sampler is None:
                        gen = backend.generate(text, args.max_tokens, time.monotonic() + 300)
                    else:
                        with sampler.job() as energy:
                            gen = backend.generate(text, args.max_tokens, time.monotonic() + 300)
                        if energy.total_j is not None:
                            joules.append(energy.total_j)
                    seconds += time.perf_counter() - start
                    tokens += gen.completion_tokens
                where = ", ".join(backend.providers) if backend.providers else ""
                backend.close()
                j = statistics.mean(joules) if joules else None
                rows.append((label + (f" [{where}]" if where else ""), tokens / seconds, j))
        finally:
            if sampler is not None:
                sampler.stop()
    base_rate, base_j = rows[0][1], rows[0][2]
    print(f"\n{args.queries} story prompts, up to {args.max_tokens} tokens, greedy")
    print(f"   {'engine':<48} {'tok/s':>7} {'x base':>7} {'J/query':>9} {'x base':>7}")
    for label, rate, j in rows:
        j_txt = "absent" if j is None else f"{j:.2f}"
        j_ratio = "" if j is None or not base_j else f"{j / base_j:.2f}"
        print(f"   {label:<48} {rate:>7.1f} {rate / base_rate:>7.2f} {j_txt:>9} {j_ratio:>7}")
    if sensor is not None and not sensor.measured:
        print("   energy: estimated from the declared power model, not measured")


if __name__ == "__main__":
    main()
