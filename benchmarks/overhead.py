"""Fleet overhead: end-to-end latency through broker + controller + agent, over direct llama.cpp.

    .venv/bin/python benchmarks/overhead.py [--prompts 20] [--max-tokens 32]

Starts Mosquitto (or the embedded broker), one agent serving SmolLM2-135M and the controller as
separate processes, and in this process the same model through the same backend with the same
options. Each prompt is run both ways, alternating, so drift hits both alike; greedy decoding
makes the two do identical work (the token counts are checked). Prints the medians and the
ratio fleet / direct (target <= 1.10).
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
from messages.prompts import Prompt  # noqa: E402
from moe2.ask import Asker  # noqa: E402
from moe2.broker import start_local_broker  # noqa: E402
from moe2.local_fleet import AgentSpec, LocalFleet  # noqa: E402

N_CTX = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
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
