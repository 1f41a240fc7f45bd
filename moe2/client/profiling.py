"""``moe2 profile``: send the suite's prompts through the controller to every active expert and
store what each one answered, how long it took and what it spent. Resumable: measurements
already in the profile file are never asked for again."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

from rich.progress import Progress

from controller.profile import (
    ExpertProfile,
    Measurement,
    Profile,
    ProfileError,
    load_profile,
    save_profile,
    suite_digest,
)
from controller.suite import SuiteItem
from messages.bus import BrokerEndpoint
from messages.expert_key import expert_key
from messages.prompts import Prompt
from moe2.client.ask import Asker, AskError
from moe2.client.fleet_reader import read_fleet


@dataclass(frozen=True)
class ProfileRun:
    asked: int
    measured: int
    failed: int
    profile: Profile


def active_experts(
    endpoint: BrokerEndpoint, fleet: str, wait_s: float = 2.0
) -> dict[str, ExpertProfile]:
    """The experts the controller's current plan activates, with their model and template."""
    registry, plan = read_fleet(endpoint, fleet, wait_s)  # retained messages arrive at once
    if plan is None:
        raise ProfileError(f"no controller plan for fleet {fleet!r}: is a controller running?")
    online = {r.agent_id: r for r in registry.agents() if r.online and r.capabilities}
    experts: dict[str, ExpertProfile] = {}
    for agent_id, expert_ids in sorted(plan.assignments.items()):
        record = online.get(agent_id)
        if record is None or record.capabilities is None:
            continue
        infos = {e.expert_id: e for e in record.capabilities.experts}
        for expert_id in expert_ids:
            info = infos[expert_id]
            key = expert_key(agent_id, expert_id)
            experts[key] = ExpertProfile(
                key=key,
                expert_id=expert_id,
                agent_id=agent_id,
                model=info.model,
                template=info.template,
            )
    if not experts:
        raise ProfileError(f"fleet {fleet!r} has no active expert")
    return experts


def open_profile(path: Path, fleet: str, items: list[SuiteItem], digest: str) -> Profile:
    """The profile at ``path`` (new, or resumed), holding ``items`` of the suite ``digest``."""
    if not path.exists():
        return Profile(fleet=fleet, suite_sha256=digest, items=items)
    profile = load_profile(path)
    profile.check_fleet(fleet)
    if profile.suite_sha256 != digest:
        raise ProfileError(
            f"profile {path} was made from another suite; profile this one into another file"
        )
    known = {i.id for i in profile.items}
    profile.items.extend(i for i in items if i.id not in known)
    return profile


def run_profile(
    endpoint: BrokerEndpoint,
    fleet: str,
    items: list[SuiteItem],
    out: Path,
    digest: str | None = None,
    window: int = 4,
    timeout_s: float = 120.0,
    save_every: int = 20,
    show_progress: bool = True,
) -> ProfileRun:
    profile = open_profile(out, fleet, items, digest or suite_digest(items))
    for key, expert in active_experts(endpoint, fleet).items():
        known = profile.experts.get(key)
        if known is not None and known != expert:
            raise ProfileError(
                f"expert {key} changed since the profile was made: {known} -> {expert}"
            )
        profile.experts[key] = expert
    todo = [(item, profile.missing(item)) for item in items]
    todo = [(item, keys) for item, keys in todo if keys]
    asked = measured = failed = 0
    inflight: deque[tuple[str, SuiteItem]] = deque()
    with Asker(endpoint, fleet) as asker, Progress(disable=not show_progress) as progress:
        asker.require_controller()
        task = progress.add_task("profiling", total=len(todo))
        queue = deque(todo)
        since_save = 0
        while queue or inflight:
            while queue and len(inflight) < window:
                item, keys = queue.popleft()
                prompt = Prompt(
                    prompt=item.prompt,
                    question=item.question,
                    choices=item.choices,
                    experts=keys,
                    timeout_s=timeout_s,
                )
                inflight.append((asker.send(prompt), item))
                asked += 1
            request_id, item = inflight.popleft()
            try:
                answer = asker.wait(request_id, timeout_s + 10)
            except AskError:
                failed += 1
                progress.advance(task)
                continue
            row = profile.records.setdefault(item.id, {})
            for out_ in answer.experts:
                if out_.choice_probs is None:
                    continue
                row[expert_key(out_.agent_id, out_.expert_id)] = Measurement(
                    choice_probs=out_.choice_probs,
                    compute_s=out_.compute_s,
                    transmission_s=max(0.0, out_.latency_s - out_.agent_latency_s),
                    energy_j=out_.energy_j,
                    energy_source=out_.energy_source,
                )
                measured += 1
            failed += len(answer.failed)
            progress.advance(task)
            since_save += 1
            if since_save >= save_every:
                save_profile(profile, out)
                since_save = 0
    save_profile(profile, out)
    return ProfileRun(asked=asked, measured=measured, failed=failed, profile=profile)
