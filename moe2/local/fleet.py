"""A fleet on this machine: agents and a controller as separate processes on a local broker.

Used by ``moe2 demo``, the end-to-end tests and the overhead benchmark, so that all three run
the same real processes a user would start by hand.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller.registry import FleetRegistry
from messages import topics
from messages.bus import BrokerEndpoint, Bus
from messages.controller import ControllerStatus, FleetPlan


class FleetError(RuntimeError):
    """A process of the local fleet failed to start or to become ready."""


@dataclass(frozen=True)
class AgentSpec:
    agent_id: str
    experts: list[dict[str, Any]]  # ExpertConfig fields
    settings: dict[str, Any] = field(default_factory=dict)  # other AgentSettings fields


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # JSON strings, numbers, booleans and lists are valid TOML


def agent_config_toml(
    spec: AgentSpec, endpoint: BrokerEndpoint, fleet: str, keepalive_s: int, telemetry_s: float
) -> str:
    lines = [
        f"broker = {_toml_value(endpoint.url)}",
        f"mqtt_version = {_toml_value(endpoint.mqtt_version)}",
        f"fleet = {_toml_value(fleet)}",
        f"agent_id = {_toml_value(spec.agent_id)}",
        f"keepalive_s = {keepalive_s}",
        f"telemetry_interval_s = {telemetry_s}",
        *(f"{k} = {_toml_value(v)}" for k, v in spec.settings.items()),
    ]
    for expert in spec.experts:
        lines.append("\n[[experts]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in expert.items())
    return "\n".join(lines) + "\n"


@dataclass
class LocalFleet:
    endpoint: BrokerEndpoint
    fleet: str
    workdir: Path
    keepalive_s: int = 5
    telemetry_interval_s: float = 1.0
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moe2", *args], stdout=log, stderr=log, env=env
        )
        self.processes[name] = proc
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def start_agent(self, spec: AgentSpec) -> subprocess.Popen[bytes]:
        config = self.workdir / f"{spec.agent_id}.toml"
        config.write_text(
            agent_config_toml(
                spec, self.endpoint, self.fleet, self.keepalive_s, self.telemetry_interval_s
            )
        )
        return self._spawn(spec.agent_id, ["agent", "run", "--config", str(config)])

    def start_controller(
        self, name: str = "controller", extra: list[str] | None = None
    ) -> subprocess.Popen[bytes]:
        """A controller whose id is ``name`` and whose ledger lives in the fleet's folder, so a
        restart under the same name resumes its MQTT session and its ledger."""
        return self._spawn(
            name,
            [
                "controller",
                "run",
                "--broker",
                self.endpoint.url,
                "--mqtt-version",
                self.endpoint.mqtt_version,
                "--fleet",
                self.fleet,
                "--controller-id",
                name,
                "--state-dir",
                str(self.workdir / "state"),
                *(extra or []),
            ],
        )

    def wait_ready(self, agents: list[str], timeout_s: float = 180.0) -> None:
        """Until the controller is online and every agent has loaded exactly its planned experts
        (the controller's plan: every expert, or what fits its memory budget)."""
        registry = FleetRegistry()
        controllers: dict[str, ControllerStatus] = {}
        plans: list[FleetPlan] = []
        ready_id = f"moe2-ready-{os.getpid()}-{time.monotonic_ns()}"
        bus = Bus(self.endpoint, self.fleet, client_id=ready_id)
        bus.subscribe(topics.AGENT_STATUS, lambda i: registry.on_status(i.message))
        bus.subscribe(topics.AGENT_CAPABILITIES, lambda i: registry.on_capabilities(i.message))
        bus.subscribe(topics.AGENT_TELEMETRY, lambda i: registry.on_telemetry(i.message))
        bus.subscribe(
            topics.CONTROLLER_STATUS,
            lambda i: controllers.__setitem__(i.message.controller_id, i.message),
        )
        bus.subscribe(topics.CONTROLLER_PLAN, lambda i: plans.append(i.message))
        bus.connect()
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                for name, proc in self.processes.items():
                    if proc.poll() is not None:
                        raise FleetError(
                            f"{name} exited with status {proc.returncode}:\n{self.log_tail(name)}"
                        )
                assigned = plans[-1].assignments if plans else {}
                ready = {
                    r.agent_id
                    for r in registry.agents()
                    if r.online
                    and r.telemetry is not None
                    and r.telemetry.plan_epoch is not None
                    and r.agent_id in assigned
                    and set(r.telemetry.loaded_experts) == set(assigned[r.agent_id])
                }
                active = any(
                    s.state == "online" and s.role == "active" for s in controllers.values()
                )
                if active and set(agents) <= ready:
                    return
                time.sleep(0.2)
            raise FleetError(f"fleet not ready within {timeout_s:g} s (ready: {sorted(ready)})")
        finally:
            bus.close()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes[name]
        proc.send_signal(sig)
        proc.wait(30)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_until(predicate: Any, timeout_s: float, step_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return bool(predicate())
