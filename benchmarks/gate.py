"""Gate inference cost per prompt: encode with MiniLM + the gate network, on this CPU.

    .venv/bin/python benchmarks/gate.py --gate GATE.pt [--prompts 200]

Prints the median milliseconds per prompt (one prompt at a time, as the controller runs it;
target <= 10 ms) and, as the baseline measured in the same run, the median time of the cheapest
expert's work on the same prompts (SmolLM2-135M scoring 4 choices in-process), with the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from agent.templates import choice_prompt  # noqa: E402
from controller.gate.gate import Gate  # noqa: E402
from controller.suite import load_suite  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=200)
    args = parser.parse_args()
    items = [i for i in load_suite() if i.split == "test"][: args.prompts]
    gate = Gate.load(args.gate)
    gate.logits([items[0].prompt])  # load the encoder and warm up
    gate_s = []
    for item in items:
        start = time.perf_counter()
        gate.logits([item.prompt])
        gate_s.append(time.perf_counter() - start)
    expert = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=1024))
    expert_s = []
    for item in items:
        rendered = choice_prompt("cloze", item.prompt, item.question, item.choices)
        start = time.perf_counter()
        expert.score_choices(rendered.prefix, rendered.continuations)
        expert_s.append(time.perf_counter() - start)
    g, e = statistics.median(gate_s), statistics.median(expert_s)
    print(f"prompts: {len(items)} (test split), one at a time")
    print(
        f"gate (MiniLM encode + network): median {g * 1000:.2f} ms, p90 "
        f"{sorted(gate_s)[int(0.9 * len(gate_s))] * 1000:.2f} ms  (target <= 10 ms)"
    )
    print(f"baseline, SmolLM2-135M cloze scoring: median {e * 1000:.2f} ms")
    print(f"ratio gate / cheapest expert: {g / e:.3f}")


if __name__ == "__main__":
    main()
