"""Asking the fleet a question over MQTT and waiting for the answer, as any client would."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from messages import topics
from messages.answers import Answer
from messages.base import now_s
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.controller import ControllerStatus
from messages.prompt_cancel import PromptCancel
from messages.prompts import Prompt
from moe2.client.pubacks import PubAcks

DURABLE_SESSION_S = 600  # how long the broker keeps a durable asker's session while it is away


class AskError(RuntimeError):
    """No controller, or no answer in time."""


def new_request_id() -> str:
    """A fresh random request id (an id names one prompt: use a new one per prompt)."""
    return uuid.uuid4().hex[:16]


@dataclass
class Asker:
    """A connected client that publishes prompts and waits for their answers.

    Over MQTT 5 the prompt carries a response topic and correlation data; over 3.1.1 its
    ``reply_to`` field names the same per-client reply topic.

    A prompt is published again after every reconnect and every ``resend_s`` while its answer
    is awaited: the controller takes the same prompt (same request id, content and reply topic)
    once, and answers a repeat of an answered one with the same answer, so a prompt or an
    answer lost with a restarting broker is not lost for the asker. :meth:`cancel` stops
    that and asks the controller to stop the prompt's jobs; :meth:`forget` stops waiting.

    For a caller that sends many prompts and counts what comes back (the fault drills):
    ``resend_s=None`` publishes each prompt once, never again, not even after a reconnect (as
    ``mosquitto_pub`` does); ``keep_resending`` re-sends every unanswered prompt every
    ``resend_s`` from a thread of its own, with no :meth:`wait` needed; ``durable`` listens
    with a persistent session, so the broker keeps the reply subscription and queues the
    answers published while the asker is away (docs/reliability.md); ``on_every_answer``
    hears every answer on the reply route, repeats included; :meth:`acknowledged` says whether
    the broker acknowledged (PUBACK) one of a prompt's publishes.
    """

    endpoint: BrokerEndpoint
    fleet: str
    client_id: str = ""
    resend_s: float | None = 5.0
    durable: bool = False
    keep_resending: bool = False
    on_every_answer: Callable[[Answer], None] | None = None
    _sent: dict[str, tuple[str, bytes, str | None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        # With credentials the reply topic's client level is the username: the broker's ACL
        # lets each client read replies under its own username only.
        user = self.endpoint.username
        self.client_id = user or self.client_id or f"ask-{uuid.uuid4().hex[:10]}"
        # The MQTT client id stays unique, so that two asks by one user do not evict each other;
        # the secure broker takes client ids that start with moe2- only.
        mqtt_id = f"moe2-{user}-{uuid.uuid4().hex[:8]}" if user else f"moe2-{self.client_id}"
        # With a login, prompts go to the login's own prompt topic: the controller then knows
        # who asks, and answers under replies/{login}/ only.
        self.prompt_topic = (
            topics.CLIENT_PROMPTS.name(self.fleet, client_id=user)
            if user
            else topics.PROMPTS.name(self.fleet)
        )
        self.cancel_topic = (
            topics.CLIENT_PROMPTS_CANCEL.name(self.fleet, client_id=user)
            if user
            else topics.PROMPTS_CANCEL.name(self.fleet)
        )
        self._answers: dict[str, Answer] = {}
        self._awaited: set[str] = set()  # answers kept when they come; others are dropped
        self._arrived = threading.Condition()
        self._controllers: dict[str, ControllerStatus] = {}
        self._controller_seen = threading.Event()
        self._closed = threading.Event()
        self.pubacks = PubAcks()
        self.bus = Bus(
            self.endpoint,
            self.fleet,
            client_id=mqtt_id,
            on_connected=[self._resend_all] if self.resend_s is not None else [],
            persistent=self.durable,
            session_expiry_s=DURABLE_SESSION_S,
        )
        self.bus.client.on_publish = self.pubacks.on_puback
        self.bus.subscribe(topics.REPLIES, self._on_answer, client_id=self.client_id)
        self.bus.subscribe(topics.CONTROLLER_STATUS, self._on_controller)

    def __enter__(self) -> Asker:
        self.bus.connect()
        if self.keep_resending and self.resend_s is not None:
            threading.Thread(target=self._resend_loop, name="asker-resend", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed.set()
        self.bus.close()

    def _on_answer(self, inbound: Inbound[Answer]) -> None:
        if self.on_every_answer is not None:
            self.on_every_answer(inbound.message)
        with self._arrived:
            if inbound.message.request_id in self._awaited:
                self._answers[inbound.message.request_id] = inbound.message
                self._arrived.notify_all()

    def _on_controller(self, inbound: Inbound[ControllerStatus]) -> None:
        self._controllers[inbound.message.controller_id] = inbound.message
        self._controller_seen.set()

    def require_controller(self, wait_s: float = 3.0) -> None:
        """Fail fast, with a clear reason, when no controller serves this fleet."""
        self._controller_seen.wait(wait_s)
        time.sleep(0.1)  # the other controllers' retained statuses come right after
        if not self._controllers:
            raise AskError(
                f"no controller has ever served fleet {self.fleet!r} on {self.endpoint.url} "
                "(start one with `moe2 controller run`)"
            )
        if not any(s.state == "online" for s in self._controllers.values()):
            names = ", ".join(sorted(self._controllers))
            raise AskError(f"every controller of fleet {self.fleet!r} is offline ({names})")

    def send(self, prompt: Prompt, wait_s: float = 5.0) -> str:
        """Publish a prompt under a new random request id (unless it names one: an id names
        one prompt, and the controller refuses another prompt under an id it knows), waiting
        up to ``wait_s`` for the broker to take it (0: not at all: a prompt published while
        the broker is away is queued, and goes out when the asker is back); returns the
        request id."""
        request_id = prompt.request_id or new_request_id()
        reply = topics.REPLIES.name(self.fleet, client_id=self.client_id, request_id=request_id)
        fields = {"request_id": request_id}
        if not self.bus.mqtt5:
            fields["reply_to"] = reply
        prompt = prompt.model_copy(update=fields)
        with self._arrived:
            self._awaited.add(request_id)
            self._answers.pop(request_id, None)
        self._sent[request_id] = (
            prompt.model_dump_json(),
            request_id.encode(),
            reply if self.bus.mqtt5 else None,
        )
        sent = self._publish(request_id)
        if sent is not None and wait_s > 0:
            sent.wait_for_publish(wait_s)
        return request_id

    def acknowledged(self, request_id: str) -> bool:
        """Whether the broker acknowledged (PUBACK) one of the prompt's publishes: only then
        did it take the prompt. Known until the prompt's :meth:`wait` ends or it is forgotten."""
        return self.pubacks.acknowledged(request_id)

    def cancel(
        self, request_id: str, reason: str = "the asker went away", wait_s: float = 0.0
    ) -> None:
        """Stop re-sending a prompt and ask the controller to stop its jobs (waiting up to
        ``wait_s`` for the broker to take the cancel); its answer (the controller's ``failed``,
        "cancelled by the asker", or one decided before) still comes to :meth:`wait`, which a
        caller may use to learn that the fleet has let go of it."""
        with self._arrived:  # a re-send under way in wait() goes out before the cancel
            self._sent.pop(request_id, None)
        message = PromptCancel(request_id=request_id, reason=reason[:200], time_s=now_s())
        if self.bus.connected:
            sent = self.bus.publish_to(self.cancel_topic, message, qos=topics.PROMPTS_CANCEL.qos)
            self.pubacks.note(sent.mid, None)
            if wait_s > 0:
                sent.wait_for_publish(wait_s)

    def forget(self, request_id: str) -> None:
        """Wait no longer for an answer: a :meth:`wait` on it raises AskError at once, and the
        answer is dropped when it comes."""
        self._sent.pop(request_id, None)
        self.pubacks.forget(request_id)
        with self._arrived:
            self._awaited.discard(request_id)
            self._answers.pop(request_id, None)
            self._arrived.notify_all()

    def _publish(self, request_id: str) -> Any:
        """Publish a prompt sent and not let go of (None if it was)."""
        sent = self._sent.get(request_id)
        if sent is None:
            return None
        payload, correlation, response_topic = sent
        info = self.bus.publish_to(
            self.prompt_topic,
            payload,
            qos=topics.PROMPTS.qos,
            response_topic=response_topic,
            correlation_data=correlation if response_topic else None,
        )
        self.pubacks.note(info.mid, request_id)
        return info

    def _resend_all(self, session_present: bool) -> None:
        """Publish again every prompt sent and not yet answered."""
        for request_id in list(self._sent):
            if request_id not in self._answers:
                self._publish(request_id)

    def _resend_loop(self) -> None:
        assert self.resend_s is not None
        while not self._closed.wait(self.resend_s):
            if self.bus.connected:
                self._resend_all(False)

    def wait(self, request_id: str, timeout_s: float) -> Answer:
        deadline = time.monotonic() + timeout_s

        def over() -> bool:
            return request_id in self._answers or request_id not in self._awaited

        with self._arrived:
            try:
                while not over():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise AskError(f"no answer to request {request_id} within {timeout_s:g} s")
                    if self.resend_s is None:  # one-shot: published once
                        self._arrived.wait_for(over, left)
                        continue
                    arrived = self._arrived.wait_for(over, min(left, self.resend_s))
                    if not arrived and request_id in self._sent and self.bus.connected:
                        self._publish(request_id)
                if request_id not in self._answers:
                    raise AskError(f"request {request_id} is no longer awaited")
                return self._answers.pop(request_id)
            finally:
                self._sent.pop(request_id, None)
                self._awaited.discard(request_id)
                self.pubacks.forget(request_id)

    def ask(self, prompt: Prompt, grace_s: float = 5.0) -> Answer:
        """Send and wait; interrupted (Ctrl-C), cancel the prompt before going."""
        request_id = self.send(prompt)
        try:
            return self.wait(request_id, prompt.timeout_s + grace_s)
        except KeyboardInterrupt:
            self.cancel(request_id, "the asker was interrupted", wait_s=2.0)
            raise
