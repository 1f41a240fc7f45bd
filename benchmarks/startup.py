"""Start-up: how long commands take for what they compute, beside a bare Python (issue 24).

    .venv/bin/python benchmarks/startup.py [--runs 3] [--repo PATH ...] [--no-controller]

Each command runs as its own process, ``--runs`` times (best kept), with the code of each
``--repo`` (default: this checkout; several: the same commands of each, interleaved run by run,
so that the machine's load hits them alike): ``python -c pass`` (the baseline), ``moe2 --help``,
``moe2 select --instance examples/selection-instance.json``, ``moe2 ask --help`` and
``moe2 select --profile data/profile-lab.json --gate data/gate-lab.pt``. Printed: each best time
and its ratio to ``python -c pass`` of the same run. The commands run as ``python -m moe2`` with
``PYTHONPATH`` set to the repo.

Then, unless ``--no-controller``: a gated controller coming online. A real broker, the lab
fleet's two agents simulated in this process with the real message contract (edge-a and edge-b,
three experts each, every job answered at once), and ``moe2 controller run --profile
data/profile-lab.json --gate data/gate-lab.pt`` started as a process; measured from its start:
its status online and active, its first fleet plan, the answer to a prompt sent as soon as the
plan is out (with equal or gate weights), and its gate ready (the status's ``gate``; a controller
without that field loads its encoder before it goes online). Then ``moe2 ask`` from the command
line against it, 5 s after its gate is ready: wall time, and the wall time less the controller's
receipt-to-answer time.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from messages import topics  # noqa: E402
from messages.controller import ControllerEvent, ControllerStatus, FleetPlan  # noqa: E402
from messages.jobs import Job  # noqa: E402
from messages.prompts import Prompt  # noqa: E402
from messages.results import EnergyReading, JobResult, LatencyBreakdown  # noqa: E402
from moe2.client.ask import Asker  # noqa: E402
from moe2.local.broker import LocalBroker, start_local_broker  # noqa: E402
from moe2.local.stand_ins import stand_in_capabilities  # noqa: E402
from tests.helpers import Recorder, ScriptedAgent  # noqa: E402

PROFILE = "data/profile-lab.json"
GATE = "data/gate-lab.pt"
COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ("moe2 --help", ["-m", "moe2", "--help"]),
    (
        "moe2 select --instance",
        ["-m", "moe2", "select", "--instance", "examples/selection-instance.json"],
    ),
    ("moe2 ask --help", ["-m", "moe2", "ask", "--help"]),
    (
        "moe2 select --profile --gate",
        ["-m", "moe2", "select", "--profile", PROFILE, "--gate", GATE],
    ),
]
LAB = {"edge-a": ["smollm2-cloze", "smollm2-letter", "smollm2-qa"],
       "edge-b": ["gemma3-cloze", "gemma3-letter", "gemma3-qa"]}  # fmt: skip
SETTLE_S = 5.0
QUESTION = Prompt(prompt="The capital of Italy is", choices=["Rome", "Oslo", "Lima", "Bern"])


def env_for(repo: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(repo), "COLUMNS": "100"}


def timed(argv: list[str], repo: Path) -> float:
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, *argv], cwd=repo, env=env_for(repo), capture_output=True, timeout=900
    )
    wall = time.perf_counter() - started
    if run.returncode != 0:
        raise SystemExit(f"{argv} failed in {repo}: {run.stderr.decode()[-2000:]}")
    return wall


def commands(repos: list[Path], runs: int) -> dict[Path, dict[str, float]]:
    best: dict[Path, dict[str, float]] = {r: {} for r in repos}
    for _ in range(runs):
        for repo in repos:
            for name, argv in COMMANDS:
                wall = timed(argv, repo)
                best[repo][name] = min(best[repo].get(name, math.inf), wall)
    return best


# -- a gated controller coming online ------------------------------------------------------


class LabAgent(ScriptedAgent):
    """One lab agent and its three experts, each job answered at once (choices: the first)."""

    def __init__(self, broker: LocalBroker, agent_id: str) -> None:
        super().__init__(broker.endpoint, "lab", agent_id, LAB[agent_id][0], self.answer)

    def start(self) -> None:
        self.bus.connect()
        one = stand_in_capabilities(self.agent_id, self.expert)
        experts = [one.experts[0].model_copy(update={"expert_id": e}) for e in LAB[self.agent_id]]
        caps = one.model_copy(update={"experts": experts})
        self.bus.publish(topics.AGENT_CAPABILITIES, caps, agent_id=self.agent_id)
        self.bus.publish(topics.AGENT_STATUS, self.status("online"), agent_id=self.agent_id)

    def answer(self, job: Job) -> JobResult:
        n = len(job.choices or []) or 2
        probs = [0.7] + [0.3 / (n - 1)] * (n - 1)
        return JobResult(
            request_id=job.request_id,
            expert_id=job.expert_id,
            agent_id=self.agent_id,
            ok=True,
            choice_probs=probs,
            choice_logprobs=[math.log(p) for p in probs],
            latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.01),
            energy=EnergyReading(energy_j=1.0, source="estimate", estimated=True),
        )


@dataclass
class Online:
    active_s: float = math.nan
    plan_s: float = math.nan
    answered_s: float = math.nan
    first_weights: str = ""
    gate_s: float = math.nan
    ask_wall_s: list[float] = field(default_factory=list)
    ask_latency_s: list[float] = field(default_factory=list)


def _since(rec: Recorder, started: float, kind: type, where, timeout_s: float = 600) -> float:  # type: ignore[no-untyped-def]
    rec.wait_for_a(kind, where, timeout_s)
    return time.monotonic() - started


def controller_online(repo: Path, runs_of_ask: int) -> Online:
    got = Online()
    cid = f"bench-{uuid.uuid4().hex[:6]}"
    with start_local_broker() as broker, tempfile.TemporaryDirectory() as state:
        agents = [LabAgent(broker, a) for a in LAB]
        for agent in agents:
            agent.start()
        rec = Recorder(broker.endpoint, "lab")
        rec.watch(topics.CONTROLLER_STATUS).watch(topics.CONTROLLER_PLAN)
        rec.watch(topics.CONTROLLER_EVENTS)
        with rec:
            argv = ["-m", "moe2", "controller", "run", "--broker", broker.url, "--fleet", "lab",
                    "--profile", PROFILE, "--gate", GATE, "--state-dir", state,
                    "--controller-id", cid, "--no-early-answers",
                    "--log-level", "warning"]  # fmt: skip
            started = time.monotonic()
            proc = subprocess.Popen([sys.executable, *argv], cwd=repo, env=env_for(repo))
            try:
                _measure(got, rec, broker, cid, started, repo, runs_of_ask)
            finally:
                proc.terminate()
                proc.wait(60)
        for agent in agents:
            agent.stop()
    return got


def _measure(  # type: ignore[no-untyped-def]
    got: Online, rec: Recorder, broker, cid: str, started: float, repo: Path, runs_of_ask: int
) -> None:
    def mine(s: ControllerStatus) -> bool:
        return s.controller_id == cid and s.state == "online" and s.role == "active"

    got.active_s = _since(rec, started, ControllerStatus, mine)
    got.plan_s = _since(
        rec, started, FleetPlan, lambda p: p.controller_id == cid and bool(p.assignments)
    )
    with Asker(broker.endpoint, "lab") as asker:
        answer = asker.ask(QUESTION.model_copy(update={"request_id": f"first-{cid}"}))
        got.answered_s = time.monotonic() - started
        weights = sorted({round(e.weight, 3) for e in answer.experts})
        got.first_weights = "equal" if len(weights) == 1 else "gate"

    def gate_ready(m: object) -> bool:  # said by an event, or by a status (one without the
        # field, None here, comes from a controller that loads its encoder before going online)
        if isinstance(m, ControllerEvent):
            return m.kind == "gate" and "ready" in m.reason
        return isinstance(m, ControllerStatus) and mine(m) and m.gate in (None, "ready")

    rec.wait_for(gate_ready, 600)
    got.gate_s = time.monotonic() - started
    time.sleep(SETTLE_S)  # moe2 ask against a settled controller: the CLI's own time
    for _ in range(runs_of_ask):
        argv = ["-m", "moe2", "ask", QUESTION.prompt, *(a for c in QUESTION.choices or [] for a in
                ("--choice", c)), "--broker", broker.url, "--fleet", "lab", "--json"]  # fmt: skip
        t0 = time.perf_counter()
        run = subprocess.run(
            [sys.executable, *argv], cwd=repo, env=env_for(repo), capture_output=True, timeout=300
        )
        got.ask_wall_s.append(time.perf_counter() - t0)
        if run.returncode != 0:
            raise SystemExit(f"moe2 ask failed: {run.stderr.decode()[-2000:]}")
        got.ask_latency_s.append(json.loads(run.stdout)["latency_s"])  # any version's answer


# -- report --------------------------------------------------------------------------------


def machine() -> str:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "?")  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, load {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--repo", type=Path, action="append", help="code to run (repeatable)")
    parser.add_argument("--no-controller", action="store_true")
    args = parser.parse_args()
    repos = [r.resolve() for r in (args.repo or [ROOT])]
    print(f"machine: {machine()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    best = commands(repos, args.runs)
    head = " | ".join(f"{r} s | ×pass" for r in repos)
    print(f"\nbest of {args.runs}, wall seconds (×pass: over python -c pass of the same code)")
    print(f"| command | {head} |")
    print("|---|" + "---|---|" * len(repos))
    for name, _ in COMMANDS:
        cells = [f"{best[r][name]:.3f} | {best[r][name] / best[r]['python -c pass']:.1f}"
                 for r in repos]  # fmt: skip
        print(f"| {name} | {' | '.join(cells)} |")
    if args.no_controller:
        return
    print("\ngated controller (lab profile and gate), seconds from its process start")
    print("| code | run | active | first plan | first answer (weights) | gate ready | "
          "moe2 ask wall, best | less the controller's time |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for run in range(args.runs):
        for repo in repos:
            o = controller_online(repo, args.runs)
            ask = min(o.ask_wall_s)
            beyond = min(w - lat for w, lat in zip(o.ask_wall_s, o.ask_latency_s, strict=True))
            print(f"| {repo} | {run + 1} | {o.active_s:.2f} | {o.plan_s:.2f} | "
                  f"{o.answered_s:.2f} ({o.first_weights}) | {o.gate_s:.2f} | {ask:.2f} | "
                  f"{beyond:.2f} |", flush=True)  # fmt: skip
    print(f"\nload at the end: {machine()}")


if __name__ == "__main__":
    main()
