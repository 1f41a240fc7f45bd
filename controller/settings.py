"""The controller's configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from messages.base import TOPIC_LEVEL_PATTERN
from messages.settings import FleetSettings


class ControllerSettings(FleetSettings):
    default_timeout_s: float = Field(
        default=60.0, gt=0, le=3600, description="Deadline of a prompt that names none"
    )
    status_interval_s: float = Field(default=5.0, gt=0, le=3600)
    silence_factor: float = Field(
        default=3.0,
        ge=1.5,
        description="An agent is offline after this many telemetry intervals without a message",
    )
    controller_id: str | None = Field(
        default=None,
        pattern=TOPIC_LEVEL_PATTERN,
        description="Stable id (MQTT session, ledger); default: the host name, then {host}-2...",
    )
    state_dir: Path | None = Field(
        default=None,
        description="Where the ledger of accepted prompts lives; default $XDG_STATE_HOME/moe2",
    )
    max_queued_prompts: int = Field(
        default=1024,
        ge=0,
        le=1_000_000,
        description="Prompts waiting for room on the fleet; beyond this they are answered busy",
    )
    agent_job_window: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description="Jobs outstanding per agent at most (and at most its job queue capacity)",
    )
    busy_retry_after_s: float = Field(
        default=2.0, gt=0, le=3600, description="The retry hint of a busy answer, s"
    )
    early_answers: bool = Field(
        default=True,
        description="Answer as soon as the experts still out cannot change the answer (off: "
        "wait for every expert, as a baseline)",
    )
    ledger_sync: bool = Field(
        default=True,
        description="Sync each accepted prompt's ledger line to disk before the prompt is "
        "acknowledged, so a power cut loses no accepted prompt (off: flushed only; a killed "
        "process still loses nothing)",
    )
    election_grace_s: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="After (re)connecting, seconds to hear the other controllers before leading",
    )
    replan_window_s: float = Field(
        default=0.5,
        ge=0,
        le=60,
        description="Agents joining, leaving or flapping within this many seconds make one "
        "re-plan (a job on an agent that left fails over at once, not after it)",
    )
    flap_limit: int = Field(
        default=4,
        ge=2,
        le=1000,
        description="An agent that goes online or offline this many times within flap_window_s "
        "is held out of the plan until steady for flap_steady_s",
    )
    flap_window_s: float = Field(default=60.0, gt=0, le=86_400)
    flap_steady_s: float = Field(default=10.0, gt=0, le=86_400)
    profile: Path | None = Field(
        default=None, description="Fleet profile (moe2 profile); with gate, enables selection"
    )
    gate: Path | None = Field(default=None, description="Gate checkpoint (moe2 gate train)")
    energy_budget_j: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Energy per query budget, J"
    )
    delay_budget_s: dict[str, float] = Field(
        default_factory=dict, description="Delay budget per application category, s"
    )
    top_k: int | None = Field(default=None, ge=1, description="Experts run per prompt")
    aggregation_delay_s: float = Field(
        default=0.005, ge=0, description="Controller time to combine answers, s"
    )
    selection_time_limit_s: float = Field(
        default=1.0,
        gt=0,
        le=3600,
        description="Time limit of a re-plan's expert selection, s: past it the best plan found "
        "is used with its proven gap, and the search goes on in the background",
    )

    # -- the fleet's configuration (controller/fleet_config.py, controller/config_sync.py) --
    replace_config: bool = Field(
        default=False,
        description="Publish this controller's profile, gate, budgets and selection settings as "
        "the fleet's configuration, replacing the one the fleet has (off: a controller whose "
        "configuration differs from the fleet's refuses to lead)",
    )
    config_fetch_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="A standby that has not fetched the fleet's configuration within this many "
        "seconds says so (it keeps trying, and does not lead without it)",
    )

    # -- the live loop (controller/adapt.py) --
    suite: Path | None = Field(
        default=None,
        description="Suite (JSONL) that newcomers to the gate are profiled on; default: the "
        "bundled data/suite.jsonl",
    )
    drift_threshold: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="Re-plan when an expert's energy or delay moves by more than this fraction "
        "(either way, as a log ratio) from the costs the plan was solved with",
    )
    drift_cooldown_s: float = Field(
        default=10.0, ge=0, le=86_400, description="Cost re-plans are at least this far apart, s"
    )
    cost_window: int = Field(
        default=16, ge=3, le=10_000, description="Results in each expert's rolling median"
    )
    probe_interval_s: float = Field(
        default=10.0,
        ge=0,
        le=86_400,
        description="An online expert with no cost sample for this long (e.g. one the plan "
        "left out) gets one profile prompt; 0: never",
    )
    probe_timeout_s: float = Field(
        default=30.0, gt=0, le=3600, description="A probe unanswered this long counts this long"
    )
    newcomer_rate_hz: float = Field(
        default=2.0, gt=0, le=1000, description="Profiling prompts per second for newcomers"
    )
    newcomer_sample: int = Field(
        default=150,
        ge=0,
        le=1_000_000,
        description="Suite prompts (a sample stratified by category and split) a newcomer is "
        "measured on before it enters the gate; the rest of the suite refines it in the "
        "background; 0: the whole suite first",
    )

    @model_validator(mode="after")
    def _profile_and_gate_together(self) -> ControllerSettings:
        if (self.profile is None) != (self.gate is None):
            raise ValueError("profile and gate are given together (or neither)")
        if self.replace_config and self.profile is None:
            raise ValueError("replace_config needs a profile and a gate to replace with")
        if any(v < 0 for v in self.delay_budget_s.values()):
            raise ValueError("delay budgets must be non-negative")
        return self
