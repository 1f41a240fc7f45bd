"""Fleet overhead: end-to-end latency through broker + controller + agent, over direct llama.cpp.

    .venv/bin/python benchmarks/overhead.py [--prompts 20] [--max-tokens 32]
    .venv/bin/python benchmarks/overhead.py --instant [--prompts 200]

Starts Mosquitto (or the embedded broker), one agent serving SmolLM2-135M and the controller as
separate processes, and in this process the same model through the same backend with the same
options. Each prompt is run both ways, alternating, so drift hits both alike; greedy decoding
makes the two do identical work (the token counts are checked). Prints the medians and the
ratio fleet / direct (target <= 1.10).

``--instant``: the fleet's own added latency. The controller runs as its own process on the
broker as above, and the agent is simulated in this process with the real message contract
(the scripted agent of tests/helpers.py: capabilities, status, telemetry, plans in, jobs in,
results out), answering each job the moment it arrives. Prompts go one at a time; prints the
median and p95 of the end-to-end time at the client and of the controller's receipt-to-answer
time (target: median <= 5 ms).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.backends.llama_cpp import LlamaCppBackend, LlamaOptions  # noqa: E402
from agent.models import resolve_model  # noqa: E402
from benchmarks.prompts import story_prompts  # noqa: E402
from messages.jobs import Job  # noqa: E402
from messages.prompts import Prompt  # noqa: E402
from messages.results import JobResult, LatencyBreakdown  # noqa: E402
from moe2.client.ask import Asker  # noqa: E402
from moe2.local.broker import start_local_broker  # noqa: E402
from moe2.local.fleet import AgentSpec, LocalFleet  # noqa: E402
from tests.helpers import Behaviour, ScriptedAgent  # noqa: E402

N_CTX = 512


def instant_result(agent_id: str) -> Behaviour:
    """Every job answered at once, one token."""

    def answer(job: Job) -> JobResult:
        return JobResult(
            request_id=job.request_id,
            expert_id=job.expert_id,
            agent_id=agent_id,
            ok=True,
            text="ok",
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
            latency=LatencyBreakdown(queue_s=0.0, load_s=0.0, first_token_s=0.0, total_s=0.0),
        )

    return answer


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _instant_run(count: int, ledger_sync: bool) -> tuple[list[float], list[float], str]:
    """``count`` prompts one at a time through a controller and an instant agent: end-to-end
    and controller-side latencies, s."""
    workdir = Path(tempfile.mkdtemp(prefix="moe2-bench-"))
    config = workdir / "controller.toml"
    config.write_text(f"ledger_sync = {str(ledger_sync).lower()}\n")
    with start_local_broker() as broker:
        fleet = LocalFleet(broker.endpoint, "instant", workdir)
        fleet.start_controller(extra=["--config", str(config)])
        agent = ScriptedAgent(
            broker.endpoint,
            "instant",
            "sim-a",
            "instant",
            instant_result("sim-a"),
            parallel=8,
            capacity=32,
            telemetry_s=0.5,
        )
        agent.start()
        try:
            fleet.wait_ready(["sim-a"])
            with Asker(broker.endpoint, "instant") as asker:
                asker.require_controller()
                for _ in range(20):  # warm
                    asker.ask(Prompt(prompt="Hello.", max_tokens=4))
                e2e, inside = [], []
                for i in range(count):
                    start = time.perf_counter()
                    answer = asker.ask(Prompt(prompt=f"Hello {i}.", max_tokens=4))
                    e2e.append(time.perf_counter() - start)
                    if answer.status != "ok":
                        raise SystemExit(f"prompt {i}: {answer.status} {answer.error}")
                    inside.append(answer.latency_s)
        finally:
            agent.stop()
            fleet.stop()
    return e2e, inside, f"{broker.kind} (MQTT {broker.mqtt_version})"


def instant(count: int) -> None:
    """The fleet's own latency with the ledger synced per prompt (the default) and, as the
    baseline in the same run, only flushed."""
    runs = {sync: _instant_run(count, sync) for sync in (False, True)}
    print(f"machine: {platform.node()} {platform.machine()}")
    print(f"broker: {runs[True][2]}; prompts: {count} per run, one at a time")
    for sync, (e2e, inside, _) in runs.items():
        label = "ledger synced " if sync else "ledger flushed"
        print(
            f"{label}  end to end median {statistics.median(e2e) * 1000:6.2f} ms  "
            f"p95 {pct(e2e, 0.95) * 1000:6.2f} ms (min {min(e2e) * 1000:.2f});  "
            f"controller receipt to answer median {statistics.median(inside) * 1000:6.2f} ms"
        )
    med = statistics.median(runs[True][0]) * 1000
    base = statistics.median(runs[False][0]) * 1000
    print(f"synced / flushed (medians): {med / base:.3f}")
    print(f"fleet's added latency (median, default settings): {med:.2f} ms  (target <= 5 ms: "
          f"{'met' if med <= 5 else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--instant", action="store_true", help="simulated instant experts: the fleet's own latency"
    )
    args = parser.parse_args()
    if args.instant:
        instant(args.prompts if args.prompts != 20 else 200)
        return
    prompts = story_prompts(args.prompts)

    workdir = Path(tempfile.mkdtemp(prefix="moe2-bench-"))
    with start_local_broker() as broker:
        fleet = LocalFleet(broker.endpoint, "bench", workdir)
        expert = {"id": "smollm2", "model": "smollm2-135m", "n_ctx": N_CTX}
        fleet.start_controller()
        fleet.start_agent(AgentSpec("bench-a", [expert]))
        try:
            fleet.wait_ready(["bench-a"])
            direct = LlamaCppBackend(resolve_model("smollm2-135m"), LlamaOptions(n_ctx=N_CTX))
            with Asker(broker.endpoint, "bench") as asker:
                asker.require_controller()
                warm = Prompt(prompt="Hello.", max_tokens=4)
                asker.ask(warm)
                direct.generate(warm.prompt, 4, time.monotonic() + 60)
                fleet_s, direct_s = [], []
                for text in prompts:
                    prompt = Prompt(prompt=text, max_tokens=args.max_tokens)
                    start = time.perf_counter()
                    answer = asker.ask(prompt)
                    fleet_s.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    gen = direct.generate(text, args.max_tokens, time.monotonic() + 60)
                    direct_s.append(time.perf_counter() - start)
                    tokens = answer.experts[0].completion_tokens
                    if answer.status != "ok" or tokens != gen.completion_tokens:
                        raise SystemExit(
                            f"work differs for {text!r}: {tokens} vs {gen.completion_tokens}"
                        )
            direct.close()
        finally:
            fleet.stop()

    med_fleet, med_direct = statistics.median(fleet_s), statistics.median(direct_s)
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}".strip())
    print(
        f"broker: {broker.kind} (MQTT {broker.mqtt_version}); prompts: {len(prompts)}; "
        f"max tokens: {args.max_tokens}"
    )
    print(
        f"direct llama.cpp  median {med_direct * 1000:8.1f} ms  "
        f"(min {min(direct_s) * 1000:.1f}, max {max(direct_s) * 1000:.1f})"
    )
    print(
        f"through the fleet median {med_fleet * 1000:8.1f} ms  "
        f"(min {min(fleet_s) * 1000:.1f}, max {max(fleet_s) * 1000:.1f})"
    )
    print(f"ratio fleet / direct (medians): {med_fleet / med_direct:.3f}  (target <= 1.10)")


if __name__ == "__main__":
    main()
