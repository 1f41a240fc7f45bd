"""Request ids on setup-broker.sh's Mosquitto (TLS, a login per identity, the ACL): a request id
belongs to its login. Two logins may use the same id, one after the other or at once, and
each reads its own prompt's answer on its own replies, under the id it sent; one login that
used an id first cannot plant an answer for another (issue 22: c2 read "C1 was here."). A
real controller and a real agent serving SmolLM2 scoring Japan [Lima, Tokyo] and France
[Paris, Rome]. The open broker's share is tests/moe2/test_request_ids.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from messages import topics
from messages.answers import Answer
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.prompts import Prompt
from moe2.local.drills import FRANCE, JAPAN
from tests.firmware_setup import test_secure_broker as secure
from tests.firmware_setup.test_secure_broker import FLEET, SecureBroker, moe2_env

# The secure broker's fixture (setup-broker.sh, Mosquitto started on its config) and its skip.
broker = secure.broker
pytestmark = secure.pytestmark

Case = tuple[str, list[str], str]


class Login:
    """A client login on the client port: asks on its own prompt topic, reads its replies."""

    def __init__(self, broker: SecureBroker, name: str) -> None:
        self.user, password = broker.login(f"clients:{name}")
        endpoint = BrokerEndpoint(
            "localhost",
            broker.client_port,
            tls=True,
            ca_file=broker.ca,
            username=self.user,
            password=password,
        )
        self.got: list[tuple[str, Answer]] = []
        self._cond = threading.Condition()
        self.bus = Bus(endpoint, FLEET, client_id=f"moe2-{name}-{uuid.uuid4().hex[:8]}")
        self.bus.subscribe(topics.REPLIES, self._keep, client_id=self.user)
        self.bus.connect()
        time.sleep(0.2)

    def _keep(self, inbound: Inbound[Answer]) -> None:
        with self._cond:
            self.got.append((inbound.topic, inbound.message))
            self._cond.notify_all()

    def ask(self, request_id: str, case: Case) -> None:
        text, choices, _ = case
        prompt = Prompt(prompt=text, choices=choices, request_id=request_id, timeout_s=60)
        name = topics.CLIENT_PROMPTS.name(FLEET, client_id=self.user)
        self.bus.publish_to(name, prompt, qos=1).wait_for_publish(5)

    def route(self, request_id: str) -> str:
        return topics.REPLIES.name(FLEET, client_id=self.user, request_id=request_id)

    def answers(self, request_id: str, count: int = 1, timeout_s: float = 90.0) -> list[Answer]:
        """The first ``count`` answers on this login's own route for ``request_id``."""
        route = self.route(request_id)

        def arrived() -> list[Answer]:
            return [a for t, a in self.got if t == route]

        with self._cond:
            assert self._cond.wait_for(lambda: len(arrived()) >= count, timeout_s), (
                f"not {count} on {route}; got {[t for t, _ in self.got]}"
            )
            return arrived()[:count]

    def answer(self, request_id: str, timeout_s: float = 90.0) -> Answer:
        return self.answers(request_id, 1, timeout_s)[0]

    def close(self) -> None:
        self.bus.close()


def _right(answer: Answer, request_id: str, case: Case) -> None:
    assert answer.request_id == request_id, answer  # the id this login sent, not a scoped key
    assert answer.status == "ok" and answer.answer == case[2], answer


@pytest.fixture
def fleet(broker: SecureBroker, tmp_path: Path) -> Iterator[None]:
    """A controller and agent a1 (SmolLM2) with their own logins, serving prompts."""
    config = secure.agent_config(broker, tmp_path)
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("MOE2_")}
    state = ["--state-dir", str(tmp_path / "state")]
    commands = {
        "controller": (["controller", "run", *state], moe2_env(broker, "controller", broker.port)),
        "agent": (["agent", "run", "--config", str(config)], agent_env),
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in commands}  # noqa: SIM115
    try:
        for name, (args, env) in commands.items():
            procs[name] = subprocess.Popen(
                [sys.executable, "-m", "moe2", *args],
                env=env,
                stdout=logs[name],
                stderr=subprocess.STDOUT,
            )
        _wait_serving(broker, procs, tmp_path)
        yield
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()


def _wait_serving(
    broker: SecureBroker, procs: dict[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Until a login's prompt is answered ok (the controller active, the agent planned)."""
    login = Login(broker, "c1")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            request_id = f"warm-{uuid.uuid4().hex[:8]}"
            login.ask(request_id, FRANCE)
            try:
                if login.answer(request_id, 30).status == "ok":
                    return
            except AssertionError:
                pass
            time.sleep(1)
        tails = {n: (tmp_path / f"{n}.log").read_text()[-3000:] for n in procs}
        raise AssertionError(f"the fleet never answered ok\n{tails}")
    finally:
        login.close()


def test_a_request_id_belongs_to_its_login(broker: SecureBroker, fleet: None) -> None:
    c1, c2 = Login(broker, "c1"), Login(broker, "c2")
    try:
        # c1 uses q1 first; c2 then asks its own prompt under q1: c2's answer, on c2's route.
        c1.ask("q1", JAPAN)
        _right(c1.answer("q1"), "q1", JAPAN)
        c2.ask("q1", FRANCE)
        _right(c2.answer("q1"), "q1", FRANCE)
        # Both at once under one id, each in flight beside the other: each its own answer.
        c1.ask("q2", FRANCE)
        c2.ask("q2", JAPAN)
        _right(c1.answer("q2"), "q2", FRANCE)
        _right(c2.answer("q2"), "q2", JAPAN)
        # Within one login an id names one prompt: another under it is refused, clearly.
        c1.ask("q1", FRANCE)
        japan, refused = c1.answers("q1", 2)
        _right(japan, "q1", JAPAN)
        assert refused.request_id == "q1" and refused.status == "rejected", refused
        assert "already in use by another prompt" in (refused.error or ""), refused
        # Nothing of one login's came on the other's replies.
        assert {t for t, _ in c2.got} == {c2.route("q1"), c2.route("q2")}
    finally:
        c1.close()
        c2.close()
