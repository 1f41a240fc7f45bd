"""ONNX Runtime against llama.cpp on the same model: top-choice agreement and speed.

    .venv/bin/python benchmarks/onnx_agreement.py [--model smollm2-135m] [--prompts 100]
        [--onnx DIR] [--template cloze] [--max-tokens 32] [--generations 6]

The model's GGUF is exported by the project's own ``export_onnx`` (into a temporary folder,
unless ``--onnx DIR`` names an earlier export of it); both backends then score the same suite
prompts (spread evenly over the 1,385-prompt suite, so every category is in) through the same
choice template, in this process, on the CPU. Prints how often their top choices agree, how
far their choice probabilities are apart, each backend's accuracy, and their generation
throughput on the same story prompts (greedy, so both do the same number of steps unless one
stops early; the token counts are printed) with the ratio ONNX Runtime / llama.cpp.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.backends.onnx_runtime import OnnxBackend, OnnxOptions  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from agent.onnx.artifact import read_artifact  # noqa: E402
from agent.onnx.export import export_onnx  # noqa: E402
from agent.templates import TEMPLATES, choice_prompt  # noqa: E402
from benchmarks.prompts import story_prompts  # noqa: E402
from controller.suite import DEFAULT_SUITE, load_suite  # noqa: E402

N_CTX = 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--onnx", type=Path, help="an earlier moe2 export-onnx of --model")
    parser.add_argument("--template", choices=TEMPLATES, default="cloze")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--generations", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, model {args.model}")

    with tempfile.TemporaryDirectory(prefix="moe2-onnx-") as tmp:
        folder = args.onnx
        if folder is None:
            folder = Path(tmp) / args.model
            start = time.perf_counter()
            export_onnx(args.model, folder, say=lambda line: print(f"   export: {line}"))
            print(f"exported in {time.perf_counter() - start:.1f} s")
        artifact = read_artifact(folder)
        if artifact.model != args.model:
            sys.exit(f"{folder} is an export of {artifact.model}, not {args.model}")
        start = time.perf_counter()
        onnx = OnnxBackend(folder, OnnxOptions(n_ctx=N_CTX, n_threads=args.threads))
        onnx_load_s = time.perf_counter() - start
        start = time.perf_counter()
        llama = LlamaCppBackend(
            resolve_model(args.model), LlamaOptions(n_ctx=N_CTX, n_threads=args.threads)
        )
        llama_load_s = time.perf_counter() - start
        print(
            f"onnxruntime providers {onnx.providers}, weights {artifact.dtype} from "
            f"{artifact.source_quantisation}; loaded in {onnx_load_s:.2f} s "
            f"(llama.cpp {llama.quantisation}: {llama_load_s:.2f} s)"
        )
        agreement(onnx, llama, args.prompts, args.template)
        throughput(onnx, llama, args.generations, args.max_tokens)
        onnx.close()
        llama.close()


def agreement(onnx: OnnxBackend, llama: LlamaCppBackend, count: int, template: str) -> None:
    suite = load_suite(DEFAULT_SUITE)
    items = [suite[round(i * (len(suite) - 1) / max(count - 1, 1))] for i in range(count)]
    agree = right_onnx = right_llama = 0
    diffs: list[float] = []
    onnx_s = llama_s = 0.0
    for item in items:
        rendered = choice_prompt(template, item.prompt, item.question, item.choices)  # type: ignore[arg-type]
        start = time.perf_counter()
        a = onnx.score_choices(rendered.prefix, rendered.continuations)
        onnx_s += time.perf_counter() - start
        start = time.perf_counter()
        b = llama.score_choices(rendered.prefix, rendered.continuations)
        llama_s += time.perf_counter() - start
        top_a, top_b = int(np.argmax(a.probs)), int(np.argmax(b.probs))
        agree += top_a == top_b
        right_onnx += top_a == item.label
        right_llama += top_b == item.label
        diffs.append(float(np.abs(np.array(a.probs) - np.array(b.probs)).max()))
    n = len(items)
    categories = sorted({i.category for i in items})
    print(f"\n== top-choice agreement on {n} suite prompts ({', '.join(categories)}), {template}")
    print(f"   agree: {agree}/{n} = {agree / n:.1%}")
    print(
        f"   max |p_onnx - p_llama| per prompt: median {np.median(diffs):.4f}, "
        f"95th percentile {np.percentile(diffs, 95):.4f}, worst {max(diffs):.4f}"
    )
    print(f"   accuracy: onnxruntime {right_onnx / n:.1%}, llama.cpp {right_llama / n:.1%}")
    print(
        f"   scoring time: onnxruntime {onnx_s:.2f} s, llama.cpp {llama_s:.2f} s "
        f"(ratio {onnx_s / llama_s:.2f})"
    )


def throughput(onnx: OnnxBackend, llama: LlamaCppBackend, count: int, max_tokens: int) -> None:
    prompts = story_prompts(count)
    rows = []
    for name, backend in (("onnxruntime", onnx), ("llama.cpp", llama)):
        backend.generate("Hello.", 4, time.monotonic() + 60)  # warm-up
        tokens, seconds = 0, 0.0
        for text in prompts:
            start = time.perf_counter()
            gen = backend.generate(text, max_tokens, time.monotonic() + 300)
            seconds += time.perf_counter() - start
            tokens += gen.completion_tokens
        rows.append((name, tokens, seconds))
    print(f"\n== generation, {count} story prompts, up to {max_tokens} tokens each, greedy")
    for name, tokens, seconds in rows:
        print(
            f"   {name:<12} {tokens:>5} tokens in {seconds:6.2f} s = {tokens / seconds:6.1f} tok/s"
        )
    (_, t_onnx, s_onnx), (_, t_llama, s_llama) = rows
    print(f"   ratio onnxruntime / llama.cpp: {(t_onnx / s_onnx) / (t_llama / s_llama):.2f}")


if __name__ == "__main__":
    main()
