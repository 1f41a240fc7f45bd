"""Experts the gate does not know yet: measured on the suite's training and validation prompts in
the background, then the gate is retrained on the extended profile and the plan re-solved.

``NewcomerQueue`` is the bookkeeping (which prompts each newcomer still needs, progress);
``extend_gate`` is the retraining. Retraining starts from the current gate (its weights for the
known experts are kept, the newcomer's output starts at the mean of the others) and trains on
the items measured on every expert, from cached prompt embeddings, early-stopped on validation:
seconds on a CPU. The extended profile and gate are written to the controller's state folder
(gate first, then the profile it names, each atomically); a restart picks them up only when the
gate names that very profile.
"""

from __future__ import annotations

import copy
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from controller.gate.dataset import GateData
from controller.gate.gate import Gate, file_sha256
from controller.gate.network import GateNet, mixture_nll
from controller.gate.training import TrainConfig
from controller.profile import ExpertProfile, Measurement, Profile, ProfileError, save_profile
from controller.selection.from_profile import GatedProfile, expert_costs
from controller.suite import SuiteItem, stratified_sample
from messages.expert_key import agent_of, parse_key


@dataclass
class Progress:
    """How far a newcomer is: ``sample`` prompts measure it into the gate, the suite's other
    ``rest`` prompts refine it in the background; ``answered`` counts both (measured or failed)."""

    key: str
    sample: int
    rest: int = 0
    measured: int = 0
    failed: int = 0
    # profiling (the sample), training (the gate retrained), refining (the rest, in the gate),
    # done, failed (the retraining), waiting (its agent cannot load it within its budget)
    phase: str = "profiling"

    @property
    def answered(self) -> int:
        return self.measured + self.failed

    @property
    def total(self) -> int:
        """Prompts of the stage it is in: the sample, then the whole suite."""
        return self.sample if self.phase in ("profiling", "training", "waiting") else self.of

    @property
    def of(self) -> int:
        return self.sample + self.rest

    def __str__(self) -> str:
        if self.phase == "profiling":
            more = f" (then {self.rest} more in the gate)" if self.rest else ""
            return f"profiling {self.answered}/{self.sample} prompts{more}"
        if self.phase == "refining":
            return f"in the gate; refining {self.answered}/{self.of} prompts"
        if self.phase == "waiting":
            return "waiting: its agent cannot load it within its memory budget"
        return self.phase

    def note(self) -> str | None:
        """What an answer says of an expert being profiled; None once it is done."""
        if self.phase in ("profiling", "training", "waiting"):
            return f"being profiled: {self.answered}/{self.sample} prompts, not in the gate yet"
        if self.phase == "refining":
            return f"in the gate; profiling goes on: {self.answered}/{self.of} prompts"
        return None


@dataclass
class NewcomerQueue:
    """Prompts still to measure per newcomer: a stratified sample of the suite first (enough to
    enter the gate), then the rest. One newcomer of an agent at a time, to the end of its
    stage, so that the agent holds the expert it is probed on (within its memory budget)
    instead of loading another at every probe; at most ``rate_hz`` prompts per second."""

    items: list[SuiteItem]  # the suite's train and val items
    rate_hz: float = 2.0
    sample: int = 150  # 0: the whole suite before the gate
    progress: dict[str, Progress] = field(default_factory=dict)
    _todo: dict[str, deque[SuiteItem]] = field(default_factory=dict)
    _last_sent: float = -1e9

    def add(self, key: str, profile: Profile) -> None:
        """Queue ``key`` for every item the profile lacks it on: the sample first."""
        if key in self.progress:
            return
        lacking = [i for i in self.items if key not in profile.records.get(i.id, {})]
        first = stratified_sample(lacking, self.sample)
        ids = {i.id for i in first}
        self._todo[key] = deque(first + [i for i in lacking if i.id not in ids])
        self.progress[key] = Progress(key, sample=len(first), rest=len(lacking) - len(first))

    def next(
        self, now: float, busy: set[str], loadable: Callable[[str], bool] = lambda _: True
    ) -> tuple[str, SuiteItem] | None:
        """The next (key, item) to send, or None (rate limit, all busy, nothing left).
        ``busy``: agents with a job out already; ``loadable``: whether a key's agent can load
        it within its memory budget (one that cannot is left waiting)."""
        if now - self._last_sent < 1.0 / self.rate_hz:
            return None
        for key, prog in self.progress.items():
            if prog.phase in ("profiling", "waiting"):
                prog.phase = "profiling" if loadable(key) else "waiting"
        for key in probe_order(self._todo, self.progress, busy):
            self._last_sent = now
            return key, self._todo[key].popleft()
        return None

    def record(self, key: str, ok: bool) -> None:
        prog = self.progress.get(key)
        if prog is not None:
            if ok:
                prog.measured += 1
            else:
                prog.failed += 1

    def finished(self) -> list[str]:
        """Newcomers ready for a retraining: their sample answered (to enter the gate), or,
        refining, every prompt of the suite."""
        return [
            k
            for k, p in self.progress.items()
            if (p.phase == "profiling" and p.answered >= p.sample)
            or (p.phase == "refining" and not self._todo[k] and p.answered >= p.of)
        ]

    def trained(self, key: str) -> None:
        """The gate now holds ``key``: refined by the rest of the suite, or done."""
        prog = self.progress[key]
        prog.phase = "refining" if prog.answered < prog.of else "done"

    def forget(self, key: str) -> None:
        """A newcomer that left before it was profiled: asked again when it returns."""
        self.progress.pop(key, None)
        self._todo.pop(key, None)


def probe_order(
    todo: Mapping[str, deque[SuiteItem]], progress: Mapping[str, Progress], busy: set[str]
) -> list[str]:
    """The newcomers that may be sent a prompt now, in order: on each agent not ``busy``, one
    newcomer, the first (in queue order) still entering the gate, else the first refining; it
    stays that agent's until its stage is measured, so no agent is asked to hold two newcomers
    in turn. Newcomers entering the gate come before those refining."""
    current: dict[str, str] = {}
    for stage in ("profiling", "refining"):
        for key, items in todo.items():
            agent = agent_of(key)
            if items and agent not in current and progress[key].phase == stage:
                current[agent] = key
    entering = [k for k in current.values() if progress[k].phase != "refining"]
    refining = [k for k in current.values() if progress[k].phase == "refining"]
    return [k for k in entering + refining if agent_of(k) not in busy]


def add_expert(profile: Profile, key: str, model: str, template: str) -> None:
    pair = parse_key(key)
    profile.experts[key] = ExpertProfile(
        key=key, expert_id=pair.expert_id, agent_id=pair.agent_id, model=model, template=template
    )


def add_items(profile: Profile, items: list[SuiteItem]) -> None:
    """Suite items the profile lacks (by id); one with the same id and other content is refused."""
    known = {i.id: i for i in profile.items}
    for item in items:
        had = known.get(item.id)
        if had is None:
            profile.items.append(item)
            known[item.id] = item
        elif had != item:
            raise ProfileError(f"suite item {item.id!r} differs from the profile's item of that id")


def store(profile: Profile, item_id: str, key: str, measurement: Measurement) -> None:
    profile.records.setdefault(item_id, {})[key] = measurement


def _warm_net(old: GateNet, n_new: int) -> GateNet:
    """The old gate with ``n_new`` more outputs, started at the mean of the known ones."""
    net = GateNet(old.in_features, old.n_experts + n_new, old.hidden)
    with torch.no_grad():
        net.layers[0].load_state_dict(copy.deepcopy(old.layers[0].state_dict()))
        out_old, out_new = old.layers[2], net.layers[2]
        out_new.weight[: old.n_experts] = out_old.weight
        out_new.bias[: old.n_experts] = out_old.bias
        out_new.weight[old.n_experts :] = out_old.weight.mean(dim=0)
        out_new.bias[old.n_experts :] = out_old.bias.mean()
    return net


def train_warm(net: GateNet, data: GateData, config: TrainConfig) -> tuple[GateNet, float]:
    """Full-batch Adam from ``net``'s weights, early-stopped on validation loss."""
    torch.manual_seed(config.seed)
    train, val = data.splits["train"], data.splits["val"]
    x_train, q_train = torch.from_numpy(train.embeddings), torch.from_numpy(train.gold).float()
    x_val, q_val = torch.from_numpy(val.embeddings), torch.from_numpy(val.gold).float()
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    net.eval()
    with torch.no_grad():
        best = float(mixture_nll(net(x_val), q_val))
    best_state, waited = copy.deepcopy(net.state_dict()), 0
    for _ in range(config.epochs):
        net.train()
        optimiser.zero_grad()
        mixture_nll(net(x_train), q_train).backward()
        optimiser.step()
        net.eval()
        with torch.no_grad():
            loss = float(mixture_nll(net(x_val), q_val))
        if loss < best - 1e-6:
            best, waited, best_state = loss, 0, copy.deepcopy(net.state_dict())
        else:
            waited += 1
            if waited >= config.patience:
                break
    net.load_state_dict(best_state)
    net.eval()
    return net, best


def extend_gate(
    gated: GatedProfile, profile: Profile, new_keys: list[str], encoder: object
) -> tuple[GatedProfile, float]:
    """The gate over the old experts and ``new_keys``, trained on ``profile`` (which holds
    their measurements). The old experts keep their costs; the newcomers' costs are the medians
    of their own measurements. ``new_keys`` may be in the gate already (a newcomer refined on
    more of the suite): the gate is retrained and their costs measured again. Returns the new
    GatedProfile and its validation loss."""
    keys = gated.gate.expert_keys + [k for k in new_keys if k not in gated.gate.expert_keys]
    data = GateData.from_profile(profile, encoder, keys=keys)  # type: ignore[arg-type]
    net, loss = train_warm(
        _warm_net(gated.gate.net, len(keys) - len(gated.gate.expert_keys)), data, TrainConfig()
    )
    gate = Gate(net, keys, gated.gate.fleet, "", encoder=gated.gate.encoder)
    costs = dict(gated.costs)
    for key in keys:  # each on its own prompts: newcomers refined are costed afresh
        if key not in costs or key in new_keys:
            costs.update(expert_costs(profile, [key]))
    categories = {c for cost in gated.costs.values() for c in cost.delay_s}
    for key in new_keys:
        lacking = categories - set(costs[key].delay_s)
        if lacking:
            raise ProfileError(f"{key} was measured on no training prompt of {sorted(lacking)}")
    return GatedProfile(profile, gate, data, costs), loss


def write_extended(gated: GatedProfile, folder: Path) -> tuple[Path, Path]:
    """``profile.json`` and ``gate.pt`` in ``folder``: each written atomically, the gate naming
    the profile's SHA-256 so that a half-finished pair is never taken for a whole one."""
    folder.mkdir(parents=True, exist_ok=True)
    profile_path, gate_path = folder / "profile.json", folder / "gate.pt"
    staged = folder / "profile.json.next"
    save_profile(gated.profile, staged)
    gated.gate.profile_sha256 = file_sha256(staged)
    tmp = folder / "gate.pt.tmp"
    gated.gate.save(tmp)
    os.replace(tmp, gate_path)
    os.replace(staged, profile_path)
    return profile_path, gate_path


def extended_pair(folder: Path, fleet: str) -> tuple[Path, Path] | None:
    """The extended profile and gate a newcomer left in ``folder``, when whole and of ``fleet``."""
    profile_path, gate_path = folder / "profile.json", folder / "gate.pt"
    if not (profile_path.is_file() and gate_path.is_file()):
        return None
    try:
        gate = Gate.load(gate_path)
    except Exception:
        return None
    if gate.fleet != fleet or gate.profile_sha256 != file_sha256(profile_path):
        return None
    return profile_path, gate_path
