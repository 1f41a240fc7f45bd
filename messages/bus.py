"""A fleet's MQTT connection: publish typed messages on declared topics, dispatch what arrives.

One paho-mqtt 2.x client, MQTT 5 or 3.1.1. Incoming payloads are decoded against their topic's
message type; a payload that fails is handed to ``on_reject`` with the reason and never reaches a
handler, and a handler that raises is logged without stopping the network loop.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from messages.base import Message
from messages.codec import PayloadError, decode, decode_text, encode
from messages.routes import BROKER_MAX_PACKET_BYTES, PacketTooLargeError, RouteError, check_publish
from messages.topics import Topic, check_level

log = logging.getLogger(__name__)

M = TypeVar("M")
MqttVersion = Literal["5", "3.1.1"]


class BrokerUrlError(ValueError):
    """A broker URL that cannot be used."""


class PublishRefused(ValueError):
    """A publish the broker would refuse (and disconnect us for): not sent."""


@dataclass(frozen=True)
class BrokerEndpoint:
    """Where the broker is, and how to log in: TLS for ``mqtts://``, optional credentials."""

    host: str
    port: int
    mqtt_version: MqttVersion = "5"
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, mqtt_version: MqttVersion = "5") -> BrokerEndpoint:
        """``mqtt://host:port`` (port 1883 when omitted) or ``mqtts://host:port`` (TLS, 8883)."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts"):
            raise BrokerUrlError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {url!r} has no host")
        tls = parts.scheme == "mqtts"
        try:
            port = (8883 if tls else 1883) if parts.port is None else parts.port
        except ValueError:
            raise BrokerUrlError(f"broker URL {url!r} has an invalid port") from None
        if not 0 < port < 65536:
            raise BrokerUrlError(f"broker URL {url!r}: port must be 1-65535")
        return cls(parts.hostname, port, mqtt_version, tls=tls)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


@dataclass(frozen=True)
class Inbound(Generic[M]):
    """A decoded message with where it came from and its MQTT 5 request/response properties."""

    topic: str
    params: dict[str, str]
    message: M
    response_topic: str | None = None
    correlation_data: bytes | None = None


RejectHandler = Callable[[Topic[Any], str, str], None]


@dataclass
class _Subscription:
    topic: Topic[Any]
    filter: str
    handler: Callable[[Inbound[Any]], None]
    on_empty: Callable[[dict[str, str]], None] | None = None
    on_invalid: Callable[[Inbound[bytes], str], None] | None = None


@dataclass(frozen=True)
class Outgoing:
    """A message the client had not yet had acknowledged when its connection dropped."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: Properties | None


# MQTT 5 reason code of a DISCONNECT sent because another client connected with our client id.
SESSION_TAKEN_OVER = 142


@dataclass
class Bus:
    """One MQTT client bound to one fleet.

    A one-shot client (``moe2 ask``) calls ``connect``, which fails fast. A service calls
    ``start``: it keeps trying the broker with a bounded backoff and reconnects for ever; with
    ``persistent`` its session (subscriptions and QoS 1 messages sent while it is away) outlives
    a dropped connection for ``session_expiry_s``. Every (re)connect resubscribes and then calls
    the ``on_connected`` hooks, so a service re-announces itself each time.
    """

    endpoint: BrokerEndpoint
    fleet: str
    client_id: str
    keepalive_s: int = 10
    on_reject: RejectHandler | None = None
    persistent: bool = False
    session_expiry_s: int = 3600
    reconnect_max_s: float = 2.0
    on_connected: list[Callable[[bool], None]] = field(default_factory=list)
    max_packet_bytes: int = BROKER_MAX_PACKET_BYTES
    _subs: list[_Subscription] = field(default_factory=list, init=False)
    _connected: threading.Event = field(default_factory=threading.Event, init=False)
    _connect_error: str | None = field(default=None, init=False)
    _tls_ready: bool = field(default=False, init=False)
    _one_shot: bool = field(default=False, init=False)
    connects: int = field(default=0, init=False)
    # SUBACKs: the filter each subscribe's message id asked for, and those the broker refused
    # (an ACL that does not let this login read them), with the reason it gave.
    _suback_lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _sub_mids: dict[int, str] = field(default_factory=dict, init=False)
    _refused: dict[str, str] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        check_level("fleet", self.fleet)
        protocol = mqtt.MQTTv5 if self.endpoint.mqtt_version == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            # MQTT 3.1.1 only (MQTT 5 sets clean start per CONNECT)
            clean_session=None if protocol == mqtt.MQTTv5 else not self.persistent,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = _no_delay
        self.client.reconnect_delay_set(1, max(1, round(self.reconnect_max_s)))
        if self.endpoint.username is not None:
            self.client.username_pw_set(self.endpoint.username, self.endpoint.password)

    def _connect_args(self) -> dict[str, Any]:
        """MQTT 5: the broker sends us no packet over ``max_packet_bytes`` (an oversized
        payload is dropped there, never read here), and the session's lifetime."""
        if not self.mqtt5:
            return {}
        properties = Properties(PacketTypes.CONNECT)
        properties.MaximumPacketSize = self.max_packet_bytes
        if self.persistent:
            properties.SessionExpiryInterval = self.session_expiry_s
        return {"clean_start": not self.persistent, "properties": properties}

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout_s: float | None = None) -> bool:
        return self._connected.wait(timeout_s)

    def start(self) -> None:
        """Connect in the background and keep connected: a broker that is down or restarting
        is retried with a backoff of 1 s doubling to ``reconnect_max_s``, each failure logged."""
        if self.endpoint.tls and not self._tls_ready:
            self._use_tls()
        self.client.on_connect_fail = self._on_connect_fail
        self.client.connect_async(
            self.endpoint.host,
            self.endpoint.port,
            keepalive=self.keepalive_s,
            **self._connect_args(),
        )
        self.client.loop_start()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning(
            "broker %s unreachable; retrying within %.0f s", self.endpoint.url, self.reconnect_max_s
        )

    @property
    def mqtt5(self) -> bool:
        return self.endpoint.mqtt_version == "5"

    def set_will(self, topic: Topic[Any], message: Message, **params: str) -> None:
        """The message the broker publishes for us if we vanish; call before ``connect``."""
        self.client.will_set(
            topic.name(self.fleet, **params), encode(message), qos=topic.qos, retain=topic.retained
        )

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect and start the network loop; raise ConnectionError, in one line that says
        what to do, when the broker cannot be reached, refuses the login, or closes the
        connection before answering (a TLS port asked in plain MQTT)."""
        self._connect_error = None
        self._one_shot = True
        if self.endpoint.tls and not self._tls_ready:
            self._use_tls()
        try:
            self.client.connect(
                self.endpoint.host,
                self.endpoint.port,
                keepalive=self.keepalive_s,
                **self._connect_args(),
            )
        except OSError as exc:
            raise ConnectionError(f"cannot reach broker {self.endpoint.url}: {exc}") from None
        self.client.loop_start()
        deadline = time.monotonic() + timeout_s
        while not self._connected.wait(0.05):
            if self._connect_error is not None or time.monotonic() > deadline:
                self.client.disconnect()
                self.client.loop_stop()
                reason = self._connect_error or f"no CONNACK within {timeout_s:.0f} s"
                raise ConnectionError(f"broker {self.endpoint.url} {reason}")

    def _use_tls(self) -> None:
        ca = self.endpoint.ca_file
        if ca is not None and not Path(ca).is_file():
            raise ConnectionError(f"CA file {ca} does not exist (needed for {self.endpoint.url})")
        try:
            self.client.tls_set(ca_certs=ca)  # None: the system's trusted CAs
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise ConnectionError(f"cannot use CA file {ca}: {exc}") from None
        self._tls_ready = True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def subscribe(
        self,
        topic: Topic[Any],
        handler: Callable[[Inbound[Any]], None],
        on_empty: Callable[[dict[str, str]], None] | None = None,
        on_invalid: Callable[[Inbound[bytes], str], None] | None = None,
        **params: str,
    ) -> None:
        """Handle every message on ``topic``; parameters not given are wildcards. ``on_empty``
        hears an empty payload (a retained message being cleared) with the topic's parameters;
        without it an empty payload is ignored. ``on_invalid`` hears a payload that failed
        validation (raw, with its reason and MQTT 5 response properties), after ``on_reject``:
        to tell its sender."""
        sub = _Subscription(
            topic, topic.filter(self.fleet, **params), handler, on_empty, on_invalid
        )
        self._subs.append(sub)
        self.client.message_callback_add(sub.filter, self._dispatcher(sub))
        if self._connected.is_set():
            self._subscribe(self.client, sub)

    def _subscribe(self, client: mqtt.Client, sub: _Subscription) -> None:
        """SUBSCRIBE, remembering its message id to read the broker's SUBACK by."""
        with self._suback_lock:
            _, mid = client.subscribe(sub.filter, qos=sub.topic.qos)
            if mid is not None:
                self._sub_mids[mid] = sub.filter

    def refused_subscriptions(self) -> dict[str, str]:
        """The topic filters the broker refused to subscribe us to (MQTT 5 SUBACK reason 0x87
        "Not authorized", or any failure; MQTT 3.1.1's 0x80), each with the reason it gave:
        an ACL that does not let this login read them. Empty until the SUBACKs arrive."""
        with self._suback_lock:
            return dict(self._refused)

    def publish(
        self,
        topic: Topic[Any],
        message: Message | str,
        *,
        correlation_data: bytes | None = None,
        **params: str,
    ) -> mqtt.MQTTMessageInfo:
        return self.publish_to(
            topic.name(self.fleet, **params),
            message,
            qos=topic.qos,
            retain=topic.retained,
            correlation_data=correlation_data,
        )

    def publish_to(
        self,
        name: str,
        message: Message | str | bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        response_topic: str | None = None,
    ) -> mqtt.MQTTMessageInfo:
        """Publish on a concrete topic name (a reply topic, for instance). Raises PublishRefused,
        sending nothing, for a topic or packet the broker would refuse: a client that
        publishes one is disconnected, and would be again at every retry."""
        if isinstance(message, Message):
            payload = encode(message)
        elif isinstance(message, str):
            payload = message.encode("utf-8")
        else:
            payload = message
        try:
            check_publish(
                name,
                payload,
                self.max_packet_bytes,
                correlation_data=correlation_data if self.mqtt5 else None,
                response_topic=response_topic if self.mqtt5 else None,
            )
        except (RouteError, PacketTooLargeError) as exc:
            log.error("not published: %s", exc)
            raise PublishRefused(str(exc)) from None
        properties = None
        if self.mqtt5 and (correlation_data is not None or response_topic is not None):
            properties = Properties(PacketTypes.PUBLISH)
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
            if response_topic is not None:
                properties.ResponseTopic = response_topic
        return self.client.publish(name, payload, qos=qos, retain=retain, properties=properties)

    def take_outgoing(self) -> list[Outgoing]:
        """Take back every message published but not yet acknowledged by the broker, so the
        client does not send it on its own. Called from an ``on_connected`` hook (paho re-sends
        what it holds right after those hooks return): a service that may no longer speak for
        the fleet after a dropped connection decides itself what of it still goes out."""
        client = self.client
        with client._out_message_mutex:  # paho keeps no public API for its outgoing queue
            held = [
                Outgoing(m.topic, bytes(m.payload), m.qos, m.retain, m.properties)
                for m in client._out_messages.values()
            ]
            client._out_messages.clear()
            client._inflight_messages = 0
        return held

    def republish(self, message: Outgoing) -> None:
        """Send again a message taken back with ``take_outgoing``."""
        self.client.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            properties=message.properties,
        )

    def clear_retained(self, topic: Topic[Any], **params: str) -> None:
        self.client.publish(topic.name(self.fleet, **params), b"", qos=topic.qos, retain=True)

    # -- paho callbacks -------------------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._connect_error = _refusal_hint(str(reason), self.endpoint)
            if not self._one_shot:  # a one-shot client says it once, in its ConnectionError
                log.error("broker %s %s", self.endpoint.url, self._connect_error)
            return
        for sub in self._subs:
            self._subscribe(client, sub)
        self.connects += 1
        if self.connects > 1:
            log.info(
                "reconnected to %s (session %s)",
                self.endpoint.url,
                "resumed" if getattr(flags, "session_present", False) else "new",
            )
        self._connected.set()
        for hook in self.on_connected:
            self._guard(hook, bool(getattr(flags, "session_present", False)))

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        with self._suback_lock:
            wanted = self._sub_mids.pop(mid, None)
            if wanted is None:
                return
            failed = [r for r in reasons if getattr(r, "is_failure", False)]
            if failed:
                self._refused[wanted] = f"{failed[0]} (0x{failed[0].value:02x})"
                log.warning("broker %s refused subscription %s: %s", self.endpoint.url,
                            wanted, self._refused[wanted])  # fmt: skip
            else:
                self._refused.pop(wanted, None)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if self._one_shot and not self._connected.is_set():
            if self._connect_error is not None:
                return  # refused: connect() says why, once
            self._connect_error = "closed the connection before answering" + (
                ": if it speaks TLS on this port, use mqtts:// (and --ca-file)"
                if not self.endpoint.tls
                else ": check that this port speaks TLS and that --ca-file is its CA"
            )
            return
        self._connected.clear()
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            log.error(
                "broker %s dropped us: another client connected with client id %r",
                self.endpoint.url,
                self.client_id,
            )
        elif reason.is_failure:
            log.warning("disconnected from %s: %s; reconnecting", self.endpoint.url, reason)

    def _dispatcher(
        self, sub: _Subscription
    ) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def dispatch(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            params = sub.topic.match(self.fleet, msg.topic) or {}
            if not msg.payload:
                # how MQTT clears a retained message, never a message: heard by on_empty only
                if sub.on_empty is not None:
                    self._guard(sub.on_empty, params)
                return
            try:
                if sub.topic.message is None:
                    decoded: Any = decode_text(msg.payload)
                else:
                    decoded = decode(sub.topic.message, msg.payload)
                for key, value in params.items():
                    check_level(key, value)
            except (PayloadError, ValueError) as exc:
                reason = getattr(exc, "reason", str(exc))
                log.warning("rejected payload on %s: %.300s", msg.topic, reason)
                if self.on_reject is not None:
                    self._guard(self.on_reject, sub.topic, msg.topic, reason)
                if sub.on_invalid is not None:
                    self._guard(sub.on_invalid, self._inbound(msg, params, msg.payload), reason)
                return
            self._guard(sub.handler, self._inbound(msg, params, decoded))

        return dispatch

    @staticmethod
    def _inbound(msg: mqtt.MQTTMessage, params: dict[str, str], message: Any) -> Inbound[Any]:
        props = getattr(msg, "properties", None)
        return Inbound(
            topic=msg.topic,
            params=params,
            message=message,
            response_topic=getattr(props, "ResponseTopic", None) if props else None,
            correlation_data=getattr(props, "CorrelationData", None) if props else None,
        )

    @staticmethod
    def _guard(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a bad handler must not stop the network loop
            log.exception("handler %s failed", getattr(fn, "__qualname__", fn))


def _refusal_hint(reason: str, endpoint: BrokerEndpoint) -> str:
    """The broker's CONNACK refusal, with what to do about it."""
    lowered = reason.lower()
    if "user name" in lowered or "password" in lowered or "authori" in lowered:
        who = f"login {endpoint.username!r}" if endpoint.username else "an anonymous login"
        return (
            f"refused {who} ({reason}): check --username and --password-file (or "
            "MOE2_USERNAME / MOE2_PASSWORD_FILE)"
        )
    if "identifier" in lowered:
        return f"refused the client id ({reason}): ids on the secure broker start with moe2-"
    return f"refused the connection ({reason})"


def _no_delay(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """TCP_NODELAY: a small MQTT packet goes out at once, not after the peer's delayed ACK."""
    with contextlib.suppress(OSError, AttributeError):  # a socket without TCP (a proxy)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
