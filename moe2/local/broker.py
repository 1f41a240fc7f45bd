"""A local MQTT broker for the demo and the tests: Mosquitto when installed, else amqtt.

Mosquitto speaks MQTT 5 and 3.1.1; the embedded amqtt broker speaks 3.1.1 only, so whoever
uses it must connect with ``mqtt_version="3.1.1"``.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from messages.bus import BrokerEndpoint, MqttVersion

log = logging.getLogger(__name__)


def free_port() -> int:
    """A free loopback TCP port (Mosquitto's ``listener 0`` does not pick one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"broker did not listen on 127.0.0.1:{port} within {timeout_s} s")


@dataclass
class LocalBroker:
    kind: Literal["mosquitto", "embedded"]
    port: int
    _stop: object = field(repr=False)

    @property
    def mqtt_version(self) -> MqttVersion:
        return "5" if self.kind == "mosquitto" else "3.1.1"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> BrokerEndpoint:
        return BrokerEndpoint("127.0.0.1", self.port, self.mqtt_version)

    def stop(self) -> None:
        self._stop()  # type: ignore[operator]

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def mosquitto_config(
    port: int, persistence_dir: Path | None = None, user: str | None = None
) -> str:
    """An open broker on loopback only (anyone on this machine may publish anything: see
    docs/security.md); with ``persistence_dir`` it keeps sessions, queued QoS 1 messages and
    retained messages across a restart. ``user``: the account it runs as when started as root
    (Mosquitto's default: mosquitto)."""
    persistence = (
        ["persistence true", f"persistence_location {persistence_dir}/", "autosave_interval 1"]
        if persistence_dir is not None
        else ["persistence false"]
    )
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            *persistence,
            *([f"user {user}"] if user is not None else []),
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "max_packet_size 1048576",
            "set_tcp_nodelay true",
            "",
        ]
    )


def reachable(folder: Path, uid: int, gids: set[int]) -> bool:
    """Whether a process of user ``uid`` (in groups ``gids``) may enter ``folder`` and every
    folder above it (the search bit of the owner, the group or the others, as it applies)."""
    for part in [folder, *folder.parents]:
        st = part.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _persistence_user(folder: Path) -> str | None:
    """Make ``folder`` the broker's database folder; returns the account the broker must run
    as, or None for its default. Mosquitto started as root drops to the mosquitto user, which
    must reach and write the folder: where it cannot (a folder under a private one, such as
    pytest's), the broker stays root, or it would never write its database and forget every
    session at a restart, saying so only in its log."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return None  # it runs as this user, who made the folder
    try:
        account = pwd.getpwnam("mosquitto")
    except KeyError:
        return "root"
    gids = {account.pw_gid} | {g.gr_gid for g in grp.getgrall() if "mosquitto" in g.gr_mem}
    if not reachable(folder.resolve(), account.pw_uid, gids):
        log.warning(
            "the mosquitto user cannot reach %s: the broker runs as root to keep its database",
            folder,
        )
        return "root"
    shutil.chown(folder, account.pw_uid, account.pw_gid)
    return None


def start_mosquitto(
    port: int | None = None, log_file: Path | None = None, persistence_dir: Path | None = None
) -> LocalBroker:
    binary = shutil.which("mosquitto")
    if binary is None:
        raise FileNotFoundError("mosquitto is not on PATH (Debian: apt-get install mosquitto)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="moe2-mosquitto-"))
    workdir.chmod(0o755)  # run as root, mosquitto drops to its own user
    user = _persistence_user(persistence_dir) if persistence_dir is not None else None
    conf = workdir / "mosquitto.conf"
    conf.write_text(mosquitto_config(port, persistence_dir, user))
    conf.chmod(0o644)
    err = open(log_file, "ab") if log_file else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=err, stderr=err)
    try:
        wait_for_port(port, 10)
    except TimeoutError:
        proc.kill()
        raise

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    return LocalBroker("mosquitto", port, stop)


def start_embedded(port: int | None = None) -> LocalBroker:
    """amqtt's broker on its own event loop in a daemon thread."""
    from amqtt.broker import Broker

    port = port or free_port()
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }
    loop = asyncio.new_event_loop()
    started = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Broker] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def boot() -> None:
            broker = Broker(config, loop=loop)
            holder["broker"] = broker
            await broker.start()

        try:
            loop.run_until_complete(boot())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="amqtt-broker", daemon=True)
    thread.start()
    started.wait(15)
    if failure:
        raise RuntimeError(f"embedded broker failed to start: {failure[0]}")
    wait_for_port(port, 10)

    def stop() -> None:
        broker = holder.get("broker")
        if broker is not None:
            fut = asyncio.run_coroutine_threadsafe(broker.shutdown(), loop)
            try:
                fut.result(5)
            except Exception as exc:  # shutting down anyway
                log.debug("embedded broker shutdown: %s", exc)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)

    return LocalBroker("embedded", port, stop)


def start_local_broker(prefer_mosquitto: bool = True) -> LocalBroker:
    if prefer_mosquitto and shutil.which("mosquitto"):
        return start_mosquitto()
    return start_embedded()
