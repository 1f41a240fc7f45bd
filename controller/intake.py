"""A prompt as it arrives, decided without I/O: what makes two deliveries the same prompt, the
key the controller keeps it under, where its asker wants the answer (the reply routes it may
have), whether it fits in a job an agent will take, and what can be read of a payload that
failed validation.

The controller service calls ``arrive`` as a prompt comes in, then hands the ``Arrival`` to the
ledger and the dispatcher."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from controller.ledger import ReplyRoute
from controller.request_ids import scoped_id
from messages import topics
from messages.codec import MAX_PAYLOAD_BYTES, encode
from messages.prompts import Prompt
from messages.routes import RouteError, check_reply_route

# A job carries the prompt and a few fields more than the prompt's own JSON.
JOB_OVERHEAD_BYTES = 1024


@dataclass(frozen=True)
class Arrival:
    """A prompt as it came in, with what the controller decided about it before the ledger."""

    prompt: Prompt  # as the asker sent it
    request_id: str  # the controller's key (a login's id scoped by the login)
    asked_id: str  # the id the asker sent, or one derived from the content
    fingerprint: str  # content and reply routes: the same prompt delivered again matches
    routes: list[ReplyRoute]  # where the answer goes (a login's: under the id it sent)
    refused: list[str]  # the reply routes refused, and why
    problem: str | None  # why it is answered ``rejected`` at once (a refused route, too big)


def arrive(
    prompt: Prompt,
    asked: Iterable[str | None],
    correlation_data: bytes | None,
    owner: str | None,
    fleet: str,
) -> Arrival:
    """A prompt from ``owner`` (a login, or None on the shared topic) that asked its answer on
    the topics ``asked`` (the MQTT 5 response topic, ``reply_to``): a prompt without a request
    id gets one derived from its content, so that the same prompt delivered again joins it."""
    routes, refused = reply_routes(asked, correlation_data, fleet, owner)
    mark = fingerprint(prompt, routes)
    asked_id = prompt.request_id or f"p{mark[:15]}"
    return Arrival(
        prompt=prompt,
        request_id=scoped_id(owner, asked_id),
        asked_id=asked_id,
        fingerprint=mark,
        routes=owned_routes(owner, asked_id, routes, fleet),
        refused=refused,
        problem="; ".join(refused) or too_big_for_agents(prompt),
    )


def fingerprint(prompt: Prompt, routes: list[ReplyRoute]) -> str:
    """What makes two deliveries the same prompt: its content and where it wants the answer."""
    digest = hashlib.sha256(prompt.model_dump_json().encode())
    for route in routes:
        digest.update(b"\0" + route.topic.encode() + b"\0" + (route.correlation_data or b""))
    return digest.hexdigest()


def reply_routes(
    asked: Iterable[str | None], correlation_data: bytes | None, fleet: str, owner: str | None
) -> tuple[list[ReplyRoute], list[str]]:
    """Where the asker wants the answer (``asked``: the MQTT 5 response topic, ``reply_to``),
    each checked as a topic the broker takes and, in this fleet, only under ``replies/`` or
    ``answers/`` (for a login's own prompt topic: only under ``replies/{login}/``); and why
    the refused ones were refused."""
    routes: list[ReplyRoute] = []
    refused: list[str] = []
    for topic in asked:
        if not topic:
            continue
        try:
            check_reply_route(topic, fleet, owner)
        except RouteError as exc:
            refused.append(str(exc))
            continue
        route = ReplyRoute(topic, correlation_data)
        if route not in routes:
            routes.append(route)
    return routes, refused


def owned_routes(
    owner: str | None, asked_id: str, routes: list[ReplyRoute], fleet: str
) -> list[ReplyRoute]:
    """A login's prompt is answered under ``replies/{owner}/{asked_id}`` when it names no
    route, and on every route under the id it sent (the controller keys it scoped)."""
    if owner is None:
        return routes
    if not routes:
        name = topics.REPLIES.name(fleet, client_id=owner, request_id=asked_id)
        routes = [ReplyRoute(name)]
    return [replace(route, request_id=asked_id) for route in routes]


def too_big_for_agents(prompt: Prompt) -> str | None:
    """Why a prompt cannot become a job an agent will take (the job's JSON over the payload
    limit: escaping can make a text six times its size), or None."""
    size = len(encode(prompt)) + JOB_OVERHEAD_BYTES
    if size > MAX_PAYLOAD_BYTES:
        return (
            f"the prompt takes {size} bytes as a job, over the {MAX_PAYLOAD_BYTES}-byte limit "
            "of a message (control characters count six bytes each once escaped)"
        )
    return None


def loose_json(payload: bytes) -> dict[str, Any]:
    """The fields of a payload that failed validation, if it is a JSON object at all."""
    try:
        raw = json.loads(payload[:MAX_PAYLOAD_BYTES])
    except (ValueError, RecursionError):
        return {}
    return raw if isinstance(raw, dict) else {}
