"""Gateway latency: time to first streamed token against the whole answer, and what the HTTP
gateway adds over asking on MQTT (`moe2 ask`'s Asker), in the same run.

    .venv/bin/python benchmarks/gateway.py [--prompts 12] [--max-tokens 48]

Starts Mosquitto (or the embedded broker), one agent serving SmolLM2-135M, the controller and
`moe2 gateway` as separate processes. Each prompt is asked three ways, in turn, so drift hits
all alike: by the Asker over MQTT, through the gateway's /v1/completions with the official
openai client, and the same streamed (stream: true). Greedy decoding makes the three do the
same work (the completion tokens are checked), and each prompt is read once untimed first, so
that all three find it in the agent's context. Prints medians: whole answer each way, the
gateway's added latency (gateway minus Asker, per prompt) and the time to the first streamed
token.

    .venv/bin/python benchmarks/gateway.py --disconnect 12 [--parallel 8] [--max-inflight 4]

The disconnect scenario instead: each of N streams (max_tokens 400) is closed after its first
token, --parallel K at once (1: one after the other), against a gateway with --max-inflight 4.
Prints how many of the agent's jobs stopped (its job_cancelled events), how long after the
close, the tokens each had generated, the results published anyway (whole generations nobody
reads) and the prompts re-published after the close.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import openai  # noqa: E402

from benchmarks.prompts import story_prompts  # noqa: E402
from messages import topics  # noqa: E402
from messages.events import AgentEvent  # noqa: E402
from messages.prompts import Prompt  # noqa: E402
from messages.results import JobResult  # noqa: E402
from moe2.client.ask import Asker  # noqa: E402
from moe2.local.broker import free_port, start_local_broker  # noqa: E402
from moe2.local.fleet import AgentSpec, LocalFleet, wait_until  # noqa: E402
from tests.helpers import Recorder  # noqa: E402

DISCONNECT_MAX_TOKENS = 400


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


def disconnect(broker: object, url: str, fleet: str, streams: int, parallel: int) -> None:
    """Streams closed after their first token: what the fleet still spends on them."""
    endpoint = broker.endpoint  # type: ignore[attr-defined]
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    rec = Recorder(endpoint, fleet).watch(topics.AGENT_RESULTS)
    rec.watch(topics.AGENT_EVENTS).watch(topics.PROMPTS)
    closes: dict[str, tuple[float, int]] = {}  # request id -> (close time, prompts seen by then)
    busy: list[int] = []

    def one(i: int) -> None:
        while True:  # a 429 is retried: every stream is opened and closed in the end
            try:
                stream = client.completions.create(
                    model="moe2",
                    prompt=f"Once upon a time, in story {i}, there was",
                    max_tokens=DISCONNECT_MAX_TOKENS,
                    stream=True,
                )
                break
            except openai.RateLimitError:
                busy.append(i)
                time.sleep(0.1)
        first = next(c for c in stream if c.choices and c.choices[0].text)
        stream.close()
        rid = first.id.removeprefix("cmpl-")
        closes[rid] = (time.time(), sum(1 for m in rec.messages(Prompt) if m.request_id == rid))

    with rec:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(one, range(streams)))
        time.sleep(8.0)  # past the gateway's re-send interval: a re-publish would show
        events = {
            e.request_id: e
            for e in rec.messages(AgentEvent)
            if e.kind == "job_cancelled" and e.request_id in closes
        }
        results = [r for r in rec.messages(JobResult) if r.request_id in closes]
        republished = sum(
            sum(1 for m in rec.messages(Prompt) if m.request_id == rid) - seen
            for rid, (_, seen) in closes.items()
        )
    after = [events[r].time_s - closes[r][0] for r in events]
    tokens = [events[r].completion_tokens or 0 for r in events]
    print(f"streams closed after their first token: {len(closes)} (429s on the way: {len(busy)})")
    print(f"agent jobs stopped: {len(events)} of {len(closes)}; results published anyway: "
          f"{len(results)}")  # fmt: skip
    if after:
        print(f"stopped after the close: median {statistics.median(after):.3f} s, "
              f"max {max(after):.3f} s")  # fmt: skip
        print(f"tokens generated per job (of {DISCONNECT_MAX_TOKENS}): median "
              f"{statistics.median(tokens):g}, max {max(tokens)}")  # fmt: skip
    print(f"prompts re-published after the close: {republished}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--disconnect", type=int, default=0, metavar="N")
    parser.add_argument("--max-inflight", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=1, help="--disconnect: streams at once")
    args = parser.parse_args()
    prompts = story_prompts(args.prompts)
    workdir = Path(tempfile.mkdtemp(prefix="moe2-gw-bench-"))
    ask_s: list[float] = []
    gw_s: list[float] = []
    first_s: list[float] = []
    stream_s: list[float] = []
    with start_local_broker() as broker:
        fleet = LocalFleet(broker.endpoint, "gwbench", workdir)
        expert = {"id": "smollm2", "model": "smollm2-135m", "n_ctx": 512}
        fleet.start_controller()
        fleet.start_agent(AgentSpec("bench-a", [expert]))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        try:
            fleet.wait_ready(["bench-a"])
            fleet._spawn(
                "gateway",
                ["gateway", "--broker", broker.url, "--fleet", "gwbench", "--listen",
                 f"127.0.0.1:{port}", "--log-level", "warning",
                 "--max-inflight", str(args.max_inflight if args.disconnect else 64)],
            )  # fmt: skip
            if not wait_until(lambda: _healthy(url), 60, 0.3):
                raise SystemExit(f"gateway not healthy:\n{fleet.log_tail('gateway')}")
            if args.disconnect:
                print(f"machine: {platform.node()} {platform.machine()}; "
                      f"{time.strftime('%Y-%m-%d %H:%M')}; one SmolLM2-135M agent; gateway "
                      f"--max-inflight {args.max_inflight}; {args.parallel} at once")  # fmt: skip
                disconnect(broker, url, "gwbench", args.disconnect, args.parallel)
                return
            client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            with Asker(broker.endpoint, "gwbench") as asker:
                asker.require_controller()
                asker.ask(Prompt(prompt="Hello.", max_tokens=4))
                client.completions.create(model="moe2", prompt="Hello.", max_tokens=4)
                for text in prompts:
                    # The agent's llama.cpp context reuses the prompt it last read: read it
                    # once untimed, so that no way of asking pays the prefill alone.
                    asker.ask(Prompt(prompt=text, max_tokens=1))
                    start = time.perf_counter()
                    answer = asker.ask(Prompt(prompt=text, max_tokens=args.max_tokens))
                    ask_s.append(time.perf_counter() - start)

                    start = time.perf_counter()
                    reply = client.completions.create(
                        model="moe2", prompt=text, max_tokens=args.max_tokens
                    )
                    gw_s.append(time.perf_counter() - start)

                    start = time.perf_counter()
                    first = None
                    pieces = []
                    for chunk in client.completions.create(
                        model="moe2", prompt=text, max_tokens=args.max_tokens, stream=True
                    ):
                        if chunk.choices and chunk.choices[0].text:
                            if first is None:
                                first = time.perf_counter() - start
                            pieces.append(chunk.choices[0].text)
                    stream_s.append(time.perf_counter() - start)
                    first_s.append(first if first is not None else stream_s[-1])

                    tokens = answer.experts[0].completion_tokens
                    usage = reply.usage.completion_tokens if reply.usage else -1
                    if answer.status != "ok" or usage != tokens:
                        raise SystemExit(f"work differs for {text!r}: {tokens} vs {usage}")
                    if "".join(pieces) != reply.choices[0].text:
                        raise SystemExit(f"the stream differs from the answer for {text!r}")
        finally:
            fleet.stop()

    def med(values: list[float]) -> float:
        return statistics.median(values)

    added = [g - a for g, a in zip(gw_s, ask_s, strict=True)]
    print(f"machine: {platform.node()} {platform.machine()}; python {platform.python_version()}")
    print(
        f"broker: {broker.kind} (MQTT {broker.mqtt_version}); prompts: {len(prompts)}; "
        f"max tokens: {args.max_tokens}; one SmolLM2-135M agent"
    )
    print(f"moe2 ask (Asker over MQTT), whole answer: median {med(ask_s):.3f} s")
    print(f"gateway /v1/completions, whole answer:    median {med(gw_s):.3f} s")
    print(
        f"gateway added latency (per prompt):        median {med(added) * 1000:+.1f} ms "
        f"(min {min(added) * 1000:+.1f}, max {max(added) * 1000:+.1f})"
    )
    print(
        f"gateway streamed: first token median {med(first_s):.3f} s, whole stream median "
        f"{med(stream_s):.3f} s (first token at {med(first_s) / med(stream_s):.0%} of it)"
    )


if __name__ == "__main__":
    main()
