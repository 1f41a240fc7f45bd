"""Stale retained state can be cleared from the command line (real Mosquitto, real CLI)."""

from __future__ import annotations

import subprocess
import sys
import time

from messages.base import now_s
from messages.budgets import Budgets
from messages.cache_plan import CachePlan
from messages.status import AgentStatus
from moe2.local.broker import LocalBroker
from tests.moe2.test_hostile import Raw

FLEET = "stale"


def moe2(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=60
    )


def _retained(broker: LocalBroker, topic: str) -> list[bytes]:
    spy = Raw(broker, topic)
    time.sleep(0.3)
    spy.close()
    return [p for _, p in spy.got]


def test_budgets_clear_and_cache_plan_lift_remove_what_is_retained(
    mosquitto: LocalBroker,
) -> None:
    writer = Raw(mosquitto)
    budgets = f"moe2/{FLEET}/controller/budgets"
    cache = f"moe2/{FLEET}/controller/cache-plan"
    writer.publish(budgets, Budgets(energy_j=3.0).model_dump_json(), retain=True)
    plan = CachePlan(placement={"a1": ["e1"]}, algorithm="greedy", time_s=now_s())
    writer.publish(cache, plan.model_dump_json(), retain=True)
    writer.close()
    assert _retained(mosquitto, budgets) and _retained(mosquitto, cache)
    run = moe2("budgets", "--broker", mosquitto.url, "--fleet", FLEET, "--clear")
    assert run.returncode == 0 and "cleared" in run.stdout, run.stderr
    assert _retained(mosquitto, budgets) == []
    run = moe2("cache-plan", "--broker", mosquitto.url, "--fleet", FLEET, "--lift")
    assert run.returncode == 0 and "lifted" in run.stderr, run.stderr
    assert _retained(mosquitto, cache) == []
    run = moe2("budgets", "--broker", mosquitto.url, "--fleet", FLEET, "--clear", "--energy-j", "2")
    assert run.returncode == 2 and "--clear takes no budgets" in run.stderr


def test_fleet_forget_clears_a_gone_agent_and_refuses_a_live_one(mosquitto: LocalBroker) -> None:
    writer = Raw(mosquitto)
    status = f"moe2/{FLEET}/agents/gone-1/status"

    def announce(state: str) -> None:
        message = AgentStatus(
            agent_id="gone-1",
            state=state,  # type: ignore[arg-type]
            version="x",
            time_s=now_s(),
            keepalive_s=5,
            telemetry_interval_s=1.0,
        )
        writer.publish(status, message.model_dump_json(), retain=True)

    announce("online")
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", FLEET, "--forget", "gone-1")
    assert run.returncode == 1 and "is online" in run.stderr
    assert _retained(mosquitto, status)  # a live agent is left alone
    announce("offline")
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", FLEET, "--forget", "gone-1")
    assert run.returncode == 0 and "forgotten" in run.stdout, run.stderr
    assert _retained(mosquitto, status) == []
    run = moe2("fleet", "--broker", mosquitto.url, "--fleet", FLEET, "--forget", "a/b")
    assert run.returncode == 2
    writer.close()
