"""Activation traces: a file format, conversion to pi_{u,l}(A), and a seeded MoE trace generator.

Trace format (JSON lines, one record per line; both kinds may be mixed in one file)
-------------------------------------------------------------------------------------
* a request: the activated experts of every layer for one request (one token of an MoE model, or
  one prompt for whole-LLM experts with one layer), ``count`` times (default 1)::

      {"user": "u0", "layers": [["e3", "e7"], ["e1", "e2"]]}

* aggregated counts: how often one set was activated in one layer::

      {"user": "u0", "layer": 1, "experts": ["e1", "e2"], "count": 120}

The order of the experts within a set does not matter. ``activation_probabilities`` turns the
counts into pi_{u,l}(A) = count(u, l, A) / sum_A' count(u, l, A'), exactly the ``activations`` of a
caching instance (docs/design.md section 6). The gate's real routing over a profile's prompts is one
source (one layer, whole-LLM experts: ``controller/caching/from_fleet.py``); the generator below is
another.

Generator of multi-layer MoE traces
-----------------------------------
A router model with skewed popularity and co-activation, seeded, numpy only. For each token:

* a latent *topic* z is drawn from the user's topic mixture (Dirichlet(``user_concentration``) over
  ``topics`` topics, one mixture per user, so users differ);
* in every layer l each expert e gets the score  -s log(rank_l(e)) + a_{l,z,e} + Gumbel noise,
  where rank_l is a random permutation of 1..E per layer (Zipf(s) popularity: the expert of rank r
  is chosen about r^-s as often as the top one) and a_{l,z,e} ~ Normal(0, ``topic_strength``) is
  the topic's affinity;
* the layer activates the top-K experts by score. Top-K of Gumbel-perturbed scores is sampling K
  experts without replacement with probabilities proportional to exp(score) (Plackett-Luce), so
  each activated set is a correlated top-K: experts favoured by the same topic are activated
  together (co-activation), and the same topic drives every layer of the token.

Presets imitate real MoE models' shapes (numbers from their Hugging Face config.json). Expert size
is 3 x hidden x moe_intermediate parameters (gate, up and down projections of a SwiGLU FFN) at
``bytes_per_param`` (2: fp16/bf16). Shared experts (always active) are not part of caching and not
modelled. The routing statistics are synthetic: shapes are the models', the activations are not
their real routers'.

* ``mixtral-8x7b``: 32 layers, all MoE, 8 experts, top-2; hidden 4096, FFN 14336 (352 MB/expert).
* ``deepseek-moe-16b``: 28 layers of which the first is dense (first_k_dense_replace = 1): 27 MoE
  layers of 64 routed experts, top-6, plus 2 shared; hidden 2048, expert FFN 1408 (17.3 MB/expert).
* ``qwen1.5-moe-a2.7b``: 24 layers, all MoE, 60 routed experts, top-4, plus a shared expert;
  hidden 2048, expert FFN 1408 (17.3 MB/expert).

Latency model of ``generate_instance`` (declared, not measured): server m runs an expert in
c_m ~ U(``compute_s``) seconds, user u reaches server m in r_{u,m} ~ U(``network_s``), so
t_{u,m} = c_m + r_{u,m}; the fallback (a cloud round trip, or loading the expert cold) is
``fallback_s`` for every user. User weights are 1/U, so the expected latency is the mean over
users of the per-token sum over layers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.caching.instance import CachingInstance, parse_instance

Id = Annotated[str, Field(min_length=1, max_length=256)]


class TraceError(ValueError):
    """A trace that cannot be read; the message names the line."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RequestRecord(_Model):
    """One request: the activated experts of every layer (index = layer)."""

    user: Id
    layers: list[list[Id]] = Field(min_length=1)
    count: Annotated[int, Field(ge=1)] = 1


class CountRecord(_Model):
    """Aggregated: how often a set of experts was activated in one layer."""

    user: Id
    layer: Annotated[int, Field(ge=0)]
    experts: list[Id] = Field(min_length=1)
    count: Annotated[int, Field(ge=1)]


@dataclass
class TraceCounts:
    """(user, layer) -> activated set (sorted expert ids) -> count."""

    counts: dict[tuple[str, int], Counter[tuple[str, ...]]] = field(default_factory=dict)

    def add(self, user: str, layer: int, experts: Sequence[str], count: int = 1) -> None:
        if len(set(experts)) != len(experts):
            raise TraceError(f"an expert appears twice in {list(experts)}")
        key = tuple(sorted(experts))
        self.counts.setdefault((user, layer), Counter())[key] += count

    @property
    def users(self) -> list[str]:
        return list(dict.fromkeys(u for u, _ in self.counts))

    @property
    def n_layers(self) -> int:
        return 1 + max((layer for _, layer in self.counts), default=-1)

    def records(self) -> list[CountRecord]:
        """The aggregated form, ready for ``write_trace``."""
        return [
            CountRecord(user=u, layer=layer, experts=list(key), count=c)
            for (u, layer), sets in self.counts.items()
            for key, c in sets.items()
        ]


def parse_trace_lines(lines: Iterable[str], source: str = "trace") -> TraceCounts:
    """Counts from JSON lines (blank lines skipped); raises TraceError naming the line."""
    counts = TraceCounts()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source} line {number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TraceError(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(data, dict):
            raise TraceError(f"{where}: expected a JSON object")
        try:
            record: RequestRecord | CountRecord
            if "layers" in data:
                record = RequestRecord.model_validate(data)
            else:
                record = CountRecord.model_validate(data)
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False)
            )
            raise TraceError(f"{where}: {detail}") from None
        try:
            if isinstance(record, RequestRecord):
                for layer, experts in enumerate(record.layers):
                    if not experts:
                        raise TraceError(f"layer {layer}: empty activated set")
                    counts.add(record.user, layer, experts, record.count)
            else:
                counts.add(record.user, record.layer, record.experts, record.count)
        except TraceError as exc:
            raise TraceError(f"{where}: {exc}") from None
    return counts


def read_trace(path: Path | str) -> TraceCounts:
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as f:
            return parse_trace_lines(f, source=str(path))
    except FileNotFoundError:
        raise TraceError(f"trace file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"cannot read trace file {path}: {exc}") from None


def write_trace(path: Path | str, records: Iterable[RequestRecord | CountRecord]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for record in records:
            f.write(record.model_dump_json(exclude_defaults=isinstance(record, RequestRecord)))
            f.write("\n")


def activation_probabilities(
    counts: TraceCounts, expert_order: Sequence[Sequence[str]] | None = None
) -> list[dict[str, list[dict[str, Any]]]]:
    """Per layer, the instance's ``activations``: user -> [{"experts": [...], "prob": p}].

    Sets are listed by decreasing count (ties: sorted ids); within a set the experts follow
    ``expert_order[layer]`` when given, else sorted ids.
    """
    layers: list[dict[str, list[dict[str, Any]]]] = [{} for _ in range(counts.n_layers)]
    for (user, layer), sets in counts.counts.items():
        total = sum(sets.values())
        rank = {e: k for k, e in enumerate(expert_order[layer])} if expert_order else None
        rows = []
        for key, c in sorted(sets.items(), key=lambda kv: (-kv[1], kv[0])):
            experts = sorted(key, key=lambda e: rank.get(e, len(rank))) if rank else list(key)
            rows.append({"experts": experts, "prob": c / total})
        layers[layer][user] = rows
    return layers


def build_instance(
    counts: TraceCounts,
    experts: Sequence[Sequence[tuple[str, float]]],
    servers: Sequence[tuple[str, float]],
    users: Sequence[dict[str, Any]],
    top_k: int,
) -> CachingInstance:
    """A caching instance from trace counts: ``experts[l]`` = [(id, size)], ``servers`` =
    [(id, capacity)], ``users`` = the instance's user objects (id, weight, latencies).

    Raises CachingInstanceError when the pieces do not fit together (e.g. a set larger than
    top_k, an expert the layer does not have, a user without activations in some layer).
    """
    probs = activation_probabilities(counts, [[e for e, _ in layer] for layer in experts])
    probs += [{} for _ in range(len(experts) - len(probs))]
    return parse_instance(
        {
            "top_k": top_k,
            "servers": [{"id": s, "capacity": float(c)} for s, c in servers],
            "users": list(users),
            "layers": [
                {
                    "experts": [{"id": e, "size": float(size)} for e, size in layer],
                    "activations": probs[n],
                }
                for n, layer in enumerate(experts)
            ],
        }
    )


# ---- generator --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MoEShape:
    """A model's MoE shape and the generator's routing parameters (module docstring)."""

    name: str
    moe_layers: int
    experts: int
    top_k: int
    hidden_size: int
    expert_intermediate_size: int
    zipf_s: float = 1.0
    topics: int = 8
    topic_strength: float = 2.0
    user_concentration: float = 0.5

    def expert_size_gb(self, bytes_per_param: float = 2.0) -> float:
        return 3 * self.hidden_size * self.expert_intermediate_size * bytes_per_param / 1e9


PRESETS: dict[str, MoEShape] = {
    "mixtral-8x7b": MoEShape("mixtral-8x7b", 32, 8, 2, 4096, 14336),
    "deepseek-moe-16b": MoEShape("deepseek-moe-16b", 27, 64, 6, 2048, 1408),
    "qwen1.5-moe-a2.7b": MoEShape("qwen1.5-moe-a2.7b", 24, 60, 4, 2048, 1408),
}


def preset(name: str, **overrides: Any) -> MoEShape:
    """A preset by name, with fields replaced (e.g. ``moe_layers=2`` for a small test)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def sample_activations(
    shape: MoEShape, n_users: int, tokens_per_user: int, seed: int = 0
) -> np.ndarray:
    """(users, tokens, layers, K) sorted expert indices activated per token (module docstring)."""
    rng = np.random.default_rng(seed)
    n_l, n_e, k = shape.moe_layers, shape.experts, shape.top_k
    if not 1 <= k <= n_e:
        raise ValueError(f"top_k {k} must be between 1 and the number of experts {n_e}")
    rank = np.stack([rng.permutation(n_e) for _ in range(n_l)]) + 1  # (L, E)
    base = -shape.zipf_s * np.log(rank)
    affinity = rng.normal(0.0, shape.topic_strength, (n_l, shape.topics, n_e))
    out = np.empty((n_users, tokens_per_user, n_l, k), dtype=np.int64)
    for u in range(n_users):
        mix = rng.dirichlet(np.full(shape.topics, shape.user_concentration))
        topic = rng.choice(shape.topics, size=tokens_per_user, p=mix)
        for layer in range(n_l):
            score = base[layer][None] + affinity[layer, topic] + rng.gumbel(size=(len(topic), n_e))
            top = np.argpartition(-score, k - 1, axis=1)[:, :k]
            out[u, :, layer] = np.sort(top, axis=1)
    return out


def generate_counts(
    shape: MoEShape, n_users: int, tokens_per_user: int, seed: int = 0
) -> TraceCounts:
    """Aggregated trace counts of ``sample_activations`` (users u0.., experts e0..)."""
    acts = sample_activations(shape, n_users, tokens_per_user, seed)
    counts = TraceCounts()
    for u in range(n_users):
        for layer in range(shape.moe_layers):
            rows, freq = np.unique(acts[u, :, layer], axis=0, return_counts=True)
            sets = Counter(
                {
                    tuple(sorted(f"e{e}" for e in row)): int(c)
                    for row, c in zip(rows, freq, strict=True)
                }
            )
            counts.counts[(f"u{u}", layer)] = sets
    return counts


def generate_requests(
    shape: MoEShape, n_users: int, tokens_per_user: int, seed: int = 0
) -> list[RequestRecord]:
    """The same trace as per-request records (one per token), for ``write_trace``."""
    acts = sample_activations(shape, n_users, tokens_per_user, seed)
    return [
        RequestRecord(
            user=f"u{u}",
            layers=[[f"e{e}" for e in acts[u, t, layer]] for layer in range(shape.moe_layers)],
        )
        for u in range(n_users)
        for t in range(tokens_per_user)
    ]


def generate_instance(
    shape: MoEShape,
    *,
    n_servers: int,
    n_users: int = 1,
    tokens_per_user: int = 2000,
    capacity_gb: float | Sequence[float],
    seed: int = 0,
    bytes_per_param: float = 2.0,
    compute_s: tuple[float, float] = (0.002, 0.006),
    network_s: tuple[float, float] = (0.001, 0.010),
    fallback_s: float = 0.05,
) -> CachingInstance:
    """A caching instance with a generated trace and the latency model of the module docstring."""
    counts = generate_counts(shape, n_users, tokens_per_user, seed)
    rng = np.random.default_rng([seed, 1])
    compute = rng.uniform(*compute_s, n_servers)
    network = rng.uniform(*network_s, (n_users, n_servers))
    caps = (
        [float(capacity_gb)] * n_servers
        if isinstance(capacity_gb, (int, float))
        else [float(c) for c in capacity_gb]
    )
    if len(caps) != n_servers:
        raise ValueError(f"{len(caps)} capacities for {n_servers} servers")
    servers = [(f"s{m}", caps[m]) for m in range(n_servers)]
    size = shape.expert_size_gb(bytes_per_param)
    users = [
        {
            "id": f"u{u}",
            "weight": 1.0 / n_users,
            "latency_s": {f"s{m}": float(compute[m] + network[u, m]) for m in range(n_servers)},
            "fallback_latency_s": max(fallback_s, float((compute + network[u]).max())),
        }
        for u in range(n_users)
    ]
    experts = [[(f"e{e}", size) for e in range(shape.experts)] for _ in range(shape.moe_layers)]
    return build_instance(counts, experts, servers, users, shape.top_k)
