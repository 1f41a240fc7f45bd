"""The arrays every caching algorithm works on, built once from a validated instance.

Experts are flattened over layers into *items* n = (layer, expert), in instance order. A placement
is a boolean matrix X of shape (servers, items): X[m, n] = 1 when server m caches item n.

Activated sets are flattened over (user, layer) into rows s with the user u_s, the layer l_s, the
probability pi_s, the weight w_s = w_{u_s} pi_s and up to top_k member items (padded with -1).
Sets that appear twice in one user's list for a layer (the same experts in another order) are
merged, their probabilities added; sets of probability 0 are dropped (they add nothing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from controller.caching.instance import CachingInstance

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]

# Sizes may exceed a capacity by this relative slack (float sums: 0.1 + 0.2 fits 0.3).
CAPACITY_RTOL = 1e-9


class PlacementError(ValueError):
    """A placement that names unknown servers, layers or experts."""


@dataclass(frozen=True)
class CompiledInstance:
    instance: CachingInstance
    server_ids: list[str]
    capacity: FloatArray  # (M,)
    user_ids: list[str]
    weight: FloatArray  # (U,)
    latency: FloatArray  # (U, M): t_{u,m}
    fallback: FloatArray  # (U,): t_{u,0}
    expert_ids: list[list[str]]  # per layer
    layer_start: IntArray  # (L + 1,): items of layer l are layer_start[l]:layer_start[l + 1]
    item_layer: IntArray  # (N,)
    size: FloatArray  # (N,)
    set_user: IntArray  # (S,)
    set_layer: IntArray  # (S,)
    set_prob: FloatArray  # (S,)
    set_weight: FloatArray  # (S,): w_u * pi
    members: IntArray  # (S, K'): item ids, -1 padding; K' = the largest activated set
    top_k: int

    @property
    def n_servers(self) -> int:
        return len(self.server_ids)

    @property
    def n_items(self) -> int:
        return int(self.size.shape[0])

    @property
    def n_layers(self) -> int:
        return len(self.expert_ids)

    def item_of(self, layer: int, expert_id: str) -> int:
        return int(self.layer_start[layer]) + self.expert_ids[layer].index(expert_id)

    def empty(self) -> BoolArray:
        return np.zeros((self.n_servers, self.n_items), dtype=bool)

    def fits(self, server: int, used: float, size: float) -> bool:
        """Whether an item of this size fits beside ``used`` on the server (with the slack)."""
        cap = float(self.capacity[server])
        return used + size <= cap + CAPACITY_RTOL * max(cap, 1.0)

    def capacity_used(self, placement: BoolArray) -> FloatArray:
        return placement.astype(float) @ self.size

    def respects_capacities(self, placement: BoolArray) -> bool:
        used = self.capacity_used(placement)
        return bool(np.all(used <= self.capacity + CAPACITY_RTOL * np.maximum(self.capacity, 1.0)))

    def to_placement(self, placement: BoolArray) -> dict[str, list[tuple[int, str]]]:
        """The JSON placement: server id -> [(layer index, expert id), ...] in instance order."""
        out: dict[str, list[tuple[int, str]]] = {}
        for m, server in enumerate(self.server_ids):
            pairs = []
            for n in np.flatnonzero(placement[m]):
                layer = int(self.item_layer[n])
                pairs.append((layer, self.expert_ids[layer][n - int(self.layer_start[layer])]))
            out[server] = pairs
        return out

    def from_placement(self, placement: Mapping[str, Sequence[Sequence[object]]]) -> BoolArray:
        """A JSON placement as a matrix; unknown servers, layers or experts are an error."""
        x = self.empty()
        for server, pairs in placement.items():
            if server not in self.server_ids:
                raise PlacementError(f"placement: unknown server {server!r}")
            m = self.server_ids.index(server)
            for pair in pairs:
                if len(pair) != 2 or not isinstance(pair[0], int) or isinstance(pair[0], bool):
                    raise PlacementError(
                        f"placement[{server!r}]: {pair!r} is not [layer_index, expert_id]"
                    )
                layer, expert = pair
                if not 0 <= layer < self.n_layers:
                    raise PlacementError(f"placement[{server!r}]: no layer {layer}")
                if expert not in self.expert_ids[layer]:
                    raise PlacementError(
                        f"placement[{server!r}]: layer {layer} has no expert {expert!r}"
                    )
                x[m, self.item_of(layer, str(expert))] = True
        return x


def compile_instance(instance: CachingInstance) -> CompiledInstance:
    """The arrays of a validated instance (see the module docstring)."""
    server_ids = [s.id for s in instance.servers]
    user_ids = [u.id for u in instance.users]
    latency = np.array([[u.latency_s[s] for s in server_ids] for u in instance.users], dtype=float)
    latency = latency.reshape(len(user_ids), len(server_ids))
    expert_ids = [[e.id for e in layer.experts] for layer in instance.layers]
    counts = [len(ids) for ids in expert_ids]
    layer_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.intp)
    item_layer = np.repeat(np.arange(len(counts)), counts).astype(np.intp)
    size = np.array([e.size for layer in instance.layers for e in layer.experts], dtype=float)

    rows: list[tuple[int, int, float, tuple[int, ...]]] = []
    for l_idx, layer in enumerate(instance.layers):
        index = {e: int(layer_start[l_idx]) + k for k, e in enumerate(expert_ids[l_idx])}
        for u_idx, user in enumerate(user_ids):
            merged: dict[tuple[int, ...], float] = {}
            for act in layer.activations[user]:
                key = tuple(sorted(index[e] for e in act.experts))
                merged[key] = merged.get(key, 0.0) + act.prob
            rows.extend((u_idx, l_idx, p, key) for key, p in merged.items() if p > 0)
    width = max([len(r[3]) for r in rows] + [1])
    members = np.full((len(rows), width), -1, dtype=np.intp)
    for s, (_, _, _, key) in enumerate(rows):
        members[s, : len(key)] = key
    weight = np.array([u.weight for u in instance.users], dtype=float)
    set_user = np.array([r[0] for r in rows], dtype=np.intp)
    set_prob = np.array([r[2] for r in rows], dtype=float)
    return CompiledInstance(
        instance=instance,
        server_ids=server_ids,
        capacity=np.array([s.capacity for s in instance.servers], dtype=float),
        user_ids=user_ids,
        weight=weight,
        latency=latency,
        fallback=np.array([u.fallback_latency_s for u in instance.users], dtype=float),
        expert_ids=expert_ids,
        layer_start=layer_start,
        item_layer=item_layer,
        size=size,
        set_user=set_user,
        set_layer=np.array([r[1] for r in rows], dtype=np.intp),
        set_prob=set_prob,
        set_weight=weight[set_user] * set_prob if len(rows) else np.zeros(0),
        members=members,
        top_k=instance.top_k,
    )
