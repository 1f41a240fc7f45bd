"""A gated controller is online before its prompt encoder has loaded (issue 24): it plans under
the budgets at once, answers prompts with equal weights over the planned experts (a prompt's own
budgets honoured) and says so (a ``gate`` event, ``gate`` in its status), then uses the gate's
weights once the encoder is ready. The encoder is the real one, held back by the test until it
says so; broker and controller are real, the agents scripted (tests/controller/gated_profile.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.gate import encoder_loader
from controller.gate.encoder import EncoderUnavailable, PromptEncoder
from controller.gate.encoder_loader import EncoderLoader, equal_weights_noted
from controller.service import Controller
from controller.settings import ControllerSettings
from messages import topics
from messages.budgets import Budgets
from messages.controller import ControllerEvent, ControllerStatus
from messages.expert_key import expert_key
from messages.prompts import Prompt
from moe2.local.broker import LocalBroker
from tests.controller.gated_profile import estimated
from tests.controller.test_controller_service import ScriptedAgent, _ask
from tests.helpers import Recorder, clear_fleet

CAPITAL = "The capital of Italy is"
CITIES = ["Rome", "Oslo", "Lima", "Bern"]


def held_back(release: threading.Event) -> Callable[[], PromptEncoder]:
    """The real encoder, made once the test releases it."""

    def make() -> PromptEncoder:
        if not release.wait(600):
            raise TimeoutError("the test never released the encoder")
        return PromptEncoder()

    return make


# -- the loader on its own -----------------------------------------------------------------


def test_a_loader_started_in_the_background_says_when_prompts_are_weighted_equally() -> None:
    release = threading.Event()
    loader = EncoderLoader(held_back(release))
    heard: list[str] = []
    loader.report_to(heard.append)
    try:
        loader.start()
        assert not loader.ready and loader.in_background
        assert equal_weights_noted(loader) and equal_weights_noted(loader)
        assert loader.weighed_equally == 2
        assert len(heard) == 1 and "still loading" in heard[0] and "equal weights" in heard[0]
    finally:
        release.set()
    assert loader.wait(600) and loader.ready and loader.failure is None
    assert not equal_weights_noted(loader)
    assert "ready" in heard[-1] and "2 prompt(s) were weighted equally" in heard[-1]
    vectors = loader.encode(["The capital of Italy is", "2 + 2 ="])
    assert vectors.shape == (2, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0)


def test_a_loader_nobody_started_loads_at_its_first_encode() -> None:
    """``moe2 select --profile``: the encoder is loaded only when a prompt must be embedded, and
    a gate with such an encoder embeds when asked (never weighs equally)."""
    made: list[int] = []

    def make() -> PromptEncoder:
        made.append(1)
        return PromptEncoder()

    loader = EncoderLoader(make)
    assert not equal_weights_noted(loader) and made == []
    assert loader.encode(["hello"]).shape == (1, 384)
    assert made == [1] and loader.ready and not loader.in_background


def test_an_encoder_that_fails_to_load_is_said_and_prompts_stay_weighted_equally() -> None:
    def broken() -> PromptEncoder:
        raise OSError("model file truncated")

    loader = EncoderLoader(broken)
    heard: list[str] = []
    loader.report_to(heard.append)
    loader.start()
    assert loader.wait(60) and not loader.ready
    assert "model file truncated" in (loader.failure or "")
    assert "failed to load" in heard[-1] and "model file truncated" in heard[-1]
    assert equal_weights_noted(loader)
    with pytest.raises(EncoderUnavailable, match="model file truncated"):
        loader.encode(["hello"])


# -- a controller whose encoder is still loading -----------------------------------------


@pytest.fixture
def held_encoder(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """The process's shared encoder replaced by one the test releases."""
    release = threading.Event()
    monkeypatch.setattr(encoder_loader, "_SHARED", EncoderLoader(held_back(release)))
    yield release
    release.set()


@pytest.fixture
def loading_fleet(
    held_encoder: threading.Event,
    mosquitto: LocalBroker,
    gated: tuple[Path, Path],
    tmp_path: Path,
) -> Iterator[tuple[Controller, Recorder, threading.Event]]:
    fleet_name = "sel"  # the profile's fleet; retained topics are cleared after the test
    settings = ControllerSettings.load(
        None,
        broker=mosquitto.url,
        fleet=fleet_name,
        profile=gated[0],
        gate=gated[1],
        energy_budget_j=10.0,  # both experts fit
        status_interval_s=0.3,
        early_answers=False,  # every planned expert is awaited: the weights show
        state_dir=tmp_path / "state",
    )
    rec = Recorder(mosquitto.endpoint, fleet_name)
    rec.watch(topics.CONTROLLER_PLAN).watch(topics.CONTROLLER_EVENTS).watch(topics.ANSWERS)
    rec.watch(topics.CONTROLLER_STATUS)  # every controller's
    agents = {
        "a1": ScriptedAgent(mosquitto, fleet_name, "a1", "e1"),
        "a2": ScriptedAgent(mosquitto, fleet_name, "a2", "e2"),
    }
    agents["a1"].behaviour = lambda job: estimated(job, "a1", 1.0, [0.7, 0.1, 0.1, 0.1])
    agents["a2"].behaviour = lambda job: estimated(job, "a2", 5.0, [0.1, 0.7, 0.1, 0.1])
    with rec:
        controller = Controller(settings)
        controller.start()
        for agent in agents.values():
            agent.start()
        yield controller, rec, held_encoder
        for agent in agents.values():
            agent.bus.close()
        controller.stop()
    clear_fleet(mosquitto.endpoint, fleet_name, controller.controller_id, list(agents))


def _weights(rec: Recorder, request_id: str) -> dict[str, float]:
    answer = rec.wait_for_answer(request_id, timeout_s=60)
    assert answer.status == "ok", answer
    return {expert_key(e.agent_id, e.expert_id): e.weight for e in answer.experts}


def test_a_gated_controller_answers_before_its_encoder_has_loaded_and_says_so(  # type: ignore[no-untyped-def]
    loading_fleet, mosquitto: LocalBroker
) -> None:
    controller, rec, release = loading_fleet
    name = controller.settings.fleet
    # online and planning under the budgets while the encoder is held back
    rec.wait_for_plan(lambda p: p.assignments == {"a1": ["e1"], "a2": ["e2"]}, timeout_s=60)
    rec.wait_for_a(ControllerStatus, lambda s: s.role == "active" and s.gate == "loading", 60)
    _ask(mosquitto, name, Prompt(prompt=CAPITAL, request_id="early", choices=CITIES))
    assert _weights(rec, "early") == {"e1@a1": 0.5, "e2@a2": 0.5}
    rec.wait_for_event(ControllerEvent, "still loading", kind="gate", timeout_s=30)
    # a prompt's own budget still holds: only the 1 J expert fits 2 J
    tight = Prompt(prompt=CAPITAL, request_id="tight", choices=CITIES, budgets=Budgets(energy_j=2))
    _ask(mosquitto, name, tight)
    assert _weights(rec, "tight") == {"e1@a1": 1.0}
    assert not controller.selection.gated.gate.encoder.ready  # type: ignore[union-attr]

    release.set()
    rec.wait_for_event(ControllerEvent, "ready", kind="gate", timeout_s=600)
    rec.wait_for_a(ControllerStatus, lambda s: s.gate == "ready", 60)
    _ask(mosquitto, name, Prompt(prompt=CAPITAL, request_id="gated", choices=CITIES))
    weights = _weights(rec, "gated")
    logits = controller.selection.gated.gate.logits([CAPITAL])[0]  # type: ignore[union-attr]
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    expected = dict(zip(controller.selection.expert_keys, softmax.tolist(), strict=True))  # type: ignore[union-attr]
    assert weights == pytest.approx(expected)
    assert weights["e1@a1"] > weights["e2@a2"]  # the gate trusts e1 on geography
