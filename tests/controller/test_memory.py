"""Memory at rest: an idle controller without a gate stays near a bare MQTT + pydantic process.

The gate's libraries (numpy, numba's compiled kernel, torch, scipy) are imported only where a
gate is loaded; a controller run without ``--profile``/``--gate`` never needs them. Nor does it
import rich or the modules of the other commands (moe2/cli/lazy.py). Measured on real
processes: a real Mosquitto, a real ``moe2 controller run``, a real bare Python process.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.answers import Answer
from messages.bus import Bus
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult, LatencyBreakdown
from moe2.local.broker import LocalBroker, free_port
from moe2.local.fleet import LocalFleet, wait_until
from tests.helpers import Behaviour, Recorder, ScriptedAgent

# What a controller without a gate must not import (numba is the JIT that the subtree scoring
# of the selection compiles; llama_cpp and onnxruntime belong to agents; prometheus_client is
# loaded at the first answer or with --metrics).
HEAVY = ["numpy", "numba", "llvmlite", "scipy", "torch", "sentence_transformers", "llama_cpp",
         "onnxruntime", "matplotlib", "prometheus_client",
         # rich prints help, errors and tables; the other commands' modules and the agent's
         # power meters are imported when their command is named (moe2/cli/lazy.py).
         "rich", "agent", "psutil", "pynvml", "jtop", "moe2.cli.gateway", "moe2.cli.selection",
         "moe2.cli.gate", "moe2.cli.cache", "moe2.cli.costs", "moe2.cli.agent", "moe2.cli.probe",
         "moe2.cli.ask", "moe2.cli.budgets", "moe2.cli.fleet", "moe2.cli.schemas",
         "moe2.cli.demo", "moe2.cli.export_onnx", "moe2.cli.tables"]  # fmt: skip

# The import paths of an idle controller: the service and the CLI module it is run from, with
# its command tree built as `moe2 controller run` builds it (the root, then the command named).
_IMPORT_CHECK = """
import sys
import moe2.cli
from typer.main import get_command
from controller.service import Controller
get_command(moe2.cli.app).commands["controller"].commands["run"]
heavy = {heavy!r}
print(" ".join(m for m in heavy if m in sys.modules))
"""


# The bare process with paho and pydantic: paho's client imported, and pydantic really loaded
# (``import pydantic`` alone loads only its lazy shim, ~2.5 MB short of pydantic at work): a
# model defined and one message validated, as every moe2 process does. Then it waits.
BARE = """
import sys
import paho.mqtt.client
from pydantic import BaseModel


class Ping(BaseModel):
    name: str
    count: int = 0


Ping.model_validate({"name": "ping", "count": 1})
print("ready", flush=True)
sys.stdin.read()
"""
# Issue 22: an idle controller within 1.5x of it. Over the bare process (~10 MB, ~1.33x on
# 2026-12-07): the message models, pydantic_settings and the asyncio it imports, the
# controller's own code, typer. Not in it: the gate's libraries, rich (help, errors and tables
# only) and the other commands' modules (moe2/cli/lazy.py).
RSS_FACTOR = 1.5


def _says(text: str) -> Behaviour:
    def answer(job: Job) -> JobResult:
        return JobResult(
            request_id=job.request_id, expert_id=job.expert_id, agent_id="a1", ok=True,
            text=text, completion_tokens=1,
            latency=LatencyBreakdown(queue_s=0.0, load_s=0.0, total_s=0.01),
        )  # fmt: skip

    return answer


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def test_controller_path_imports_no_gate_libraries() -> None:
    run = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK.format(heavy=HEAVY)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    loaded = run.stdout.split()
    assert not loaded, (
        f"importing the controller (no gate) loads {', '.join(loaded)}: import it inside the "
        "function that needs it (python -X importtime -c 'import controller.service' shows who)"
    )


def test_idle_controller_rss_near_a_bare_mqtt_process(
    mosquitto: LocalBroker, tmp_path: Path
) -> None:
    """An idle ``moe2 controller run`` (no gate), online and active, holds at most 1.5x the RSS
    of a bare Python process with paho and pydantic: paho's client imported, and pydantic at
    work (a model defined and validated, not only ``import pydantic``'s lazy shim)."""
    fleet = LocalFleet(mosquitto.endpoint, "memrest", tmp_path)
    bare = None
    try:
        controller = fleet.start_controller("idle-controller")
        fleet.wait_ready([], timeout_s=180)  # its retained status says online and active
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert bare.stdout is not None and bare.stdout.readline().strip() == "ready"
        controller_kb, bare_kb = _rss_kb(controller.pid), _rss_kb(bare.pid)
    finally:
        if bare is not None:
            bare.kill()
            bare.wait(10)
        fleet.stop()
    said = (
        f"an idle controller without a gate holds {controller_kb / 1024:.1f} MB RSS, "
        f"{controller_kb / bare_kb:.2f}x a bare Python process with paho and pydantic "
        f"({bare_kb / 1024:.1f} MB)"
    )
    assert controller_kb <= RSS_FACTOR * bare_kb, (
        f"{said}: over the {RSS_FACTOR}x of issue 22 (python -X importtime -m moe2 controller "
        "run ... shows what it imports)"
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return reply.read().decode()


def test_metrics_made_at_first_use_count_every_answer(mosquitto: LocalBroker) -> None:
    """prometheus_client is loaded at the first answer or ``serve``, and the counts are whole:
    a scrape before any prompt shows the fleet, one after shows the answer and the result."""
    fleet = f"memmetrics-{uuid.uuid4().hex[:6]}"
    settings = ControllerSettings.load(None, broker=mosquitto.url, fleet=fleet)
    served = Controller(settings)
    assert not served.metrics._opened  # made when first needed, not with the controller
    port = free_port()
    served.metrics_listen = ("127.0.0.1", port)
    agent = ScriptedAgent(mosquitto.endpoint, fleet, "a1", "e1", _says("hello"))
    served.start()
    try:
        assert wait_until(lambda: served.active, 30)
        first = _scrape(port)
        assert "moe2_controller_active 1.0" in first and "moe2_prompts_total{" not in first
        agent.start()
        assert wait_until(lambda: served.planner.assignments.get("a1") == ["e1"], 30)
        with Recorder(mosquitto.endpoint, fleet).watch(topics.ANSWERS) as answers:
            bus = Bus(mosquitto.endpoint, fleet, client_id=f"ask-{uuid.uuid4().hex[:6]}")
            bus.connect()
            prompt = Prompt(prompt="hi", request_id=f"{fleet}-q")
            bus.publish(topics.PROMPTS, prompt).wait_for_publish(5)
            bus.close()
            answer = answers.wait_for(lambda m: isinstance(m, Answer), timeout_s=30)
        assert answer.status == "ok", answer
        after = _scrape(port)
        assert 'moe2_prompts_total{status="ok"} 1.0' in after, after
        assert 'moe2_expert_results_total{agent="a1",expert="e1",ok="true"} 1.0' in after, after
        assert "moe2_agents_online 1.0" in after, after
    finally:
        agent.stop()
        agent.bus.close()
        served.stop()
