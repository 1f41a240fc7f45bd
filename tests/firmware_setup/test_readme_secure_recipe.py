"""The README's secure-broker recipe, run as written: its commands are read from the README and
only the host (broker.lan), the folder (/etc/mosquitto/moe2, /etc/moe2) and the ports (8883,
8884: free ones here) are substituted. setup-broker.sh, Mosquitto, the controller with its
login, an agent with the README's config lines, then the client's `moe2 ask` and `mosquitto_rr`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe2.local.broker import free_port, wait_for_port

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
NEEDED = ("mosquitto", "mosquitto_passwd", "mosquitto_rr", "openssl")
pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in NEEDED),
    reason="needs mosquitto, mosquitto-clients and openssl",
)


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def commands(block: str) -> list[str]:
    """The block's commands, continuation lines joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines()]
    return [line for line in lines if line[:1] not in ("", "#")]


def block_with(kind: str, needle: str) -> str:
    found = [b for b in blocks(kind) if needle in b]
    assert len(found) == 1, f"README: one ```{kind} block with {needle!r}, found {len(found)}"
    return found[0]


class Recipe:
    def __init__(self, base: Path) -> None:
        self.out = base / "broker"
        self.fleet_port, self.client_port = free_port(), free_port()
        self.env = dict(
            {k: v for k, v in os.environ.items() if not k.startswith("MOE2_")},
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            PYTHONUNBUFFERED="1",
        )

    def subst(self, text: str) -> str:
        text = text.replace("/etc/mosquitto/moe2", str(self.out))
        text = text.replace("broker.lan", "localhost")
        text = text.replace(":8883", f":{self.fleet_port}").replace(":8884", f":{self.client_port}")
        return text.replace("-p 8884", f"-p {self.client_port}")

    def bash(
        self, command: str, cwd: Path, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command], cwd=cwd, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


@pytest.fixture(scope="module")
def recipe() -> Iterator[Recipe]:
    # Not under pytest's tmp_path (0700): Mosquitto run as root reads its files as mosquitto.
    base = Path(tempfile.mkdtemp(prefix="moe2-recipe-"))
    base.chmod(0o755)
    yield Recipe(base)
    if not os.environ.get("KEEP_RECIPE"):
        shutil.rmtree(base, ignore_errors=True)


def test_the_secure_broker_recipe_runs_as_written(recipe: Recipe) -> None:
    setup, start = commands(block_with("bash", "setup-broker.sh --out"))
    assert setup.startswith("firmware_setup/broker/setup-broker.sh") and "--client alice" in setup
    ports = f" --port {recipe.fleet_port} --client-port {recipe.client_port}"
    done = recipe.bash(recipe.subst(setup) + ports, ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    creds = json.loads((recipe.out / "credentials.json").read_text())

    procs: dict[str, subprocess.Popen[bytes]] = {}
    names = ("mosquitto", "controller", "agent")
    logs = {name: recipe.out.parent / f"{name}.log" for name in names}

    def spawn(name: str, command: str, cwd: Path) -> None:
        with open(logs[name], "wb") as log:
            procs[name] = subprocess.Popen(
                ["bash", "-c", "exec " + command.removesuffix("&").strip()],
                cwd=cwd, env=recipe.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    try:
        assert start.startswith("mosquitto -c ")
        spawn("mosquitto", recipe.subst(start), ROOT)
        try:
            wait_for_port(recipe.client_port, 10)
        except TimeoutError:
            conf = (recipe.out / "mosquitto.conf").read_text()
            raise AssertionError(logs["mosquitto"].read_text() + conf) from None

        # The controller, on the broker's machine: cd, its password, then run.
        cd, password, run = commands(block_with("bash", "moe2 controller run --broker mqtts://"))
        assert cd.startswith("cd ")
        wrote = recipe.bash(f"{recipe.subst(cd)} && {password}", ROOT)
        assert wrote.returncode == 0, wrote.stderr
        assert (recipe.out / "controller.password").read_text().strip() == creds["controller"][
            "password"
        ]
        spawn("controller", recipe.subst(run), recipe.out)

        # A device, with the README's config lines (its password and the CA copied to it).
        device = recipe.out.parent / "device"
        device.mkdir()
        lines = tomllib.loads(block_with("toml", 'broker = "mqtts://broker.lan:8883"'))
        config = {k: recipe.subst(v) for k, v in lines.items()}
        config["password_file"] = str(device / "agent.password")
        config["ca_file"] = str(device / "ca.crt")
        shutil.copy(recipe.out / "ca.crt", device / "ca.crt")
        (device / "agent.password").write_text(creds["agents"][config["username"]]["password"])
        toml = "".join(f'{k} = "{v}"\n' for k, v in config.items())
        toml += f'fleet = "lab"\nagent_id = "{config["username"]}"\n\n'
        toml += '[[experts]]\nid = "smollm2"\nmodel = "smollm2-135m"\nn_ctx = 512\n'
        (device / "agent.toml").write_text(toml)
        spawn("agent", f"moe2 agent run --config {device / 'agent.toml'}", device)

        # The client, alice: the CA and her password beside her, then the README's commands.
        client = recipe.out.parent / "alice"
        client.mkdir()
        shutil.copy(recipe.out / "ca.crt", client / "ca.crt")
        (client / "alice.password").write_text(creds["clients"]["alice"]["password"] + "\n")
        ask, rr = commands(block_with("bash", "mosquitto_rr -h broker.lan"))
        assert ask.startswith("moe2 ask ") and rr.startswith("mosquitto_rr ")
        deadline = time.monotonic() + 180
        while True:
            for name, proc in procs.items():
                assert proc.poll() is None, logs[name].read_text()[-3000:]
            asked = recipe.bash(recipe.subst(ask), client)
            if asked.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        tails = {n: p.read_text()[-2000:] for n, p in logs.items()}
        assert asked.returncode == 0, f"{asked.stdout}{asked.stderr}\n{tails}"
        assert "answer: Paris" in asked.stdout
        replied = recipe.bash(recipe.subst(rr), client, timeout=90)
        assert replied.returncode == 0, replied.stdout + replied.stderr
        answer = json.loads(replied.stdout)
        assert answer["status"] == "ok" and answer["answer"] == "Paris"
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
