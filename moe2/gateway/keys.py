"""The gateway's API keys: read from a file (one a line), and checked from a request's head
alone (``Authorization: Bearer KEY``), so a request without a key is refused before its body
is read."""

from __future__ import annotations

from pathlib import Path

from starlette.requests import Request

from moe2.gateway.errors import GatewayError


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


def has_key(request: Request, keys: set[str] | None) -> bool:
    """Whether the request may use the gateway: no keys configured, or one of them as a bearer."""
    if keys is None:
        return True
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and key.strip() in keys


def require_key(request: Request, keys: set[str] | None) -> None:
    """A 401 unless the request has a key (or none is needed)."""
    if not has_key(request, keys):
        header = request.headers.get("authorization", "")
        raise GatewayError(
            401,
            "Incorrect API key provided"
            if header
            else "No API key provided (Authorization: Bearer KEY)",
            code="invalid_api_key",
        )
