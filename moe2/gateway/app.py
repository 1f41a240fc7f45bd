"""An OpenAI-compatible HTTP gateway to a moe2 fleet: the routes.

The gateway is one more MQTT client of the fleet, like ``moe2 ask``: each HTTP request becomes a
prompt on ``prompts`` with a reply route of the gateway's own, and the answer (and, for
``stream: true``, the relayed tokens of the leading expert) comes back on that route. It serves
``POST /v1/chat/completions``, ``POST /v1/completions`` (both with server-sent events for
``stream: true``), ``GET /v1/models`` (the ensemble as ``moe2``, each active expert by its id) and
``GET /v1/models/{id}`` (one of them), ``POST /v1/embeddings`` (an error saying the fleet
serves no embedding model),
``GET /healthz`` and ``GET /metrics`` (Prometheus text). Budgets, category, top-k and experts
ride in the body as ``"moe2": {...}``; the response carries the per-expert breakdown under
``"moe2"``. Errors have OpenAI's shape and status codes.

A client that disconnects before its answer has its prompt cancelled at the controller (which
stops the jobs) and no longer re-sent; its in-flight slot is held until the fleet has let go of
it. The key is checked before the body is read, and the body read within limits
(``moe2.gateway.guard``).

This module only routes. The package, in the order a request walks it:

- ``keys``: the API key check (from the request head) and the key file;
- ``guard``: the body read within limits, the request head within a timeout;
- ``models``: the request bodies; ``translate``: body -> ``Prompt``, ``Answer`` -> response,
  errors in OpenAI's shape (``errors``), all of it pure;
- ``exchange``: one request from its in-flight slot to its last byte, whole or streamed;
- ``fleet``: the MQTT client it asks through (an ``Asker``) and its face on the event loop;
- ``metrics``: the Prometheus metrics; ``settings``: the limits.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from messages.routes import shown
from moe2.gateway.errors import GatewayError
from moe2.gateway.exchange import Exchange, Inflight
from moe2.gateway.fleet import Fleet, FleetClient
from moe2.gateway.guard import MODEL_ENDPOINT, BodyError, endpoint_label, read_body
from moe2.gateway.keys import has_key, read_api_keys, require_key
from moe2.gateway.metrics import GatewayMetrics
from moe2.gateway.settings import GatewaySettings
from moe2.gateway.translate import (
    body_error,
    model_retrieved,
    models_list,
    no_embeddings,
    request_prompt,
)

# What ``moe2 gateway`` (moe2/cli/gateway.py) takes from here.
__all__ = ["FleetClient", "GatewaySettings", "create_app", "read_api_keys"]


def create_app(client: FleetClient, settings: GatewaySettings) -> FastAPI:
    """The FastAPI app around a connected ``client``."""
    app = FastAPI(title="moe2 gateway", docs_url=None, redoc_url=None)
    metrics = GatewayMetrics()
    fleet = Fleet(client, settings.max_inflight, settings.cancel_wait_s)
    app.state.metrics = metrics
    app.state.executor = fleet.executor
    app.state.letting_go = fleet.letting_go
    _error_handlers(app, metrics)

    def authorise(request: Request) -> None:
        """From the request head alone: a request without a key is refused before its body is
        read."""
        require_key(request, settings.api_keys)

    _fleet_routes(app, client, settings, metrics, authorise)
    _completion_routes(app, fleet, settings, metrics, authorise)
    return app


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


def _fleet_routes(
    app: FastAPI,
    client: FleetClient,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    authorise: Any,
) -> None:
    """``/healthz``, ``/metrics`` and ``/v1/models``: what the gateway and the fleet look like."""

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

    def created() -> int:
        return int(client.plan.time_s) if client.plan is not None else int(time.time())

    @app.get("/v1/models", dependencies=[Depends(authorise)])
    async def models(request: Request) -> JSONResponse:
        listed = models_list(created(), client.active_experts())
        metrics.requests.labels("/v1/models", "200").inc()
        return JSONResponse(listed)

    @app.get("/v1/models/{model}", dependencies=[Depends(authorise)])
    async def model(model: str) -> JSONResponse:
        card = model_retrieved(model, created(), client.active_experts())
        metrics.requests.labels(MODEL_ENDPOINT, "200").inc()
        return JSONResponse(card)

    @app.post("/v1/embeddings", dependencies=[Depends(authorise)])
    async def embeddings() -> JSONResponse:
        raise no_embeddings()


def _completion_routes(
    app: FastAPI,
    fleet: Fleet,
    settings: GatewaySettings,
    metrics: GatewayMetrics,
    authorise: Any,
) -> None:
    """``/v1/chat/completions`` and ``/v1/completions``: a prompt to the fleet, its answer back."""
    inflight = Inflight(settings.max_inflight, metrics.inflight)

    async def complete(request: Request, chat: bool) -> Response:
        try:
            raw = await read_body(request, settings.max_body_bytes, settings.body_timeout_s)
        except BodyError as exc:
            raise body_error(exc) from None
        active = fleet.client.active_experts()
        body, prompt = request_prompt(raw, chat, settings.timeout_s, active)
        fleet.ready()
        inflight.take()
        exchange = Exchange.start(request.url.path, body, prompt, fleet, metrics, inflight)
        return await exchange.answer(request, prompt)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorise)])
    async def chat_completions(request: Request) -> Any:
        return await complete(request, chat=True)

    @app.post("/v1/completions", dependencies=[Depends(authorise)])
    async def completions(request: Request) -> Any:
        return await complete(request, chat=False)
