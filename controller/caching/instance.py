"""The SlimCaching instance (docs/design.md sections 4 and 6): servers, users, layers, activations.

Everything a caching solver needs is in one JSON object, so a user can hand the solver an instance
without a running fleet. Validation is strict: unknown fields, negative or non-finite capacities,
sizes, weights and latencies, a fallback latency below one of the user's server latencies, a user
without a latency for some server (or with one for a server that does not exist), activation
probabilities that are negative or do not sum to 1 per user and layer, activated sets that are
empty, larger than ``top_k``, repeat an expert or name an unknown one, activations of an unknown
user and duplicate ids are all refused with a message that says where. Probabilities that sum to
1 within ``PROB_SUM_TOL`` (written with rounded numbers by another tool) are accepted and
renormalised to sum to 1 exactly.

An instance where nothing fits anywhere (every capacity below every size) is valid: every expert
then falls back, and the solvers return an empty placement.

Units: sizes and capacities share one unit, whatever the instance uses (GB in the examples, MB
from the live fleet); latencies are seconds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from controller.instance_json import MAX_LISTED_ERRORS, join_problems, load_model, parse_model

# How far the activation probabilities of one user and layer may sum from 1 and still be taken
# for a distribution written with rounded numbers (then renormalised): probabilities rounded to
# three decimals, such as 0.333 three times, are the coarsest accepted.
PROB_SUM_TOL = 1e-3

NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Id = Annotated[str, Field(min_length=1, max_length=256)]


class CachingInstanceError(ValueError):
    """A caching instance that cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CachingServer(_Model):
    """An edge server: its storage for cached experts (same unit as the expert sizes)."""

    id: Id
    capacity: NonNegativeFloat = Field(description="Storage for experts (unit of the sizes)")


class CachingUser(_Model):
    """A user (request source): its weight and its latency to each server and to the fallback."""

    id: Id
    weight: NonNegativeFloat = Field(description="w_u in the expected latency (not normalised)")
    latency_s: dict[str, NonNegativeFloat] = Field(
        description="t_{u,m}: latency of running one activated expert on server m (s)"
    )
    fallback_latency_s: NonNegativeFloat = Field(
        description="t_{u,0}: latency of an expert cached nowhere (s); >= every t_{u,m}"
    )


class CachingExpert(_Model):
    """One expert of a layer and its size (same unit as the capacities)."""

    id: Id
    size: NonNegativeFloat


class Activation(_Model):
    """One activated (Top-K) set of a layer and its probability for a user."""

    experts: list[Id]
    prob: NonNegativeFloat


class CachingLayer(_Model):
    """A layer's experts and, per user, the distribution of its activated sets."""

    experts: list[CachingExpert] = Field(min_length=1)
    activations: dict[str, list[Activation]] = Field(
        description="user id -> activated sets with probabilities summing to 1"
    )

    @field_validator("activations")
    @classmethod
    def _renormalise(cls, activations: dict[str, list[Activation]]) -> dict[str, list[Activation]]:
        """Each user's probabilities within PROB_SUM_TOL of 1 are scaled to sum to 1; the
        instance's own check then refuses the rest with their original sums."""
        scaled = {}
        for user, sets in activations.items():
            total = math.fsum(a.prob for a in sets)
            if total > 0 and abs(total - 1.0) <= PROB_SUM_TOL:
                sets = [a.model_copy(update={"prob": a.prob / total}) for a in sets]
            scaled[user] = sets
        return scaled


class CachingInstance(_Model):
    """A SlimCaching expert-placement problem (docs/design.md sections 4 and 6)."""

    top_k: Annotated[int, Field(ge=1)]
    servers: list[CachingServer] = Field(min_length=1)
    users: list[CachingUser] = Field(min_length=1)
    layers: list[CachingLayer] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> CachingInstance:
        problems: list[str] = []
        server_ids = _duplicates(problems, "servers", [s.id for s in self.servers], "server")
        user_ids = _duplicates(problems, "users", [u.id for u in self.users], "user")
        for n, user in enumerate(self.users):
            where = f"users[{n}] ({user.id!r})"
            missing = [s for s in server_ids if s not in user.latency_s]
            unknown = [s for s in user.latency_s if s not in server_ids]
            if missing:
                problems.append(f"{where}: no latency_s for server(s) {_names(missing)}")
            if unknown:
                problems.append(f"{where}: latency_s names unknown server(s) {_names(unknown)}")
            faster = {s: t for s, t in user.latency_s.items() if t > user.fallback_latency_s}
            if faster:
                problems.append(
                    f"{where}: fallback_latency_s {user.fallback_latency_s:g} is below the "
                    f"latency of server(s) {_names(list(faster))} (the fallback must be the "
                    "slowest: t_u0 >= every t_um)"
                )
        for l_idx, layer in enumerate(self.layers):
            problems.extend(self._layer_problems(l_idx, layer, user_ids))
            if len(problems) > MAX_LISTED_ERRORS:
                break
        if problems:
            raise ValueError(join_problems(problems))
        return self

    def _layer_problems(self, l_idx: int, layer: CachingLayer, user_ids: list[str]) -> list[str]:
        problems: list[str] = []
        where = f"layers[{l_idx}]"
        expert_ids = set(
            _duplicates(problems, f"{where}.experts", [e.id for e in layer.experts], "expert")
        )
        for user_id in layer.activations:
            if user_id not in user_ids:
                problems.append(f"{where}.activations: unknown user {user_id!r}")
        for user_id in user_ids:
            sets = layer.activations.get(user_id)
            if sets is None:
                problems.append(
                    f"{where}.activations: no activations for user {user_id!r} (each user's "
                    "activation probabilities must sum to 1 in every layer)"
                )
                continue
            here = f"{where}.activations[{user_id!r}]"
            total = math.fsum(a.prob for a in sets)
            if not math.isclose(total, 1.0, rel_tol=0, abs_tol=PROB_SUM_TOL):
                problems.append(
                    f"{here}: probabilities sum to {total:.9g}, not 1 (tolerance {PROB_SUM_TOL:g})"
                )
            for a_idx, act in enumerate(sets):
                at = f"{here}[{a_idx}].experts"
                if not act.experts:
                    problems.append(f"{at}: empty activated set")
                if len(act.experts) > self.top_k:
                    problems.append(
                        f"{at}: {len(act.experts)} experts activated, more than top_k = "
                        f"{self.top_k}"
                    )
                if len(set(act.experts)) != len(act.experts):
                    problems.append(f"{at}: an expert appears twice in {act.experts}")
                unknown = [e for e in act.experts if e not in expert_ids]
                if unknown:
                    problems.append(f"{at}: unknown expert(s) {_names(unknown)} in layer {l_idx}")
                if len(problems) > MAX_LISTED_ERRORS:
                    return problems
        return problems


def _duplicates(problems: list[str], where: str, ids: list[str], what: str) -> list[str]:
    seen: set[str] = set()
    for n, item in enumerate(ids):
        if item in seen:
            problems.append(f"{where}[{n}]: duplicate {what} id {item!r}")
        seen.add(item)
    return list(dict.fromkeys(ids))


def _names(items: list[str]) -> str:
    return ", ".join(map(repr, items))


def parse_instance(data: str | bytes | dict[str, Any]) -> CachingInstance:
    """Validate a JSON text or an already decoded object; raises CachingInstanceError."""
    return parse_model(CachingInstance, data, CachingInstanceError, "caching instance")


def load_instance(path: Path | str) -> CachingInstance:
    """Read and validate a caching instance from a JSON file; raises CachingInstanceError."""
    return load_model(CachingInstance, path, CachingInstanceError, "caching instance")
