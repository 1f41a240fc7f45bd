"""The agent keeps results by what a job is: the same job delivered again (a redelivery, a
controller re-sending it after a reconnect or a takeover) gets its kept result without a second
run; another prompt under a request id used before is a new job, run anew (issue 22: a reused
`q1` got the old prompt's probabilities). A real agent serving SmolLM2 on a real Mosquitto."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agent.service import Agent
from agent.settings import AgentSettings
from messages import topics
from messages.base import now_s
from messages.bus import Bus
from messages.jobs import Job
from messages.results import JobResult
from moe2.local.broker import LocalBroker
from tests.conftest import SMOLLM2
from tests.helpers import Recorder

FLEET = "job-identity"


@pytest.fixture(scope="module")
def agent(mosquitto: LocalBroker) -> Iterator[Agent]:
    settings = AgentSettings.load(
        None, broker=mosquitto.url, fleet=FLEET, agent_id="ji", experts=[SMOLLM2]
    )
    service = Agent(settings)
    service.start(wait_s=10)
    yield service
    service.stop()


@pytest.fixture
def recorder(mosquitto: LocalBroker) -> Iterator[Recorder]:
    with Recorder(mosquitto.endpoint, FLEET).watch(topics.AGENT_RESULTS, agent_id="ji") as rec:
        yield rec


@pytest.fixture
def sender(mosquitto: LocalBroker) -> Iterator[Bus]:
    bus = Bus(mosquitto.endpoint, FLEET, client_id=f"sender-{time.monotonic_ns()}")
    bus.connect()
    yield bus
    bus.close()


def _job(request_id: str, prompt: str, choices: list[str]) -> Job:
    return Job(
        request_id=request_id,
        expert_id="smollm2",
        prompt=prompt,
        choices=choices,
        timeout_s=60.0,
        issued_s=now_s(),
    )


def _results(recorder: Recorder, request_id: str, count: int) -> list[JobResult]:
    """The first ``count`` results for ``request_id``, waiting for them."""

    def mine() -> list[JobResult]:
        return [r for r in recorder.messages(JobResult) if r.request_id == request_id]

    recorder.wait_for(lambda m: len(mine()) >= count, 90)
    return mine()[:count]


def test_a_job_sent_again_gets_its_kept_result_without_a_second_run(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    job = _job("again", "The capital of Japan is", ["Lima", "Tokyo"])
    sender.publish(topics.AGENT_JOBS, job, agent_id="ji")
    [first] = _results(recorder, "again", 1)
    done = agent.jobs_done
    resent = job.model_copy(update={"issued_s": now_s(), "timeout_s": 30.0})  # a re-send
    sender.publish(topics.AGENT_JOBS, resent, agent_id="ji")
    second = _results(recorder, "again", 2)[1]
    assert second == first and agent.jobs_done == done  # the kept result, not run again
    assert first.job_digest == job.digest() == resent.digest()


def test_another_prompt_under_a_used_request_id_is_run_anew(
    agent: Agent, recorder: Recorder, sender: Bus
) -> None:
    japan = _job("q1", "The capital of Japan is", ["Lima", "Tokyo"])
    sender.publish(topics.AGENT_JOBS, japan, agent_id="ji")
    [tokyo] = _results(recorder, "q1", 1)
    assert tokyo.ok and tokyo.choice_probs is not None and tokyo.choice_probs[1] > 0.5
    france = _job("q1", "The capital of France is", ["Paris", "Rome"])
    sender.publish(topics.AGENT_JOBS, france, agent_id="ji")
    paris = _results(recorder, "q1", 2)[1]
    assert paris.ok and paris.choice_probs is not None
    assert paris.choice_probs[0] > 0.5  # Paris, not Japan's probabilities read as "Rome"
    assert paris.job_digest == france.digest() != tokyo.job_digest
