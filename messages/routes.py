"""Topic names and packets the broker will accept, checked before anything is published.

Mosquitto disconnects a client that publishes to a topic it considers malformed (a control
character, a Unicode non-character, invalid UTF-8, a wildcard) or sends a packet over the
broker's ``max_packet_size``. A client that reconnects and re-sends the same message is
dropped again, for good. Everything here is pure: it decides, it never publishes.

- :func:`check_topic_name`: a concrete topic name Mosquitto will take from a publisher.
- :func:`check_reply_route`: a topic a prompt asks its answer to be sent to (``reply_to``,
  the MQTT 5 response topic): a valid topic name, and inside the fleet only ``replies/...``
  or ``answers/...``; on the secure broker only ``replies/{username}/...``.
- :func:`check_publish`: the size of the PUBLISH packet against the broker's limit.

Error messages quote at most a short, escaped prefix of the offending name, so a hostile
70,000-character route leaves one short line in a log.
"""

from __future__ import annotations

from messages.topics import PREFIX, TopicError, check_level

# The topic name length prefix in MQTT is two bytes.
MQTT_TOPIC_MAX_BYTES = 65535
# The project's limit for any topic it publishes to: far more than any declared topic needs.
MAX_TOPIC_BYTES = 1024
# The broker's max_packet_size, as set by setup-broker.sh and moe2.local.broker.mosquitto_config().
BROKER_MAX_PACKET_BYTES = 1024 * 1024

# PUBLISH packet overhead, counted conservatively: fixed header byte, remaining-length varint
# (at most 4 bytes), topic length (2), packet id (2, QoS > 0), property-length varint (at most
# 4), plus a margin for properties the client library may add (payload format, expiry, alias).
_FIXED_OVERHEAD = 1 + 4 + 2 + 2 + 4
PROPERTY_MARGIN_BYTES = 64

_SHOWN_CHARS = 40


class RouteError(TopicError):
    """A topic name or reply route that must not be published to; the message says why."""


class PacketTooLargeError(ValueError):
    """A PUBLISH packet the broker would refuse, disconnecting the client that sent it."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"PUBLISH packet of {size} bytes is over the broker's {limit}-byte limit")
        self.size = size
        self.limit = limit


def shown(name: str) -> str:
    """A short, escaped quote of ``name`` for an error message or a log line."""
    if len(name) <= _SHOWN_CHARS:
        return ascii(name)
    return f"{ascii(name[:_SHOWN_CHARS])}... ({len(name)} characters)"


def forbidden_code_point(code: int) -> str | None:
    """Why Mosquitto refuses this code point in a topic or a UTF-8 string, or None."""
    if code == 0:
        return "NUL"
    if code <= 0x1F or 0x7F <= code <= 0x9F:
        return "control character"
    if 0xD800 <= code <= 0xDFFF:
        return "lone surrogate (not valid UTF-8)"
    if 0xFDD0 <= code <= 0xFDEF or (code & 0xFFFF) in (0xFFFE, 0xFFFF):
        return "Unicode non-character"
    return None


def check_topic_name(name: str, max_bytes: int = MAX_TOPIC_BYTES) -> str:
    """``name`` when Mosquitto accepts it as a PUBLISH topic and it fits ``max_bytes``.

    Refused: a non-string, the empty name, the wildcards ``+`` and ``#``, NUL, control
    characters U+0001-001F, U+007F-009F, lone surrogates, the non-characters U+FDD0-FDEF and
    U+xFFFE/U+xFFFF, and more than ``max_bytes`` UTF-8 bytes (never more than 65535, MQTT's
    limit). Raises :class:`RouteError`.
    """
    if not isinstance(name, str):
        raise RouteError(f"a topic name must be a string, not {type(name).__name__}")
    if not name:
        raise RouteError("the topic name is empty")
    limit = min(max_bytes, MQTT_TOPIC_MAX_BYTES)
    # Four UTF-8 bytes per character at most: a name this long is refused before encoding it.
    if len(name) > limit:
        raise RouteError(
            f"topic name {shown(name)} is longer than {limit} bytes"
            + (" (the project's limit)" if limit < MQTT_TOPIC_MAX_BYTES else " (MQTT's limit)")
        )
    for index, char in enumerate(name):
        if char in "+#":
            raise RouteError(
                f"topic name {shown(name)} contains the wildcard {char!r} at {index}: "
                "publish needs a concrete topic"
            )
        why = forbidden_code_point(ord(char))
        if why is not None:
            raise RouteError(
                f"topic name {shown(name)} contains U+{ord(char):04X} ({why}) at {index}; "
                "Mosquitto disconnects a client that publishes to it"
            )
    size = len(name.encode("utf-8"))  # no surrogates left: cannot fail
    if size > limit:
        raise RouteError(
            f"topic name {shown(name)} is {size} UTF-8 bytes, over the {limit}-byte limit"
            + (" (the project's)" if limit < MQTT_TOPIC_MAX_BYTES else " (MQTT's)")
        )
    return name


def check_reply_route(
    route: str, fleet: str, username: str | None = None, max_bytes: int = MAX_TOPIC_BYTES
) -> str:
    """``route`` when the controller may publish an answer there for this asker.

    Beyond :func:`check_topic_name`: no ``$`` topics (the broker's own), and nothing under
    ``moe2/`` except this fleet's ``replies/...`` and ``answers/...`` (an answer must never
    land on a plan, job or status topic, nor in another fleet). When ``username`` is given (the
    secure broker, where every client has a login), only ``moe2/{fleet}/replies/{username}/...``
    is allowed: a client cannot have its answer written into another client's inbox, nor
    anywhere outside the fleet. Raises :class:`RouteError`.
    """
    check_level("fleet", fleet)
    if username is not None:
        _check_username(username)
    check_topic_name(route, max_bytes)
    if route.startswith("$"):
        raise RouteError(f"reply route {shown(route)} is a broker topic ($...)")
    fleet_prefix = f"{PREFIX}/{fleet}/"
    if username is not None:
        own = f"{fleet_prefix}replies/{username}/"
        if not route.startswith(own) or len(route) == len(own):
            raise RouteError(
                f"reply route {shown(route)} is not under {own}: on this broker an answer goes "
                "only to the asker's own replies"
            )
        return route
    if route == PREFIX or route.startswith(f"{PREFIX}/"):
        for allowed in ("replies/", "answers/"):
            inside = f"{fleet_prefix}{allowed}"
            if route.startswith(inside) and len(route) > len(inside):
                return route
        raise RouteError(
            f"reply route {shown(route)} is a fleet topic: only {fleet_prefix}replies/... "
            f"and {fleet_prefix}answers/... may carry answers"
        )
    return route


def _check_username(username: str) -> None:
    """A login's name must be one topic level: its replies live under ``replies/{username}/``."""
    try:
        check_topic_name(username)
    except RouteError as exc:
        raise RouteError(f"username cannot name a reply topic level: {exc}") from None
    if "/" in username:
        raise RouteError(f"username {shown(username)} cannot name a reply topic level: it has /")


def publish_packet_size(
    topic: str,
    payload: bytes,
    *,
    correlation_data: bytes | None = None,
    response_topic: str | None = None,
) -> int:
    """An upper bound of the PUBLISH packet's size in bytes, MQTT 5 properties included."""
    properties = PROPERTY_MARGIN_BYTES
    if correlation_data is not None:
        properties += 1 + 2 + len(correlation_data)
    if response_topic is not None:
        properties += 1 + 2 + len(response_topic.encode("utf-8", "surrogatepass"))
    topic_bytes = len(topic.encode("utf-8", "surrogatepass"))
    return _FIXED_OVERHEAD + topic_bytes + properties + len(payload)


def check_publish(
    topic: str,
    payload: bytes,
    max_packet_bytes: int = BROKER_MAX_PACKET_BYTES,
    *,
    correlation_data: bytes | None = None,
    response_topic: str | None = None,
    max_topic_bytes: int = MAX_TOPIC_BYTES,
) -> int:
    """The packet's size when the broker will take it; raises otherwise.

    :class:`RouteError` for a topic (or response topic) the broker refuses,
    :class:`PacketTooLargeError` for a packet over ``max_packet_bytes``. Both are ValueErrors.
    """
    check_topic_name(topic, max_topic_bytes)
    if response_topic is not None:
        check_topic_name(response_topic, max_topic_bytes)
    if correlation_data is not None and len(correlation_data) > 65535:
        raise RouteError(f"correlation data of {len(correlation_data)} bytes is over 65535")
    size = publish_packet_size(
        topic, payload, correlation_data=correlation_data, response_topic=response_topic
    )
    if size > max_packet_bytes:
        raise PacketTooLargeError(size, max_packet_bytes)
    return size
