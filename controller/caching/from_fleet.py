"""A caching instance from the live fleet (``moe2 cache-plan --fleet``).

- Servers are the online agents that declare an expert memory budget (capacity, in MB).
- The experts are those every such agent can serve (one layer: whole LLM experts); each one's
  size is its measured resident memory where an agent has loaded it, else its file's size (MB).
- One user, the controller's askers: its latency to a server is the median measured latency
  (compute + transmission) of that agent's experts in the profile; the fallback (an expert
  cached nowhere: loaded cold, or sent to a cloud) is given, or declared as twice the slowest
  server.
- The activation probabilities are the gate's real routing: for each suite prompt of the
  profile, the top-K experts by gate logit, counted.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.gate.dataset import GateData
from controller.gate.gate import Gate
from controller.profile import Profile, ProfileError
from controller.registry import AgentRecord
from messages.expert_key import agent_of, expert_of

MB = 1e6
# Declared, not measured: without --fallback-latency-s an expert cached nowhere is taken to cost
# this many times the slowest server (a cold load, or a cloud round trip).
FALLBACK_FACTOR = 2.0


class FleetCachingError(ValueError):
    """The live fleet cannot make a caching instance; the message says what is missing."""


@dataclass(frozen=True)
class FleetView:
    servers: list[AgentRecord]
    experts: list[str]
    sizes_mb: dict[str, float]
    excluded: list[str]


def fleet_view(agents: list[AgentRecord]) -> FleetView:
    servers = [
        r
        for r in agents
        if r.online and r.capabilities and r.capabilities.expert_memory_budget_bytes is not None
    ]
    if not servers:
        raise FleetCachingError(
            "no online agent declares an expert memory budget (expert_memory_budget_mb)"
        )
    served = [{e.expert_id for e in r.capabilities.experts} for r in servers]  # type: ignore[union-attr]
    common = sorted(set.intersection(*served))
    excluded = sorted(set.union(*served) - set(common))
    if not common:
        raise FleetCachingError("no expert is configured on every agent with a memory budget")
    sizes: dict[str, float] = {}
    for expert in common:
        infos = [
            e
            for r in servers
            for e in r.capabilities.experts
            if e.expert_id == expert  # type: ignore[union-attr]
        ]
        measured = [i.memory_bytes for i in infos if i.memory_bytes]
        sizes[expert] = (max(measured) if measured else max(i.file_size_bytes for i in infos)) / MB
    return FleetView(servers, common, sizes, excluded)


def server_latency_s(profile: Profile, agent_id: str) -> float:
    rows = [
        m for row in profile.records.values() for k, m in row.items() if agent_of(k) == agent_id
    ]
    if not rows:
        raise FleetCachingError(f"the profile has no measurement of agent {agent_id}")
    return statistics.median(m.compute_s for m in rows) + statistics.median(
        m.transmission_s for m in rows
    )


def gate_activations(
    gate: Gate, data: GateData, experts: list[str], top_k: int
) -> list[dict[str, Any]]:
    """The gate's routing over the profile's prompts: how often each top-K set is chosen."""
    index: dict[str, list[int]] = {}
    for n, key in enumerate(gate.expert_keys):
        index.setdefault(expert_of(key), []).append(n)
    missing = [e for e in experts if e not in index]
    if missing:
        raise FleetCachingError(
            f"the gate has no expert {missing}: train it on a profile with them"
        )
    embeddings = np.concatenate([s.embeddings for s in data.splits.values() if len(s)])
    logits = gate.logits_of_embeddings(embeddings)
    # an expert served by several profiled agents counts with its best logit
    per_expert = np.stack([logits[:, index[e]].max(axis=1) for e in experts], axis=1)
    k = min(top_k, len(experts))
    counts: Counter[tuple[str, ...]] = Counter()
    for row in per_expert:
        chosen = np.argsort(-row, kind="stable")[:k]
        counts[tuple(sorted(experts[i] for i in chosen))] += 1
    total = sum(counts.values())
    return [{"experts": list(s), "prob": c / total} for s, c in sorted(counts.items())]


def fleet_instance(
    view: FleetView,
    profile: Profile,
    gate: Gate,
    data: GateData,
    top_k: int,
    fallback_latency_s: float | None = None,
) -> dict[str, Any]:
    """The caching instance (docs/design.md section 6 format) as a plain dict."""
    try:
        latency = {r.agent_id: server_latency_s(profile, r.agent_id) for r in view.servers}
    except ProfileError as exc:
        raise FleetCachingError(str(exc)) from None
    slowest = max(latency.values())
    if fallback_latency_s is None:
        fallback_latency_s = FALLBACK_FACTOR * slowest
    if fallback_latency_s < slowest:
        raise FleetCachingError(
            f"fallback latency {fallback_latency_s} s is below the slowest server's {slowest:.3f} s"
        )
    return {
        "top_k": top_k,
        "servers": [
            {
                "id": r.agent_id,
                "capacity": r.capabilities.expert_memory_budget_bytes / MB,  # type: ignore[union-attr,operator]
            }
            for r in view.servers
        ],
        "users": [
            {
                "id": "askers",
                "weight": 1.0,
                "latency_s": latency,
                "fallback_latency_s": fallback_latency_s,
            }
        ],
        "layers": [
            {
                "experts": [{"id": e, "size": view.sizes_mb[e]} for e in view.experts],
                "activations": {"askers": gate_activations(gate, data, view.experts, top_k)},
            }
        ],
    }
