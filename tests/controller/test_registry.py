"""FleetRegistry: liveness from status, wills and telemetry silence; what the controller reads."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controller import registry as registry_module
from controller.registry import Change, FleetRegistry
from messages import AgentCapabilities, AgentStatus, ExpertInfo, Telemetry


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(registry_module, "time", SimpleNamespace(monotonic=fake))
    return fake


def status(
    agent_id: str,
    state: str = "online",
    *,
    reason: str | None = None,
    keepalive_s: int = 10,
    telemetry_interval_s: float = 2.0,
) -> AgentStatus:
    return AgentStatus(
        agent_id=agent_id,
        state=state,  # type: ignore[arg-type]
        version="0.1.0",
        time_s=1.0,
        keepalive_s=keepalive_s,
        telemetry_interval_s=telemetry_interval_s,
        reason=reason,
    )


def capabilities(agent_id: str, *experts: str) -> AgentCapabilities:
    return AgentCapabilities(
        agent_id=agent_id,
        hostname=f"{agent_id}.local",
        platform="Linux-aarch64",
        python="3.10.12",
        cpu_count=4,
        memory_total_bytes=8_000_000_000,
        power_sensor="none",
        backends=["llama.cpp"],
        experts=[
            ExpertInfo(
                expert_id=e,
                model="smollm2-135m",
                backend="llama.cpp",
                format="gguf",
                file_size_bytes=1,
                context_length=2048,
                chat_template=True,
                template="cloze",
            )
            for e in experts
        ],
        job_queue_capacity=8,
    )


def telemetry(agent_id: str, **changes: object) -> Telemetry:
    body: dict[str, object] = {
        "agent_id": agent_id,
        "time_s": 2.0,
        "power_w": 5.5,
        "energy_j": 100.0,
        "energy_source": "nvml",
        "memory_used_bytes": 1,
        "process_rss_bytes": 1,
        "queue_depth": 2,
        "busy": False,
        "loaded_experts": ["smol"],
        "plan_epoch": 42,
        "jobs_done": 7,
        "jobs_failed": 0,
        "last_latency_s": 0.9,
    }
    body.update(changes)
    return Telemetry(**body)  # type: ignore[arg-type]


def test_online_status_brings_an_agent_online() -> None:
    reg = FleetRegistry()
    assert reg.on_status(status("orin-1")) == Change("orin-1", True, "online")
    assert [r.agent_id for r in reg.agents()] == ["orin-1"]
    assert reg.agents()[0].online


def test_repeated_online_status_is_no_change() -> None:
    reg = FleetRegistry()
    reg.on_status(status("orin-1"))
    assert reg.on_status(status("orin-1")) is None


def test_first_status_offline_is_no_change() -> None:
    reg = FleetRegistry()
    assert reg.on_status(status("orin-1", "offline", reason="stopped")) is None
    assert not reg.agents()[0].online


def test_will_flips_an_agent_offline() -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("orin-1", "smol"))
    reg.on_status(status("orin-1"))
    assert reg.online_experts() == {"orin-1": ["smol"]}
    change = reg.on_status(status("orin-1", "offline", reason="connection lost"))
    assert change == Change("orin-1", False, "connection lost")
    assert reg.online_experts() == {}
    assert reg.on_status(status("orin-1", "offline", reason="connection lost")) is None


def test_offline_status_without_reason_uses_the_state() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a"))
    assert reg.on_status(status("a", "offline")) == Change("a", False, "offline")


def test_status_online_again_after_will() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a"))
    reg.on_status(status("a", "offline"))
    assert reg.on_status(status("a", reason="restarted")) == Change("a", True, "restarted")


def test_capabilities_alone_do_not_make_an_agent_online() -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("a", "smol"))
    assert reg.online_experts() == {}
    assert reg.known_experts() == {("a", "smol")}
    assert reg.sweep() == []  # no status: no silence limit


def test_silence_limit_is_the_larger_of_telemetry_and_keepalive() -> None:
    reg = FleetRegistry(silence_factor=3.0)
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=2.0))
    reg.on_status(status("b", keepalive_s=10, telemetry_interval_s=0.5))
    limits = {r.agent_id: r.silence_limit_s(reg.silence_factor) for r in reg.agents()}
    assert limits == {"a": 6.0, "b": 15.0}
    reg.on_capabilities(capabilities("c"))
    assert reg.agents()[2].silence_limit_s(3.0) == float("inf")


def test_sweep_marks_a_silent_agent_offline_exactly_once(clock: Clock) -> None:
    reg = FleetRegistry(silence_factor=3.0)
    reg.on_capabilities(capabilities("orin-1", "smol"))
    reg.on_status(status("orin-1", keepalive_s=1, telemetry_interval_s=0.1))
    # limit = max(3 * 0.1, 1.5 * 1) = 1.5 s
    clock.advance(1.5)
    assert reg.sweep() == []  # at the limit, not over it
    clock.advance(0.01)
    assert reg.sweep() == [Change("orin-1", False, "no message for 1.5 s")]
    assert reg.online_experts() == {}
    assert reg.sweep() == []
    clock.advance(100)
    assert reg.sweep() == []


def test_telemetry_keeps_an_agent_alive(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    for _ in range(5):
        clock.advance(1.0)
        assert reg.on_telemetry(telemetry("a")) is None
        assert reg.sweep() == []
    assert reg.agents()[0].online


def test_sweep_only_touches_silent_agents(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_status(status("quiet", keepalive_s=1, telemetry_interval_s=0.1))
    reg.on_status(status("chatty", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(1.0)
    reg.on_telemetry(telemetry("chatty"))
    clock.advance(1.0)
    assert [c.agent_id for c in reg.sweep()] == ["quiet"]
    assert {r.agent_id: r.online for r in reg.agents()} == {"chatty": True, "quiet": False}


def test_sweep_ignores_agents_already_offline_by_will(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    reg.on_status(status("a", "offline", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(60)
    assert reg.sweep() == []


def test_sweep_with_last_heard_in_the_past() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    record = reg.agents()[0]
    record.last_heard -= 10
    (change,) = reg.sweep()
    assert change.agent_id == "a"
    assert change.online is False
    assert record.silent
    assert reg.sweep() == []


def test_telemetry_resuming_brings_it_back(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("a", "smol", "gemma"))
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(2)
    assert len(reg.sweep()) == 1
    assert reg.snapshot()[0]["reason"] == "telemetry silence"
    assert reg.on_telemetry(telemetry("a")) == Change("a", True, "telemetry resumed")
    assert reg.online_experts() == {"a": ["smol", "gemma"]}
    assert reg.on_telemetry(telemetry("a")) is None
    # ... and it can go silent again.
    clock.advance(2)
    assert [c.online for c in reg.sweep()] == [False]


def test_status_after_silence_brings_it_back(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(2)
    reg.sweep()
    assert reg.on_status(status("a")) == Change("a", True, "online")
    assert reg.agents()[0].silent is False


def test_will_after_silence_is_no_second_change(clock: Clock) -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(2)
    assert len(reg.sweep()) == 1
    assert reg.on_status(status("a", "offline", reason="connection lost")) is None
    assert reg.snapshot()[0]["reason"] == "connection lost"


def test_telemetry_from_an_agent_never_silent_is_no_change() -> None:
    reg = FleetRegistry()
    assert reg.on_telemetry(telemetry("unknown")) is None
    assert not reg.agents()[0].online


def test_online_and_known_experts() -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("orin-1", "smol", "gemma"))
    reg.on_capabilities(capabilities("pi-5", "smol"))
    reg.on_capabilities(capabilities("gone", "old"))
    reg.on_status(status("orin-1"))
    reg.on_status(status("pi-5"))
    reg.on_status(status("gone", "offline"))
    reg.on_status(status("bare"))  # online, capabilities not yet seen
    assert reg.online_experts() == {"bare": [], "orin-1": ["smol", "gemma"], "pi-5": ["smol"]}
    assert reg.known_experts() == {
        ("orin-1", "smol"),
        ("orin-1", "gemma"),
        ("pi-5", "smol"),
        ("gone", "old"),
    }


def test_new_capabilities_replace_the_old_ones() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a"))
    reg.on_capabilities(capabilities("a", "smol"))
    reg.on_capabilities(capabilities("a", "gemma"))
    assert reg.online_experts() == {"a": ["gemma"]}


def test_agents_are_sorted_by_id() -> None:
    reg = FleetRegistry()
    for agent in ["pi-5", "a-1", "orin-1"]:
        reg.on_status(status(agent))
    assert [r.agent_id for r in reg.agents()] == ["a-1", "orin-1", "pi-5"]
    assert [row["agent_id"] for row in reg.snapshot()] == ["a-1", "orin-1", "pi-5"]


def test_snapshot_of_an_online_agent_with_telemetry() -> None:
    reg = FleetRegistry()
    reg.on_status(status("orin-1"))
    reg.on_capabilities(capabilities("orin-1", "smol", "gemma"))
    reg.on_telemetry(telemetry("orin-1"))
    assert reg.snapshot() == [
        {
            "agent_id": "orin-1",
            "state": "online",
            "reason": None,
            "version": "0.1.0",
            "failed_experts": {},
            "warning": None,
            "hostname": "orin-1.local",
            "experts": ["smol", "gemma"],
            "loaded_experts": ["smol"],
            "power_w": 5.5,
            "energy_j": 100.0,
            "energy_source": "nvml",
            "last_latency_s": 0.9,
            "queue_depth": 2,
            "jobs_done": 7,
            "plan_epoch": 42,
        }
    ]


def test_snapshot_of_an_offline_agent_without_capabilities_or_telemetry() -> None:
    reg = FleetRegistry()
    reg.on_status(status("pi-5", "offline", reason="shutdown"))
    assert reg.snapshot() == [
        {
            "agent_id": "pi-5",
            "state": "offline",
            "reason": "shutdown",
            "version": "0.1.0",
            "failed_experts": {},
            "warning": None,
            "hostname": None,
            "experts": [],
            "loaded_experts": [],
            "power_w": None,
            "energy_j": None,
            "energy_source": None,
            "last_latency_s": None,
            "queue_depth": None,
            "jobs_done": None,
            "plan_epoch": None,
        }
    ]


def test_snapshot_of_an_agent_seen_only_by_telemetry() -> None:
    reg = FleetRegistry()
    reg.on_telemetry(telemetry("ghost"))
    (row,) = reg.snapshot()
    assert row["state"] == "offline"
    assert row["reason"] is None
    assert row["version"] is None
    assert row["power_w"] == 5.5


def test_a_forgotten_agent_heard_alive_comes_back_as_it_was(clock: Clock) -> None:
    # Its retained status cleared while it runs (moe2 fleet --forget, or anyone): forgotten,
    # but its telemetry brings it back with its capabilities and status.
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("a", "smol"))
    reg.on_status(status("a"))
    assert reg.forget("a") and reg.agents() == [] and reg.online_experts() == {}
    assert not reg.forget("a")  # forgotten once
    clock.advance(60)  # longer than its silence limit: the silence clock starts again
    change = reg.on_telemetry(telemetry("a"))
    assert change == Change("a", True, "heard alive after its status was cleared")
    assert reg.online_experts() == {"a": ["smol"]} and reg.sweep() == []
    assert reg.heard_alive() == {"a"}


def test_a_result_brings_a_forgotten_agent_back_and_others_are_no_change() -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("a", "smol"))
    reg.on_status(status("a"))
    assert reg.heard("a") is None  # not forgotten: nothing to do
    reg.forget("a")
    assert reg.heard("a") == Change("a", True, "heard alive after its status was cleared")
    assert reg.heard("stranger") is None and [r.agent_id for r in reg.agents()] == ["a"]


def test_a_forgotten_agent_announcing_again_is_a_change_and_keeps_its_capabilities() -> None:
    reg = FleetRegistry()
    reg.on_capabilities(capabilities("a", "smol"))
    reg.on_status(status("a"))
    reg.forget("a")
    reg.on_capabilities(capabilities("a", "smol", "gemma"))  # kept aside, not back by itself
    assert reg.online_experts() == {}
    assert reg.on_status(status("a")) == Change("a", True, "online")
    assert reg.online_experts() == {"a": ["smol", "gemma"]}


def test_a_forgotten_offline_agent_heard_from_stays_offline() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a", "offline", reason="shutdown"))
    reg.forget("a")
    assert reg.heard("a") is None and not reg.agents()[0].online


def test_only_agents_that_sent_telemetry_are_heard_alive() -> None:
    reg = FleetRegistry()
    for agent_id in ("ghost", "real"):
        reg.on_capabilities(capabilities(agent_id, "smol"))
        reg.on_status(status(agent_id))
    assert reg.heard_alive() == set()
    reg.on_telemetry(telemetry("real"))
    assert reg.heard_alive() == {"real"}
    assert reg.get("ghost") is not None and reg.get("nobody") is None


def test_online_among_looks_only_at_the_agents_asked() -> None:
    reg = FleetRegistry()
    reg.on_status(status("a"))
    reg.on_status(status("b", "offline"))
    assert reg.online_among(["a", "b", "nobody"]) == {"a"}


def test_silence_restarts_after_the_controller_itself_was_away(clock: Clock) -> None:
    """A controller frozen or cut off heard nothing: that says nothing of the agents."""
    reg = FleetRegistry(silence_factor=3.0)
    reg.on_capabilities(capabilities("orin-1", "smol"))
    reg.on_status(status("orin-1", keepalive_s=1, telemetry_interval_s=0.1))
    clock.advance(30.0)  # the controller was frozen
    reg.heard_all(clock.now)
    assert reg.sweep() == []
    assert reg.online_experts() == {"orin-1": ["smol"]}
    clock.advance(1.51)  # and silent for a whole limit after it came back: gone
    assert [c.online for c in reg.sweep()] == [False]
