"""A controller whose state folder or ledger cannot be used still serves: `moe2 controller run`
as a real process on a real broker, a scripted agent, a real directory, file, immutable file and
full tmpfs where its state should be. It says what is wrong (one log line, its status, its
metrics), serves without durability while it must, and is durable again once the disk is."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from messages import topics
from messages.answers import Answer
from messages.base import now_s
from messages.controller import ControllerStatus
from messages.jobs import Job
from messages.prompts import Prompt
from messages.results import JobResult
from moe2.local.broker import LocalBroker, free_port
from moe2.local.drills import fill_disk
from moe2.local.fleet import wait_until
from tests.controller.test_controller_service import _result
from tests.helpers import Recorder, ScriptedAgent, small_tmpfs

# The issue asks for prompts served within 30 s of the start; the assertion leaves room for a
# loaded test machine, and the time is printed.
SERVE_WITHIN_S = 30.0
LOAD_SLACK = 3.0


class Fleet:
    """One fleet on the test broker: a scripted agent answering "hello" (or holding jobs whose
    prompt starts with "hold" while ``holding``), a recorder of answers and controller statuses,
    and `moe2 controller run` processes."""

    def __init__(self, broker: LocalBroker, workdir: Path) -> None:
        self.broker, self.workdir = broker, workdir
        self.name = f"bad-state-{uuid.uuid4().hex[:6]}"
        self.holding = True
        self.agent = ScriptedAgent(
            broker.endpoint, self.name, "a1", "e1", self._answer, telemetry_s=1.0
        )
        self.watch = Recorder(broker.endpoint, self.name)
        self.watch.watch(topics.ANSWERS).watch(topics.CONTROLLER_STATUS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.metrics_port = 0

    def _answer(self, job: Job) -> JobResult | None:
        if self.holding and job.prompt.startswith("hold"):
            return None
        return _result(job, ok=True, text="hello", completion_tokens=3)

    def controller(self, state_dir: Path, name: str = "c1") -> subprocess.Popen[bytes]:
        self.metrics_port = free_port()
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "moe2", "controller", "run", "--broker", self.broker.url),
                *("--mqtt-version", self.broker.mqtt_version, "--fleet", self.name),
                *("--controller-id", name, "--state-dir", str(state_dir)),
                *("--metrics", f"127.0.0.1:{self.metrics_port}"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        self.procs.append(proc)
        return proc

    def log(self, name: str = "c1") -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def ask(self, text: str, timeout_s: float = 120.0) -> Answer:
        """Publish a prompt (again every 2 s, as `moe2 ask` does, until a controller takes it)
        and wait for its answer."""
        rid = f"q{uuid.uuid4().hex[:8]}"
        prompt = Prompt(prompt=text, request_id=rid, timeout_s=60.0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.procs:
                assert proc.poll() in (None, -signal.SIGKILL), self.log()[-3000:]
            self.watch.bus.publish(topics.PROMPTS, prompt)
            try:
                return self.answer(rid, 2.0)
            except AssertionError:
                continue
        raise AssertionError(f"{rid} not answered in {timeout_s} s\n{self.log()[-3000:]}")

    def answer(self, rid: str, timeout_s: float) -> Answer:
        found = self.watch.wait_for_answer(rid, timeout_s)
        assert isinstance(found, Answer)
        return found

    def status(self, check: Callable[[ControllerStatus], bool]) -> ControllerStatus:
        """The first online status published from now on that passes ``check``."""
        after_s = now_s()
        found = self.watch.wait_for_a(
            ControllerStatus,
            lambda s: s.state == "online" and s.time_s >= after_s and check(s),
            60.0,
        )
        assert isinstance(found, ControllerStatus)
        return found

    def durable_metric(self) -> float:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as page:
            for line in page.read().decode().splitlines():
                if line.startswith("moe2_ledger_durable "):
                    return float(line.split()[1])
        raise AssertionError("no moe2_ledger_durable in /metrics")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.agent.stop()
        self.watch.__exit__()


@pytest.fixture
def fleet(mosquitto: LocalBroker, tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(mosquitto, tmp_path)
    made.agent.start()
    made.watch.__enter__()
    try:
        yield made
    finally:
        made.stop()


def served_in_time(fleet: Fleet, started: float) -> float:
    answer = fleet.ask("Say hello.")
    took_s = time.monotonic() - started
    print(f"first answer {took_s:.1f} s after the start")
    assert answer.status == "ok" and answer.answer == "hello"
    assert took_s < SERVE_WITHIN_S * LOAD_SLACK, took_s
    return took_s


def one_line(fleet: Fleet, *words: str) -> str:
    """The one log line that says what is wrong: every word in it, once."""
    lines = [line for line in fleet.log().splitlines() if all(w in line for w in words)]
    assert len(lines) == 1, (words, lines, fleet.log()[-3000:])
    return lines[0]


def test_a_ledger_path_that_is_a_directory_is_moved_aside(fleet: Fleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    ledger = state / fleet.name / "c1" / "ledger.jsonl"
    (ledger / "inside").mkdir(parents=True)
    started = time.monotonic()
    fleet.controller(state)
    served_in_time(fleet, started)
    line = one_line(fleet, str(ledger), "is a directory", "moved aside")
    assert "Traceback" not in fleet.log()
    (aside,) = ledger.parent.glob("ledger.jsonl.broken-*")
    assert (aside / "inside").is_dir() and str(aside) in line and ledger.is_file()
    status = fleet.status(lambda s: s.state_problem is not None)
    assert status.durable and str(aside) in (status.state_problem or "")
    assert fleet.durable_metric() == 1.0


def test_an_unwritable_ledger_serves_what_it_holds_and_is_durable_once_writable(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A journal that cannot be replaced or appended (immutable: what root cannot write
    either), holding a prompt accepted by an earlier run: that prompt is still answered."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    state = tmp_path / "state"
    ledger = state / fleet.name / "c1" / "ledger.jsonl"
    first = fleet.controller(state)
    fleet.ask("Say hello.")  # the controller is up: now a prompt it accepts and cannot answer
    held = Prompt(prompt="hold me", request_id="held1", timeout_s=120.0)
    fleet.watch.bus.publish(topics.PROMPTS, held)
    assert wait_until(lambda: any(j.request_id == "held1" for j in fleet.agent.jobs), 60)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    if subprocess.run(["chattr", "+i", str(ledger)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        fleet.holding = False
        started = time.monotonic()
        fleet.controller(state)
        served_in_time(fleet, started)
        assert fleet.answer("held1", 60).status == "ok"  # accepted before the fault: not lost
        line = one_line(fleet, str(ledger), "without durability")
        assert "EPERM" in line and "retrying" in line
        status = fleet.status(lambda s: not s.durable)
        assert "EPERM" in (status.state_problem or "") and fleet.durable_metric() == 0.0
    finally:
        subprocess.run(["chattr", "-i", str(ledger)], check=True)
    fleet.status(lambda s: s.durable and s.state_problem is None)
    assert fleet.durable_metric() == 1.0


def test_a_state_folder_that_is_a_file(fleet: Fleet, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("a file where the state folder should be")
    started = time.monotonic()
    fleet.controller(state)
    served_in_time(fleet, started)
    folder = state / fleet.name / "c1"
    line = one_line(fleet, str(folder), "cannot be made", "without durability")
    assert "retrying" in line and "Traceback" not in fleet.log()
    status = fleet.status(lambda s: not s.durable)
    assert str(folder) in (status.state_problem or "") and fleet.durable_metric() == 0.0
    # the id is still held: a second process for the same id is refused, clearly
    second = subprocess.run(
        [sys.executable, "-m", "moe2", "controller", "run", "--broker", fleet.broker.url]
        + ["--fleet", fleet.name, "--controller-id", "c1", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 2 and "held by another process" in second.stderr, second.stderr
    state.unlink()  # repaired: durable again, without a restart
    fleet.status(lambda s: s.durable)
    assert fleet.durable_metric() == 1.0 and (folder / "ledger.jsonl").is_file()


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk") as folder:
        yield folder


def test_a_full_disk_at_start(fleet: Fleet, disk: Path) -> None:
    filler = fill_disk(disk)
    started = time.monotonic()
    fleet.controller(disk / "state")
    served_in_time(fleet, started)
    ledger = disk / "state" / fleet.name / "c1" / "ledger.jsonl"
    line = one_line(fleet, str(ledger), "without durability")
    assert "No space left on device (ENOSPC)" in line and "Traceback" not in fleet.log()
    status = fleet.status(lambda s: not s.durable)
    assert "ENOSPC" in (status.state_problem or "") and fleet.durable_metric() == 0.0
    filler.unlink()
    fleet.status(lambda s: s.durable)
    assert fleet.durable_metric() == 1.0


def test_a_disk_that_fills_while_running(fleet: Fleet, disk: Path) -> None:
    """Serving on, not durable while full, durable again once there is room; a restart then
    answers the prompt accepted while the disk was full."""
    state = disk / "state"
    first = fleet.controller(state)
    fleet.ask("Say hello.")
    assert fleet.durable_metric() == 1.0
    filler = fill_disk(disk)
    for _ in range(50):  # the journal's last block may still have room for a few lines
        assert fleet.ask("Say hello.").status == "ok"
        if fleet.durable_metric() == 0.0:
            break
    assert fleet.durable_metric() == 0.0
    status = fleet.status(lambda s: not s.durable)
    assert "ENOSPC" in (status.state_problem or "")
    held = Prompt(prompt="hold me", request_id="held2", timeout_s=120.0)
    fleet.watch.bus.publish(topics.PROMPTS, held)
    assert wait_until(lambda: any(j.request_id == "held2" for j in fleet.agent.jobs), 60)
    filler.unlink()
    fleet.status(lambda s: s.durable)
    assert "written again" in fleet.log()
    first.send_signal(signal.SIGKILL)  # what was accepted while full is on disk now, or lost here
    first.wait(10)
    fleet.holding = False
    fleet.controller(state)
    assert fleet.answer("held2", 120).status == "ok"
