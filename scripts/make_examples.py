"""Write the example solver instances in examples/ from the lab fleet's measurements.

    .venv/bin/python scripts/make_examples.py

examples/selection-instance.json (docs/design.md section 6): the six experts of the lab fleet
(examples/edge-a.toml, edge-b.toml) with their measured costs as ``moe2 select --profile`` takes
them (median energy and delay per category over the training split of data/profile-lab.json), an
energy budget of 6 J per query and a math delay budget of 1.5 s, and the first 20 validation
prompts of each category (geography, math, science): each expert's choice probabilities and
the gate's logits (data/gate-lab.pt).

examples/caching-instance.json: the SlimCaching instance ``moe2 cache-plan --fleet lab --top-k 2``
builds for agents run with examples/cache-a.toml and cache-b.toml, made here without a fleet:
capacities from those configs (MB), expert sizes from the model files (MB; a live agent reports
resident memory once it has loaded an expert), each agent's latency the median measured in the
profile, the fallback twice the slowest agent (declared, as ``cache-plan`` declares it) and the
activation probabilities the gate's top-2 routing of every profile prompt.

Probabilities are written with six decimals, as another tool would write them: their sums are
then off 1 by up to a few 1e-6, which the solvers accept and renormalise. The gate's logits
may differ in their last decimal from one run to the next (the prompt encoder's float sums).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.models import resolve_model  # noqa: E402
from controller.caching.from_fleet import (  # noqa: E402
    FALLBACK_FACTOR,
    MB,
    gate_activations,
    server_latency_s,
)
from controller.selection.from_profile import load_gated_profile  # noqa: E402

PROFILE = ROOT / "data" / "profile-lab.json"
GATE = ROOT / "data" / "gate-lab.pt"
EXAMPLES = ROOT / "examples"
SAMPLES = 60
ENERGY_J = 6.0
DELAY_S = {"math": 1.5}
CACHE_TOP_K = 2
DECIMALS = 6


def selection_instance() -> dict[str, Any]:
    gated = load_gated_profile(PROFILE, GATE)
    full = gated.instance("val", ENERGY_J, DELAY_S).model_dump()
    samples = full["samples"]
    items = gated.data.splits["val"].items  # the instance's samples, in this order
    categories = sorted({i.category for i in items})
    per_category = SAMPLES // len(categories)
    keep = [
        n
        for category in categories
        for n in [n for n, i in enumerate(items) if i.category == category][:per_category]
    ]
    full["samples"] = {
        "labels": [samples["labels"][n] for n in keep],
        "choice_probs": [
            [[round(p, DECIMALS) for p in row] for row in samples["choice_probs"][n]] for n in keep
        ],
        "gate_logits": [[round(w, DECIMALS) for w in samples["gate_logits"][n]] for n in keep],
    }
    for expert in full["experts"]:
        expert["energy_j"] = round(expert["energy_j"], DECIMALS)
        expert["delay_s"] = {c: round(d, DECIMALS) for c, d in expert["delay_s"].items()}
    return full


def caching_instance() -> dict[str, Any]:
    gated = load_gated_profile(PROFILE, GATE)
    configs = [tomllib.loads((EXAMPLES / f"cache-{s}.toml").read_text()) for s in ("a", "b")]
    experts: dict[str, str] = {}
    for config in configs:
        experts.update({e["id"]: e["model"] for e in config["experts"]})
    common = sorted(set.intersection(*({e["id"] for e in c["experts"]} for c in configs)))
    latency = {c["agent_id"]: server_latency_s(gated.profile, c["agent_id"]) for c in configs}
    activations = gate_activations(gated.gate, gated.data, common, CACHE_TOP_K)
    return {
        "top_k": CACHE_TOP_K,
        "servers": [
            {"id": c["agent_id"], "capacity": float(c["expert_memory_budget_mb"])} for c in configs
        ],
        "users": [
            {
                "id": "lab",
                "weight": 1.0,
                "latency_s": {a: round(t, DECIMALS) for a, t in latency.items()},
                "fallback_latency_s": round(FALLBACK_FACTOR * max(latency.values()), DECIMALS),
            }
        ],
        "layers": [
            {
                "experts": [
                    {"id": e, "size": round(resolve_model(experts[e]).stat().st_size / MB, 1)}
                    for e in common
                ],
                "activations": {
                    "lab": [
                        {"experts": a["experts"], "prob": round(a["prob"], DECIMALS)}
                        for a in activations
                    ]
                },
            }
        ],
    }


def main() -> int:
    for name, build in (
        ("selection-instance.json", selection_instance),
        ("caching-instance.json", caching_instance),
    ):
        path = EXAMPLES / name
        path.write_text(json.dumps(build(), indent=1) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
