"""encode/decode of every message model, and the reasons payloads are rejected."""

from __future__ import annotations

import json
from typing import Any

import pytest

import messages
from messages import (
    MAX_PAYLOAD_BYTES,
    ActivationPlan,
    AgentCapabilities,
    AgentEvent,
    AgentStatus,
    Answer,
    Budgets,
    CachePlan,
    Cancel,
    ChatMessage,
    ControllerEvent,
    ControllerStatus,
    EnergyReading,
    ExpertFailure,
    ExpertInfo,
    ExpertOutput,
    FleetPlan,
    Job,
    JobResult,
    LatencyBreakdown,
    Message,
    PayloadError,
    Prompt,
    PromptCancel,
    StreamChunk,
    Telemetry,
    decode,
    encode,
)
from messages.codec import check_size, decode_text
from messages.costs import CostTable, ExpertCostRow

T0 = 1_760_000_000.25

EXPERT_INFO = ExpertInfo(
    expert_id="smol",
    model="smollm2-135m",
    backend="llama.cpp",
    format="gguf",
    file_size_bytes=100_000_000,
    memory_bytes=120_000_000,
    quantisation="Q4_1",
    context_length=2048,
    chat_template=True,
    template="cloze",
)
LATENCY = LatencyBreakdown(queue_s=0.01, load_s=0.0, first_token_s=0.2, total_s=1.5)
ENERGY = EnergyReading(energy_j=3.25, source="ina3221", estimated=False)
EXPERT_OUTPUT = ExpertOutput(
    expert_id="smol",
    agent_id="orin-1",
    weight=0.5,
    text=None,
    choice_probs=[0.7, 0.2, 0.1],
    latency_s=1.7,
    agent_latency_s=1.5,
    compute_s=1.4,
    completion_tokens=0,
    energy_j=3.25,
    energy_source="ina3221",
)
EXPERT_FAILURE = ExpertFailure(expert_id="gemma", agent_id="pi-5", reason="no result within 60 s")

SAMPLES: list[Message] = [
    CachePlan(
        placement={"orin-1": ["smol"], "rtx-1": []},
        expected_latency_s=0.4,
        algorithm="sgd_maxconv",
        time_s=T0,
    ),
    Budgets(energy_j=12.0, delay_s={"math": 2.5, "science": 1.5}, top_k=2),
    AgentStatus(
        agent_id="orin-1",
        state="online",
        version="0.1.0",
        time_s=T0,
        keepalive_s=10,
        telemetry_interval_s=2.0,
        reason=None,
    ),
    EXPERT_INFO,
    AgentCapabilities(
        agent_id="orin-1",
        hostname="orin-1.local",
        platform="Linux-aarch64",
        python="3.10.12",
        cpu_count=6,
        memory_total_bytes=8 * 1024**3,
        accelerator="Orin (nvgpu)",
        power_sensor="ina3221",
        backends=["llama.cpp"],
        experts=[EXPERT_INFO],
        job_queue_capacity=32,
    ),
    Telemetry(
        agent_id="orin-1",
        time_s=T0,
        power_w=7.5,
        energy_j=1234.5,
        energy_source="ina3221",
        cpu_utilisation=0.42,
        memory_used_bytes=3 * 1024**3,
        process_rss_bytes=400 * 1024**2,
        temperature_c=48.5,
        queue_depth=1,
        busy=True,
        loaded_experts=["smol"],
        plan_epoch=1_760_000_000_000,
        jobs_done=17,
        jobs_failed=1,
        last_latency_s=1.2,
    ),
    ActivationPlan(agent_id="orin-1", epoch=7, experts=["smol", "gemma"], time_s=T0),
    Job(
        request_id="r-1",
        expert_id="smol",
        prompt="Which planet is largest?",
        choices=["Mars", "Jupiter", "Venus"],
        max_tokens=16,
        timeout_s=30.0,
        issued_s=T0,
    ),
    LATENCY,
    ENERGY,
    JobResult(
        request_id="r-1",
        expert_id="smol",
        agent_id="orin-1",
        ok=True,
        choice_logprobs=[-0.36, -1.6, -2.3],
        choice_probs=[0.7, 0.2, 0.1],
        finish_reason="scored",
        prompt_tokens=12,
        completion_tokens=0,
        latency=LATENCY,
        energy=ENERGY,
    ),
    AgentEvent(
        agent_id="orin-1",
        time_s=T0,
        kind="rejected",
        topic="moe2/lab/agents/orin-1/jobs",
        reason="does not match Job schema",
    ),
    Prompt(
        prompt="Which planet is largest?",
        request_id="r-1",
        choices=["Mars", "Jupiter", "Venus"],
        max_tokens=8,
        timeout_s=20.0,
        experts=["smol", "gemma@pi-5"],
        reply_to="moe2/lab/replies/ask-7/r-1",
    ),
    ChatMessage(role="system", content="Answer in one word."),
    StreamChunk(
        request_id="r-2",
        expert_id="smol",
        agent_id="orin-1",
        seq=3,
        text=" Jupiter",
        done=True,
        finish_reason="stop",
        time_s=T0,
    ),
    EXPERT_OUTPUT,
    EXPERT_FAILURE,
    Answer(
        request_id="r-1",
        status="partial",
        answer="Jupiter",
        choice_index=1,
        choice_probs=[0.7, 0.2, 0.1],
        experts=[EXPERT_OUTPUT],
        failed=[EXPERT_FAILURE],
        error=None,
        latency_s=2.0,
        energy_j=3.25,
    ),
    Cancel(request_id="r-17", expert_id="smol", reason="decided", time_s=T0),
    PromptCancel(request_id="q-1", reason="the HTTP client went away", time_s=T0),
    ControllerStatus(
        controller_id="laptop",
        state="online",
        role="active",
        since_s=T0,
        incarnation=1_700_000_000_000,
        version="0.1.0",
        time_s=T0,
        agents_online=2,
        requests_answered=40,
        rejected={"agents/{agent_id}/results": 3},
    ),
    FleetPlan(epoch=7, time_s=T0, assignments={"orin-1": ["gemma", "smol"], "pi-5": []}),
    ControllerEvent(
        time_s=T0,
        kind="agent_offline",
        topic="moe2/lab/agents/pi-5/status",
        reason="no message for 6.0 s",
        agent_id="pi-5",
    ),
    ExpertCostRow(
        key="gemma@orin-1",
        online=True,
        planned=True,
        in_gate=True,
        energy_j=2.5,
        energy_source="estimate",
        delay_s={"math": 0.53},
        origin="live",
        delay_samples=16,
        energy_samples=16,
        delay_ratio=1.2,
    ),
    CostTable(
        controller_id="ctl-1",
        time_s=T0,
        budgets=Budgets(energy_j=1.0),
        feasible=False,
        problem="no online expert fits the budgets (energy 1 J): gemma@orin-1: energy 2.5 J > 1 J",
        drift_threshold=0.5,
        window=16,
        experts=[],
    ),
]


def test_samples_cover_every_exported_message_model() -> None:
    exported = {
        obj
        for obj in vars(messages).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
    }
    assert len(exported) == 25
    assert {type(m) for m in SAMPLES} == exported


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    payload = encode(message)
    assert isinstance(payload, bytes)
    body = json.loads(payload)
    assert body["schema_version"] == 1
    decoded = decode(type(message), payload)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == payload


def test_encode_keeps_none_fields() -> None:
    status = AgentStatus(
        agent_id="a", state="online", version="1", time_s=1.0, keepalive_s=5, telemetry_interval_s=1
    )
    assert json.loads(encode(status))["reason"] is None


def test_defaults_are_filled_on_decode() -> None:
    prompt = decode(Prompt, b'{"prompt": "hi"}')
    assert prompt.max_tokens == 64
    assert prompt.timeout_s == 60.0
    assert prompt.request_id is None
    assert prompt.schema_version == 1


# -- rejections -----------------------------------------------------------------------------


def status_dict(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema_version": 1,
        "agent_id": "orin-1",
        "state": "online",
        "version": "0.1.0",
        "time_s": T0,
        "keepalive_s": 10,
        "telemetry_interval_s": 2.0,
    }
    body.update(changes)
    return body


def result_dict(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "r-1",
        "expert_id": "smol",
        "agent_id": "orin-1",
        "ok": True,
        "text": "Jupiter",
        "latency": {"queue_s": 0.0, "load_s": 0.0, "total_s": 1.0},
    }
    body.update(changes)
    return body


def reason_of(message_type: type[Message], body: dict[str, Any] | bytes) -> str:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(PayloadError) as info:
        decode(message_type, payload)
    assert str(info.value) == info.value.reason
    return info.value.reason


def test_valid_dicts_decode() -> None:
    # The bodies the rejection tests start from are themselves valid.
    assert decode(AgentStatus, json.dumps(status_dict()).encode()).agent_id == "orin-1"
    assert decode(JobResult, json.dumps(result_dict()).encode()).text == "Jupiter"


def test_oversize_payload() -> None:
    text = "x" * MAX_PAYLOAD_BYTES
    payload = json.dumps({"prompt": text}).encode()
    assert len(payload) > MAX_PAYLOAD_BYTES
    reason = reason_of(Prompt, payload)
    assert reason == (f"payload of {len(payload)} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit")


def test_payload_at_the_limit_is_accepted() -> None:
    payload = b'{"prompt": "' + b"x" * (MAX_PAYLOAD_BYTES - 14) + b'"}'
    assert len(payload) == MAX_PAYLOAD_BYTES
    assert len(decode(Prompt, payload).prompt) == MAX_PAYLOAD_BYTES - 14


def test_custom_limit() -> None:
    with pytest.raises(PayloadError, match="over the 10-byte limit"):
        decode(Prompt, b'{"prompt": "hello"}', limit=10)
    check_size(b"x" * 10, limit=10)  # exactly at the limit is fine


@pytest.mark.parametrize("payload", [b"{", b"not json", b"", b'{"prompt": "a",}'])
def test_invalid_json(payload: bytes) -> None:
    assert reason_of(Prompt, payload).startswith("not valid JSON: ")


def test_json_that_is_not_an_object() -> None:
    reason = reason_of(Prompt, b"[1, 2]")
    assert reason.startswith("does not match Prompt schema: ")


def test_missing_field() -> None:
    body = status_dict()
    del body["keepalive_s"]
    assert reason_of(AgentStatus, body) == (
        "does not match AgentStatus schema: keepalive_s: Field required"
    )


def test_unknown_extra_field() -> None:
    reason = reason_of(AgentStatus, status_dict(colour="blue"))
    assert reason.startswith("does not match AgentStatus schema: colour: ")
    assert "Extra inputs are not permitted" in reason


def test_string_where_an_int_belongs_is_not_coerced() -> None:
    reason = reason_of(AgentStatus, status_dict(keepalive_s="10"))
    assert reason.startswith("does not match AgentStatus schema: keepalive_s: ")
    assert "valid integer" in reason


def test_string_where_a_bool_belongs_is_not_coerced() -> None:
    reason = reason_of(JobResult, result_dict(ok="true"))
    assert "ok: " in reason
    assert "valid boolean" in reason


def test_nested_error_location_is_dotted() -> None:
    reason = reason_of(JobResult, result_dict(latency={"queue_s": 0, "load_s": 0}))
    assert "latency.total_s: Field required" in reason


def test_nan_is_rejected_where_forbidden() -> None:
    payload = json.dumps(status_dict(time_s=float("nan"))).encode()
    assert b"NaN" in payload
    reason = reason_of(AgentStatus, payload)
    assert "time_s: " in reason
    assert "finite number" in reason


def test_infinity_is_rejected_where_forbidden() -> None:
    payload = json.dumps(status_dict(telemetry_interval_s=float("inf"))).encode()
    assert "telemetry_interval_s: " in reason_of(AgentStatus, payload)


@pytest.mark.parametrize(
    ("field", "value"),
    [("time_s", -1.0), ("telemetry_interval_s", -0.5), ("keepalive_s", 0), ("keepalive_s", -3)],
)
def test_negative_or_zero_is_rejected_where_forbidden(field: str, value: float) -> None:
    reason = reason_of(AgentStatus, status_dict(**{field: value}))
    assert f"{field}: " in reason
    assert "greater than" in reason


def test_probability_over_one_is_rejected() -> None:
    body = result_dict(text=None, choice_probs=[1.5, 0.0], choice_logprobs=[0.0, -9.0])
    reason = reason_of(JobResult, body)
    assert "choice_probs.0: " in reason
    assert "less than or equal to 1" in reason


@pytest.mark.parametrize("version", [2, 0, "1"])
def test_wrong_schema_version(version: object) -> None:
    reason = reason_of(AgentStatus, status_dict(schema_version=version))
    assert reason.startswith("does not match AgentStatus schema: schema_version: ")
    assert "Input should be 1" in reason


def test_successful_result_without_text_or_choice_probs() -> None:
    reason = reason_of(JobResult, result_dict(text=None))
    assert "a successful result carries text or choice_probs" in reason


def test_failed_result_without_error() -> None:
    reason = reason_of(JobResult, result_dict(ok=False, text=None))
    assert "a failed result carries an error" in reason


def test_choice_probs_without_logprobs() -> None:
    reason = reason_of(JobResult, result_dict(text=None, choice_probs=[0.5, 0.5]))
    assert "choice_probs and choice_logprobs come together" in reason


def test_failed_result_with_error_is_valid() -> None:
    result = decode(JobResult, json.dumps(result_dict(ok=False, text=None, error="oom")).encode())
    assert not result.ok
    assert result.error == "oom"


@pytest.mark.parametrize("reply_to", ["moe2/lab/replies/+/r-1", "moe2/lab/#", "", "a\0b"])
def test_prompt_reply_to_must_be_publishable(reply_to: str) -> None:
    reason = reason_of(Prompt, {"prompt": "hi", "reply_to": reply_to})
    assert "reply_to: " in reason
    assert "reply_to must be a topic name without wildcards" in reason


@pytest.mark.parametrize("message_type", [Prompt, Job])
@pytest.mark.parametrize("choices", [["Mars", ""], ["Mars", "   "]])
def test_empty_choice_is_rejected(message_type: type[Message], choices: list[str]) -> None:
    body: dict[str, Any] = {"prompt": "Which planet?", "choices": choices}
    if message_type is Job:
        body.update(request_id="r-1", expert_id="smol", timeout_s=10.0, issued_s=T0)
    reason = reason_of(message_type, body)
    assert "choices must be non-empty strings" in reason


def test_single_choice_is_rejected() -> None:
    reason = reason_of(Prompt, {"prompt": "hi", "choices": ["only"]})
    assert "choices: " in reason


def test_empty_prompt_is_rejected() -> None:
    assert "prompt: " in reason_of(Prompt, {"prompt": ""})


def test_request_id_must_be_a_topic_level() -> None:
    reason = reason_of(Prompt, {"prompt": "hi", "request_id": "a/b"})
    assert "request_id: " in reason


def test_at_most_five_errors_are_listed() -> None:
    reason = reason_of(Telemetry, {"agent_id": "a"})
    assert reason.endswith("(+3 more)")
    assert reason.count("Field required") == 5


def test_messages_are_frozen() -> None:
    status = decode(AgentStatus, json.dumps(status_dict()).encode())
    with pytest.raises(ValueError, match="frozen"):
        status.state = "offline"  # type: ignore[misc]


# -- bare text prompts ----------------------------------------------------------------------


def test_decode_text_strips() -> None:
    assert decode_text(b"  What is 2+2?\n") == "What is 2+2?"
    assert decode_text("Grüß dich".encode()) == "Grüß dich"


def test_decode_text_invalid_utf8() -> None:
    with pytest.raises(PayloadError) as info:
        decode_text(b"ok \xff\xfe")
    assert info.value.reason == "not valid UTF-8 at byte 3"


@pytest.mark.parametrize("payload", [b"", b"   ", b"\n\t "])
def test_decode_text_empty(payload: bytes) -> None:
    with pytest.raises(PayloadError) as info:
        decode_text(payload)
    assert info.value.reason == "empty prompt"


def test_decode_text_oversize() -> None:
    payload = b"x" * (MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(PayloadError) as info:
        decode_text(payload)
    assert info.value.reason == (
        f"payload of {MAX_PAYLOAD_BYTES + 1} bytes is over the {MAX_PAYLOAD_BYTES}-byte limit"
    )
    assert decode_text(b"x" * MAX_PAYLOAD_BYTES) == "x" * MAX_PAYLOAD_BYTES
