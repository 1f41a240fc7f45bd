"""One completion request, from its in-flight slot to the last byte of its response.

The answer comes back in one piece (:meth:`Exchange.whole`) or as server-sent events
(:meth:`Exchange.stream`: the leading expert's tokens as they arrive, then the ensemble's
answer). Each request is counted once however it ends (499: its client went away). A client
that leaves before its answer has its prompt let go of (``Fleet.let_go``), and its slot is
given back only once the fleet has let go of it too. The translation itself is
``moe2.gateway.translate``'s."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import Response

from messages.answers import Answer
from messages.prompts import Prompt
from messages.stream import StreamChunk
from moe2.gateway.errors import GatewayError
from moe2.gateway.fleet import Fleet
from moe2.gateway.guard import client_gone
from moe2.gateway.metrics import GatewayMetrics
from moe2.gateway.models import RequestBody
from moe2.gateway.translate import Relayed, Reply, answer_error, rest_of, sse, usage

Event = StreamChunk | Answer | GatewayError
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class Inflight:
    """Requests being answered, or let go of by the fleet after their client left."""

    limit: int
    gauge: Gauge
    count: int = 0

    def take(self) -> None:
        if self.count >= self.limit:
            raise GatewayError(
                429,
                f"the gateway is answering {self.count} requests, its limit; retry shortly",
                kind="rate_limit_error",
                code="gateway_busy",
                headers={"Retry-After": "1"},
            )
        self.count += 1
        self.gauge.inc()

    def give(self) -> None:
        self.count -= 1
        self.gauge.dec()


async def first_or_gone(request: Request, waited: asyncio.Future[Any]) -> bool:
    """Whether ``waited`` finished before the client went away."""
    gone = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({waited, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    return waited.done()


@dataclass
class Exchange:
    """One completion request that holds an in-flight slot: how it is answered and counted."""

    request_id: str
    reply: Reply
    path: str
    stream: bool
    fleet: Fleet
    metrics: GatewayMetrics
    inflight: Inflight
    started: float = field(default_factory=time.monotonic)
    counted: bool = False
    watcher: asyncio.Future[None] | None = None  # lets go of it should the client leave

    @classmethod
    def start(
        cls,
        path: str,
        body: RequestBody,
        prompt: Prompt,
        fleet: Fleet,
        metrics: GatewayMetrics,
        inflight: Inflight,
    ) -> Exchange:
        """A request admitted (its slot taken) on ``path``, with an id of its own."""
        request_id = uuid.uuid4().hex[:24]
        reply = Reply.of(request_id, body, prompt, created=int(time.time()))
        return cls(request_id, reply, path, body.stream, fleet, metrics, inflight)

    async def answer(self, request: Request, prompt: Prompt) -> Response:
        """The response: in one piece, or a stream of server-sent events."""
        if not self.stream:
            return await self.whole(request, prompt)
        try:
            return await self.stream_events(request, prompt)
        except GatewayError as exc:
            self.done(exc.status)
            return exc.response()
        except BaseException:
            self.done(499)  # a no-op when the request was let go of already
            raise

    def done(self, code: int, release: bool = True) -> None:
        """Count the request once, however it ends (499: the client went away; its slot is
        then given back once the fleet has let go of it)."""
        if self.counted:
            return
        self.counted = True
        if release:
            self.inflight.give()
        self.metrics.requests.labels(self.path, str(code)).inc()
        self.metrics.latency.labels(self.path, str(self.stream).lower()).observe(
            time.monotonic() - self.started
        )

    def abandon(self, waiter: asyncio.Future[Any]) -> None:
        """The client went away: counted (499), and let go of at the fleet, which gives the
        slot back once it has let go too."""
        self.done(499, release=False)
        self.fleet.let_go(self.request_id, waiter, then=self.inflight.give)

    def first_token(self) -> None:
        self.metrics.first_token.observe(time.monotonic() - self.started)

    async def whole(self, request: Request, prompt: Prompt) -> Response:
        """A response in one piece, or nothing when the client leaves before it."""
        waiter: asyncio.Future[Answer] | None = None
        try:
            await self.fleet.send(prompt, self.request_id)
            waiter = asyncio.ensure_future(self.fleet.answer(prompt, self.request_id))
            if not await first_or_gone(request, waiter):
                self.abandon(waiter)
                return PlainTextResponse("", status_code=499)
            answer = waiter.result()
            error = answer_error(answer)
            if error is not None:
                raise error
        except GatewayError as exc:
            self.done(exc.status)
            return exc.response()
        except BaseException:  # the server cancelled the request
            if not self.counted:
                if waiter is None:
                    self.done(499)
                else:
                    self.abandon(waiter)
            raise
        self.done(200)
        self.metrics.count_tokens(usage(answer))
        return JSONResponse(self.reply.whole(answer))

    async def stream_events(self, request: Request, prompt: Prompt) -> Response:
        """A stream that starts with the first token; an error before it is an error response,
        a client gone before it a 499."""
        events = self._follow()
        try:
            await self.fleet.send(prompt, self.request_id)
        except BaseException:
            self.fleet.listen(self.request_id, None)
            raise
        waiter = asyncio.ensure_future(self._answer_into(events, prompt))
        first = await self._first_event(request, events, waiter)
        if first is None:
            return PlainTextResponse("", status_code=499)
        error = first if isinstance(first, GatewayError) else None
        if isinstance(first, Answer):
            error = answer_error(first)
        if error is not None:
            self.fleet.listen(self.request_id, None)
            self.done(error.status)
            return error.response()
        self.watcher = asyncio.ensure_future(self._watch_gone(request, waiter))
        return StreamingResponse(
            self._events(first, events, waiter), media_type="text/event-stream", headers=SSE_HEADERS
        )

    def _follow(self) -> asyncio.Queue[Event]:
        """A queue that the tokens streamed for this request arrive on (from the MQTT thread)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event] = asyncio.Queue()
        self.fleet.listen(
            self.request_id, lambda c: loop.call_soon_threadsafe(events.put_nowait, c)
        )
        return events

    async def _answer_into(self, events: asyncio.Queue[Event], prompt: Prompt) -> None:
        """The answer (or the error that stands for it) as the stream's last event."""
        try:
            events.put_nowait(await self.fleet.answer(prompt, self.request_id))
        except GatewayError as exc:
            events.put_nowait(exc)

    async def _first_event(
        self, request: Request, events: asyncio.Queue[Event], waiter: asyncio.Future[None]
    ) -> Event | None:
        """The first event, or None when the client left before it (then let go of)."""
        getter = asyncio.ensure_future(events.get())
        arrived = False
        try:
            arrived = await first_or_gone(request, getter)
        finally:
            if not arrived:
                getter.cancel()
                self.fleet.listen(self.request_id, None)
                self.abandon(waiter)
        return getter.result() if arrived else None

    async def _watch_gone(self, request: Request, waiter: asyncio.Future[None]) -> None:
        """A client that leaves before the stream starts has no stream to end: this lets go of
        its request (the stream's own end does it once started)."""
        await client_gone(request)
        if not self.counted:
            self.fleet.listen(self.request_id, None)
            self.abandon(waiter)

    async def _events(
        self, first: Event, events: asyncio.Queue[Event], waiter: asyncio.Future[None]
    ) -> AsyncIterator[bytes]:
        """The server-sent events of a streamed response; a client that leaves mid-stream has
        its prompt let go of."""
        relayed = Relayed()
        item = first
        try:
            for piece in self.reply.opening():
                yield piece
            while isinstance(item, StreamChunk):
                was_first = not relayed.sent
                text = relayed.take(item)
                if text is not None:
                    if was_first:
                        self.first_token()
                    yield self.reply.token(text)
                item = await events.get()
            pieces, code = self._ending(item, relayed)
            for piece in pieces:
                yield piece
            self.done(code)
            yield sse("[DONE]")
        finally:
            self.fleet.listen(self.request_id, None)
            if not self.counted:  # the client went away mid-stream
                self.abandon(waiter)
            elif not waiter.done():
                waiter.cancel()
            if self.watcher is not None:
                self.watcher.cancel()

    def _ending(self, item: Answer | GatewayError, relayed: Relayed) -> tuple[list[bytes], int]:
        """The last events of a stream that relayed ``relayed``, and the status it ends with."""
        error = item if isinstance(item, GatewayError) else answer_error(item)
        if error is not None:
            return [sse(error.body())], error.status
        if not relayed.sent and rest_of(item.answer or "", relayed.sent):
            self.first_token()
        self.metrics.count_tokens(usage(item))
        return self.reply.closing(item, relayed.sent, relayed.source), 200
