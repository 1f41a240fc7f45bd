"""Fleet churn, decided without I/O: when a re-plan is due (joins, leaves and flaps within a
short window make one), which flapping agents are held out of the plan until steady, and which
online agents a plan may use (those heard alive, once any is).

The controller service feeds these with ``time.monotonic()`` readings and only schedules what
they decide."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

Pool = dict[str, list[str]]  # agent_id -> experts it can serve


@dataclass
class ReplanTimer:
    """One re-plan for every burst of fleet changes: the first change opens a window of
    ``window_s``; changes within it join it (they do not push it back, so a change is planned
    at most ``window_s`` late however busy the fleet); the re-plan is due when it closes."""

    window_s: float
    _due_at: float | None = None

    def note(self, now: float) -> None:
        """A change that needs a re-plan."""
        if self._due_at is None:
            self._due_at = now + self.window_s

    def at(self, when: float) -> None:
        """A re-plan needed at ``when`` (a hold ending), or sooner if one is due sooner."""
        if self._due_at is None or when < self._due_at:
            self._due_at = when

    @property
    def pending(self) -> bool:
        """A re-plan is on its way (one attribute read: safe without the caller's lock)."""
        return self._due_at is not None

    def due(self, now: float) -> bool:
        """True once per window, when it has closed."""
        if self._due_at is None or now < self._due_at:
            return False
        self._due_at = None
        return True


@dataclass
class FlapDamper:
    """An agent that went online or offline ``limit`` times within ``window_s`` is held out of
    the plan until it has made no transition for ``steady_s``: a flapping agent costs one
    re-plan when it is held and one when it is let back, not one per flap."""

    limit: int
    window_s: float
    steady_s: float
    _moves: dict[str, deque[float]] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)

    def transition(self, agent_id: str, now: float) -> bool:
        """The agent went online or offline; True when this puts it on hold."""
        moves = self._moves.setdefault(agent_id, deque())
        moves.append(now)
        while moves and now - moves[0] > self.window_s:
            moves.popleft()
        if agent_id in self._held or len(moves) < self.limit:
            return False
        self._held.add(agent_id)
        return True

    @property
    def holding(self) -> bool:
        """Some agent is on hold (one attribute read: safe without the caller's lock)."""
        return bool(self._held)

    def held(self, now: float) -> set[str]:
        """The agents on hold now; those steady for ``steady_s`` are let back (and their
        history forgotten)."""
        for agent_id in [a for a in self._held if now - self._moves[a][-1] >= self.steady_s]:
            self._held.discard(agent_id)
            del self._moves[agent_id]
        return set(self._held)

    def next_release(self) -> float | None:
        """When the next agent on hold is let back if it stays steady (a re-plan is due then)."""
        if not self._held:
            return None
        return min(self._moves[a][-1] for a in self._held) + self.steady_s

    def forget_all(self) -> None:
        """Forget every agent's history and let every held agent back: the controller was
        away (its own connection dropped: a broker restart publishes every agent's will at
        once, and they all come back together), so the moves it saw are its absence, not the
        agents flapping."""
        self._moves.clear()
        self._held.clear()

    def forget_quiet(self, now: float) -> None:
        """Drop the history of agents not on hold whose last transition left the window (the
        memory stays bounded by the agents that moved recently)."""
        for agent_id in [
            a for a, m in self._moves.items() if a not in self._held and now - m[-1] > self.window_s
        ]:
            del self._moves[agent_id]


def plannable(online: Pool, heard_alive: set[str], held: set[str]) -> Pool:
    """The online agents a plan may use: not on hold and, once any agent of the fleet has sent
    telemetry (``heard_alive``: online or not), only those that have. An announcement alone (a
    retained status and capabilities, which anyone on an open broker can publish for ten
    thousand names) then gets no plan and no job; a fleet where none has spoken yet (agents
    that send no telemetry) plans every online agent."""
    pool = {a: e for a, e in online.items() if a not in held}
    if not heard_alive:
        return pool
    return {a: e for a, e in pool.items() if a in heard_alive}
