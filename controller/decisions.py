"""Pure decisions of the dispatcher: which replica runs a job, whether the fleet is coming
back, who may cancel a prompt. (When an answer is decided belongs to the ensemble:
controller/aggregate.py.)

No I/O and no clock: each function takes what it needs and returns the decision, so the rules
are tested directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from messages.topics import PREFIX

CANCELLED = "cancelled by the asker"


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
