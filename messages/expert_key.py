"""How the fleet names one expert on one agent: the key ``expert@agent``.

The gate, the profile, the cost table, answers and the command line all name an expert on an
agent by this key; code holds it as an ``ExpertOnAgent`` (agent first, as topics are). Build
and read the key only here, so the spelling and the order never flip."""

from __future__ import annotations

from typing import NamedTuple

SEPARATOR = "@"


class ExpertOnAgent(NamedTuple):
    """One expert served by one agent."""

    agent_id: str
    expert_id: str

    @property
    def key(self) -> str:
        """The key ``expert@agent``."""
        return expert_key(self.agent_id, self.expert_id)


def expert_key(agent_id: str, expert_id: str) -> str:
    """The key ``expert@agent`` of ``expert_id`` on ``agent_id``."""
    return f"{expert_id}{SEPARATOR}{agent_id}"


def parse_key(key: str) -> ExpertOnAgent:
    """The agent and expert a key ``expert@agent`` names; ``ValueError`` for anything else."""
    expert_id, sep, agent_id = key.partition(SEPARATOR)
    if not sep or not expert_id or not agent_id:
        raise ValueError(f"{key!r} is not an expert key: write it expert{SEPARATOR}agent")
    return ExpertOnAgent(agent_id, expert_id)


def agent_of(key: str) -> str:
    """The agent a key ``expert@agent`` names."""
    return parse_key(key).agent_id


def expert_of(key: str) -> str:
    """The expert a key ``expert@agent`` names."""
    return parse_key(key).expert_id


def parse_name(name: str) -> tuple[str, str | None]:
    """An expert as a user names it, ``expert`` or ``expert@agent``: (expert, agent or None)."""
    expert_id, sep, agent_id = name.partition(SEPARATOR)
    return expert_id, (agent_id if sep else None)
