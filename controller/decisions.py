"""Pure decisions of the dispatcher: when an answer is decided, and which replica runs a job.

No I/O and no clock: each function takes what it needs and returns the decision, so the rules
are tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from controller.aggregate import normalised_weights, uniform_weights
from messages.results import JobResult
from messages.topics import PREFIX

CANCELLED = "cancelled by the asker"

# The leading choice must beat the runner-up by more than the weight still out, plus this.
MARGIN = 1e-9


def _usable(result: JobResult, choices: list[str] | None) -> bool:
    if not result.ok:
        return False
    if choices is not None:
        return result.choice_probs is not None and len(result.choice_probs) == len(choices)
    return bool((result.text or "").strip())


def decided(
    choices: list[str] | None,
    arrived: Mapping[str, JobResult],
    outstanding: Iterable[str],
    weights: Mapping[str, float] | None,
) -> bool:
    """Whether the experts still out (by key) can no longer change the answer.

    Choices: the mixture so far (each arrived expert's probabilities times its weight among
    every expert that can still count) leads by more than the outstanding experts' total
    weight, so whatever they say, the winning choice stays. Free text: an arrived non-empty
    text weighs at least as much as any expert still out (ties go to the earlier answer).
    With nothing out the answer is complete, hence decided.
    """
    out = list(outstanding)
    if not out:
        return True
    usable = [k for k, r in arrived.items() if _usable(r, choices)]
    if not usable:
        return False
    live = usable + out
    norm = normalised_weights(live, dict(weights)) if weights else uniform_weights(live)
    if choices is None:
        return max(norm[k] for k in usable) >= max(norm[k] for k in out)
    mixture = [
        sum(norm[k] * (arrived[k].choice_probs or [])[i] for k in usable)
        for i in range(len(choices))
    ]
    ranked = sorted(mixture, reverse=True)
    return ranked[0] - ranked[1] > sum(norm[k] for k in out) + MARGIN


def least_loaded(agents: Iterable[str], load: Mapping[str, int]) -> str | None:
    """The agent with the fewest jobs outstanding (then the lowest id), or None."""
    return min(agents, key=lambda a: (load.get(a, 0), a), default=None)


def one_replica_each(
    active: Iterable[tuple[str, str]], load: Mapping[str, int]
) -> list[tuple[str, str]]:
    """(agent, expert) pairs: for each distinct expert id, its least loaded active replica."""
    replicas: dict[str, list[str]] = {}
    for agent, expert in active:
        replicas.setdefault(expert, []).append(agent)
    chosen = []
    for expert in sorted(replicas):
        agent = least_loaded(replicas[expert], load)
        if agent is not None:
            chosen.append((agent, expert))
    return chosen


def fleet_coming_back(
    online: Iterable[bool],
    last_heard: Iterable[float],
    connected_at: float | None,
    now: float,
    window_s: float,
) -> bool:
    """Whether a fleet with no agent online is coming back, so that a prompt should wait for it:
    it had agents (some are known), none is online, and either one was heard from within
    ``window_s`` (a broker going down sends every will at once) or the controller itself
    (re)connected within it (the agents' announcements are still arriving)."""
    states, heard = list(online), list(last_heard)
    if not states or any(states):
        return False
    recent = now - max(heard) < window_s
    return recent or (connected_at is not None and now - connected_at < window_s)


def may_cancel(routes: Iterable[str], owner: str | None, fleet: str) -> bool:
    """Whether a prompt cancel may stop a prompt whose answer goes to ``routes`` (topics).

    ``owner`` is the login of a cancel on its own ``clients/{owner}/prompts/cancel`` (the secure
    broker lets only that login publish there): it stops only prompts answered under its own
    ``replies/{owner}/``, never another login's. A cancel on the shared ``prompts/cancel``
    (``owner`` None: the open broker, or a controller's login) stops any prompt by its id."""
    if owner is None:
        return True
    own = f"{PREFIX}/{fleet}/replies/{owner}/"
    topics = list(routes)
    return bool(topics) and all(t.startswith(own) for t in topics)


def cancelled_reason(reason: str) -> str:
    """The error a cancelled prompt is answered with: CANCELLED, and the asker's reason."""
    reason = reason.strip()
    return CANCELLED if reason in ("", CANCELLED) else f"{CANCELLED}: {reason}"
