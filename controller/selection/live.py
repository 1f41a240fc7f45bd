"""The running controller's selection: which experts the plan activates under the budgets in
force, and per prompt the gate weights, top-k and the prompt's own tighter budgets."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from controller.gate.encoder_loader import equal_weights_noted
from controller.selection.errors import BudgetError
from controller.selection.instance import SelectionInstance, parse_instance
from controller.selection.loss import Evaluator
from controller.selection.search import TIE_TOL, AnytimeSearch
from controller.selection.solver import SelectionResult, search_result
from messages.budgets import Budgets

if TYPE_CHECKING:  # torch is imported only when a gate is loaded
    from controller.selection.from_profile import GatedProfile


def restrict_instance(instance: SelectionInstance, keep: list[str]) -> SelectionInstance:
    """The same instance over the experts ``keep`` only (in instance order)."""
    ids = [e.id for e in instance.experts]
    index = [ids.index(k) for k in ids if k in keep]
    raw = instance.model_dump(mode="python")
    raw["experts"] = [raw["experts"][i] for i in index]
    raw["samples"]["choice_probs"] = [
        [row[i] for i in index] for row in raw["samples"]["choice_probs"]
    ]
    raw["samples"]["gate_logits"] = [
        [row[i] for i in index] for row in raw["samples"]["gate_logits"]
    ]
    return parse_instance(raw)


@dataclass(frozen=True)
class Dispatch:
    """The experts to ask for one prompt, with their gate weights (summing to 1); ``gated``
    False: equal weights, the gate's encoder not loaded yet (controller/gate/encoder_loader.py)."""

    keys: list[str]
    weights: dict[str, float]
    gated: bool = True


# Prompt embeddings kept in memory: a prompt that waits in the queue is routed again each time
# the dispatcher looks for room for it, and the encoder is the costly part (~5 ms a prompt).
EMBEDDINGS_KEPT = 256

_SearchKey = tuple[float | None, tuple[tuple[str, float], ...], int | None, tuple[str, ...]]


class LiveSelection:
    """The controller's selection: plans within ``time_limit_s``, improved in the background.

    ``solve`` returns within about ``time_limit_s`` (plus building the instance): the optimal set,
    or the best found with ``optimal`` false and its proven ``gap`` and ``bound``. The search is
    kept: ``improve`` resumes it for another slice and returns a better (or newly proven) result,
    or None. Both may be called from different threads; they run one at a time.
    """

    def __init__(
        self,
        gated: GatedProfile,
        aggregation_delay_s: float = 0.0,
        time_limit_s: float | None = 1.0,
    ) -> None:
        if time_limit_s is not None and not time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive, not {time_limit_s}")
        self.gated = gated
        self.aggregation_delay_s = aggregation_delay_s
        self.time_limit_s = time_limit_s
        self.categories = sorted({c for cost in gated.costs.values() for c in cost.delay_s})
        self._lock = threading.Lock()
        self._search: AnytimeSearch | None = None
        self._search_key: _SearchKey | None = None
        self._embedded: OrderedDict[str, np.ndarray] = OrderedDict()
        self._embed_lock = threading.Lock()
        self.encoded = 0  # prompts the encoder embedded (the others came from memory)

    @property
    def expert_keys(self) -> list[str]:
        return self.gated.gate.expert_keys

    def check(self, budgets: Budgets) -> None:
        unknown = sorted(set(budgets.delay_s) - set(self.categories))
        if unknown:
            raise BudgetError(
                f"unknown delay categories {unknown}; the profile has {self.categories}"
            )

    def solve(self, budgets: Budgets, online: set[str]) -> SelectionResult:
        """The best set among the online experts found within ``time_limit_s`` (optimal when
        the search ends in time); BudgetError when none fits."""
        started = time.perf_counter()
        key, instance = self._problem(budgets, online)
        with self._lock:
            search = AnytimeSearch(Evaluator(instance))
            deadline = None if self.time_limit_s is None else started + self.time_limit_s
            result = search_result(search, "moe2", started, deadline)
            self._search, self._search_key = search, key
        if not result.feasible:
            from controller.explain import infeasible

            keys = [e.id for e in instance.experts]
            why = infeasible(self.gated.costs, budgets, keys, self.aggregation_delay_s)
            raise BudgetError(why or "no online expert fits the budgets")
        return result

    def improve(
        self,
        budgets: Budgets,
        online: set[str],
        previous: SelectionResult,
        time_limit_s: float,
    ) -> SelectionResult | None:
        """Search ``time_limit_s`` more for the plan ``previous`` answered; the result when it
        has a lower loss or is now proven optimal, else None (also when ``previous`` was
        already optimal). Resumes the search of the last ``solve`` for the same budgets and
        online experts; otherwise starts one from ``previous``'s experts."""
        if previous.optimal or not previous.feasible or previous.loss is None:
            return None
        started = time.perf_counter()
        key, instance = self._problem(budgets, online)
        with self._lock:
            search = self._search if key == self._search_key else None
            if search is None:
                ids = [e.id for e in instance.experts]
                seed = [ids.index(k) for k in previous.selected if k in ids]
                search = AnytimeSearch(Evaluator(instance), seeds=[seed] if seed else [])
                self._search, self._search_key = search, key
            if search.complete and search.tracker.best >= previous.loss - TIE_TOL:
                return None
            result = search_result(search, "moe2", started, started + time_limit_s)
        if not result.feasible or result.loss is None:
            return None
        if result.loss < previous.loss - TIE_TOL or result.optimal:
            return result
        return None

    def _problem(self, budgets: Budgets, online: set[str]) -> tuple[_SearchKey, SelectionInstance]:
        self.check(budgets)
        available = [k for k in self.expert_keys if k in online]
        if not available:
            raise BudgetError("no expert of the gate is online")
        key: _SearchKey = (
            budgets.energy_j,
            tuple(sorted(budgets.delay_s.items())),
            budgets.top_k,
            tuple(available),
        )
        energy = budgets.energy_j
        if energy is None:
            energy = sum(c.energy_j for c in self.gated.costs.values()) + 1.0
        instance = self.gated.instance(
            "val",
            energy,
            dict(budgets.delay_s),
            top_k=budgets.top_k,
            aggregation_delay_s=self.aggregation_delay_s,
        )
        if len(available) < len(self.expert_keys):
            instance = restrict_instance(instance, available)
        return key, instance

    def dispatch(
        self,
        prompt: str,
        active: list[str],
        top_k: int | None,
        prompt_budgets: Budgets | None,
        category: str | None,
    ) -> Dispatch:
        """Gate weights over the active experts, top-k by weight, then the prompt's budgets:
        experts too slow for its delay budget are dropped, and experts are taken by weight
        while their summed energy fits its energy budget. While the gate's encoder loads, every
        active expert weighs the same (the cheapest first for top-k and the energy budget)."""
        logits = self._logits(prompt)
        gated = logits is not None
        if logits is None:
            by_key = dict.fromkeys(self.expert_keys, 0.0)
            cheapest = sorted(by_key, key=lambda k: (self.gated.costs[k].energy_j, k))
            active = [k for k in cheapest if k in active]
        else:
            by_key = dict(zip(self.expert_keys, logits.tolist(), strict=True))
        keys = sorted((k for k in active if k in by_key), key=lambda k: -by_key[k])
        k_limit = min(
            (v for v in (top_k, prompt_budgets.top_k if prompt_budgets else None) if v),
            default=None,
        )
        if prompt_budgets is not None:
            self.check(prompt_budgets)
            keys = [k for k in keys if self._fits_delay(k, prompt_budgets, category)]
            if prompt_budgets.energy_j is not None:
                chosen, spent = [], 0.0
                for key in keys:
                    cost = self.gated.costs[key].energy_j
                    if spent + cost <= prompt_budgets.energy_j + 1e-12:
                        chosen.append(key)
                        spent += cost
                keys = chosen
        if k_limit is not None:
            keys = keys[:k_limit]
        if not keys:
            return Dispatch([], {}, gated)
        top = max(by_key[k] for k in keys)
        raw = {k: math.exp(by_key[k] - top) for k in keys}
        total = sum(raw.values())
        return Dispatch(keys, {k: v / total for k, v in raw.items()}, gated)

    def _logits(self, prompt: str) -> np.ndarray | None:
        """The gate's logits for a prompt; its embedding from memory when seen lately (the gate
        may be retrained, so logits are always computed afresh). None while the gate's encoder
        loads in the background (counted and said by the loader)."""
        if equal_weights_noted(getattr(self.gated.gate, "encoder", None)):
            return None
        with self._embed_lock:
            embedding = self._embedded.get(prompt)
            if embedding is not None:
                self._embedded.move_to_end(prompt)
        if embedding is None:
            embedding = self.gated.gate.embed([prompt])[0]
            with self._embed_lock:
                self.encoded += 1
                self._embedded[prompt] = embedding
                while len(self._embedded) > EMBEDDINGS_KEPT:
                    self._embedded.popitem(last=False)
        return self.gated.gate.logits_of_embeddings(embedding[None, :])[0]

    def _fits_delay(self, key: str, budgets: Budgets, category: str | None) -> bool:
        delays = self.gated.costs[key].delay_s
        limits = (
            {category: budgets.delay_s[category]}
            if category is not None and category in budgets.delay_s
            else budgets.delay_s
        )
        return all(delays.get(c, 0.0) + self.aggregation_delay_s <= s for c, s in limits.items())
