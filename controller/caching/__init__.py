"""SlimCaching: which experts each server caches under storage limits (docs/design.md 4, 6)."""

from controller.caching.compiled import CompiledInstance, PlacementError, compile_instance
from controller.caching.instance import (
    CachingInstance,
    CachingInstanceError,
    load_instance,
    parse_instance,
)
from controller.caching.latency import evaluate_placement, expected_latency, saving
from controller.caching.solver import (
    ALGORITHMS,
    CachingAlgorithmError,
    CachingResult,
    default_algorithm,
    plan,
    solve,
)

__all__ = [
    "ALGORITHMS",
    "CachingAlgorithmError",
    "CachingInstance",
    "CachingInstanceError",
    "CachingResult",
    "CompiledInstance",
    "PlacementError",
    "compile_instance",
    "default_algorithm",
    "evaluate_placement",
    "expected_latency",
    "load_instance",
    "parse_instance",
    "plan",
    "saving",
    "solve",
]
