"""The live loop, measured on real processes (Mosquitto, SmolLM2 and Gemma 3 agents):

    .venv/bin/python benchmarks/replan.py [--steady-s 40] [--cycles 2] [--json OUT]

1. Steady fleet: two agents (smollm2-cloze@edge-a, gemma3-cloze@edge-b) are profiled now
   (``moe2 profile`` on 3 items per category and split), a gate is trained on that profile, and
   a controller runs with both; nothing is slowed. The live cost model's estimates (probes every
   0.5 s, median of the last 16) are compared with the profile's costs, every 2 s for
   ``--steady-s``: relative error of the energy and of every category's delay.
2. Drift to new plan: delay budgets of 2.5 x the live delays; the agent of a planned expert is
   slowed (SIGSTOP 0.4 s / SIGCONT 0.1 s), then recovers, ``--cycles`` times: seconds from the
   slowdown to the first drift event naming it and to the plan without it, from the drift event
   that caused that plan to the plan (controller clock), and from recovery to the plan with it
   again.
3. Gate retraining for one new expert, in-process on the shipped lab profile (all 1,108 train
   and val prompts): a gate over five experts, then ``extend_gate`` with the sixth, from cached
   embeddings; beside it, training the six-expert gate from scratch, and both validation losses.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.gate.cache import CachedEncoder  # noqa: E402
from controller.gate.dataset import GateData  # noqa: E402
from controller.gate.encoder import PromptEncoder  # noqa: E402
from controller.gate.gate import Gate, file_sha256  # noqa: E402
from controller.gate.training import TrainConfig, train_gate  # noqa: E402
from controller.profile import load_profile  # noqa: E402
from controller.selection.from_profile import GatedProfile, expert_costs  # noqa: E402
from controller.suite import load_suite, stratified  # noqa: E402
from messages import topics  # noqa: E402
from messages.budgets import Budgets  # noqa: E402
from messages.bus import Bus  # noqa: E402
from messages.controller import ControllerEvent, FleetPlan  # noqa: E402
from messages.costs import CostTable  # noqa: E402
from messages.expert_key import agent_of, expert_key  # noqa: E402
from moe2.client.profiling import run_profile  # noqa: E402
from moe2.local.broker import start_mosquitto  # noqa: E402
from moe2.local.fleet import AgentSpec, LocalFleet, wait_until  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FLEET = "bench-replan"
KEYS = ("smollm2-cloze@edge-a", "gemma3-cloze@edge-b")


class Watch:
    def __init__(self, fleet: LocalFleet) -> None:
        self.items: list[tuple[float, Any]] = []
        self.bus = Bus(fleet.endpoint, FLEET, client_id=f"bench-{uuid.uuid4().hex[:6]}")
        for topic in (topics.CONTROLLER_PLAN, topics.CONTROLLER_EVENTS, topics.CONTROLLER_COSTS):
            self.bus.subscribe(topic, lambda i: self.items.append((time.monotonic(), i.message)))
        self.bus.connect()

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, m) for t, m in list(self.items) if isinstance(m, kind)]

    def costs(self) -> CostTable | None:
        tables = self.of(CostTable)
        return tables[-1][1] if tables else None

    def first(self, kind: type, since: float, pred: Any, timeout_s: float) -> tuple[float, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for t, m in self.of(kind):
                if t >= since and pred(m):
                    return t, m
            time.sleep(0.05)
        raise RuntimeError(f"no {kind.__name__} within {timeout_s} s")


def planned(plan: FleetPlan) -> set[str]:
    return {expert_key(a, e) for a, experts in plan.assignments.items() for e in experts}


def duty_cycle(pid: int, done: threading.Event) -> None:
    while not done.is_set():
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.4)
        os.kill(pid, signal.SIGCONT)
        done.wait(0.1)
    os.kill(pid, signal.SIGCONT)


def steady_and_drift(workdir: Path, steady_s: float, cycles: int) -> dict[str, Any]:
    from tests.conftest import GEMMA3, SMOLLM2

    with start_mosquitto(log_file=workdir / "mosquitto.log") as broker:
        fleet = LocalFleet(broker.endpoint, FLEET, workdir)
        try:
            fleet.start_controller("plain")
            power = {"power_model_w": 15.0}
            fleet.start_agent(AgentSpec("edge-a", [{**SMOLLM2, "id": "smollm2-cloze"}], power))
            fleet.start_agent(AgentSpec("edge-b", [{**GEMMA3, "id": "gemma3-cloze"}], power))
            fleet.wait_ready(["edge-a", "edge-b"])
            profile_path, gate_path = workdir / "profile.json", workdir / "gate.pt"
            started = time.perf_counter()
            items = stratified(load_suite(), 3)
            run = run_profile(broker.endpoint, FLEET, items, profile_path, show_progress=False)
            profiling_s = time.perf_counter() - started
            profile = load_profile(profile_path)
            data = GateData.from_profile(profile, CachedEncoder(PromptEncoder()))
            net, _ = train_gate(data.splits["train"], data.splits["val"], TrainConfig())
            Gate(net, data.expert_keys, FLEET, file_sha256(profile_path)).save(gate_path)
            seeds = expert_costs(profile, list(KEYS))
            fleet.kill("plain", signal.SIGTERM)
            fleet.processes.pop("plain")  # stopped on purpose: not a failure to wait_ready
            config = workdir / "controller.toml"
            config.write_text(
                "probe_interval_s = 0.5\ndrift_cooldown_s = 3.0\ncost_window = 16\n"
                "probe_timeout_s = 6.0\n"
            )
            watch = Watch(fleet)
            fleet.start_controller(
                "live",
                extra=["--profile", str(profile_path), "--gate", str(gate_path),
                       "--config", str(config)],
            )  # fmt: skip
            fleet.wait_ready(["edge-a", "edge-b"])

            def samples(k: str) -> int:
                table = watch.costs()
                rows = {r.key: r for r in table.experts} if table else {}
                return rows[k].delay_samples if k in rows else 0

            wait_until(lambda: all(samples(k) >= 16 for k in KEYS), 120)
            errors: dict[str, list[float]] = {"energy": [], "delay": []}
            end = time.monotonic() + steady_s
            while time.monotonic() < end:
                table = watch.costs()
                assert table is not None
                for row in table.experts:
                    if row.key not in KEYS or row.energy_j is None:
                        continue
                    seed = seeds[row.key]
                    errors["energy"].append(abs(row.energy_j / seed.energy_j - 1))
                    errors["delay"] += [
                        abs(row.delay_s[c] / d - 1) for c, d in seed.delay_s.items()
                    ]
                time.sleep(2.0)
            steady = {
                "load_average_1min": round(os.getloadavg()[0], 2),  # other work on this machine
                "profiling_s": round(profiling_s, 1),
                "profiled_items": len(items),
                "measurements": run.measured,
                **{
                    f"{what}_error_{stat}": round(fn(vals), 3)
                    for what, vals in errors.items()
                    for stat, fn in (("median", statistics.median), ("max", max))
                },
            }
            table = watch.costs()
            assert table is not None
            delays = {
                c: round(2.5 * max(r.delay_s[c] for r in table.experts if r.key in KEYS), 3)
                for c in table.experts[0].delay_s
            }
            bus = Bus(broker.endpoint, FLEET, client_id=f"b-{uuid.uuid4().hex[:6]}")
            bus.connect()
            since = time.monotonic()
            bus.publish(topics.CONTROLLER_BUDGETS, Budgets(delay_s=delays)).wait_for_publish(5)
            bus.close()
            _, plan = watch.first(FleetPlan, since, lambda m: m.delay_s, 15)
            runs = []
            for _ in range(cycles):
                plan = watch.of(FleetPlan)[-1][1]
                target = sorted(planned(plan), key=lambda k: k != KEYS[1])[0]
                agent = agent_of(target)
                done = threading.Event()
                t0 = time.monotonic()
                slow = threading.Thread(
                    target=duty_cycle, args=(fleet.processes[agent].pid, done), daemon=True
                )
                slow.start()
                t_drift, _ = watch.first(
                    ControllerEvent, t0, lambda m, k=target: m.kind == "drift" and k in m.reason, 90
                )
                t_away, away = watch.first(
                    FleetPlan, t0, lambda m, k=target: k not in planned(m), 90
                )
                cause = [  # the drift event that led to the plan away (the last before it)
                    m
                    for _, m in watch.of(ControllerEvent)
                    if m.kind == "drift" and target in m.reason and m.time_s <= away.time_s
                ][-1]
                done.set()
                slow.join()
                t1 = time.monotonic()
                t_back, _ = watch.first(FleetPlan, t1, lambda m, k=target: k in planned(m), 90)
                runs.append(
                    {
                        "slowed": target,
                        "load_average_1min": round(os.getloadavg()[0], 2),
                        "slow_to_first_drift_event_s": round(t_drift - t0, 2),
                        "slow_to_new_plan_s": round(t_away - t0, 2),
                        "drift_event_to_plan_ms": round(1000 * (away.time_s - cause.time_s), 1),
                        "recover_to_plan_back_s": round(t_back - t1, 2),
                    }
                )
                time.sleep(5)
            watch.bus.close()
            return {"steady": steady, "budgets_delay_s": delays, "cycles": runs}
        finally:
            fleet.stop()


def retraining() -> dict[str, Any]:
    from controller.newcomers import extend_gate

    profile = load_profile(ROOT / "data" / "profile-lab.json")
    keys = list(profile.experts)
    new, old = keys[-1], keys[:-1]
    encoder = CachedEncoder(PromptEncoder())
    started = time.perf_counter()
    data_old = GateData.from_profile(profile, encoder, keys=old)
    embed_s = time.perf_counter() - started
    net, old_loss = train_gate(data_old.splits["train"], data_old.splits["val"], TrainConfig())
    gate = Gate(net, old, profile.fleet, "", encoder=None)
    gated = GatedProfile(profile, gate, data_old, expert_costs(profile, old))
    started = time.perf_counter()
    extended, warm_loss = extend_gate(gated, profile, [new], encoder)
    extend_s = time.perf_counter() - started
    started = time.perf_counter()
    data_all = GateData.from_profile(profile, encoder, keys=old + [new])
    _, scratch_loss = train_gate(data_all.splits["train"], data_all.splits["val"], TrainConfig())
    scratch_s = time.perf_counter() - started
    return {
        "new_expert": new,
        "train_val_prompts": len(data_all.splits["train"]) + len(data_all.splits["val"]),
        "embedding_s_first_call": round(embed_s, 2),
        "extend_gate_s": round(extend_s, 2),
        "from_scratch_s": round(scratch_s, 2),
        "val_loss_extended": round(warm_loss, 4),
        "val_loss_from_scratch": round(scratch_loss, 4),
        "val_loss_five_experts": round(old_loss, 4),
        "extended_keys": len(extended.gate.expert_keys),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady-s", type=float, default=40.0)
    parser.add_argument("--cycles", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("XDG_STATE_HOME", tempfile.mkdtemp(prefix="moe2-bench-state-"))
    results = {"retraining": retraining()}
    print(json.dumps(results, indent=2), flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="moe2-bench-replan-"))
    results.update(steady_and_drift(workdir, args.steady_s, args.cycles))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
