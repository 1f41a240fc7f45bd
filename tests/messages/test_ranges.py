"""Every number a message carries is finite and bounded: no infinities, NaN or 10**400s.

A payload that parses as JSON can still carry numbers no sensor or counter produces; bounded
values mean sums over a fleet's results cannot overflow, and a bignum never reaches arithmetic.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import messages
from messages import (
    AgentCapabilities,
    Answer,
    Budgets,
    EnergyReading,
    FleetPlan,
    JobResult,
    Message,
    PayloadError,
    Telemetry,
    decode,
)
from messages.base import (
    MAX_CPUS,
    MAX_ENERGY_J,
    MAX_PLAN_EPOCH,
    MAX_SECONDS,
    MAX_TOTAL_ENERGY_J,
)

T0 = 1_760_000_000.25


def exported_models() -> list[type[Message]]:
    return sorted(
        (
            obj
            for obj in vars(messages).values()
            if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
        ),
        key=lambda m: m.__name__,
    )


def numeric_leaves(schema: dict[str, Any], defs: dict[str, Any], path: str) -> list[tuple]:
    """(path, schema) of every number or integer the schema admits, through refs and unions."""
    if "$ref" in schema:
        return numeric_leaves(defs[schema["$ref"].split("/")[-1]], defs, path)
    found: list[tuple] = []
    if schema.get("type") in ("number", "integer"):
        found.append((path, schema))
    for union in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(union, []):
            found += numeric_leaves(option, defs, path)
    if isinstance(schema.get("items"), dict):
        found += numeric_leaves(schema["items"], defs, f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found += numeric_leaves(schema["additionalProperties"], defs, f"{path}{{}}")
    for name, prop in schema.get("properties", {}).items():
        found += numeric_leaves(prop, defs, f"{path}.{name}")
    return found


@pytest.mark.parametrize("model", exported_models(), ids=lambda m: m.__name__)
def test_every_number_in_every_message_is_bounded(model: type[Message]) -> None:
    schema = model.model_json_schema()
    leaves = [
        (path, leaf)
        for path, leaf in numeric_leaves(schema, schema.get("$defs", {}), model.__name__)
        if not path.endswith(".schema_version")
    ]
    unbounded = [
        path
        for path, leaf in leaves
        if not ({"minimum", "exclusiveMinimum"} & leaf.keys())
        or not ({"maximum", "exclusiveMaximum"} & leaf.keys())
    ]
    assert unbounded == []


def test_the_schema_walk_finds_numbers() -> None:
    # The test above would pass vacuously if the walk found nothing.
    schema = Telemetry.model_json_schema()
    paths = {p for p, _ in numeric_leaves(schema, schema.get("$defs", {}), "Telemetry")}
    assert {"Telemetry.power_w", "Telemetry.jobs_done", "Telemetry.plan_epoch"} <= paths


def capabilities(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": "orin-1",
        "hostname": "orin-1.local",
        "platform": "Linux-aarch64",
        "python": "3.10.12",
        "cpu_count": 6,
        "memory_total_bytes": 8 * 1024**3,
        "power_sensor": "ina3221",
        "backends": ["llama.cpp"],
        "experts": [],
        "job_queue_capacity": 32,
    }
    body.update(changes)
    return body


def reason(model: type[Message], payload: bytes) -> str:
    with pytest.raises(PayloadError) as info:
        decode(model, payload)
    return info.value.reason


def test_a_huge_integer_literal_is_refused() -> None:
    payload = json.dumps(capabilities()).replace('"cpu_count": 6', '"cpu_count": 1' + "0" * 400)
    assert "1" + "0" * 400 in payload
    assert "cpu_count: " in reason(AgentCapabilities, payload.encode())


def test_cpu_count_bounds() -> None:
    assert decode(AgentCapabilities, json.dumps(capabilities(cpu_count=MAX_CPUS)).encode())
    body = capabilities(cpu_count=MAX_CPUS + 1)
    assert "less than or equal to 1000000" in reason(AgentCapabilities, json.dumps(body).encode())


@pytest.mark.parametrize("field", ["memory_total_bytes", "job_queue_capacity"])
def test_other_capability_counts_are_bounded(field: str) -> None:
    body = capabilities(**{field: 10**30})
    assert f"{field}: " in reason(AgentCapabilities, json.dumps(body).encode())


def energy_payload(value: str) -> bytes:
    return f'{{"energy_j": {value}, "source": "nvml", "estimated": false}}'.encode()


def test_energy_bounds() -> None:
    assert decode(EnergyReading, energy_payload(repr(MAX_ENERGY_J))).energy_j == MAX_ENERGY_J
    # The 1.7e308: finite, but two of them overflow a sum; over the bound.
    assert "less than or equal to" in reason(EnergyReading, energy_payload("1.7e308"))
    assert "finite number" in reason(EnergyReading, energy_payload("NaN"))
    assert "finite number" in reason(EnergyReading, energy_payload("Infinity"))
    assert "energy_j: " in reason(EnergyReading, energy_payload("1e400"))  # parses as inf


def test_bounded_energies_cannot_overflow_when_summed() -> None:
    # The answer's bound leaves room for a thousand results at the largest reading.
    assert MAX_TOTAL_ENERGY_J >= 1000 * MAX_ENERGY_J
    assert math.isfinite(math.fsum([MAX_ENERGY_J] * 10**6))
    # An answer carries the sum of two largest readings.
    answer = Answer(
        request_id="r-1",
        status="ok",
        answer="x",
        experts=[],
        latency_s=1.0,
        energy_j=2 * MAX_ENERGY_J,
    )
    assert answer.energy_j == 2e12
    with pytest.raises(ValueError, match="less than or equal to"):
        Answer(request_id="r-1", status="ok", answer="x", experts=[], latency_s=1.0, energy_j=1e300)


def result_payload(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "request_id": "r-1",
        "expert_id": "smol",
        "agent_id": "orin-1",
        "ok": True,
        "text": "Jupiter",
        "latency": {"queue_s": 0.0, "load_s": 0.0, "total_s": 1.0},
    }
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"latency": {"queue_s": 0.0, "load_s": 0.0, "total_s": MAX_SECONDS * 2}}, "total_s"),
        ({"latency": {"queue_s": float("nan"), "load_s": 0.0, "total_s": 1.0}}, "queue_s"),
        ({"completion_tokens": 10**12}, "completion_tokens"),
        ({"prompt_tokens": 10**400}, "prompt_tokens"),
        (
            {
                "text": None,
                "choice_probs": [0.5, 0.5],
                "choice_logprobs": [float("-inf"), -0.7],
            },
            "choice_logprobs.0",
        ),
    ],
)
def test_result_numbers_are_bounded(changes: dict[str, Any], where: str) -> None:
    assert f"{where}: " in reason(JobResult, result_payload(**changes))


def telemetry_payload(**changes: Any) -> bytes:
    body: dict[str, Any] = {
        "agent_id": "orin-1",
        "time_s": T0,
        "memory_used_bytes": 1,
        "process_rss_bytes": 1,
        "queue_depth": 0,
        "busy": False,
        "loaded_experts": [],
        "jobs_done": 0,
        "jobs_failed": 0,
    }
    body.update(changes)
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("plan_epoch", 10**30),
        ("jobs_done", 10**400),
        ("power_w", 1e300),
        ("temperature_c", float("nan")),
        ("temperature_c", -300.0),
        ("time_s", 1e300),
        ("last_latency_s", float("inf")),
    ],
)
def test_telemetry_numbers_are_bounded(field: str, value: float) -> None:
    assert f"{field}: " in reason(Telemetry, telemetry_payload(**{field: value}))


def test_plan_epochs_are_bounded() -> None:
    plan = {"epoch": MAX_PLAN_EPOCH, "time_s": T0, "assignments": {}}
    assert decode(FleetPlan, json.dumps(plan).encode()).epoch == MAX_PLAN_EPOCH
    plan["epoch"] = 10**30
    assert "epoch: " in reason(FleetPlan, json.dumps(plan).encode())


def test_budgets_are_bounded() -> None:
    assert "delay_s.math: " in reason(Budgets, b'{"delay_s": {"math": 1e300}}')
    assert "top_k: " in reason(Budgets, b'{"top_k": 1000000000}')
    assert "energy_j: " in reason(Budgets, b'{"energy_j": NaN}')
