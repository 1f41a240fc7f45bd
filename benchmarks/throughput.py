"""Throughput: one agent serving one model, K prompts at once, ``parallel = 1`` vs ``parallel = N``.

    .venv/bin/python benchmarks/throughput.py [--ks 1,4,16,64] [--parallel 8] [--max-tokens 32]
                                              [--model smollm2-135m] [--quantize Q8_0]
                                              [--n-gpu-layers -1]

For each ``parallel`` a fresh fleet (Mosquitto or the embedded broker, the controller and one
agent, as separate processes) takes K story prompts of ``--max-tokens`` greedy tokens, all sent
at once, then K 4-choice prompts; then, in this process, the same model through the same
backend answers the same prompts one after another (the floor: direct sequential llama.cpp
calls, latency counted as if all K had arrived at once). Prints prompts/s and p50/p95 latency
for each, the ratio parallel N / parallel 1 at every K (target at K = 16: >= 1.8), and the
failures (target: none at K = 64). Greedy decoding: every way does the same work (the answers'
token counts are checked against the direct run's). ``--quantize`` serves the model re-quantised
(the expert setting of the same name, agent/requantize.py) in every way, direct floor included;
``--n-gpu-layers`` offloads it (a CUDA build of llama.cpp) in every way.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from agent.requantize import requantize  # noqa: E402
from agent.templates import choice_prompt  # noqa: E402
from benchmarks.prompts import story_prompts  # noqa: E402
from messages.answers import Answer  # noqa: E402
from messages.prompts import Prompt  # noqa: E402
from moe2.client.ask import Asker  # noqa: E402
from moe2.local.broker import start_local_broker  # noqa: E402
from moe2.local.fleet import AgentSpec, LocalFleet  # noqa: E402

N_CTX = 512
COUNTRIES = [
    ("France", ["Berlin", "Paris", "Madrid", "Rome"]),
    ("Japan", ["Seoul", "Beijing", "Tokyo", "Bangkok"]),
    ("Italy", ["Rome", "Milan", "Naples", "Turin"]),
    ("Spain", ["Lisbon", "Madrid", "Barcelona", "Seville"]),
    ("Germany", ["Vienna", "Munich", "Berlin", "Hamburg"]),
    ("Egypt", ["Cairo", "Tunis", "Algiers", "Rabat"]),
]


def choice_prompts(count: int) -> list[tuple[str, list[str]]]:
    return [
        (f"The capital of {COUNTRIES[i % len(COUNTRIES)][0]} is", COUNTRIES[i % len(COUNTRIES)][1])
        for i in range(count)
    ]


class TimedAsker(Asker):
    """An asker that notes when each answer arrives (answers come in any order)."""

    def __post_init__(self) -> None:
        self.arrived_at: dict[str, float] = {}
        self.on_every_answer = self._note_arrival
        super().__post_init__()

    def _note_arrival(self, answer: Answer) -> None:
        self.arrived_at.setdefault(answer.request_id, time.perf_counter())


@dataclass
class Run:
    label: str
    k: int
    kind: str
    latencies: list[float]
    wall_s: float
    failed: int
    tokens: list[int]

    @property
    def rate(self) -> float:
        return self.k / self.wall_s

    def pct(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def through_fleet(asker: TimedAsker, label: str, k: int, kind: str, max_tokens: int) -> Run:
    if kind == "gen":
        prompts = [
            Prompt(prompt=p, max_tokens=max_tokens, timeout_s=1800) for p in story_prompts(k)
        ]
    else:
        prompts = [Prompt(prompt=p, choices=c, timeout_s=1800) for p, c in choice_prompts(k)]
    start = time.perf_counter()
    sent = {}
    for prompt in prompts:
        sent[asker.send(prompt)] = time.perf_counter()
    answers = [asker.wait(rid, 1900) for rid in sent]
    end = max(asker.arrived_at[rid] for rid in sent)
    failed = sum(1 for a in answers if a.status != "ok")
    tokens = [(a.experts[0].completion_tokens or 0) if a.experts else -1 for a in answers]
    latencies = [asker.arrived_at[rid] - t for rid, t in sent.items()]
    return Run(label, k, kind, latencies, end - start, failed, tokens)


def direct(backend: LlamaCppBackend, k: int, kind: str, max_tokens: int) -> Run:
    """One after another, as if all K had arrived at once: prompt i waits for the i before."""
    done_at: list[float] = []
    tokens: list[int] = []
    start = time.perf_counter()
    if kind == "gen":
        for text in story_prompts(k):
            gen = backend.generate(text, max_tokens, time.monotonic() + 600)
            tokens.append(gen.completion_tokens)
            done_at.append(time.perf_counter() - start)
    else:
        for prefix, choices in choice_prompts(k):
            rendered = choice_prompt("cloze", prefix, None, choices)
            backend.score_choices(rendered.prefix, rendered.continuations)
            tokens.append(0)
            done_at.append(time.perf_counter() - start)
    return Run("direct", k, kind, done_at, done_at[-1], 0, tokens)


@dataclass(frozen=True)
class Served:
    """The model as every way in the run serves it."""

    model: str
    quantize: str | None = None
    n_gpu_layers: int = 0

    def path(self) -> Path:
        path = resolve_model(self.model)
        return requantize(path, self.quantize) if self.quantize else path

    def expert(self, parallel: int) -> dict[str, Any]:
        expert: dict[str, Any] = {"id": "expert", "model": self.model, "n_ctx": N_CTX}
        expert |= {"parallel": parallel, "n_gpu_layers": self.n_gpu_layers}
        return expert | ({"quantize": self.quantize} if self.quantize else {})

    def options(self, parallel: int = 1) -> LlamaOptions:
        return LlamaOptions(n_ctx=N_CTX, parallel=parallel, n_gpu_layers=self.n_gpu_layers)


def step_costs(served: Served, sizes: tuple[int, ...] = (1, 2, 4, 8, 16)) -> None:
    """What one decode step costs with n sequences, each one token (the batching's ceiling:
    n x the one-token time means no gain at all)."""
    backend = LlamaCppBackend(served.path(), served.options(parallel=max(sizes)))
    batched = backend._batched
    assert batched is not None
    batched._closed.set()  # its scheduler stops: the context is driven directly here
    batched._thread.join()
    lib = batched._lib
    one = 0.0
    for n in sizes:
        lib.llama_memory_clear(batched.memory, True)
        for seq in range(n):
            batched._batch.n_tokens = 0
            for pos in range(24):
                batched._add(100 + pos, pos, seq, pos == 23)
            batched._decode()
        start = time.perf_counter()
        steps = 16
        for step in range(steps):
            batched._batch.n_tokens = 0
            for seq in range(n):
                batched._add(200, 24 + step, seq, True)
            batched._decode()
        per_step = (time.perf_counter() - start) / steps
        one = one or per_step
        print(
            f"step of {n:2} tokens: {per_step * 1000:6.1f} ms, {per_step / n * 1000:5.1f} ms per "
            f"token; tokens/s x{one * n / per_step:.2f} of one sequence",
            flush=True,
        )
    lib.llama_batch_free(batched._batch)
    lib.llama_free(batched.ctx)
    backend.llm.close()


def fleet_runs(
    parallel: int, ks: list[int], max_tokens: int, served: Served, workdir: Path
) -> list[Run]:
    runs: list[Run] = []
    with start_local_broker() as broker:
        fleet = LocalFleet(broker.endpoint, f"tput{parallel}", workdir / f"p{parallel}")
        fleet.workdir.mkdir(parents=True, exist_ok=True)
        expert = served.expert(parallel)
        fleet.start_controller()
        fleet.start_agent(
            AgentSpec("tput-a", [expert], settings={"job_queue_capacity": max(ks) + 8})
        )
        try:
            fleet.wait_ready(["tput-a"])
            with TimedAsker(broker.endpoint, f"tput{parallel}") as asker:
                asker.require_controller()
                asker.ask(Prompt(prompt="Hello.", max_tokens=4))  # warm
                for kind in ("gen", "choice"):
                    for k in ks:
                        run = through_fleet(asker, f"parallel={parallel}", k, kind, max_tokens)
                        runs.append(run)
                        report(run)
        finally:
            fleet.stop()
    return runs


def report(run: Run) -> None:
    print(
        f"{run.kind:6} K={run.k:<3} {run.label:12} {run.rate:7.2f} prompts/s  "
        f"p50 {run.pct(0.5) * 1000:8.0f} ms  p95 {run.pct(0.95) * 1000:8.0f} ms  "
        f"failed {run.failed}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,4,16,64")
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quantize", choices=["Q8_0", "Q4_0"], default=None)
    parser.add_argument("--n-gpu-layers", type=int, default=0)
    parser.add_argument(
        "--steps-only", action="store_true", help="only the cost of a decode step by batch size"
    )
    args = parser.parse_args()
    served = Served(args.model, args.quantize, args.n_gpu_layers)
    if args.steps_only:
        step_costs(served)
        return
    ks = [int(k) for k in args.ks.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="moe2-tput-"))
    print(
        f"machine: {platform.node()} {platform.machine()}; model {args.model}; "
        f"quantize {args.quantize or 'as shipped'}; n_gpu_layers {args.n_gpu_layers}; "
        f"n_ctx {N_CTX}"
    )

    runs = fleet_runs(1, ks, args.max_tokens, served, workdir)
    runs += fleet_runs(args.parallel, ks, args.max_tokens, served, workdir)
    backend = LlamaCppBackend(served.path(), served.options())
    backend.generate("Hello.", 4, time.monotonic() + 60)
    floors = {}
    for kind in ("gen", "choice"):
        for k in ks:
            floors[(kind, k)] = direct(backend, k, kind, args.max_tokens)
            report(floors[(kind, k)])
    backend.close()

    print("\nsummary (prompts/s; latency p50/p95 in ms)")
    by = {(r.label, r.kind, r.k): r for r in runs}
    ok = True
    for kind in ("gen", "choice"):
        for k in ks:
            one, many = by[("parallel=1", kind, k)], by[(f"parallel={args.parallel}", kind, k)]
            floor = floors[(kind, k)]
            for r in (one, many):
                if kind == "gen" and r.tokens != floor.tokens:
                    print(f"  work differs at {kind} K={k} {r.label}: {r.tokens} vs {floor.tokens}")
                    ok = False
            ratio = many.rate / one.rate
            print(
                f"{kind:6} K={k:<3} direct {floor.rate:6.2f}  parallel=1 {one.rate:6.2f} "
                f"({one.pct(0.5) * 1000:.0f}/{one.pct(0.95) * 1000:.0f})  "
                f"parallel={args.parallel} {many.rate:6.2f} "
                f"({many.pct(0.5) * 1000:.0f}/{many.pct(0.95) * 1000:.0f})  "
                f"ratio {ratio:.2f}  failed {one.failed}+{many.failed}"
            )
    gen16 = ("gen", 16)
    if 16 in ks:
        ratio = by[(f"parallel={args.parallel}", *gen16)].rate / by[("parallel=1", *gen16)].rate
        print(f"target: gen K=16 ratio {ratio:.2f} (>= 1.8) {'met' if ratio >= 1.8 else 'NOT met'}")
    top = max(ks)
    failed = sum(r.failed for r in runs if r.k == top)
    print(f"target: no prompt fails at K={top}: {'met' if failed == 0 else f'{failed} failed'}")
    print(f"work identical (greedy token counts): {ok}")
    print("\ndecode step cost by batch size (one token per sequence)")
    step_costs(served)


if __name__ == "__main__":
    main()
