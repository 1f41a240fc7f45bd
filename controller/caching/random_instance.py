"""Seeded random small caching instances (tests and ``benchmarks/caching.py``).

Per instance: 2-3 servers (by default), 1-3 users, 1-3 layers of 3-6 experts. Sizes are drawn
from {0.5, 1.0, ..., 3.0}; each server's capacity is a multiple of 0.5 holding roughly 20-60 % of
the total expert size. A user's latency to a server is U(0.01, 0.10) s and its fallback
U(0.12, 0.30) s. Per user and layer, 1-6 distinct activated sets (of exactly K experts when the
layer has that many, so co-activation matters) get Dirichlet(1) probabilities; a tenth of the
instances give one user weight 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from controller.caching.instance import CachingInstance, parse_instance


def random_instance_data(
    rng: np.random.Generator,
    top_k: int,
    *,
    servers: tuple[int, int] = (2, 3),
    users: tuple[int, int] = (1, 3),
    layers: tuple[int, int] = (1, 3),
    experts: tuple[int, int] = (3, 6),
) -> dict[str, Any]:
    n_servers = int(rng.integers(servers[0], servers[1] + 1))
    n_users = int(rng.integers(users[0], users[1] + 1))
    n_layers = int(rng.integers(layers[0], layers[1] + 1))
    layer_sizes = [int(rng.integers(experts[0], experts[1] + 1)) for _ in range(n_layers)]
    sizes = [[0.5 * int(rng.integers(1, 7)) for _ in range(n)] for n in layer_sizes]
    total = sum(map(sum, sizes))
    server_ids = [f"s{m}" for m in range(n_servers)]
    user_list = []
    for u in range(n_users):
        lat = {s: float(rng.uniform(0.01, 0.10)) for s in server_ids}
        weight = (
            0.0 if (u == 0 and n_users > 1 and rng.random() < 0.1) else float(rng.uniform(0.5, 2))
        )
        user_list.append(
            {
                "id": f"u{u}",
                "weight": weight,
                "latency_s": lat,
                "fallback_latency_s": float(rng.uniform(0.12, 0.30)),
            }
        )
    layer_list = []
    for n, layer_size in enumerate(layer_sizes):
        ids = [f"e{e}" for e in range(layer_size)]
        k = min(top_k, layer_size)
        activations = {}
        for user in user_list:
            n_sets = int(rng.integers(1, 7))
            seen: set[tuple[str, ...]] = set()
            for _ in range(n_sets):
                seen.add(tuple(sorted(rng.choice(ids, size=k, replace=False).tolist())))
            probs = rng.dirichlet(np.ones(len(seen)))
            activations[user["id"]] = [
                {"experts": list(s), "prob": float(p)}
                for s, p in zip(sorted(seen), probs, strict=True)
            ]
        layer_list.append(
            {
                "experts": [{"id": e, "size": s} for e, s in zip(ids, sizes[n], strict=True)],
                "activations": activations,
            }
        )
    return {
        "top_k": top_k,
        "servers": [
            {"id": s, "capacity": 0.5 * round(2 * total * float(rng.uniform(0.2, 0.6)))}
            for s in server_ids
        ],
        "users": user_list,
        "layers": layer_list,
    }


def random_instance(rng: np.random.Generator, top_k: int, **ranges: Any) -> CachingInstance:
    return parse_instance(random_instance_data(rng, top_k, **ranges))
