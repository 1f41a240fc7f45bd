"""``moe2 gateway``: the OpenAI-compatible HTTP gateway as a command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from moe2.cli.options import (
    EXIT_FAILURE,
    BrokerOpt,
    CaFileOpt,
    ConfigOpt,
    FleetOpt,
    PasswordFileOpt,
    UsernameOpt,
    VersionOpt,
    connection,
    fail,
    load_settings,
)


def gateway(
    listen: Annotated[
        str, typer.Option("--listen", help="HOST:PORT to serve HTTP on (:PORT: every interface)")
    ] = "127.0.0.1:8000",
    broker: BrokerOpt = None,
    fleet: FleetOpt = None,
    mqtt_version: VersionOpt = None,
    username: UsernameOpt = None,
    password_file: PasswordFileOpt = None,
    ca_file: CaFileOpt = None,
    config: ConfigOpt = None,
    api_keys: Annotated[
        Path | None,
        typer.Option(
            "--api-keys", help="File of accepted bearer API keys, one a line (default: no auth)"
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds a request may take, unless moe2.timeout_s")
    ] = 60.0,
    max_inflight: Annotated[
        int, typer.Option("--max-inflight", help="Requests answered at once; more get 429")
    ] = 64,
    allow_anonymous: Annotated[
        bool,
        typer.Option(
            "--allow-anonymous",
            help="Serve an address beyond this host without --api-keys (anyone may ask)",
        ),
    ] = False,
    metrics_listen: Annotated[
        str | None,
        typer.Option(
            "--metrics-listen",
            help="HOST:PORT to serve /metrics on without a key (e.g. 127.0.0.1:9101 for a "
            "Prometheus beside it); on --listen, /metrics needs the key",
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Largest request body in bytes; larger get 413")
    ] = 1024 * 1024,
    header_timeout: Annotated[
        float,
        typer.Option("--header-timeout", help="Seconds a client may take to send a request head"),
    ] = 10.0,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", help="Seconds a client may take to send its body")
    ] = 30.0,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Serve the OpenAI API (chat, completions, models; SSE streaming) in front of the fleet."""
    import uvicorn
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    from controller.metrics import ListenError, parse_listen
    from moe2.client.ask import AskError
    from moe2.gateway.app import FleetClient, GatewaySettings, create_app, read_api_keys
    from moe2.gateway.guard import is_loopback, timed_protocol

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    log = logging.getLogger("moe2.gateway.app")
    try:
        host, port = parse_listen(listen)
        metrics_at = None if metrics_listen is None else parse_listen(metrics_listen)
    except ListenError as exc:
        fail(f"--listen/--metrics-listen {exc}")
    if timeout <= 0 or timeout > 3600:
        fail("--timeout must be in (0, 3600] s")
    if max_inflight < 1:
        fail("--max-inflight must be at least 1")
    if max_body < 1024 or header_timeout <= 0 or body_timeout <= 0:
        fail("--max-body must be at least 1024 bytes, the timeouts above 0 s")
    keys = None
    if api_keys is not None:
        try:
            keys = read_api_keys(api_keys)
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
    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
    client = FleetClient(settings.endpoint, settings.fleet)
    try:
        client.__enter__()
        try:
            client.require_controller()
        except AskError as exc:
            log.warning("%s; serving anyway", exc)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    gateway_settings = GatewaySettings(
        timeout_s=timeout,
        max_inflight=max_inflight,
        api_keys=keys,
        max_body_bytes=max_body,
        body_timeout_s=body_timeout,
    )
    app = create_app(client, gateway_settings)
    if metrics_at is not None:
        from prometheus_client import start_http_server

        try:
            start_http_server(
                metrics_at[1], addr=metrics_at[0], registry=app.state.metrics.registry
            )
        except OSError as exc:
            fail(f"cannot serve metrics on {metrics_listen}: {exc}", code=EXIT_FAILURE)
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
