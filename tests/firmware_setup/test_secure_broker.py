"""setup-broker.sh's Mosquitto: TLS, a login per identity, and an ACL that holds.

Mosquitto is started with the generated config; paho clients check what the ACL refuses, that
no login can take over the controller's or an agent's session, that oversize packets are cut
off where messages.routes says, and a controller, an agent and `moe2 ask` run end to end over
TLS with their own credentials (controller and agent on the fleet port, ask on the client port).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from messages.routes import (
    BROKER_MAX_PACKET_BYTES,
    PacketTooLargeError,
    check_publish,
    publish_packet_size,
)
from moe2.local.broker import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "firmware_setup" / "broker" / "setup-broker.sh"
FLEET = "sec"

NEEDED = ("mosquitto", "mosquitto_passwd", "openssl")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in NEEDED),
    reason="needs mosquitto, mosquitto_passwd and openssl (apt-get install mosquitto openssl)",
)


@dataclass
class SecureBroker:
    out: Path
    port: int  # the fleet port: controller and agents, client id = login
    client_port: int  # clients, client ids moe2-...
    creds: dict[str, Any]

    @property
    def ca(self) -> str:
        return str(self.out / "ca.crt")

    def login(self, who: str) -> tuple[str, str]:
        kind, _, name = who.partition(":")
        entry = self.creds["controller"] if kind == "controller" else self.creds[kind][name]
        return entry["username"], entry["password"]


def run_setup(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), "--out", str(out), *args], capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def broker() -> Iterator[SecureBroker]:
    # Not under pytest's tmp_path: that is 0700, and Mosquitto run as root reads its password
    # and ACL files as the mosquitto user.
    base = Path(tempfile.mkdtemp(prefix="moe2-secure-"))
    base.chmod(0o755)
    out = base / "broker"
    port = free_port()
    client_port = free_port()
    while client_port == port:
        client_port = free_port()
    args = ["--fleet", FLEET, "--agent", "a1", "--client", "c1", "--port", str(port)]
    args += ["--client-port", str(client_port)]
    run_setup(out, *args)
    first = json.loads((out / "credentials.json").read_text())
    ca_before = (out / "ca.crt").read_bytes()
    # A re-run with more identities keeps every existing credential and the CA.
    run_setup(out, *args, "--agent", "a2", "--client", "c2", "--standby", "ctl2")
    creds = json.loads((out / "credentials.json").read_text())
    assert creds["agents"]["a1"] == first["agents"]["a1"]
    assert creds["clients"]["c1"] == first["clients"]["c1"]
    assert creds["controller"] == first["controller"]
    assert sorted(creds["agents"]) == ["a1", "a2"] and sorted(creds["clients"]) == ["c1", "c2"]
    assert (out / "ca.crt").read_bytes() == ca_before
    assert (out / "credentials.json").stat().st_mode & 0o777 == 0o600
    assert (out / "ca.key").stat().st_mode & 0o777 == 0o600
    conf = (out / "mosquitto.conf").read_text()
    assert "max_packet_size 1048576\n" in conf and "persistence true\n" in conf
    assert conf.count("use_username_as_clientid true") == 1  # the fleet port only
    log = open(base / "mosquitto.log", "ab")  # noqa: SIM115 - closed below
    conf = str(out / "mosquitto.conf")
    proc = subprocess.Popen(["mosquitto", "-c", conf], stdout=log, stderr=log)
    try:
        wait_for_port(port, 10)
        wait_for_port(client_port, 10)
        yield SecureBroker(out, port, client_port, creds)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


class Client:
    """A paho client over TLS that records what it receives and when it is disconnected.

    The controller and agents connect to the fleet port, clients to the client port, unless
    ``port`` says otherwise; client ids start with moe2-, as the broker requires.
    """

    def __init__(
        self,
        broker: SecureBroker,
        who: str | None,
        *,
        client_id: str | None = None,
        port: int | None = None,
    ) -> None:
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id or f"moe2-t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.tls_set(ca_certs=broker.ca)
        if who is not None:
            self.client.username_pw_set(*broker.login(who))
        self.received: list[tuple[str, bytes]] = []
        self.reason: Any = None
        self.disconnects: list[Any] = []
        self.connected = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda c, u, f, reason, p: self.disconnects.append(reason)
        self.client.on_message = lambda c, u, m: self.received.append((m.topic, m.payload))
        if port is None:
            port = broker.client_port if (who or "").startswith("clients:") else broker.port
        self.client.connect("localhost", port)
        self.client.loop_start()
        self.connected.wait(10)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.reason = reason
        self.connected.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not self.reason.is_failure

    def subscribe(self, topic: str) -> Client:
        self.client.subscribe(topic, qos=1)
        time.sleep(0.3)
        return self

    def publish(self, topic: str, payload: bytes = b"x") -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def topics(self) -> list[str]:
        return [t for t, _ in self.received]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(broker: SecureBroker) -> Iterator[Any]:
    made: list[Client] = []

    def make(who: str | None, **how: Any) -> Client:
        made.append(Client(broker, who, **how))
        return made[-1]

    yield make
    for c in made:
        c.close()


def topic(rest: str) -> str:
    return f"moe2/{FLEET}/{rest}"


def test_anonymous_and_wrong_password_are_refused(broker: SecureBroker, clients: Any) -> None:
    anonymous = clients(None)
    assert anonymous.reason is not None and anonymous.reason.is_failure
    assert clients("controller").reason.is_failure is False
    wrong = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    wrong.tls_set(ca_certs=broker.ca)
    wrong.username_pw_set("a1", "not-the-password")
    got: list[Any] = []
    wrong.on_connect = lambda c, u, f, reason, p: got.append(reason)
    wrong.connect("localhost", broker.port)
    wrong.loop_start()
    time.sleep(1)
    wrong.loop_stop()
    assert got and got[0].is_failure


def test_tls_is_required_and_verified(broker: SecureBroker) -> None:
    plain = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    plain.username_pw_set(*broker.login("controller"))
    got: list[Any] = []
    plain.on_connect = lambda c, u, f, reason, p: got.append(reason)
    try:
        plain.connect("localhost", broker.port)
        plain.loop_start()
        time.sleep(1)
        plain.loop_stop()
    except OSError:
        pass
    assert not got or got[0].is_failure
    untrusted = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    untrusted.tls_set(ca_certs=None)  # the system CAs do not know the fleet's CA
    with pytest.raises(ssl.SSLError):
        untrusted.connect("localhost", broker.port)


def test_agent_cannot_publish_for_another_agent(clients: Any) -> None:
    controller = clients("controller").subscribe(topic("#"))
    a1 = clients("agents:a1")
    a1.publish(topic("agents/a2/results"), b"forged")
    a1.publish(topic("agents/a1/results"), b"mine")
    time.sleep(0.5)
    assert topic("agents/a1/results") in controller.topics()  # the path works
    assert topic("agents/a2/results") not in controller.topics()
    a1.publish(topic("agents/a1/plan"), b"self-planned")
    time.sleep(0.3)
    assert topic("agents/a1/plan") not in controller.topics()


def test_agent_reads_only_its_own_plan(clients: Any) -> None:
    a1 = clients("agents:a1").subscribe(topic("agents/+/plan"))
    controller = clients("controller")
    controller.publish(topic("agents/a1/plan"), b"for a1")
    controller.publish(topic("agents/a2/plan"), b"for a2")
    time.sleep(0.5)
    assert topic("agents/a2/plan") not in a1.topics()


def test_client_cannot_publish_a_plan_or_jobs(clients: Any) -> None:
    a1 = clients("agents:a1").subscribe(topic("agents/a1/plan")).subscribe(topic("agents/a1/jobs"))
    controller = clients("controller").subscribe(topic("#"))
    c1 = clients("clients:c1")
    c1.publish(topic("agents/a1/plan"), b"evil plan")
    c1.publish(topic("agents/a1/jobs"), b"evil job")
    c1.publish(topic("clients/c1/prompts/text"), b"a fair question")
    # The shared prompt topics are not a client's: there, a prompt could name any reply route.
    c1.publish(topic("prompts"), b'{"prompt": "q", "reply_to": "moe2/s1/replies/c2/q1"}')
    c1.publish(topic("prompts/text"), b"anonymous question")
    time.sleep(0.5)
    assert topic("clients/c1/prompts/text") in controller.topics()  # the path works
    assert topic("prompts") not in controller.topics()
    assert topic("prompts/text") not in controller.topics()
    assert not a1.received
    assert topic("agents/a1/plan") not in controller.topics()
    assert topic("agents/a1/jobs") not in controller.topics()


def test_client_cannot_read_another_clients_replies(clients: Any) -> None:
    c1 = clients("clients:c1").subscribe(topic("replies/c2/#")).subscribe(topic("replies/#"))
    c2 = clients("clients:c2").subscribe(topic("replies/c2/#"))
    c1.publish(topic("replies/c2/r1"), b"forged answer")
    controller = clients("controller")
    controller.publish(topic("replies/c2/r2"), b"the answer")
    time.sleep(0.5)
    assert c2.topics() == [topic("replies/c2/r2")]
    assert c1.received == []


def test_a_client_publishes_prompts_only_under_its_own_login(clients: Any) -> None:
    # The topic a prompt arrives on names the asker's login: c1 cannot pose as c2.
    controller = clients("controller").subscribe(topic("clients/#")).subscribe(topic("prompts/#"))
    c1 = clients("clients:c1")
    c1.publish(topic("clients/c1/prompts"), b"mine")
    c1.publish(topic("clients/c1/prompts/text"), b"mine too")
    c1.publish(topic("clients/c1/prompts/cancel"), b"my cancel")
    c1.publish(topic("clients/c2/prompts"), b"posing as c2")
    c1.publish(topic("clients/c2/prompts/text"), b"posing as c2")
    c1.publish(topic("clients/c2/prompts/cancel"), b"cancelling c2's prompt")
    c1.publish(topic("prompts/cancel"), b"cancelling anyone's prompt")
    time.sleep(0.5)
    assert controller.topics() == [
        topic("clients/c1/prompts"),
        topic("clients/c1/prompts/text"),
        topic("clients/c1/prompts/cancel"),
    ]


def test_no_other_login_can_take_over_an_agents_session(broker: SecureBroker, clients: Any) -> None:
    # The agent asks for its usual id; on the fleet port the broker makes it the login, "a1".
    a1 = clients("agents:a1", client_id="moe2-agent-a1").subscribe(topic("agents/a1/jobs"))
    assert a1.accepted
    # A client that reuses the agent's id connects on its own port, under a different id...
    impostor = clients("clients:c1", client_id="moe2-agent-a1")
    assert impostor.accepted
    # ...and cannot claim the id the agent really has: every id on the client port starts
    # with moe2-, and the client's login does not open the fleet port at all.
    for who, client_id, port in [
        ("clients:c1", "a1", broker.client_port),
        ("controller", "a1", broker.client_port),
        ("clients:c1", "moe2-agent-a1", broker.port),
        ("clients:c1", "a1", broker.port),
    ]:
        refused = clients(who, client_id=client_id, port=port)
        assert not refused.accepted, (who, client_id, port)
    # Another agent's login on the fleet port gets its own name as id, whatever it asks for.
    a2 = clients("agents:a2", client_id="moe2-agent-a1")
    assert a2.accepted
    time.sleep(0.5)
    assert a1.disconnects == []  # a1 kept its connection throughout
    clients("controller").publish(topic("agents/a1/jobs"), b"a job")
    time.sleep(0.5)
    assert a1.received == [(topic("agents/a1/jobs"), b"a job")]  # and is still served


def test_no_other_login_can_take_over_the_controllers_session(
    broker: SecureBroker, clients: Any
) -> None:
    controller = clients("controller", client_id="moe2-controller-1234").subscribe(
        topic("clients/c1/prompts/text")
    )
    assert controller.accepted
    # A hot-standby controller has a login of its own, so it connects beside the active one.
    standby = clients("standby:ctl2", client_id="moe2-controller-1234")
    assert standby.accepted
    assert not clients("clients:c1", client_id="controller").accepted
    assert not clients("agents:a1", client_id="controller", port=broker.client_port).accepted
    # An operator tool with the controller's login connects on the client port beside it.
    tool = clients("controller", client_id="moe2-controller-1234", port=broker.client_port)
    assert tool.accepted
    clients("clients:c1").publish(topic("clients/c1/prompts/text"), b"still there?")
    time.sleep(0.5)
    assert controller.disconnects == [] and tool.disconnects == [] and standby.disconnects == []
    assert controller.topics() == [topic("clients/c1/prompts/text")]


def test_one_client_login_may_hold_many_connections(clients: Any) -> None:
    # `moe2 ask` runs many times at once with one login: no connection evicts another.
    asks = [clients("clients:c1").subscribe(topic(f"replies/c1/r{i}")) for i in range(3)]
    controller = clients("controller")
    for i in range(3):
        controller.publish(topic(f"replies/c1/r{i}"), b"answer")
    time.sleep(0.5)
    assert [a.topics() for a in asks] == [[topic(f"replies/c1/r{i}")] for i in range(3)]
    assert all(a.disconnects == [] for a in asks)


def test_a_second_connection_of_one_agent_login_replaces_the_first(clients: Any) -> None:
    # One identity, one session on the fleet port: a restarted agent displaces its old self.
    old = clients("agents:a2")
    new = clients("agents:a2")
    time.sleep(0.5)
    assert new.accepted and new.disconnects == []
    assert old.disconnects, "the older connection of the same login was not replaced"
    old.client.loop_stop()  # it would reconnect and displace the new one in turn


def test_packets_over_the_limit_cut_the_sender_off_where_check_publish_says(
    broker: SecureBroker, clients: Any
) -> None:
    controller = clients("controller")
    c1 = clients("clients:c1").subscribe(topic("replies/c1/big"))
    name = topic("replies/c1/big")
    fits = b"x" * (BROKER_MAX_PACKET_BYTES - publish_packet_size(name, b""))
    assert check_publish(name, fits) == BROKER_MAX_PACKET_BYTES
    controller.publish(name, fits)
    time.sleep(1)
    assert [len(p) for t, p in c1.received] == [len(fits)]
    assert controller.disconnects == []
    too_big = b"x" * BROKER_MAX_PACKET_BYTES
    with pytest.raises(PacketTooLargeError):
        check_publish(name, too_big)
    sender = clients("controller", port=broker.client_port)  # not displacing `controller`
    sender.client.publish(name, too_big, qos=1)
    time.sleep(1)
    assert sender.disconnects, "the broker took a packet over max_packet_size"
    assert len(c1.received) == 1
    sender.client.loop_stop()


def moe2_env(broker: SecureBroker, who: str, port: int | None = None) -> dict[str, str]:
    username, password = broker.login(who)
    return dict(
        os.environ,
        PYTHONUNBUFFERED="1",
        MOE2_BROKER=f"mqtts://localhost:{port or broker.client_port}",
        MOE2_FLEET=FLEET,
        MOE2_CA_FILE=broker.ca,
        MOE2_USERNAME=username,
        MOE2_PASSWORD=password,
    )


def agent_config(broker: SecureBroker, folder: Path, agent: str = "a1") -> Path:
    """The config file of agent ``agent`` serving SmolLM2 on the fleet port with its own login
    (a password file beside it): everything the agent needs, no MOE2_* variables."""
    username, password = broker.login(f"agents:{agent}")
    password_file = folder / f"{agent}.password"
    password_file.write_text(password + "\n")
    config = folder / f"{agent}.toml"
    config.write_text(
        f'broker = "mqtts://localhost:{broker.port}"\nfleet = "{FLEET}"\nagent_id = "{agent}"\n'
        f'username = "{username}"\npassword_file = "{password_file}"\nca_file = "{broker.ca}"\n'
        "keepalive_s = 5\ntelemetry_interval_s = 1.0\n\n"
        '[[experts]]\nid = "smollm2"\nmodel = "smollm2-135m"\nn_ctx = 512\n'
    )
    return config


def test_fleet_end_to_end_over_tls(broker: SecureBroker, tmp_path: Path) -> None:
    # The agent takes everything from its config file; controller and client from MOE2_*.
    config = agent_config(broker, tmp_path)
    agent_env = {k: v for k, v in os.environ.items() if not k.startswith("MOE2_")}
    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("controller", "agent")}  # noqa: SIM115
    procs = {
        "controller": subprocess.Popen(
            [sys.executable, "-m", "moe2", "controller", "run"],
            env=moe2_env(broker, "controller", broker.port),
            stdout=logs["controller"],
            stderr=subprocess.STDOUT,
        ),
        "agent": subprocess.Popen(
            [sys.executable, "-m", "moe2", "agent", "run", "--config", str(config)],
            env=agent_env,
            stdout=logs["agent"],
            stderr=subprocess.STDOUT,
        ),
    }
    try:
        deadline = time.monotonic() + 180
        answer = None
        last = ""
        while time.monotonic() < deadline:
            for name, proc in procs.items():
                assert proc.poll() is None, (tmp_path / f"{name}.log").read_text()[-3000:]
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "moe2",
                    "ask",
                    "--json",
                    "--max-tokens",
                    "4",
                    "--timeout",
                    "60",
                    "Say hello.",
                ],
                env=moe2_env(broker, "clients:c1"),
                capture_output=True,
                text=True,
                timeout=120,
            )
            last = done.stdout + done.stderr
            if done.returncode == 0:
                answer = json.loads(done.stdout)
                break
            time.sleep(2)
        tails = {n: (tmp_path / f"{n}.log").read_text()[-3000:] for n in procs}
        assert answer is not None, f"no answer: {last}\n--- logs\n{tails}"
        assert answer["status"] != "failed"
        assert [e["agent_id"] for e in answer["experts"]] == ["a1"]
        # The client login may read the controllers' status, not the agents': `moe2 fleet`
        # blames the ACL, not the agents (Mosquitto grants the subscription and filters).
        for version in ("5", "3.1.1"):
            err = _fleet_as(broker, "clients:c1", version)
            assert "counts 1 agent(s) online" in err and "ACL does not let this login" in err
            assert f"moe2/{FLEET}/agents/+/status" in err and "are the agents running" not in err
        # The same with flags alone (no MOE2_* variables): --username, --password-file, --ca-file.
        c2_user, c2_password = broker.login("clients:c2")
        c2_file = tmp_path / "c2.password"
        c2_file.write_text(c2_password + "\n")
        by_flags = subprocess.run(
            [sys.executable, "-m", "moe2", "ask"]
            + ["--broker", f"mqtts://localhost:{broker.client_port}"]
            + ["--fleet", FLEET, "--username", c2_user, "--password-file", str(c2_file)]
            + ["--ca-file", broker.ca, "--json", "--max-tokens", "4", "Say hi."],
            env=agent_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert by_flags.returncode == 0, by_flags.stdout + by_flags.stderr
        assert json.loads(by_flags.stdout)["status"] != "failed"
        # A wrong password is a clean error, not a traceback.
        env = moe2_env(broker, "clients:c1") | {"MOE2_PASSWORD": "wrong"}
        bad = subprocess.run(
            [sys.executable, "-m", "moe2", "ask", "hi"], env=env, capture_output=True, text=True
        )
        assert bad.returncode == 1
        assert "Traceback" not in bad.stderr
        # One line that says what is wrong and what to do.
        lines = [line for line in bad.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "refused login" in lines[0], bad.stderr
        assert "--password-file" in lines[0]
        # Plain MQTT against the TLS port: told to use mqtts://, at once, not after retries.
        plain = moe2_env(broker, "clients:c1") | {
            "MOE2_BROKER": f"mqtt://localhost:{broker.client_port}"
        }
        started = time.monotonic()
        run = subprocess.run(
            [sys.executable, "-m", "moe2", "ask", "hi"], env=plain, capture_output=True, text=True
        )
        assert run.returncode == 1 and "use mqtts://" in run.stderr, run.stderr
        assert time.monotonic() - started < 9  # not the 10 s CONNACK time-out
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.values():
            log.close()


def _fleet_as(broker: SecureBroker, who: str, version: str = "5") -> str:
    """`moe2 fleet` run with ``who``'s login on the client port: its stderr, on one line."""
    env = moe2_env(broker, who) | {"MOE2_MQTT_VERSION": version}
    run = subprocess.run(
        [sys.executable, "-m", "moe2", "fleet", "--wait", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stdout + run.stderr
    return " ".join(run.stderr.split())


def test_moe2_fleet_with_a_client_login_and_no_controller_names_the_acl_as_a_cause(
    broker: SecureBroker,
) -> None:
    """Nothing says whether agents run: the ACL is named beside the other causes."""
    err = _fleet_as(broker, "clients:c1")
    user = broker.login("clients:c1")[0]
    assert f"the broker's ACL does not let login {user!r} read moe2/{FLEET}/agents/" in err, err


def test_the_acl_diagnosis_of_a_refused_subscription() -> None:
    """A broker that refuses the SUBSCRIBE (SUBACK 0x87; Mosquitto's ACL file grants it and
    filters at delivery instead) is blamed at once, with the reason it gave."""
    from messages import topics
    from messages.bus import BrokerEndpoint
    from moe2.client.fleet_reader import acl_diagnosis

    endpoint = BrokerEndpoint.parse("mqtts://localhost:8883", "5")
    endpoint = dataclasses.replace(endpoint, username="c1")
    refused = {topics.AGENT_STATUS.filter(FLEET): "Not authorized (0x87)"}
    why = acl_diagnosis(endpoint, FLEET, refused, [], 0) or ""
    assert "refused login 'c1' a subscription" in why and "Not authorized (0x87)" in why
    assert acl_diagnosis(endpoint, FLEET, {}, [], 0) is None  # no evidence: no blame
