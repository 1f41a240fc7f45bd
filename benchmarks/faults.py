"""Fault drills with figures: lost, duplicated, wrong (another prompt's answer), recovery
seconds, and p50/p99 latency with answers as soon as decided against waiting for every expert,
in the same run.

    .venv/bin/python benchmarks/faults.py [--quick]

Every scenario runs on real processes (Mosquitto, agents serving SmolLM2-135M or Gemma 3
270M, controllers) through moe2/local/drills.py, the same code tests/moe2/test_faults.py and
tests/moe2/test_fencing.py assert on; the fleet's own view: a live agent's status cleared, an
agent flapping 40 times in 60 s, 10,000 ghost agents announced (re-plans, plans published, the
prompt's latency). The fencing lines (an active controller frozen 20 s and 30 s beside a
standby and alone; its link cut 30 s beside a standby and alone, and 20 s) add
epochs_monotone (1: no agent sent or holding an older plan epoch after a newer one) and
most_active (controllers active at once). --quick leaves out the 200-prompt burst and the
20 s cut, and shortens the early-answer comparison.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe2.local import drills  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    reports: list[drills.Report] = []
    with tempfile.TemporaryDirectory(prefix="moe2-faults-") as tmp:
        root = Path(tmp)

        def run(name: str, fn, *a, **kw):  # type: ignore[no-untyped-def]
            folder = root / name
            folder.mkdir()
            started = time.monotonic()
            out = fn(folder, *a, **kw)
            for report in out if isinstance(out, tuple) else (out,):
                reports.append(report)
                print(f"{report.line()}  [{time.monotonic() - started:.0f} s]", flush=True)
            return out

        run("restart-persistent", drills.broker_restarts, True)
        run("restart-plain", drills.broker_restarts, False)
        run("restart-one-shot", drills.broker_restarts, True, one_shot=True)
        # the same asker listening with a clean session: answers published while it is away
        run("restart-one-shot-clean", drills.broker_restarts, True, one_shot=True, durable=False)
        run("controller", drills.controller_killed)
        run("standby", drills.standby_takeover)
        run("agent-killed", drills.agent_killed)
        run("agent-frozen", drills.agent_frozen)
        if not args.quick:
            run("burst", drills.burst, 200)
        run("burst-bound", drills.burst, 60, 5)
        run("reused-id", drills.reused_id)
        run("cleared", drills.status_cleared)
        run("flap", drills.flapping_agent)
        run("ghosts", drills.ghosts)
        early, waiting = run("early", drills.early_against_waiting, 6 if args.quick else 12)
        try:
            run("state-full", drills.bad_state, "full")
        except drills.CannotMount as exc:
            print(f"state-full skipped: {exc}", flush=True)
        run("state-file", drills.bad_state, "file")
        for frozen_s in (20.0, 30.0):
            run(f"frozen-{frozen_s:.0f}-standby", drills.controller_frozen, frozen_s, True)
            run(f"frozen-{frozen_s:.0f}-alone", drills.controller_frozen, frozen_s, False)
        run("cut-30-standby", drills.controller_cut_off, 30.0, True)
        run("cut-30-alone", drills.controller_cut_off, 30.0, False)
        if not args.quick:
            run("cut-20-standby", drills.controller_cut_off, 20.0, True)
    print()
    print("| scenario | asked | answered | lost | duplicated | statuses | p50 s | p99 s | figures")
    print("|---|---|---|---|---|---|---|---|---")
    for r in reports:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in r.figures.items()) or "-"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
        print(
            f"| {r.name} | {r.asked} | {r.answered} | {r.lost} | {r.duplicated} | {statuses} "
            f"| {r.p50_s:.2f} | {r.p(0.99):.2f} | {figures}"
        )
    lost = sum(r.lost for r in reports)
    print()
    print(f"lost in every scenario: {lost} (target 0)")
    print(
        f"early answers p50 {early.p50_s:.2f} s, p99 {early.p(0.99):.2f} s; waiting for every "
        f"expert p50 {waiting.p50_s:.2f} s, p99 {waiting.p(0.99):.2f} s; "
        f"ratio p50 {early.p50_s / waiting.p50_s:.2f} (target < 1)"
    )


if __name__ == "__main__":
    main()
