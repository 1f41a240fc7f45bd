"""``moe2 gateway``: the OpenAI-compatible HTTP gateway as a command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from moe2.cli.connection import Connection, with_connection
from moe2.cli.options import EXIT_FAILURE, fail

if TYPE_CHECKING:
    from messages.settings import FleetSettings
    from moe2.gateway.app import FleetClient

log = logging.getLogger("moe2.gateway.app")

ListenOpt = Annotated[
    str, typer.Option("--listen", help="HOST:PORT to serve HTTP on (:PORT: every interface)")
]
ApiKeysOpt = Annotated[
    Path | None,
    typer.Option(
        "--api-keys", help="File of accepted bearer API keys, one a line (default: no auth)"
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="Seconds a request may take, unless moe2.timeout_s")
]
MaxInflightOpt = Annotated[
    int, typer.Option("--max-inflight", help="Requests answered at once; more get 429")
]
AllowAnonymousOpt = Annotated[
    bool,
    typer.Option(
        "--allow-anonymous",
        help="Serve an address beyond this host without --api-keys (anyone may ask)",
    ),
]
MetricsListenOpt = Annotated[
    str | None,
    typer.Option(
        "--metrics-listen",
        help="HOST:PORT to serve /metrics on without a key (e.g. 127.0.0.1:9101 for a "
        "Prometheus beside it); on --listen, /metrics needs the key",
    ),
]
MaxBodyOpt = Annotated[
    int, typer.Option("--max-body", help="Largest request body in bytes; larger get 413")
]
HeaderTimeoutOpt = Annotated[
    float,
    typer.Option("--header-timeout", help="Seconds a client may take to send a request head"),
]
BodyTimeoutOpt = Annotated[
    float, typer.Option("--body-timeout", help="Seconds a client may take to send its body")
]
LogLevelOpt = Annotated[str, typer.Option("--log-level", help="debug, info, warning")]


@with_connection()
def gateway(
    listen: ListenOpt = "127.0.0.1:8000",
    *,
    connection: Connection,
    api_keys: ApiKeysOpt = None,
    timeout: TimeoutOpt = 60.0,
    max_inflight: MaxInflightOpt = 64,
    allow_anonymous: AllowAnonymousOpt = False,
    metrics_listen: MetricsListenOpt = None,
    max_body: MaxBodyOpt = 1024 * 1024,
    header_timeout: HeaderTimeoutOpt = 10.0,
    body_timeout: BodyTimeoutOpt = 30.0,
    log_level: LogLevelOpt = "info",
) -> None:
    """Serve the OpenAI API (chat, completions, models; SSE streaming) in front of the fleet."""
    from controller.metrics import ListenError, parse_listen
    from moe2.gateway.app import GatewaySettings, create_app

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_listen(listen)
        metrics_at = None if metrics_listen is None else parse_listen(metrics_listen)
    except ListenError as exc:
        fail(f"--listen/--metrics-listen {exc}")
    _check_limits(timeout, max_inflight, max_body, header_timeout, body_timeout)
    keys = _api_keys(api_keys, listen, host, port, allow_anonymous)
    client = _connect(connection.settings())
    gateway_settings = GatewaySettings(
        timeout_s=timeout,
        max_inflight=max_inflight,
        api_keys=keys,
        max_body_bytes=max_body,
        body_timeout_s=body_timeout,
    )
    app = create_app(client, gateway_settings)
    if metrics_at is not None:
        _serve_metrics(app, metrics_at, metrics_listen)
    _run(app, client, host, port, log_level, header_timeout)


def _check_limits(
    timeout: float, max_inflight: int, max_body: int, header_timeout: float, body_timeout: float
) -> None:
    """The request limits in range, or a clean error."""
    if timeout <= 0 or timeout > 3600:
        fail("--timeout must be in (0, 3600] s")
    if max_inflight < 1:
        fail("--max-inflight must be at least 1")
    if max_body < 1024 or header_timeout <= 0 or body_timeout <= 0:
        fail("--max-body must be at least 1024 bytes, the timeouts above 0 s")


def _api_keys(
    path: Path | None, listen: str, host: str, port: int, allow_anonymous: bool
) -> set[str] | None:
    """The accepted keys (None: no auth). Serving beyond this host without keys needs
    --allow-anonymous, and is then logged loudly."""
    from moe2.gateway.app import read_api_keys
    from moe2.gateway.guard import is_loopback

    keys = None
    if path is not None:
        try:
            keys = read_api_keys(path)
        except ValueError as exc:
            fail(f"--api-keys: {exc}")
    if keys is None and not is_loopback(host):
        if not allow_anonymous:
            fail(
                f"--listen {listen} serves beyond this host, and without --api-keys anyone who "
                "reaches it can make the fleet work: give --api-keys FILE, listen on 127.0.0.1, "
                "or say --allow-anonymous"
            )
        log.warning(
            "SERVING %s:%d WITHOUT API KEYS (--allow-anonymous): anyone who reaches this "
            "address can make the fleet work and read /metrics and /healthz",
            host,
            port,
        )
    return keys


def _connect(settings: FleetSettings) -> FleetClient:
    """The gateway's client of the fleet, connected; no controller yet is only a warning."""
    from moe2.client.ask import AskError
    from moe2.gateway.app import FleetClient

    client = FleetClient(settings.endpoint, settings.fleet)
    try:
        client.__enter__()
        try:
            client.require_controller()
        except AskError as exc:
            log.warning("%s; serving anyway", exc)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    return client


def _serve_metrics(app: Any, metrics_at: tuple[str, int], metrics_listen: str | None) -> None:
    """``/metrics`` without a key on ``--metrics-listen`` (beside the app, on its own thread)."""
    from prometheus_client import start_http_server

    try:
        start_http_server(metrics_at[1], addr=metrics_at[0], registry=app.state.metrics.registry)
    except OSError as exc:
        fail(f"cannot serve metrics on {metrics_listen}: {exc}", code=EXIT_FAILURE)


def _run(
    app: Any, client: FleetClient, host: str, port: int, log_level: str, header_timeout: float
) -> None:
    """Serve ``app`` on uvicorn until it stops, then close the client; an address that cannot
    be served is a clean failure."""
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from moe2.gateway.guard import timed_protocol

    base = import_from_string(HTTP_PROTOCOLS["auto"])
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level.lower(),
            access_log=False,
            http=timed_protocol(base, header_timeout),
        )
    )
    try:
        server.run()
    finally:
        app.state.executor.shutdown(wait=False, cancel_futures=True)
        client.__exit__(None, None, None)
    if not server.started:
        fail(
            f"cannot serve on {host}:{port} (in use, or not an address of this host)",
            code=EXIT_FAILURE,
        )
