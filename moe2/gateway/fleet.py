"""The gateway's side of MQTT: the fleet client it asks through, and the same on the event loop.

:class:`FleetClient` is an ``Asker`` (``moe2.client.ask``: a prompt on ``prompts`` with a reply
route of its own, re-sent until answered) that also follows the tokens streamed on its reply
routes and keeps a view of the fleet from the retained plan and agent status topics: which
experts are active, on which online agents.

:class:`Fleet` is what the routes use: it sends and waits on worker threads (the Asker blocks),
says whether the fleet can answer at all, and lets go of a prompt whose HTTP client left."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from messages import topics
from messages.answers import Answer
from messages.bus import Inbound
from messages.controller import FleetPlan
from messages.prompts import Prompt
from messages.status import AgentStatus
from messages.stream import StreamChunk
from moe2.client.ask import Asker, AskError
from moe2.gateway.errors import GatewayError


@dataclass
class FleetClient(Asker):
    """An Asker that also follows streams on its reply routes and the fleet's active experts."""

    _listeners: dict[str, Callable[[StreamChunk], None]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.plan: FleetPlan | None = None
        self.agents_online: dict[str, bool] = {}
        self.bus.subscribe(topics.REPLIES_STREAM, self._on_chunk, client_id=self.client_id)
        self.bus.subscribe(topics.CONTROLLER_PLAN, self._on_plan)
        self.bus.subscribe(topics.AGENT_STATUS, self._on_status)

    def _on_chunk(self, inbound: Inbound[StreamChunk]) -> None:
        listener = self._listeners.get(inbound.message.request_id)
        if listener is not None:
            listener(inbound.message)

    def _on_plan(self, inbound: Inbound[FleetPlan]) -> None:
        self.plan = inbound.message

    def _on_status(self, inbound: Inbound[AgentStatus]) -> None:
        self.agents_online[inbound.message.agent_id] = inbound.message.state == "online"

    def listen(self, request_id: str, listener: Callable[[StreamChunk], None] | None) -> None:
        if listener is None:
            self._listeners.pop(request_id, None)
        else:
            self._listeners[request_id] = listener

    def active_experts(self) -> dict[str, list[str]]:
        """expert id -> online agents whose plan holds it."""
        experts: dict[str, list[str]] = {}
        if self.plan is None:
            return experts
        for agent, held in self.plan.assignments.items():
            if self.agents_online.get(agent, False):
                for expert in held:
                    experts.setdefault(expert, []).append(agent)
        return experts

    def controller_online(self) -> bool:
        return any(s.state == "online" for s in self._controllers.values())


class Fleet:
    """The fleet client on the event loop: blocking calls run on worker threads."""

    def __init__(self, client: FleetClient, max_inflight: int, cancel_wait_s: float) -> None:
        self.client = client
        self.cancel_wait_s = cancel_wait_s
        self.executor = ThreadPoolExecutor(
            max_workers=max(4, max_inflight), thread_name_prefix="ask"
        )
        self.letting_go: set[asyncio.Task[None]] = set()

    def ready(self) -> None:
        """A 503 unless the gateway reaches the broker and a controller serves the fleet."""
        if not self.client.bus.connected:
            raise GatewayError(
                503, "the gateway is not connected to the broker", "service_unavailable"
            )
        if not self.client.controller_online():
            raise GatewayError(
                503, f"no controller serves fleet {self.client.fleet!r}", "service_unavailable"
            )

    async def send(self, prompt: Prompt, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        update = {"request_id": request_id}
        await loop.run_in_executor(
            self.executor, self.client.send, prompt.model_copy(update=update)
        )

    async def answer(self, prompt: Prompt, request_id: str) -> Answer:
        """Wait for the answer on a worker thread (the Asker re-sends meanwhile)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self.executor, self.client.wait, request_id, prompt.timeout_s + 5.0
            )
        except AskError as exc:
            raise GatewayError(504, str(exc), kind="timeout", code="deadline") from None

    def listen(self, request_id: str, listener: Callable[[StreamChunk], None] | None) -> None:
        """Hand the tokens streamed for ``request_id`` to ``listener`` (None: stop)."""
        self.client.listen(request_id, listener)

    def let_go(
        self, request_id: str, waiter: asyncio.Future[Any], then: Callable[[], None]
    ) -> None:
        """The client went away: the prompt is cancelled at the controller (and no longer
        re-sent); ``then`` runs once the fleet has let go of it (its answer, the cancel's,
        arrives) or ``cancel_wait_s`` passed."""
        self.client.cancel(request_id, "the HTTP client went away")

        async def hold() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), self.cancel_wait_s)
            except (TimeoutError, GatewayError):
                pass
            finally:
                self.client.forget(request_id)
                then()

        task = asyncio.get_running_loop().create_task(hold())
        self.letting_go.add(task)
        task.add_done_callback(self.letting_go.discard)
