"""An OpenAI-compatible HTTP gateway to a moe2 fleet.

The gateway is one more MQTT client of the fleet, like ``moe2 ask``: each HTTP request becomes a
prompt on ``prompts`` with a reply route of the gateway's own, and the answer (and, for
``stream: true``, the relayed tokens of the leading expert) comes back on that route. It serves
``POST /v1/chat/completions``, ``POST /v1/completions`` (both with server-sent events for
``stream: true``), ``GET /v1/models`` (the ensemble as ``moe2``, each active expert by its id),
``GET /healthz`` and ``GET /metrics`` (Prometheus text). Budgets, category, top-k and experts
ride in the body as ``"moe2": {...}``; the response carries the per-expert breakdown under
``"moe2"``. Errors have OpenAI's shape and status codes.

A client that disconnects before its answer has its prompt cancelled at the controller (which
stops the jobs) and no longer re-sent; its in-flight slot is held until the fleet has let go of
it. The key is checked before the body is read, and the body read within limits
(``moe2.gateway.guard``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from messages import topics
from messages.answers import Answer
from messages.budgets import Budgets
from messages.bus import Inbound
from messages.controller import FleetPlan
from messages.prompts import Prompt
from messages.routes import shown
from messages.status import AgentStatus
from messages.stream import StreamChunk
from moe2.client.ask import Asker, AskError
from moe2.gateway.guard import BodyError, client_gone, endpoint_label, read_body

ENSEMBLE_MODEL = "moe2"
DEFAULT_MAX_TOKENS = 256


# -- errors -------------------------------------------------------------------------------


class GatewayError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.code, self.param, self.headers = code, param, headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def answer_error(answer: Answer) -> GatewayError | None:
    """The HTTP error an answer stands for, or None when it carries an answer."""
    if answer.status in ("ok", "partial") and answer.answer is not None:
        return None
    reason = answer.error or "no expert answered"
    if answer.status == "rejected":
        return GatewayError(400, reason, code="prompt_rejected")
    if answer.status == "busy":
        retry = answer.retry_after_s or 1.0
        return GatewayError(
            429,
            reason,
            kind="rate_limit_error",
            code="fleet_busy",
            headers={"Retry-After": str(max(1, round(retry)))},
        )
    deadline = "deadline" in reason or any(
        f.reason.startswith("no result within") for f in answer.failed
    )
    if deadline:
        return GatewayError(504, f"deadline passed: {reason}", kind="timeout", code="deadline")
    details = "; ".join(f"{f.expert_id}@{f.agent_id}: {f.reason}" for f in answer.failed)
    return GatewayError(
        503,
        reason + (f" ({details})" if details else ""),
        kind="service_unavailable",
        code="no_expert_answered",
    )


# -- requests -----------------------------------------------------------------------------


class Moe2Options(BaseModel):
    """The fleet's own fields of a request, under ``"moe2"``."""

    model_config = ConfigDict(extra="forbid")

    energy_j: float | None = Field(default=None, ge=0, description="Energy budget, J")
    delay_s: float | dict[str, float] | None = Field(
        default=None, description="Delay budget, s: for the request's category, or per category"
    )
    category: str | None = None
    top_k: int | None = Field(default=None, ge=1, description="Experts that answer, at most")
    experts: list[str] | None = Field(default=None, min_length=1)
    timeout_s: float | None = Field(default=None, gt=0, le=3600)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    """What chat and text completions share. Unknown OpenAI fields are ignored; those that
    would change the output and are not supported are refused by name."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=1000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    moe2: Moe2Options | None = None

    UNSUPPORTED: tuple[str, ...] = ("tools", "functions", "logit_bias", "best_of", "suffix")

    def refuse_unsupported(self) -> None:
        if self.n != 1:
            raise GatewayError(400, "n must be 1: moe2 gives one (ensemble) answer", param="n")
        for name in self.UNSUPPORTED:
            if (self.model_extra or {}).get(name) not in (None, [], {}):
                raise GatewayError(400, f"{name} is not supported by moe2", param=name)
        for name in ("presence_penalty", "frequency_penalty"):
            if (self.model_extra or {}).get(name) not in (None, 0, 0.0):
                raise GatewayError(400, f"{name} is not supported by moe2", param=name)
        if (self.model_extra or {}).get("logprobs") not in (None, False, 0):
            raise GatewayError(400, "logprobs is not supported by moe2", param="logprobs")


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise GatewayError(
                    400, "only text content parts are supported", param="messages.content"
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Common):
    messages: list[ChatTurn] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=4096)


class CompletionRequest(_Common):
    prompt: str | list[str]


ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _stops(stop: str | list[str] | None) -> list[str] | None:
    if stop is None or stop == []:
        return None
    return [stop] if isinstance(stop, str) else stop


def build_prompt(
    body: _Common,
    *,
    messages: list[dict[str, str]] | None,
    text: str | None,
    max_tokens: int | None,
    timeout_s: float,
) -> Prompt:
    """The fleet prompt for a request; a field the contract refuses is a 400 that names it."""
    extras = body.moe2 or Moe2Options()
    experts = extras.experts
    if body.model != ENSEMBLE_MODEL:
        if experts is not None:
            raise GatewayError(
                400, "moe2.experts goes with model 'moe2'; a named model is one expert"
            )
        experts = [body.model]
    delay: dict[str, float] = {}
    if isinstance(extras.delay_s, dict):
        delay = dict(extras.delay_s)
    elif extras.delay_s is not None:
        if extras.category is None:
            raise GatewayError(400, "moe2.delay_s as a number needs moe2.category", param="moe2")
        delay = {extras.category: extras.delay_s}
    try:
        budgets = (
            Budgets(energy_j=extras.energy_j, delay_s=delay, top_k=extras.top_k)
            if extras.energy_j is not None or delay or extras.top_k is not None
            else None
        )
        return Prompt(
            prompt=text,
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens or DEFAULT_MAX_TOKENS,
            temperature=0.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=body.top_k or 0,
            seed=body.seed,
            stop=_stops(body.stop),
            stream=body.stream,
            experts=experts,
            category=extras.category,
            budgets=budgets,
            timeout_s=extras.timeout_s or timeout_s,
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise GatewayError(400, f"{where or 'request'}: {first['msg']}", param=where) from None


def chat_turns(request: ChatRequest) -> list[dict[str, str]]:
    turns = []
    for i, turn in enumerate(request.messages):
        role = ROLES.get(turn.role)
        if role is None:
            raise GatewayError(
                400,
                f"messages[{i}].role {turn.role!r} is not supported (system, developer, user, "
                "assistant)",
                param=f"messages.{i}.role",
            )
        turns.append({"role": role, "content": turn.text()})
    return turns


# -- the fleet client ---------------------------------------------------------------------


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


# -- metrics ------------------------------------------------------------------------------


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "moe2_gateway_requests",
            "HTTP requests, by endpoint and status code",
            ["endpoint", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "moe2_gateway_request_seconds",
            "Request to the last byte of the response",
            ["endpoint", "stream"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.first_token = Histogram(
            "moe2_gateway_time_to_first_token_seconds",
            "Request to the first streamed token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=r,
        )
        self.tokens = Counter(
            "moe2_gateway_tokens", "Tokens in answers, by kind", ["kind"], registry=r
        )
        self.inflight = Gauge("moe2_gateway_inflight", "Requests being answered", registry=r)


# -- the app ------------------------------------------------------------------------------


def read_api_keys(path: Path) -> set[str]:
    """One key a line; blank lines and ``#`` comments are skipped. An empty file is an error:
    it would lock everyone out."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read API keys from {path}: {exc.strerror}") from None
    keys = {line.strip() for line in lines if line.strip() and not line.strip().startswith("#")}
    if not keys:
        raise ValueError(f"{path} holds no API key (one a line)")
    return keys


@dataclass
class GatewaySettings:
    """How the gateway answers, and the limits that keep a stranger from loading it."""

    timeout_s: float = 60.0
    max_inflight: int = 64
    api_keys: set[str] | None = None
    max_body_bytes: int = 1024 * 1024
    body_timeout_s: float = 30.0
    # A request whose client went away holds its in-flight slot until the fleet has let go of
    # it (the controller's answer to the cancel), or this long at most.
    cancel_wait_s: float = 10.0


def _usage(answer: Answer) -> dict[str, int]:
    prompt = sum(e.prompt_tokens for e in answer.experts)
    completion = sum(e.completion_tokens for e in answer.experts)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def breakdown(answer: Answer) -> dict[str, Any]:
    """The ``moe2`` field of a response: who answered, with what weight, latency and energy."""
    sources = sorted({e.energy_source for e in answer.experts if e.energy_source})
    return {
        "request_id": answer.request_id,
        "status": answer.status,
        "latency_s": answer.latency_s,
        "energy_j": answer.energy_j,
        "energy_source": sources[0] if len(sources) == 1 else (sources or None),
        "energy_estimated": answer.energy_estimated,
        "experts": [
            {
                "expert_id": e.expert_id,
                "agent_id": e.agent_id,
                "weight": e.weight,
                "text": e.text,
                "latency_s": e.latency_s,
                "compute_s": e.compute_s,
                "prompt_tokens": e.prompt_tokens,
                "completion_tokens": e.completion_tokens,
                "energy_j": e.energy_j,
                "energy_source": e.energy_source,
            }
            for e in answer.experts
        ],
        "failed": [f.model_dump(exclude={"schema_version"}) for f in answer.failed],
        "left_out": [f.model_dump(exclude={"schema_version"}) for f in answer.left_out],
        "budgets": None
        if answer.budgets is None
        else answer.budgets.model_dump(exclude={"schema_version"}),
    }


def _finish_reason(answer: Answer, max_tokens: int) -> Literal["stop", "length"]:
    winner = next((e for e in answer.experts if e.text == answer.answer), None)
    return "length" if winner is not None and winner.completion_tokens >= max_tokens else "stop"


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


R = TypeVar("R", bound=BaseModel)


def parse_body(model: type[R], raw: bytes) -> R:
    """A request from its JSON body; a 400 that names the first bad field."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise GatewayError(400, "the body is not valid JSON") from None
        where = ".".join(str(p) for p in first["loc"]) or None
        message = f"{where}: {first['msg']}" if where else str(first["msg"])
        raise GatewayError(400, message, param=where) from None


def has_key(request: Request, keys: set[str] | None) -> bool:
    """Whether the request may use the gateway: no keys configured, or one of them as a bearer."""
    if keys is None:
        return True
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and key.strip() in keys


@dataclass
class _Inflight:
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


def _error_handlers(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Every error in OpenAI's shape, counted under its endpoint (unknown paths: "other")."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        metrics.requests.labels(endpoint_label(request.url.path), str(exc.status)).inc()
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = (
            f"no route {request.method} {shown(request.url.path)}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        code = "not_found" if exc.status_code == 404 else None
        return await _gateway_error(request, GatewayError(exc.status_code, message, code=code))


def create_app(client: FleetClient, settings: GatewaySettings) -> FastAPI:
    """The FastAPI app around a connected ``client``."""
    app = FastAPI(title="moe2 gateway", docs_url=None, redoc_url=None)
    metrics = GatewayMetrics()
    app.state.metrics = metrics
    executor = ThreadPoolExecutor(
        max_workers=max(4, settings.max_inflight), thread_name_prefix="ask"
    )
    inflight = _Inflight(settings.max_inflight, metrics.inflight)
    letting_go: set[asyncio.Task[None]] = set()
    _error_handlers(app, metrics)

    def authorise(request: Request) -> None:
        """From the request head alone: a request without a key is refused before its body is
        read."""
        if not has_key(request, settings.api_keys):
            header = request.headers.get("authorization", "")
            raise GatewayError(
                401,
                "Incorrect API key provided"
                if header
                else "No API key provided (Authorization: Bearer KEY)",
                code="invalid_api_key",
            )

    def check_model(model: str) -> None:
        if model == ENSEMBLE_MODEL:
            return
        expert, _, agent = model.partition("@")
        active = client.active_experts()
        if expert in active and (not agent or agent in active[expert]):
            return
        names = ", ".join([ENSEMBLE_MODEL, *sorted(active)])
        raise GatewayError(
            404,
            f"The model {model!r} does not exist or is not active in this fleet (models: {names})",
            code="model_not_found",
            param="model",
        )

    def ready() -> None:
        if not client.bus.connected:
            raise GatewayError(
                503, "the gateway is not connected to the broker", "service_unavailable"
            )
        if not client.controller_online():
            raise GatewayError(
                503, f"no controller serves fleet {client.fleet!r}", "service_unavailable"
            )

    async def answer_of(prompt: Prompt, request_id: str) -> Answer:
        """Wait for the answer on a worker thread (the Asker re-sends meanwhile)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                executor, client.wait, request_id, prompt.timeout_s + 5.0
            )
        except AskError as exc:
            raise GatewayError(504, str(exc), kind="timeout", code="deadline") from None

    async def send(prompt: Prompt, request_id: str) -> None:
        loop = asyncio.get_running_loop()
        update = {"request_id": request_id}
        await loop.run_in_executor(executor, client.send, prompt.model_copy(update=update))

    def let_go(request_id: str, waiter: asyncio.Future[Any]) -> None:
        """The client went away: the prompt is cancelled at the controller (and no longer
        re-sent), and its in-flight slot held until the fleet has let go of it (its answer,
        the cancel's, arrives) or ``cancel_wait_s`` passed."""
        client.cancel(request_id, "the HTTP client went away")

        async def hold() -> None:
            try:
                await asyncio.wait_for(asyncio.shield(waiter), settings.cancel_wait_s)
            except (TimeoutError, GatewayError):
                pass
            finally:
                client.forget(request_id)
                inflight.give()

        task = asyncio.get_running_loop().create_task(hold())
        letting_go.add(task)
        task.add_done_callback(letting_go.discard)

    async def first_or_gone(request: Request, waited: asyncio.Future[Any]) -> bool:
        """Whether ``waited`` finished before the client went away."""
        gone = asyncio.ensure_future(client_gone(request))
        try:
            await asyncio.wait({waited, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        return waited.done()

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        ok = client.bus.connected and client.controller_online()
        body: dict[str, Any] = {"status": "ok" if ok else "degraded"}
        if has_key(request, settings.api_keys):  # the details are for key holders only
            body |= {
                "broker_connected": client.bus.connected,
                "controller_online": client.controller_online(),
                "fleet": client.fleet,
                "experts_active": sorted(client.active_experts()),
            }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", dependencies=[Depends(authorise)])
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=[Depends(authorise)])
    async def models(request: Request) -> JSONResponse:
        created = int(client.plan.time_s) if client.plan is not None else int(time.time())
        data = [{"id": ENSEMBLE_MODEL, "object": "model", "created": created, "owned_by": "moe2"}]
        for expert, agents in sorted(client.active_experts().items()):
            data.append(
                {
                    "id": expert,
                    "object": "model",
                    "created": created,
                    "owned_by": "moe2",
                    "moe2": {"agents": sorted(agents)},
                }
            )
        metrics.requests.labels("/v1/models", "200").inc()
        return JSONResponse({"object": "list", "data": data})

    async def read_request(request: Request, chat: bool) -> tuple[_Common, Prompt]:
        """The body (within the limits), parsed, and the fleet prompt it asks for."""
        try:
            raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        except BodyError as exc:
            code = {413: "body_too_large", 408: "body_timeout"}.get(exc.status)
            raise GatewayError(exc.status, exc.message, code=code) from None
        body = parse_body(ChatRequest if chat else CompletionRequest, raw)
        body.refuse_unsupported()
        check_model(body.model)
        if isinstance(body, ChatRequest):
            max_tokens = body.max_completion_tokens or body.max_tokens
            prompt = build_prompt(
                body,
                messages=chat_turns(body),
                text=None,
                max_tokens=max_tokens,
                timeout_s=settings.timeout_s,
            )
            return body, prompt
        assert isinstance(body, CompletionRequest)
        texts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(texts) != 1:
            raise GatewayError(400, "prompt must be one string", param="prompt")
        prompt = build_prompt(
            body,
            messages=None,
            text=texts[0],
            max_tokens=body.max_tokens or 16,
            timeout_s=settings.timeout_s,
        )
        return body, prompt

    async def complete(request: Request, chat: bool) -> Any:
        body, prompt = await read_request(request, chat)
        ready()
        inflight.take()
        path = request.url.path
        started = time.monotonic()
        request_id = uuid.uuid4().hex[:24]
        exchange = _Exchange(
            request_id=request_id,
            ident=("chatcmpl-" if chat else "cmpl-") + request_id,
            created=int(time.time()),
            body=body,
            chat=chat,
            started=started,
        )

        def done(code: int, release: bool = True) -> None:
            """Count the request once, however it ends (499: the client went away; its slot is
            then given back by let_go)."""
            if exchange.counted:
                return
            exchange.counted = True
            if release:
                inflight.give()
            metrics.requests.labels(path, str(code)).inc()
            metrics.latency.labels(path, str(body.stream).lower()).observe(
                time.monotonic() - started
            )

        exchange.done = done
        if not body.stream:
            return await whole(request, prompt, exchange)
        try:
            return await stream(request, prompt, exchange)
        except GatewayError as exc:
            done(exc.status)
            return exc.response()
        except BaseException:
            done(499)  # a no-op when the request was handed to let_go already
            raise

    async def whole(request: Request, prompt: Prompt, exchange: _Exchange) -> Any:
        """A response in one piece, or nothing when the client leaves before it."""
        request_id, done = exchange.request_id, exchange.done
        waiter: asyncio.Future[Answer] | None = None
        try:
            await send(prompt, request_id)
            waiter = asyncio.ensure_future(answer_of(prompt, request_id))
            if not await first_or_gone(request, waiter):
                done(499, release=False)
                let_go(request_id, waiter)
                return PlainTextResponse("", status_code=499)
            answer = waiter.result()
            error = answer_error(answer)
            if error is not None:
                raise error
        except GatewayError as exc:
            done(exc.status)
            return exc.response()
        except BaseException:  # the server cancelled the request
            if not exchange.counted:
                done(499, release=waiter is None)
                if waiter is not None:
                    let_go(request_id, waiter)
            raise
        done(200)
        return JSONResponse(whole_body(answer, prompt, exchange, metrics))

    async def stream(request: Request, prompt: Prompt, exchange: _Exchange) -> Any:
        loop = asyncio.get_running_loop()
        request_id, done = exchange.request_id, exchange.done
        events: asyncio.Queue[StreamChunk | Answer | GatewayError] = asyncio.Queue()
        client.listen(request_id, lambda c: loop.call_soon_threadsafe(events.put_nowait, c))
        try:
            await send(prompt, request_id)
        except BaseException:
            client.listen(request_id, None)
            raise

        async def wait_answer() -> None:
            try:
                events.put_nowait(await answer_of(prompt, request_id))
            except GatewayError as exc:
                events.put_nowait(exc)

        waiter = asyncio.ensure_future(wait_answer())
        getter = asyncio.ensure_future(events.get())
        try:
            arrived = await first_or_gone(request, getter)
        except BaseException:
            arrived = False
            raise
        finally:
            if not arrived:  # the client left before the first token
                getter.cancel()
                client.listen(request_id, None)
                done(499, release=False)
                let_go(request_id, waiter)
        if not arrived:
            return PlainTextResponse("", status_code=499)
        first = getter.result()  # a chunk starts the stream; an error before it is an error
        if isinstance(first, GatewayError) or (
            isinstance(first, Answer) and answer_error(first) is not None
        ):
            client.listen(request_id, None)
            error = first if isinstance(first, GatewayError) else answer_error(first)
            assert error is not None
            done(error.status)
            return error.response()

        async def watch_gone() -> None:
            """A client that leaves before the stream starts has no stream to end: this lets
            go of its request (the stream's own end does it once started)."""
            await client_gone(request)
            if not exchange.counted:
                client.listen(request_id, None)
                done(499, release=False)
                let_go(request_id, waiter)

        exchange.watcher = asyncio.ensure_future(watch_gone())
        return StreamingResponse(
            _events_out(first, events, prompt, exchange, metrics, client, let_go, waiter),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/chat/completions", dependencies=[Depends(authorise)])
    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorise)])
    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)

    app.state.executor = executor
    app.state.letting_go = letting_go
    return app


@dataclass
class _Exchange:
    """One completion request: what its response chunks carry, and how it is counted."""

    request_id: str
    ident: str
    created: int
    body: _Common
    chat: bool
    started: float
    counted: bool = False
    done: Callable[..., None] = field(default=lambda *a, **k: None)
    watcher: asyncio.Future[None] | None = None  # lets go of it should the client leave

    def chunk(self, delta: str | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
        if self.chat:
            piece: dict[str, Any] = {
                "index": 0,
                "delta": {} if delta is None else {"content": delta},
            }
        else:
            piece = {"index": 0, "text": delta or "", "logprobs": None}
        piece["finish_reason"] = finish
        return {
            "id": self.ident,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.body.model,
            "choices": [piece],
            **extra,
        }


def whole_body(
    answer: Answer, prompt: Prompt, exchange: _Exchange, metrics: GatewayMetrics
) -> dict[str, Any]:
    """The OpenAI response to a request answered in one piece."""
    usage = _usage(answer)
    metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
    metrics.tokens.labels("completion").inc(usage["completion_tokens"])
    text = answer.answer or ""
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": text}}
        if exchange.chat
        else {"index": 0, "text": text, "logprobs": None}
    )
    choice["finish_reason"] = _finish_reason(answer, prompt.max_tokens)
    return {
        "id": exchange.ident,
        "object": "chat.completion" if exchange.chat else "text_completion",
        "created": exchange.created,
        "model": exchange.body.model,
        "choices": [choice],
        "usage": usage,
        "moe2": breakdown(answer),
    }


async def _events_out(
    first: StreamChunk | Answer | GatewayError,
    events: asyncio.Queue[StreamChunk | Answer | GatewayError],
    prompt: Prompt,
    exchange: _Exchange,
    metrics: GatewayMetrics,
    client: FleetClient,
    let_go: Callable[[str, asyncio.Future[Any]], None],
    waiter: asyncio.Future[Any],
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed response; a client that leaves mid-stream has its
    prompt let go of."""
    sent = ""
    expected = 0
    pending: StreamChunk | Answer | GatewayError | None = first
    first_token = True
    done = exchange.done
    try:
        if exchange.chat:
            opening = exchange.chunk(None)
            opening["choices"][0]["delta"] = {"role": "assistant", "content": ""}
            yield _sse(opening)
        while True:
            item = pending if pending is not None else await events.get()
            pending = None
            if isinstance(item, StreamChunk):
                if item.seq < expected or not item.text:
                    expected = max(expected, item.seq + 1)
                    continue
                expected = item.seq + 1
                if first_token:
                    metrics.first_token.observe(time.monotonic() - exchange.started)
                    first_token = False
                sent += item.text
                yield _sse(exchange.chunk(item.text))
                continue
            if isinstance(item, GatewayError):
                yield _sse(item.body())
                done(item.status)
                break
            error = answer_error(item)
            if error is not None:
                yield _sse(error.body())
                done(error.status)
                break
            for piece in _closing(item, sent, first_token, prompt, exchange, metrics):
                yield piece
            done(200)
            break
        yield _sse("[DONE]")
    finally:
        client.listen(exchange.request_id, None)
        if not exchange.counted:  # the client went away mid-stream
            done(499, release=False)
            let_go(exchange.request_id, waiter)
        elif not waiter.done():
            waiter.cancel()
        if exchange.watcher is not None:
            exchange.watcher.cancel()


def _closing(
    answer: Answer,
    sent: str,
    first_token: bool,
    prompt: Prompt,
    exchange: _Exchange,
    metrics: GatewayMetrics,
) -> list[bytes]:
    """The last events of a stream: the rest of the answer, the finish, the usage."""
    out = []
    text = answer.answer or ""
    # The stream previews the leading expert; the answer is the ensemble's. When it continues
    # what was streamed, the rest follows; otherwise the final chunk's moe2.answer says what
    # the ensemble answered.
    if text.startswith(sent) and len(text) > len(sent):
        if first_token:
            metrics.first_token.observe(time.monotonic() - exchange.started)
        out.append(_sse(exchange.chunk(text[len(sent) :])))
    usage = _usage(answer)
    metrics.tokens.labels("prompt").inc(usage["prompt_tokens"])
    metrics.tokens.labels("completion").inc(usage["completion_tokens"])
    extra = {"moe2": {**breakdown(answer), "answer": text}}
    out.append(_sse(exchange.chunk(None, _finish_reason(answer, prompt.max_tokens), **extra)))
    if exchange.body.stream_options is not None and exchange.body.stream_options.include_usage:
        tail = exchange.chunk(None)
        tail["choices"] = []
        tail["usage"] = usage
        out.append(_sse(tail))
    return out
