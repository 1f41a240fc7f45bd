"""The live cost model: per expert, energy per query and delay per category, learned from the
fleet's own results, seeded from the profile and kept across restarts.

The estimate is robust and rolling. Every result of a prompt whose category the profile knows
gives two ratios, observed over profiled cost for that expert in that category: its delay
(controller dispatch to result, less the time the job waited in the agent's queue or loaded its
model, as the profile measured it) and its energy. An expert's current cost is its profiled cost
times the **median of its last ``window`` ratios** (pooled over categories, so a slowdown seen on
geography prompts moves its math delay too). Until ``min_samples`` ratios are in, the profile's
cost stands. Measured energy is preferred: once ``min_samples`` measured readings are in,
estimated ones are no longer used; a cost whose seed or samples are estimates stays marked
estimated. Pure: no I/O but ``save``/``load``.

A job that gave no result because it was cut (left out by an early answer, cancelled at its
prompt's deadline, or timed out on its agent) is a **censored** sample: its delay was at least
the time it had run (``observe_cut``). It counts as a delay ratio of exactly that lower bound
when the bound is above the expert's current estimate, so an expert whose jobs are cut because
it is slow is seen to be slow; a bound at or below the estimate says nothing new and is not
counted. The rolling median with such a bound in it is a lower bound of the median the true
delay would have given, never an overestimate.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from controller.profile import Profile, ProfileError
from controller.selection.from_profile import ExpertCost

WINDOW = 16
MIN_SAMPLES = 3


@dataclass(frozen=True)
class Seed:
    """An expert's profiled costs: energy and delay per category, and overall energy."""

    energy_j: float
    energy_by_category: dict[str, float]
    delay_s: dict[str, float]
    estimated: bool


def seeds_from_profile(profile: Profile, keys: list[str], split: str = "train") -> dict[str, Seed]:
    """Medians over the profile's ``split`` items measured on every one of ``keys``, as
    ``expert_costs`` computes them, with energy per category besides."""
    items = [i for i in profile.complete_items(keys) if i.split == split]
    if not items:
        raise ProfileError(f"the profile has no {split} item measured on every expert")
    seeds = {}
    for key in keys:
        rows = [(i.category, profile.records[i.id][key]) for i in items]
        energies = [r.energy_j for _, r in rows if r.energy_j is not None]
        if len(energies) < len(rows):
            raise ProfileError(f"expert {key} reported no energy on some profiled items")
        by_cat: dict[str, list[float]] = {}
        delays: dict[str, tuple[list[float], list[float]]] = {}
        for category, r in rows:
            by_cat.setdefault(category, []).append(float(r.energy_j or 0.0))
            compute, transmission = delays.setdefault(category, ([], []))
            compute.append(r.compute_s)
            transmission.append(r.transmission_s)
        seeds[key] = Seed(
            energy_j=statistics.median(energies),
            energy_by_category={c: statistics.median(v) for c, v in by_cat.items()},
            delay_s={
                c: statistics.median(a) + statistics.median(b) for c, (a, b) in delays.items()
            },
            estimated=any(r.energy_source == "estimate" for _, r in rows),
        )
    return seeds


@dataclass
class _Window:
    delay: deque[float]
    energy_measured: deque[float]
    energy_estimated: deque[float]
    delay_samples: int = 0
    energy_samples: int = 0
    energy_source: str | None = None
    cut_samples: int = 0  # of delay_samples, censored ones (a cut job's lower bound)

    @classmethod
    def empty(cls, window: int) -> _Window:
        return cls(deque(maxlen=window), deque(maxlen=window), deque(maxlen=window))


@dataclass(frozen=True)
class LiveCost:
    """One expert's current cost, where it comes from and how many samples it rests on."""

    key: str
    cost: ExpertCost
    origin: str  # "profile" (no samples yet) or "live"
    energy_source: str | None  # the source of the samples used ("estimate", "rapl"...), if any
    delay_samples: int
    energy_samples: int
    cut_samples: int  # of delay_samples, censored: lower bounds from jobs cut without a result
    delay_ratio: float
    energy_ratio: float


@dataclass
class CostModel:
    seeds: dict[str, Seed]
    window: int = WINDOW
    min_samples: int = MIN_SAMPLES
    _windows: dict[str, _Window] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def reseed(self, seeds: dict[str, Seed]) -> None:
        """New profiled costs (a newcomer joined the profile); samples of known experts stay."""
        with self._lock:
            self.seeds = dict(seeds)

    def observe(
        self,
        key: str,
        category: str | None,
        delay_s: float | None,
        energy_j: float | None = None,
        energy_source: str | None = None,
        energy_estimated: bool = True,
    ) -> bool:
        """One result. False (and nothing learnt) when the expert or the category has no seed."""
        seed = self.seeds.get(key)
        if seed is None or category is None or category not in seed.delay_s:
            return False
        with self._lock:
            win = self._windows.setdefault(key, _Window.empty(self.window))
            if delay_s is not None and seed.delay_s[category] > 0:
                win.delay.append(max(0.0, delay_s) / seed.delay_s[category])
                win.delay_samples += 1
            base = seed.energy_by_category.get(category, seed.energy_j)
            if energy_j is not None and base > 0:
                target = win.energy_estimated if energy_estimated else win.energy_measured
                target.append(max(0.0, energy_j) / base)
                win.energy_samples += 1
                if not energy_estimated or win.energy_source is None:
                    win.energy_source = energy_source
        return True

    def observe_cut(self, key: str, category: str | None, elapsed_s: float) -> bool:
        """A job of ``key`` cut after ``elapsed_s`` with no result: its delay was at least that
        long. Counted (True) when that bound, as a ratio to the profiled delay, is above the
        expert's current delay ratio: the estimate moves up towards it (never past it). False
        when the expert or category has no seed, or the bound is no news."""
        seed = self.seeds.get(key)
        if seed is None or category is None or seed.delay_s.get(category, 0.0) <= 0:
            return False
        ratio = max(0.0, elapsed_s) / seed.delay_s[category]
        with self._lock:
            win = self._windows.setdefault(key, _Window.empty(self.window))
            if ratio <= self._delay_ratio(win):
                return False
            win.delay.append(ratio)
            win.delay_samples += 1
            win.cut_samples += 1
        return True

    def _delay_ratio(self, win: _Window) -> float:
        """The window's delay ratio: the median once ``min_samples`` are in, else 1 (the
        profile's delay). Called with the lock held."""
        return statistics.median(win.delay) if len(win.delay) >= self.min_samples else 1.0

    def carry(
        self,
        key: str,
        delay_ratio: float | None,
        energy_ratio: float | None,
        energy_measured: bool,
        samples: tuple[int, int] = (0, 0),
    ) -> bool:
        """Costs learnt by another controller (its published table), as this expert's window:
        each ratio given fills as many places as the other's window held (the rolling median
        goes on from where the other left it). False when the expert has no seed here."""
        if key not in self.seeds:
            return False
        delay_samples, energy_samples = samples
        with self._lock:
            win = _Window.empty(self.window)
            if delay_ratio is not None:
                win.delay.extend([delay_ratio] * max(self.min_samples, delay_samples))
                win.delay_samples = delay_samples
            if energy_ratio is not None:
                target = win.energy_measured if energy_measured else win.energy_estimated
                target.extend([energy_ratio] * max(self.min_samples, energy_samples))
                win.energy_samples = energy_samples
            self._windows[key] = win
        return True

    def current(self, key: str) -> LiveCost | None:
        seed = self.seeds.get(key)
        if seed is None:
            return None
        with self._lock:
            win = self._windows.get(key) or _Window.empty(self.window)
            delay_ratio = self._delay_ratio(win)
            measured = len(win.energy_measured) >= self.min_samples
            energies = win.energy_measured if measured else win.energy_estimated
            energy_ratio = statistics.median(energies) if len(energies) >= self.min_samples else 1.0
            live = len(win.delay) >= self.min_samples or len(energies) >= self.min_samples
            return LiveCost(
                key=key,
                cost=ExpertCost(
                    energy_j=seed.energy_j * energy_ratio,
                    delay_s={c: d * delay_ratio for c, d in seed.delay_s.items()},
                    energy_estimated=seed.estimated or not measured,
                ),
                origin="live" if live else "profile",
                energy_source=win.energy_source,
                delay_samples=win.delay_samples,
                energy_samples=win.energy_samples,
                cut_samples=win.cut_samples,
                delay_ratio=delay_ratio,
                energy_ratio=energy_ratio,
            )

    def costs(self) -> dict[str, ExpertCost]:
        """The current cost of every seeded expert, as the selection takes them."""
        out = {}
        for key in self.seeds:
            live = self.current(key)
            if live is not None:
                out[key] = live.cost
        return out

    # -- persistence --------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        with self._lock:
            return {
                "format": "moe2-costs/1",
                "window": self.window,
                "experts": {
                    key: {
                        "delay": list(w.delay),
                        "energy_measured": list(w.energy_measured),
                        "energy_estimated": list(w.energy_estimated),
                        "delay_samples": w.delay_samples,
                        "energy_samples": w.energy_samples,
                        "energy_source": w.energy_source,
                        "cut_samples": w.cut_samples,
                    }
                    for key, w in self._windows.items()
                },
            }

    def save(self, path: Path) -> None:
        """Atomically (a crash mid-write leaves the previous file)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json()))
        os.replace(tmp, path)

    def load(self, path: Path) -> int:
        """Samples saved by an earlier run, for experts still seeded; returns how many experts.
        An unreadable file is ignored (the profile's costs stand)."""
        try:
            blob = json.loads(path.read_text())
            if blob.get("format") != "moe2-costs/1":
                return 0
            experts = blob["experts"]
        except (OSError, ValueError, KeyError, AttributeError):
            return 0
        loaded = 0
        with self._lock:
            for key, saved in experts.items():
                if key not in self.seeds:
                    continue
                try:
                    win = _Window.empty(self.window)
                    win.delay.extend(float(v) for v in saved["delay"])
                    win.energy_measured.extend(float(v) for v in saved["energy_measured"])
                    win.energy_estimated.extend(float(v) for v in saved["energy_estimated"])
                    win.delay_samples = int(saved["delay_samples"])
                    win.energy_samples = int(saved["energy_samples"])
                    win.energy_source = saved.get("energy_source")
                    win.cut_samples = int(saved.get("cut_samples", 0))
                except (KeyError, TypeError, ValueError):
                    continue
                self._windows[key] = win
                loaded += 1
        return loaded
