import pytest

from messages.expert_key import (
    ExpertOnAgent,
    agent_of,
    expert_key,
    expert_of,
    parse_key,
    parse_name,
)


def test_key_names_expert_first_and_reads_back_agent_first() -> None:
    key = expert_key("edge-a", "smollm2")
    assert key == "smollm2@edge-a"
    assert parse_key(key) == ExpertOnAgent(agent_id="edge-a", expert_id="smollm2")
    assert ExpertOnAgent("edge-a", "smollm2").key == key
    assert (agent_of(key), expert_of(key)) == ("edge-a", "smollm2")


@pytest.mark.parametrize("bad", ["smollm2", "@edge-a", "smollm2@", ""])
def test_a_string_without_both_halves_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not an expert key"):
        parse_key(bad)


def test_a_user_may_name_an_expert_with_or_without_its_agent() -> None:
    assert parse_name("smollm2") == ("smollm2", None)
    assert parse_name("smollm2@edge-a") == ("smollm2", "edge-a")
