"""A small gated profile for the controller tests: fleet "sel", two experts (e1@a1 at 1 J, good
at geography; e2@a2 at 5 J, good at science and math) measured on 8 suite items of each
category, a gate trained on it, and the results their scripted agents send."""

from __future__ import annotations

import math
from pathlib import Path

from controller.gate.dataset import GateData
from controller.gate.encoder import PromptEncoder
from controller.gate.gate import Gate, file_sha256
from controller.gate.training import TrainConfig, train_gate
from controller.profile import ExpertProfile, Measurement, Profile, save_profile, suite_digest
from controller.suite import load_suite, stratified
from messages.expert_key import parse_key
from messages.jobs import Job
from messages.results import EnergyReading, JobResult, LatencyBreakdown

ENERGY = {"e1@a1": 1.0, "e2@a2": 5.0}
GOOD_AT = {"e1@a1": {"geography"}, "e2@a2": {"science", "math"}}


def _probs(n: int, label: int, p: float) -> list[float]:
    return [p if i == label else (1 - p) / (n - 1) for i in range(n)]


def write_gated_profile(folder: Path) -> tuple[Path, Path]:
    """The profile and its trained gate, written in ``folder``: (profile path, gate path)."""
    items = stratified(load_suite(), 8)
    profile = Profile(fleet="sel", suite_sha256=suite_digest(items), items=items)
    for key in ENERGY:
        where = parse_key(key)
        profile.experts[key] = ExpertProfile(
            key=key, expert_id=where.expert_id, agent_id=where.agent_id, model="m", template="cloze"
        )
    for item in items:
        profile.records[item.id] = {
            key: Measurement(
                choice_probs=_probs(
                    len(item.choices), item.label, 0.9 if item.category in GOOD_AT[key] else 0.3
                ),
                compute_s=0.1 * ENERGY[key],
                transmission_s=0.01,
                energy_j=ENERGY[key],
                energy_source="estimate",
            )
            for key in ENERGY
        }
    profile_path, gate_path = folder / "profile.json", folder / "gate.pt"
    save_profile(profile, profile_path)
    data = GateData.from_profile(profile, PromptEncoder())
    net, _ = train_gate(data.splits["train"], data.splits["val"], TrainConfig(hidden=16, lr=0.01))
    Gate(net, data.expert_keys, "sel", file_sha256(profile_path)).save(gate_path)
    return profile_path, gate_path


def estimated(job: Job, agent: str, energy_j: float, probs: list[float]) -> JobResult:
    return JobResult(
        request_id=job.request_id,
        expert_id=job.expert_id,
        agent_id=agent,
        ok=True,
        choice_probs=probs,
        choice_logprobs=[math.log(p) for p in probs],
        latency=LatencyBreakdown(queue_s=0, load_s=0, total_s=0.05),
        energy=EnergyReading(energy_j=energy_j, source="estimate", estimated=True),
    )
