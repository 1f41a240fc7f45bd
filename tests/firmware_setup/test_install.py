"""The device-service scripts: layout under --root, dry runs, clear refusals, shellcheck, the
systemd unit, and the agent's sd_notify helper against a fake NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import systemd
from messages import topics
from messages.jobs import Job
from messages.status import AgentStatus
from moe2.local.broker import LocalBroker
from tests.helpers import Recorder

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "firmware_setup"
SCRIPTS = sorted(SETUP.rglob("*.sh"))
UNIT = "etc/systemd/system/moe2-agent.service"
CONF = "etc/moe2/agent.toml"


def sh(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", str(SETUP / script), *args], capture_output=True, text=True, timeout=120
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{script} {args} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(SETUP)))
def test_shellcheck_is_clean(script: Path) -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_script_takes_root_and_dry_run() -> None:
    for script in SCRIPTS:
        if script.name == "common.sh":
            continue
        if script.parent.name == "broker":  # writes only into --out: no --root to take
            assert "--dry-run) dry_run=1" in script.read_text()
            continue
        text = script.read_text()
        assert "common_args" in text and "set -euo pipefail" in text, script


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path) -> None:
    out = sh(
        "install-agent.sh", "--root", str(tmp_path), "--dry-run", "--platform", "jetson"
    ).stdout
    assert list(tmp_path.iterdir()) == []
    assert "useradd --system --user-group" in out and " moe2 " in out + " "
    assert "usermod --append --groups video moe2" in out
    assert "python3 -m venv" in out and "[agent,models]" in out
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in out
    assert f"write {tmp_path}/{CONF}" in out and f"write {tmp_path}/{UNIT}" in out
    assert "systemctl enable moe2-agent.service" in out


@pytest.fixture
def staged(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    config = tmp_path / "mine.toml"
    config.write_text('fleet = "lab"\n\n[[experts]]\nid = "smollm2"\nmodel = "smollm2-135m"\n')
    sh("install-agent.sh", "--root", str(root), "--no-venv", "--config", str(config))
    yield root


def test_install_lays_out_unit_and_config(staged: Path, tmp_path: Path) -> None:
    unit = (staged / UNIT).read_text()
    for line in (
        "Type=notify",
        "Restart=on-failure",
        "After=network-online.target",
        "Wants=network-online.target",
        "User=moe2",
        "ExecStart=/opt/moe2/venv/bin/moe2 agent run --config /etc/moe2/agent.toml",
        "WantedBy=multi-user.target",
    ):
        assert line in unit.splitlines(), line
    assert any(line.startswith("WatchdogSec=") for line in unit.splitlines())
    assert (staged / CONF).read_text() == (tmp_path / "mine.toml").read_text()
    assert (staged / CONF).stat().st_mode & 0o777 == 0o640
    # Idempotent: a second run rewrites nothing; without --config the config is kept.
    again = sh("install-agent.sh", "--root", str(staged), "--no-venv").stdout
    assert f"unchanged {staged}/{UNIT}" in again and "keeping the existing" in again
    assert (staged / CONF).read_text() == (tmp_path / "mine.toml").read_text()


def test_default_config_loads(tmp_path: Path) -> None:
    from agent.settings import AgentSettings

    sh("install-agent.sh", "--root", str(tmp_path), "--no-venv", "--platform", "cpu")
    settings = AgentSettings.load(tmp_path / CONF)
    assert [e.model for e in settings.experts] == ["smollm2-135m"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, mosquitto: LocalBroker) -> Path:
    """A real install staged under a root: the venv built by pip from this source tree (llama.cpp
    comes from pip's wheel cache when scripts/install.sh built it before), config and unit."""
    tmp = tmp_path_factory.mktemp("installed")
    config = tmp / "agent.toml"
    config.write_text(
        f'broker = "{mosquitto.url}"\nmqtt_version = "{mosquitto.mqtt_version}"\n'
        'fleet = "staged"\nagent_id = "dev-1"\ntelemetry_interval_s = 0.5\n\n'
        '[[experts]]\nid = "smollm2"\nmodel = "smollm2-135m"\nn_ctx = 512\n'
    )
    root = tmp / "root"
    done = subprocess.run(
        ["bash", str(SETUP / "install-agent.sh"), "--root", str(root), "--platform", "cpu"]
        + ["--config", str(config), "--source", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return root


def test_install_builds_a_working_venv(installed: Path) -> None:
    moe2 = installed / "opt/moe2/venv/bin/moe2"
    assert os.access(moe2, os.X_OK)
    done = subprocess.run(
        [str(moe2), "agent", "probe", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "source" in json.loads(done.stdout)
    # Idempotent with the venv too: a second run finds the venv and rewrites nothing else.
    again = sh("install-agent.sh", "--root", str(installed), "--platform", "cpu", "--no-start")
    assert "python3 -m venv" not in again.stdout and f"unchanged {installed}/{UNIT}" in again.stdout


def test_staged_venv_is_relocatable(installed: Path) -> None:
    """The staged tree is meant to be copied to a device: no script may name the staging path,
    and the venv's moe2 runs from a copy elsewhere."""
    venv = installed / "opt/moe2/venv"
    naming = [
        p.name
        for p in (venv / "bin").iterdir()
        if p.is_file() and not p.is_symlink() and str(installed).encode() in p.read_bytes()
    ]
    assert naming == []
    assert 'VIRTUAL_ENV="/opt/moe2/venv"' in (venv / "bin/activate").read_text()
    moved = venv.with_name("venv-moved")  # the staging path no longer exists while it runs
    venv.rename(moved)
    try:
        done = subprocess.run(
            [str(moved / "bin/moe2"), "agent", "probe", "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        pip = subprocess.run(
            [str(moved / "bin/pip"), "--version"], capture_output=True, text=True, timeout=120
        )
    finally:
        moved.rename(venv)
    assert done.returncode == 0, done.stderr
    assert "source" in json.loads(done.stdout)
    assert pip.returncode == 0 and str(moved) in pip.stdout, pip.stdout + pip.stderr


def test_systemd_analyze_accepts_the_unit(installed: Path) -> None:
    """``systemd-analyze verify --root`` on the unit as installed: it checks that ExecStart (the
    venv's moe2) exists and is executable, so the real venv must be there, as it is."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    system_units = Path("/usr/lib/systemd/system")
    if not (system_units / "multi-user.target").exists():
        pytest.skip(f"{system_units} lacks the system's units that verify resolves")
    staged_units = installed / "usr/lib/systemd/system"  # what the unit's targets refer to
    if not staged_units.exists():
        shutil.copytree(system_units, staged_units, symlinks=True)
        (installed / "lib").symlink_to("usr/lib")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["systemd-analyze", "verify", f"--root={installed}", "/" + UNIT],
            capture_output=True,
            text=True,
            timeout=60,
        )

    done = verify()
    assert done.returncode == 0, done.stdout + done.stderr
    moe2 = installed / "opt/moe2/venv/bin/moe2"
    moe2.rename(moe2.with_name("moe2.away"))
    try:
        missing = verify()  # the check is real: without the venv's moe2 the unit is refused
    finally:
        moe2.with_name("moe2.away").rename(moe2)
    assert missing.returncode != 0 and "/opt/moe2/venv/bin/moe2" in missing.stderr


def test_agent_starts_from_the_installed_layout(
    installed: Path, tmp_path: Path, mosquitto: LocalBroker
) -> None:
    """The unit's ExecStart, with its paths inside the staging root: the venv's own moe2 and
    the installed config."""
    exec_line = next(
        line.removeprefix("ExecStart=")
        for line in (installed / UNIT).read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    argv = shlex.split(exec_line)
    assert argv[:3] == ["/opt/moe2/venv/bin/moe2", "agent", "run"]
    argv = [str(installed) + a if a.startswith(("/opt/moe2/", "/etc/moe2/")) else a for a in argv]
    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOE2_", "VIRTUAL_ENV"))}
    env["NOTIFY_SOCKET"] = str(notify)
    log = tmp_path / "agent.log"
    rec = Recorder(mosquitto.endpoint, "staged").watch(topics.AGENT_STATUS)
    rec.watch(topics.AGENT_RESULTS, agent_id="dev-1")
    with rec:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            status = rec.wait_for_a(
                AgentStatus, lambda s: s.state == "online" and s.agent_id == "dev-1", 120
            )
            assert status.state == "online", log.read_text()
            sock.settimeout(10)
            assert b"READY=1" in sock.recv(4096)  # systemd's Type=notify would now start it
            job = Job(
                request_id="staged-1",
                expert_id="smollm2",
                prompt="The capital of France is",
                choices=["Paris", "Rome"],
                timeout_s=60,
                issued_s=time.time(),
            )
            rec.bus.publish(topics.AGENT_JOBS, job, agent_id="dev-1")
            result = rec.wait_for_result("staged-1", 60)
            assert result.ok and result.choice_probs[0] > 0.5  # it serves
        finally:
            proc.terminate()
            proc.wait(30)
            sock.close()


def test_uninstall_removes_service_keeps_config_unless_purged(staged: Path) -> None:
    (staged / "opt/moe2/venv/bin").mkdir(parents=True)
    out = sh("uninstall-agent.sh", "--root", str(staged)).stdout
    assert "systemctl disable --now moe2-agent.service" in out
    assert not (staged / UNIT).exists() and not (staged / "opt/moe2").exists()
    assert (staged / CONF).exists()
    again = sh("uninstall-agent.sh", "--root", str(staged)).stdout
    assert "already gone" in again
    dry = sh("uninstall-agent.sh", "--root", str(staged), "--purge", "--dry-run").stdout
    assert "userdel moe2" in dry and (staged / CONF).exists()
    sh("uninstall-agent.sh", "--root", str(staged), "--purge")
    assert not (staged / "etc/moe2").exists()


def test_prepare_scripts_refuse_the_wrong_platform(tmp_path: Path) -> None:
    jetson = sh("prepare-jetson.sh", "--root", str(tmp_path), check=False)
    assert jetson.returncode == 1 and "wrong platform: not a Jetson" in jetson.stderr
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    rtx = sh("prepare-rtx.sh", "--root", str(tmp_path), check=False)
    assert rtx.returncode == 1 and "this is a Jetson" in rtx.stderr


def test_dry_run_previews_on_the_wrong_platform(tmp_path: Path) -> None:
    """--dry-run previews anywhere: the wrong platform is a warning, and the plan is printed."""
    jetson = sh("prepare-jetson.sh", "--root", str(tmp_path), "--dry-run", "--clocks")
    assert "warning: wrong platform: not a Jetson" in jetson.stdout
    assert "+ nvpmodel -m 0" in jetson.stdout and "+ jetson_clocks" in jetson.stdout
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    rtx = sh("prepare-rtx.sh", "--root", str(tmp_path), "--dry-run", "--power-limit", "350")
    assert "warning: wrong platform: this is a Jetson" in rtx.stdout
    assert "+ nvidia-smi -pl 350" in rtx.stdout
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["nv_tegra_release"]


@pytest.mark.skipif(os.uname().machine == "aarch64", reason="checks the preview on a non-Jetson")
def test_live_dry_run_previews_a_jetson_install_on_this_machine() -> None:
    """Without --root, on this x86 machine: it is not a Jetson, yet --dry-run shows the plan."""
    agent = sh("install-agent.sh", "--dry-run", "--platform", "jetson")
    assert "needs an aarch64 Jetson" in agent.stdout and "CMAKE_ARGS=-DGGML_CUDA=on" in agent.stdout
    assert "+ systemctl enable moe2-agent.service" in agent.stdout
    jetson = sh("prepare-jetson.sh", "--dry-run", "--power-mode", "0")
    assert "wrong platform" in jetson.stdout and "+ nvpmodel -m 0" in jetson.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(SETUP)))
def test_help_is_the_scripts_header(script: Path) -> None:
    if script.name == "common.sh":
        return
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True)
    text = done.stdout + done.stderr
    header = {line.strip("# ") for line in script.read_text().splitlines()[1:] if line[:1] == "#"}
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    assert lines and script.name in text, text
    assert all(line in header for line in lines), text  # no line of code, nothing invented


def test_setup_broker_dry_run_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    done = subprocess.run(
        ["bash", str(SETUP / "broker/setup-broker.sh"), "--out", str(out), "--fleet", "lab"]
        + ["--agent", "orin-1", "--client", "alice", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing written" in done.stdout and "agents: orin-1" in done.stdout
    assert "clients: alice" in done.stdout and "mosquitto.conf" in done.stdout
    assert not out.exists()


def test_prepare_jetson_staged(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.0\n")
    args = ("--root", str(tmp_path), "--power-mode", "2", "--clocks", "--jtop", "--build-llama")
    dry = sh("prepare-jetson.sh", *args, "--dry-run").stdout
    assert "nvpmodel -m 2" in dry and "jetson_clocks" in dry and "jtop.service" in dry
    assert "CMAKE_ARGS=-DGGML_CUDA=on" in dry and "llama-cpp-python" in dry
    sh("prepare-jetson.sh", "--root", str(tmp_path), "--clocks")
    assert (tmp_path / "etc/systemd/system/moe2-jetson-clocks.service").exists()
    assert "unchanged" in sh("prepare-jetson.sh", "--root", str(tmp_path), "--clocks").stdout


def test_prepare_rtx_staged(tmp_path: Path) -> None:
    out = sh("prepare-rtx.sh", "--root", str(tmp_path), "--power-limit", "350").stdout
    assert "nvidia-smi -pm 1" in out and "nvidia-smi -pl 350" in out
    unit = (tmp_path / "etc/systemd/system/moe2-gpu-power.service").read_text()
    assert "ExecStart=/usr/bin/nvidia-smi -pl 350" in unit
    bad = sh("prepare-rtx.sh", "--root", str(tmp_path), "--power-limit", "lots", check=False)
    assert bad.returncode == 1 and "whole watts" in bad.stderr


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("runuser") is None, reason="needs root to become nobody"
)
def test_live_install_needs_root() -> None:
    done = subprocess.run(
        ["runuser", "-u", "nobody", "--", "bash", str(SETUP / "install-agent.sh"), "--no-venv"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "must run as root" in done.stderr


@pytest.mark.skipif(Path("/run/systemd/system").is_dir(), reason="systemd runs here")
def test_live_install_needs_systemd() -> None:
    if os.geteuid() != 0:
        pytest.skip("the root check comes first")
    done = sh("install-agent.sh", "--no-venv", "--platform", "cpu", check=False)
    assert done.returncode == 1 and "systemd is not running" in done.stderr


# -- sd_notify -----------------------------------------------------------------------------


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def test_sd_notify_ready_and_watchdog(notify_socket: socket.socket) -> None:
    assert systemd.ready("serving smollm2")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=serving smollm2"
    assert systemd.watchdog()
    assert notify_socket.recv(4096) == b"WATCHDOG=1"
    assert systemd.stopping()
    assert notify_socket.recv(4096) == b"STOPPING=1"


def test_sd_notify_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"moe2-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.ready()
        assert sock.recv(64) == b"READY=1"


def test_sd_notify_outside_systemd_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready() is False and systemd.watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert systemd.watchdog() is False  # logged, never raised


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval_s() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert systemd.watchdog_interval_s() is None


def test_agent_pets_the_watchdog_faster_than_its_telemetry(
    notify_socket: socket.socket, monkeypatch: pytest.MonkeyPatch, mosquitto: LocalBroker
) -> None:
    """A telemetry interval longer than WatchdogSec must not get the agent restarted."""
    from agent.service import Agent
    from agent.settings import AgentSettings

    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # WatchdogSec=0.4
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    settings = AgentSettings.load(
        None,
        broker=mosquitto.url,
        fleet="watchdog",
        agent_id="wd",
        experts=[{"id": "smollm2", "model": "smollm2-135m", "n_ctx": 256}],
        telemetry_interval_s=60.0,
    )
    agent = Agent(settings)
    agent.start()
    try:
        assert notify_socket.recv(4096).startswith(b"READY=1")
        start = time.monotonic()
        pets = 0
        while time.monotonic() - start < 1.5:
            if notify_socket.recv(4096) == b"WATCHDOG=1":
                pets += 1
    finally:
        agent.stop()
    assert pets >= 5  # every 0.2 s, half the watchdog timeout, not every 60 s
