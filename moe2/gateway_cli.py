"""``moe2 gateway``: the OpenAI-compatible HTTP gateway as a command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from moe2.options import (
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
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Serve the OpenAI API (chat, completions, models; SSE streaming) in front of the fleet."""
    import uvicorn

    from controller.metrics import ListenError, parse_listen
    from moe2.ask import AskError
    from moe2.gateway import FleetClient, GatewaySettings, create_app, read_api_keys

    logging.basicConfig(
        level=getattr(logging, log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_listen(listen)
    except ListenError as exc:
        fail(f"--listen {exc}")
    if timeout <= 0 or timeout > 3600:
        fail("--timeout must be in (0, 3600] s")
    if max_inflight < 1:
        fail("--max-inflight must be at least 1")
    keys = None
    if api_keys is not None:
        try:
            keys = read_api_keys(api_keys)
        except ValueError as exc:
            fail(f"--api-keys: {exc}")
    settings = load_settings(
        config, **connection(broker, fleet, mqtt_version, username, password_file, ca_file)
    )
    client = FleetClient(settings.endpoint, settings.fleet)
    try:
        client.__enter__()
        try:
            client.require_controller()
        except AskError as exc:
            logging.getLogger("moe2.gateway").warning("%s; serving anyway", exc)
    except ConnectionError as exc:
        fail(str(exc), code=EXIT_FAILURE)
    app = create_app(
        client, GatewaySettings(timeout_s=timeout, max_inflight=max_inflight, api_keys=keys)
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(), access_log=False)
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
