"""Power-sampler overhead: llama.cpp generation throughput with a 10 Hz sampler on, over off.

    .venv/bin/python benchmarks/telemetry.py [--prompts 10] [--rounds 3] [--max-tokens 32]

Runs SmolLM2-135M through the agent's llama.cpp backend in this process. Each prompt is generated
with the power sampler running (metering it as a job, as the agent would) and without, the order
alternating from prompt to prompt so drift hits both alike; greedy decoding makes both do the same
work (token counts are checked). The sampler reads the detected sensor, or a declared power model
when this machine has none (the source is printed). Prints tokens/s both ways and the ratio
on / off (target >= 0.98).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from agent.power.detect import detect_sensor  # noqa: E402
from agent.power.sampler import PowerSampler  # noqa: E402
from benchmarks.prompts import story_prompts  # noqa: E402

N_CTX = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="passes over the prompts")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--idle-w", type=float, default=5.0, help="declared model, no sensor")
    parser.add_argument("--busy-w", type=float, default=15.0, help="declared model, no sensor")
    args = parser.parse_args()
    prompts = story_prompts(args.prompts)

    sensor = detect_sensor(power_model=(args.idle_w, args.busy_w))
    assert sensor is not None  # a declared model is always there to fall back on
    backend = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=N_CTX))
    backend.generate("Hello.", 4, time.monotonic() + 60)  # warm-up

    on_s = off_s = 0.0
    on_tokens = off_tokens = 0
    jobs_j: list[float] = []
    for r in range(args.rounds):
        for i, text in enumerate(prompts):
            for sampled in (True, False) if (i + r) % 2 == 0 else (False, True):
                if sampled:
                    with PowerSampler(sensor, rate_hz=args.rate_hz) as sampler:
                        start = time.perf_counter()
                        with sampler.job() as energy:
                            gen = backend.generate(text, args.max_tokens, time.monotonic() + 60)
                        on_s += time.perf_counter() - start
                    on_tokens += gen.completion_tokens
                    jobs_j.append(energy.total_j or 0.0)
                else:
                    start = time.perf_counter()
                    gen = backend.generate(text, args.max_tokens, time.monotonic() + 60)
                    off_s += time.perf_counter() - start
                    off_tokens += gen.completion_tokens
    backend.close()
    sensor.close()
    if on_tokens != off_tokens:
        raise SystemExit(f"work differs: {on_tokens} tokens with the sampler, {off_tokens} without")

    on_tps, off_tps = on_tokens / on_s, off_tokens / off_s
    kind = "measured" if sensor.measured else "estimated"
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}".strip())
    print(
        f"sensor: {sensor.source} ({kind}); sampler {args.rate_hz:g} Hz; "
        f"generations: {len(prompts)} prompts x {args.rounds} rounds each way; "
        f"max tokens: {args.max_tokens}"
    )
    print(f"sampler off: {off_tps:8.1f} tokens/s  ({off_tokens} tokens in {off_s:.2f} s)")
    print(f"sampler on:  {on_tps:8.1f} tokens/s  ({on_tokens} tokens in {on_s:.2f} s)")
    print(f"mean job energy with the sampler: {sum(jobs_j) / len(jobs_j):.3f} J ({kind})")
    print(f"ratio on / off (throughput): {on_tps / off_tps:.3f}  (target >= 0.98)")


if __name__ == "__main__":
    main()
