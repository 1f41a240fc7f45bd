"""messages.routes: topic names Mosquitto accepts, reply routes an asker may name, packet sizes.

The pure checks are tested first; then a real Mosquitto (the session's open test broker) shows
that what they refuse is what gets a publisher disconnected, and that what they accept is
delivered.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from messages.routes import (
    BROKER_MAX_PACKET_BYTES,
    MAX_TOPIC_BYTES,
    MQTT_TOPIC_MAX_BYTES,
    PacketTooLargeError,
    RouteError,
    check_publish,
    check_reply_route,
    check_topic_name,
    forbidden_code_point,
    publish_packet_size,
)
from messages.topics import TopicError
from moe2.local.broker import LocalBroker

FORBIDDEN = {
    "NUL": 0x0000,
    "U+0001": 0x0001,
    "U+001F": 0x001F,
    "U+007F (DEL)": 0x007F,
    "U+0080": 0x0080,
    "U+009F": 0x009F,
    "U+FDD0": 0xFDD0,
    "U+FDEF": 0xFDEF,
    "U+FFFE": 0xFFFE,
    "U+FFFF": 0xFFFF,
    "U+1FFFE": 0x1FFFE,
    "U+1FFFF": 0x1FFFF,
    "U+10FFFF": 0x10FFFF,
    "lone high surrogate": 0xD800,
    "lone low surrogate": 0xDFFF,
}
# Neighbours of the forbidden ranges, and ordinary non-ASCII text: all fine.
ALLOWED = {
    "space": 0x0020,
    "tilde": 0x007E,
    "U+00A0": 0x00A0,
    "e acute": 0x00E9,
    "U+D7FF": 0xD7FF,
    "U+E000": 0xE000,
    "U+FDCF": 0xFDCF,
    "U+FDF0": 0xFDF0,
    "U+FFFD": 0xFFFD,
    "U+10000": 0x10000,
    "emoji": 0x1F600,
    "U+10FFFD": 0x10FFFD,
}


# -- check_topic_name -----------------------------------------------------------------------


@pytest.mark.parametrize("code", FORBIDDEN.values(), ids=FORBIDDEN.keys())
def test_forbidden_code_points_are_refused(code: int) -> None:
    name = f"moe2/lab/replies/c1/r{chr(code)}1"
    with pytest.raises(RouteError) as info:
        check_topic_name(name)
    message = str(info.value)
    assert f"U+{code:04X}" in message
    assert forbidden_code_point(code) in message  # type: ignore[operator]
    assert f"at {name.index(chr(code))}" in message  # where the offending character is


@pytest.mark.parametrize("code", ALLOWED.values(), ids=ALLOWED.keys())
def test_neighbouring_and_ordinary_characters_are_accepted(code: int) -> None:
    name = f"moe2/lab/replies/c1/r{chr(code)}1"
    assert check_topic_name(name) == name
    assert forbidden_code_point(code) is None


@pytest.mark.parametrize("code", range(0x20))
def test_every_c0_control_character_is_refused(code: int) -> None:
    with pytest.raises(RouteError):
        check_topic_name(f"a/{chr(code)}")


@pytest.mark.parametrize("code", range(0x7F, 0xA0))
def test_every_c1_control_character_and_del_is_refused(code: int) -> None:
    with pytest.raises(RouteError, match="control character"):
        check_topic_name(f"a/{chr(code)}")


@pytest.mark.parametrize("plane", range(17))
def test_the_last_two_code_points_of_every_plane_are_refused(plane: int) -> None:
    for low in (0xFFFE, 0xFFFF):
        with pytest.raises(RouteError, match="non-character"):
            check_topic_name(f"a/{chr(plane << 16 | low)}")
    assert check_topic_name(f"a/{chr(plane << 16 | 0xFFFD)}")


@pytest.mark.parametrize("wildcard", ["+", "#"])
@pytest.mark.parametrize("where", ["{}", "a/{}", "a/{}/b", "a/b{}"])
def test_wildcards_are_refused(wildcard: str, where: str) -> None:
    with pytest.raises(RouteError, match="wildcard"):
        check_topic_name(where.format(wildcard))


def test_empty_and_non_string_names_are_refused() -> None:
    with pytest.raises(RouteError, match="empty"):
        check_topic_name("")
    with pytest.raises(RouteError, match="must be a string"):
        check_topic_name(b"moe2/lab/answers/r1")  # type: ignore[arg-type]
    with pytest.raises(RouteError, match="must be a string"):
        check_topic_name(None)  # type: ignore[arg-type]


def test_route_error_is_a_topic_error_and_a_value_error() -> None:
    assert issubclass(RouteError, TopicError)
    assert issubclass(RouteError, ValueError)
    assert issubclass(PacketTooLargeError, ValueError)


def test_the_project_limit_counts_utf8_bytes() -> None:
    assert MAX_TOPIC_BYTES == 1024
    at_limit = "a/" + "x" * (MAX_TOPIC_BYTES - 2)
    assert check_topic_name(at_limit) == at_limit
    with pytest.raises(RouteError, match="longer than 1024 bytes .the project's limit."):
        check_topic_name(at_limit + "x")
    # 512 two-byte characters fit exactly; one more is 1026 bytes in 513 characters.
    assert check_topic_name("é" * 512)
    with pytest.raises(RouteError, match="is 1026 UTF-8 bytes, over the 1024-byte limit"):
        check_topic_name("é" * 513)
    four_bytes = "\U0001f600" * 256
    assert check_topic_name(four_bytes) == four_bytes
    with pytest.raises(RouteError, match="1028 UTF-8 bytes"):
        check_topic_name(four_bytes + "\U0001f600")


def test_a_custom_limit_and_mqtts_own_limit() -> None:
    assert check_topic_name("abcd", max_bytes=4) == "abcd"
    with pytest.raises(RouteError, match="over the 4-byte limit|longer than 4 bytes"):
        check_topic_name("abcde", max_bytes=4)
    # No limit passed can lift MQTT's: the length prefix is two bytes.
    longest = "x" * MQTT_TOPIC_MAX_BYTES
    assert check_topic_name(longest, max_bytes=10**6) == longest
    with pytest.raises(RouteError, match="MQTT's limit"):
        check_topic_name(longest + "x", max_bytes=10**6)
    with pytest.raises(RouteError, match=r"65536 UTF-8 bytes, over the 65535-byte limit \(MQTT's"):
        check_topic_name("é" * 32768, max_bytes=10**6)


def test_a_huge_hostile_name_gives_a_short_escaped_message() -> None:
    name = "moe2/lab/replies/c1/" + "\x01" * 70_000
    with pytest.raises(RouteError) as info:
        check_topic_name(name)
    message = str(info.value)
    assert len(message) < 200
    assert "\x01" not in message  # escaped, never raw control characters into a log
    assert "70020 characters" in message


# -- check_reply_route ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        "moe2/lab/replies/ask-7/r-1",
        "moe2/lab/replies/c1/deep/er/r-1",
        "moe2/lab/answers/r-1",
        "myapp/inbox/7",  # outside the project's topics, on the open broker
        "moe2x/lab/agents/a1/jobs",  # not under moe2/
    ],
)
def test_open_broker_routes_that_are_allowed(route: str) -> None:
    assert check_reply_route(route, "lab") == route


@pytest.mark.parametrize(
    "route",
    [
        "moe2/lab/agents/a1/jobs",
        "moe2/lab/agents/a1/plan",
        "moe2/lab/controller/plan",
        "moe2/lab/prompts",
        "moe2/lab/replies",
        "moe2/lab/replies/",
        "moe2/lab/answers/",
        "moe2/lab/answersx/r-1",
        "moe2/other/replies/c1/r-1",  # another fleet
        "moe2/other/answers/r-1",
        "moe2",
        "moe2/",
    ],
)
def test_open_broker_routes_into_fleet_topics_are_refused(route: str) -> None:
    with pytest.raises(RouteError, match="fleet topic"):
        check_reply_route(route, "lab")


def test_broker_topics_are_refused() -> None:
    with pytest.raises(RouteError, match=r"broker topic"):
        check_reply_route("$SYS/broker/log", "lab")


@pytest.mark.parametrize("route", ["moe2/lab/replies/c1/r\x011", "moe2/lab/answers/+", ""])
def test_reply_routes_are_topic_names_first(route: str) -> None:
    with pytest.raises(RouteError):
        check_reply_route(route, "lab")
    with pytest.raises(RouteError):
        check_reply_route(route, "lab", username="c1")


def test_the_route_length_limit_applies() -> None:
    route = "moe2/lab/replies/c1/" + "r" * 70_000
    with pytest.raises(RouteError) as info:
        check_reply_route(route, "lab", username="c1")
    assert len(str(info.value)) < 200


def test_secure_broker_a_client_gets_only_its_own_replies() -> None:
    assert check_reply_route("moe2/s1/replies/c1/q1", "s1", "c1") == "moe2/s1/replies/c1/q1"
    assert check_reply_route("moe2/s1/replies/c1/a/b", "s1", "c1") == "moe2/s1/replies/c1/a/b"


def test_secure_broker_c1_cannot_have_its_answer_written_to_c2s_replies() -> None:
    # The issue's case: c1 asks with reply_to in c2's inbox.
    with pytest.raises(RouteError, match=r"not under moe2/s1/replies/c1/"):
        check_reply_route("moe2/s1/replies/c2/q1", "s1", username="c1")
    # The open broker has no logins to tell c1 from c2: there the same route is allowed.
    assert check_reply_route("moe2/s1/replies/c2/q1", "s1") == "moe2/s1/replies/c2/q1"


@pytest.mark.parametrize(
    "route",
    [
        "moe2/s1/replies/c1",
        "moe2/s1/replies/c1/",
        "moe2/s1/replies/c10/q1",  # a longer name that starts with c1
        "moe2/s1/replies/c/q1",
        "moe2/s1/answers/q1",  # allowed on the open broker, not under a login
        "moe2/s2/replies/c1/q1",
        "myapp/inbox/7",
        "moe2/s1/agents/a1/jobs",
    ],
)
def test_secure_broker_everything_else_is_refused(route: str) -> None:
    with pytest.raises(RouteError, match="only to the asker's own replies"):
        check_reply_route(route, "s1", username="c1")


@pytest.mark.parametrize("username", ["", "c/1", "c+", "#", "c\x01"])
def test_a_username_that_cannot_be_a_topic_level_is_refused(username: str) -> None:
    with pytest.raises(RouteError, match="username"):
        check_reply_route(f"moe2/s1/replies/{username}/q1", "s1", username=username)


def test_a_bad_fleet_is_refused() -> None:
    with pytest.raises(TopicError, match="fleet"):
        check_reply_route("moe2/a/b/replies/c1/q1", "a/b")


# -- check_publish --------------------------------------------------------------------------


def test_packet_size_counts_topic_payload_and_properties() -> None:
    base = publish_packet_size("a/b", b"")
    assert base >= 2 + 3  # at least a fixed header and the topic
    assert publish_packet_size("a/b", b"x" * 1000) == base + 1000
    assert publish_packet_size("a/bé", b"") == base + 2  # UTF-8 bytes, not characters
    assert publish_packet_size("a/b", b"", correlation_data=b"12345678") == base + 3 + 8
    assert publish_packet_size("a/b", b"", response_topic="r/1") == base + 3 + 3


def test_packet_at_the_limit_is_accepted_and_one_byte_more_is_refused() -> None:
    topic = "moe2/lab/answers/r-1"
    payload = b"x" * (BROKER_MAX_PACKET_BYTES - publish_packet_size(topic, b""))
    assert check_publish(topic, payload, BROKER_MAX_PACKET_BYTES) == BROKER_MAX_PACKET_BYTES
    with pytest.raises(PacketTooLargeError) as info:
        check_publish(topic, payload + b"x", BROKER_MAX_PACKET_BYTES)
    assert info.value.size == BROKER_MAX_PACKET_BYTES + 1
    assert info.value.limit == BROKER_MAX_PACKET_BYTES
    assert "over the broker's 1048576-byte limit" in str(info.value)


def test_correlation_data_counts_towards_the_limit() -> None:
    topic = "moe2/lab/replies/c1/r-1"
    payload = b"x" * (1000 - publish_packet_size(topic, b""))
    assert check_publish(topic, payload, 1000) == 1000
    with pytest.raises(PacketTooLargeError):
        check_publish(topic, payload, 1000, correlation_data=b"c")
    with pytest.raises(RouteError, match="correlation data"):
        check_publish(topic, b"", correlation_data=b"c" * 65536)


def test_check_publish_refuses_a_bad_topic_or_response_topic_before_the_size() -> None:
    with pytest.raises(RouteError, match="U\\+0001"):
        check_publish("moe2/lab/replies/c1/\x01", b"small")
    with pytest.raises(RouteError, match="wildcard"):
        check_publish("moe2/lab/answers/r1", b"small", response_topic="moe2/lab/#")


def test_the_escaped_control_character_prompt_does_not_fit() -> None:
    # 200 kB of U+0001 passes the 256 KiB payload check; a job carrying it, JSON-escaped to
    # six bytes a character, is 1.2 MB: over the broker's limit, so it must not be published.
    prompt = "\x01" * 200_000
    job = json.dumps({"prompt": prompt}).encode()
    assert len(job) > 1_200_000
    with pytest.raises(PacketTooLargeError):
        check_publish("moe2/lab/agents/a1/jobs", job)


# -- against a real Mosquitto ---------------------------------------------------------------


class Probe:
    """Publishes once, then says whether the broker delivered it or dropped the connection."""

    def __init__(self, broker: LocalBroker) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"moe2-probe-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.connected = threading.Event()
        self.dropped = threading.Event()
        self.client.on_connect = lambda c, u, f, r, p: self.connected.set()
        self.client.on_disconnect = lambda c, u, f, r, p: self.dropped.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        assert self.connected.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listener(mosquitto: LocalBroker) -> Any:
    """A subscriber to everything under probe/ on the session's Mosquitto."""
    got: list[str] = []
    arrived = threading.Event()
    sub = Probe(mosquitto)

    def on_message(client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.topic)
        arrived.set()

    sub.client.on_message = on_message
    sub.client.subscribe("probe/#", qos=1)

    def send(name: str, payload: bytes = b"x") -> bool:
        """True when delivered; False when the broker disconnected the publisher (or the
        client library would not send it)."""
        arrived.clear()
        got.clear()
        probe = Probe(mosquitto)
        try:
            if probe.client.publish(name, payload, qos=1).rc != mqtt.MQTT_ERR_SUCCESS:
                return False
            for _ in range(50):
                if probe.dropped.wait(0.1):
                    return False
                if arrived.is_set():
                    return got == [name]
            raise AssertionError(f"neither delivered nor dropped: {name!a}")
        finally:
            probe.close()

    time.sleep(0.3)  # the subscription is in place
    yield send
    sub.close()


# Lone surrogates cannot even be encoded to send.
SENDABLE = {k: c for k, c in FORBIDDEN.items() if not 0xD800 <= c <= 0xDFFF}


@pytest.mark.parametrize("code", SENDABLE.values(), ids=SENDABLE.keys())
def test_mosquitto_drops_a_publisher_for_what_check_topic_name_refuses(
    listener: Any, code: int
) -> None:
    name = f"probe/r{chr(code)}1"
    with pytest.raises(RouteError):
        check_topic_name(name)
    assert listener(name) is False


@pytest.mark.parametrize("code", ALLOWED.values(), ids=ALLOWED.keys())
def test_mosquitto_delivers_what_check_topic_name_accepts(listener: Any, code: int) -> None:
    name = check_topic_name(f"probe/r{chr(code)}1")
    assert listener(name) is True


def test_mosquitto_takes_a_packet_check_publish_accepts_at_the_limit(listener: Any) -> None:
    # The open test broker has max_packet_size 1048576, as setup-broker.sh's does.
    name = "probe/big"
    payload = b"x" * (BROKER_MAX_PACKET_BYTES - publish_packet_size(name, b""))
    assert check_publish(name, payload) == BROKER_MAX_PACKET_BYTES
    assert listener(name, payload) is True  # the estimate is not below the real size
    over = b"x" * BROKER_MAX_PACKET_BYTES
    with pytest.raises(PacketTooLargeError):
        check_publish(name, over)
    assert listener(name, over) is False
