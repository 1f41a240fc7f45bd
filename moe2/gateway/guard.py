"""What keeps strangers from loading the HTTP gateway: the request head read within a timeout (a
slow-loris connection is closed), the body read within a size limit and a timeout, metrics
labels from a fixed set, and whether an address reaches beyond this host.

uvicorn has no limit on how long a client may take to send a request: its keep-alive timeout
is reset by every byte received, so a client that trickles a header a byte at a time holds a
connection for ever. :func:`timed_protocol` wraps uvicorn's HTTP protocol class with a
deadline for the request head, armed when a connection opens and after each response, and
disarmed once the head is parsed (uvicorn then starts a request cycle). The body is read by
the app itself (:func:`read_body`), after the API key was checked from the head alone.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import Any

from starlette.requests import ClientDisconnect, Request

log = logging.getLogger("moe2.gateway.app")

# The paths the gateway serves: every other path is counted under one label, "other", so that
# requests to made-up paths cannot grow the metrics.
ENDPOINTS = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
    "/v1/embeddings",
    "/healthz",
    "/metrics",
)
MODEL_ENDPOINT = "/v1/models/{model}"  # one label for every model retrieved, known or not
OTHER = "other"


class BodyError(Exception):
    """A body that is too large (413), too slow (408) or never finished (the client left)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def endpoint_label(path: str) -> str:
    """The metrics label of a request path: the path when the gateway serves it, else OTHER."""
    if path.startswith("/v1/models/") and "/" not in path[len("/v1/models/") :]:
        return MODEL_ENDPOINT
    return path if path in ENDPOINTS else OTHER


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name; empty: every interface) reaches this host only.
    A name counts as loopback only when every address it resolves to is one."""
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in found}
    return bool(addresses) and all(ipaddress.ip_address(a).is_loopback for a in addresses)


async def read_body(request: Request, limit_bytes: int, timeout_s: float) -> bytes:
    """The request body, at most ``limit_bytes`` (a larger Content-Length is refused before a
    byte of it is read), all of it within ``timeout_s``. Raises BodyError."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BodyError(400, "Content-Length is not a number")
        if int(declared) > limit_bytes:
            raise BodyError(413, f"the body is over the gateway's limit of {limit_bytes} bytes")
    parts: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for part in request.stream():
            size += len(part)
            if size > limit_bytes:
                raise BodyError(413, f"the body is over the gateway's limit of {limit_bytes} bytes")
            parts.append(part)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise BodyError(408, f"the body did not arrive within {timeout_s:g} s") from None
    except ClientDisconnect:
        raise BodyError(400, "the client went away before its body arrived") from None
    return b"".join(parts)


async def client_gone(request: Request) -> None:
    """Returns when the client has disconnected (its body must have been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def timed_protocol(base: type[asyncio.Protocol], header_timeout_s: float) -> type[Any]:
    """uvicorn's HTTP protocol class ``base`` with a deadline on each request head: a connection
    that has not sent a whole head within ``header_timeout_s`` of opening, or of its last
    response, is closed."""

    class TimedProtocol(base):  # type: ignore[valid-type,misc]
        _head_timer: asyncio.TimerHandle | None = None
        _served: object = None  # the request cycle whose head arrived last

        def _arm(self) -> None:
            self._disarm()
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(header_timeout_s, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            transport = getattr(self, "transport", None)
            if transport is not None and not transport.is_closing():
                log.info("closed a connection that sent no request head in %gs", header_timeout_s)
                transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._arm()

        def _head_in(self) -> bool:
            """Whether a request head arrived since the last look (uvicorn made a cycle)."""
            cycle = getattr(self, "cycle", None)
            if cycle is None or cycle is self._served:
                return False
            self._served = cycle
            return True

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._head_in():
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # may start a request already pipelined
            transport = getattr(self, "transport", None)
            if self._head_in() or transport is None or transport.is_closing():
                return
            self._arm()  # the next head on this connection has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    TimedProtocol.__name__ = f"Timed{base.__name__}"
    return TimedProtocol
