"""The topic registry: concrete names, subscription filters, matching and level validation."""

from __future__ import annotations

import pytest

from messages import topics
from messages.base import Message
from messages.topics import TOPICS, Topic, TopicError, check_level


def test_agent_topic_names_are_under_the_fleet_prefix() -> None:
    assert topics.AGENT_STATUS.name("lab", agent_id="orin-1") == "moe2/lab/agents/orin-1/status"
    assert topics.AGENT_JOBS.name("lab", agent_id="pi.5") == "moe2/lab/agents/pi.5/jobs"
    assert topics.AGENT_RESULTS.name("f", agent_id="a@b") == "moe2/f/agents/a@b/results"


def test_parameterless_and_multi_parameter_names() -> None:
    assert topics.PROMPTS.name("lab") == "moe2/lab/prompts"
    assert topics.PROMPTS_TEXT.name("lab") == "moe2/lab/prompts/text"
    assert topics.CONTROLLER_PLAN.name("lab") == "moe2/lab/controller/plan"
    assert topics.ANSWERS.name("lab", request_id="r-1") == "moe2/lab/answers/r-1"
    assert (
        topics.REPLIES.name("lab", client_id="ask-7", request_id="r:2")
        == "moe2/lab/replies/ask-7/r:2"
    )


def test_params_are_read_from_the_pattern() -> None:
    assert topics.AGENT_STATUS.params == ("agent_id",)
    assert topics.REPLIES.params == ("client_id", "request_id")
    assert topics.CONTROLLER_STATUS.params == ("controller_id",)
    assert topics.AGENT_CANCEL.params == ("agent_id",)


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({}, id="missing"),
        pytest.param({"agent_id": "a", "request_id": "r"}, id="extra"),
        pytest.param({"request_id": "r"}, id="wrong"),
    ],
)
def test_name_needs_exactly_the_pattern_parameters(params: dict[str, str]) -> None:
    with pytest.raises(TopicError, match="needs"):
        topics.AGENT_STATUS.name("lab", **params)


def test_filter_turns_missing_parameters_into_single_level_wildcards() -> None:
    assert topics.AGENT_STATUS.filter("lab") == "moe2/lab/agents/+/status"
    assert topics.REPLIES.filter("lab") == "moe2/lab/replies/+/+"
    assert topics.REPLIES.filter("lab", client_id="ask-7") == "moe2/lab/replies/ask-7/+"
    assert topics.AGENT_PLAN.filter("lab", agent_id="orin-1") == "moe2/lab/agents/orin-1/plan"
    assert topics.PROMPTS.filter("lab") == "moe2/lab/prompts"


def test_filter_never_uses_the_multi_level_wildcard() -> None:
    for topic in TOPICS:
        assert "#" not in topic.filter("lab")


def test_match_returns_the_parameters_of_a_concrete_name() -> None:
    assert topics.AGENT_STATUS.match("lab", "moe2/lab/agents/orin-1/status") == {
        "agent_id": "orin-1"
    }
    assert topics.REPLIES.match("lab", "moe2/lab/replies/ask-7/r-9") == {
        "client_id": "ask-7",
        "request_id": "r-9",
    }
    assert topics.PROMPTS.match("lab", "moe2/lab/prompts") == {}


def test_match_inverts_name_for_every_topic() -> None:
    for topic in TOPICS:
        params = {p: f"v-{i}" for i, p in enumerate(topic.params)}
        assert topic.match("lab", topic.name("lab", **params)) == params


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        (topics.AGENT_STATUS, "moe2/other/agents/orin-1/status"),  # another fleet
        (topics.AGENT_STATUS, "moe2/lab/agents/orin-1/telemetry"),  # another topic
        (topics.AGENT_STATUS, "moe2/lab/agents/a/b/status"),  # a level holds no slash
        (topics.AGENT_STATUS, "moe2/lab/agents//status"),  # empty level
        (topics.AGENT_STATUS, "moe2/lab/agents/orin-1/status/extra"),  # anchored at the end
        (topics.AGENT_STATUS, "x/moe2/lab/agents/orin-1/status"),  # anchored at the start
        (topics.PROMPTS, "moe2/lab/prompts/text"),  # prompts is not a prefix of prompts/text
        (topics.PROMPTS_TEXT, "moe2/lab/prompts"),
        (topics.PROMPTS, "moe2/lab/prompts/cancel"),  # a cancel is not a prompt
        (topics.CLIENT_PROMPTS, "moe2/lab/clients/c1/prompts/cancel"),
        (topics.ANSWERS, "moe2/lab/replies/c/r"),
        (topics.CONTROLLER_STATUS, "moe2/labx/controllers/c1/status"),
        (topics.CONTROLLER_STATUS, "moe2/lab/controller/status"),
    ],
)
def test_match_rejects_other_names(topic: Topic[Message], name: str) -> None:
    assert topic.match("lab", name) is None


def test_fleet_name_is_matched_literally_not_as_a_regex() -> None:
    assert topics.PROMPTS.match("a.b", "moe2/aXb/prompts") is None
    assert topics.PROMPTS.match("a.b", "moe2/a.b/prompts") == {}


BAD_LEVELS = [
    pytest.param("a/b", id="slash"),
    pytest.param("+", id="plus"),
    pytest.param("a+b", id="plus-inside"),
    pytest.param("#", id="hash"),
    pytest.param("a#", id="hash-inside"),
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="too-long"),
    pytest.param("-lead", id="leading-dash"),
    pytest.param("a b", id="space"),
    pytest.param("a\0b", id="nul"),
]


@pytest.mark.parametrize("value", BAD_LEVELS)
def test_invalid_levels_raise_topic_error(value: str) -> None:
    with pytest.raises(TopicError, match="not a valid topic level"):
        check_level("agent_id", value)
    with pytest.raises(TopicError):
        topics.AGENT_STATUS.name("lab", agent_id=value)
    with pytest.raises(TopicError):
        topics.AGENT_STATUS.filter("lab", agent_id=value)
    with pytest.raises(TopicError):
        topics.PROMPTS.name(value)
    with pytest.raises(TopicError):
        topics.PROMPTS.filter(value)


def test_topic_error_is_a_value_error_and_names_the_level() -> None:
    with pytest.raises(ValueError, match=r"^fleet 'a/b' "):
        topics.PROMPTS.name("a/b")


@pytest.mark.parametrize("value", ["a", "A9", "orin-1", "pi.5", "x:y", "e@agent", "x" * 128])
def test_valid_levels_pass(value: str) -> None:
    assert check_level("agent_id", value) == value


def test_level_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(TopicError):
        check_level("agent_id", "orin-1\n")


def test_every_pattern_is_unique() -> None:
    patterns = [t.pattern for t in TOPICS]
    assert len(patterns) == len(set(patterns))


def test_registry_holds_every_topic_declared_in_the_module() -> None:
    declared = {id(v) for v in vars(topics).values() if isinstance(v, Topic)}
    assert declared == {id(t) for t in TOPICS}
    assert len(TOPICS) == 27


def test_every_topic_has_a_message_type_except_bare_text_prompts() -> None:
    untyped = [t.pattern for t in TOPICS if t.message is None]
    assert untyped == ["prompts/text", "clients/{client_id}/prompts/text"]
    for topic in TOPICS:
        if topic.message is not None:
            assert issubclass(topic.message, Message), topic.pattern


def test_qos_and_retain_flags() -> None:
    for topic in TOPICS:
        assert topic.qos in (0, 1), topic.pattern
    retained = {t.pattern for t in TOPICS if t.retained}
    assert retained == {
        "agents/{agent_id}/status",
        "agents/{agent_id}/capabilities",
        "agents/{agent_id}/plan",
        "controllers/{controller_id}/status",
        "controller/plan",
        "controller/budgets",
        "controller/cache-plan",
        "controller/costs",
        "controller/config",
        "controller/config/blobs/{digest}/{index}",
    }
    assert topics.AGENT_TELEMETRY.qos == 0
