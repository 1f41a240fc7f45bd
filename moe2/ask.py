"""Asking the fleet a question over MQTT and waiting for the answer, as any client would."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

from messages import topics
from messages.answers import Answer
from messages.bus import BrokerEndpoint, Bus, Inbound
from messages.controller import ControllerStatus
from messages.prompts import Prompt


class AskError(RuntimeError):
    """No controller, or no answer in time."""


@dataclass
class Asker:
    """A connected client that publishes prompts and waits for their answers.

    Over MQTT 5 the prompt carries a response topic and correlation data; over 3.1.1 its
    ``reply_to`` field names the same per-client reply topic.
    """

    endpoint: BrokerEndpoint
    fleet: str
    client_id: str = ""

    def __post_init__(self) -> None:
        # With credentials the reply topic's client level is the username: the broker's ACL
        # lets each client read replies under its own username only.
        user = self.endpoint.username
        self.client_id = user or self.client_id or f"ask-{uuid.uuid4().hex[:10]}"
        # The MQTT client id stays unique, so that two asks by one user do not evict each other.
        mqtt_id = f"{user}-{uuid.uuid4().hex[:8]}" if user else self.client_id
        self._answers: dict[str, Answer] = {}
        self._arrived = threading.Condition()
        self._controller: ControllerStatus | None = None
        self._controller_seen = threading.Event()
        self.bus = Bus(self.endpoint, self.fleet, client_id=mqtt_id)
        self.bus.subscribe(topics.REPLIES, self._on_answer, client_id=self.client_id)
        self.bus.subscribe(topics.CONTROLLER_STATUS, self._on_controller)

    def __enter__(self) -> Asker:
        self.bus.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bus.close()

    def _on_answer(self, inbound: Inbound[Answer]) -> None:
        with self._arrived:
            self._answers[inbound.message.request_id] = inbound.message
            self._arrived.notify_all()

    def _on_controller(self, inbound: Inbound[ControllerStatus]) -> None:
        self._controller = inbound.message
        self._controller_seen.set()

    def require_controller(self, wait_s: float = 3.0) -> None:
        """Fail fast, with a clear reason, when no controller serves this fleet."""
        self._controller_seen.wait(wait_s)
        if self._controller is None:
            raise AskError(
                f"no controller has ever served fleet {self.fleet!r} on {self.endpoint.url} "
                "(start one with `moe2 controller run`)"
            )
        if self._controller.state != "online":
            raise AskError(f"the controller of fleet {self.fleet!r} is offline")

    def send(self, prompt: Prompt) -> str:
        """Publish a prompt; returns its request id."""
        request_id = prompt.request_id or uuid.uuid4().hex[:16]
        reply = topics.REPLIES.name(self.fleet, client_id=self.client_id, request_id=request_id)
        fields = {"request_id": request_id}
        if not self.bus.mqtt5:
            fields["reply_to"] = reply
        prompt = prompt.model_copy(update=fields)
        self.bus.publish_to(
            topics.PROMPTS.name(self.fleet),
            prompt,
            qos=topics.PROMPTS.qos,
            response_topic=reply if self.bus.mqtt5 else None,
            correlation_data=request_id.encode() if self.bus.mqtt5 else None,
        ).wait_for_publish(5)
        return request_id

    def wait(self, request_id: str, timeout_s: float) -> Answer:
        with self._arrived:
            if not self._arrived.wait_for(lambda: request_id in self._answers, timeout_s):
                raise AskError(f"no answer to request {request_id} within {timeout_s:g} s")
            return self._answers.pop(request_id)

    def ask(self, prompt: Prompt, grace_s: float = 5.0) -> Answer:
        return self.wait(self.send(prompt), prompt.timeout_s + grace_s)
