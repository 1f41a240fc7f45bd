"""Agents that are not there: what a stand-in agent announces in place of a real one (a test's
scripted agent, a drill's ghost), so every stand-in claims its expert the same way."""

from __future__ import annotations

from messages.capabilities import AgentCapabilities, ExpertInfo


def stand_in_capabilities(
    agent_id: str,
    expert_id: str,
    *,
    model: str = "x.gguf",
    hostname: str = "h",
    parallel: int = 1,
    capacity: int = 4,
) -> AgentCapabilities:
    """The capabilities of an agent serving one llama.cpp expert (a cloze template, a tiny
    model file) with ``parallel`` slots and room for ``capacity`` queued jobs."""
    expert = ExpertInfo(
        expert_id=expert_id,
        model=model,
        backend="llama.cpp",
        format="gguf",
        file_size_bytes=1,
        context_length=512,
        chat_template=False,
        template="cloze",
        parallel=parallel,
    )
    return AgentCapabilities(
        agent_id=agent_id,
        hostname=hostname,
        platform="p",
        python="3",
        cpu_count=1,
        memory_total_bytes=1,
        power_sensor="none",
        backends=["llama.cpp"],
        experts=[expert],
        job_queue_capacity=capacity,
    )
