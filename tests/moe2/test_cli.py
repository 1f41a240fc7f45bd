"""The command line: clear errors for bad flags and configs, schemas for other clients."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from messages.prompts import Prompt
from moe2.local.broker import LocalBroker


def moe2(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moe2", *args], capture_output=True, text=True, timeout=timeout
    )


def _clean_error(run: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert run.returncode == code, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    for needle in needles:
        assert needle in run.stderr, run.stderr


def test_agent_needs_experts_and_valid_ones() -> None:
    _clean_error(moe2("agent", "run", "--broker", "mqtt://127.0.0.1:1"), 2, "no experts configured")
    _clean_error(moe2("agent", "run", "--expert", "nonsense"), 2, "expected ID=MODEL")
    _clean_error(moe2("agent", "run", "--expert", "x=no-such-model"), 2, "neither a shipped model")
    _clean_error(
        moe2("agent", "run", "--expert", "bad/id=smollm2-135m"),
        2,
        "experts",
        "should match pattern",
    )


def test_services_wait_for_an_unreachable_broker_and_say_so(tmp_path: Path) -> None:
    # A device may boot before the broker's host: the agent keeps trying instead of exiting.
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "moe2", "agent", "run", "--broker", "mqtt://127.0.0.1:1"]
        + ["--expert", "s=smollm2-135m"],
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(8)
    assert proc.poll() is None, "the agent exited while the broker was unreachable"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "mqtt://127.0.0.1:1 unreachable; retrying" in stderr and "Traceback" not in stderr


def test_config_files_are_validated(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('fleet = "lab"\nbogus = 1\n')
    _clean_error(moe2("agent", "run", "--config", str(config)), 2, "bogus", "Extra inputs")
    config.write_text("fleet = \n")
    _clean_error(moe2("controller", "run", "--config", str(config)), 2, "not valid TOML")
    _clean_error(
        moe2("controller", "run", "--config", str(tmp_path / "missing.toml")), 2, "does not exist"
    )
    _clean_error(moe2("controller", "run", "--broker", "http://x"), 2, "scheme must be mqtt://")
    _clean_error(moe2("controller", "run", "--mqtt-version", "4"), 2, "mqtt_version")


def test_ask_validates_before_publishing() -> None:
    _clean_error(moe2("ask", "--choice", "only-one", "q"), 2, "choices")
    _clean_error(moe2("ask", "--max-tokens", "0", "q"), 2, "max_tokens")
    _clean_error(moe2("ask", "--broker", "mqtt://127.0.0.1:1", "q"), 1, "cannot reach broker")


def test_schema_writes_one_file_per_message_and_the_topic_table(tmp_path: Path) -> None:
    run = moe2("schema", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr
    prompt_schema = json.loads((tmp_path / "Prompt.schema.json").read_text())
    # prompt or messages: neither alone is required (the model refuses a prompt with neither)
    assert "required" not in prompt_schema
    assert {"prompt", "messages", "temperature", "seed", "stop", "stream"} <= set(
        prompt_schema["properties"]
    )
    assert prompt_schema["additionalProperties"] is False
    assert set(prompt_schema["properties"]) == set(Prompt.model_fields)
    table = json.loads((tmp_path / "topics.json").read_text())
    by_topic = {row["topic"]: row for row in table}
    assert by_topic["moe2/{fleet}/agents/{agent_id}/status"]["retained"] is True
    assert by_topic["moe2/{fleet}/prompts/text"]["message"].startswith("text/plain")
    names = {p.name for p in tmp_path.iterdir()}
    assert {"Answer.schema.json", "Job.schema.json", "JobResult.schema.json"} <= names
    listing = moe2("schema")
    assert json.loads(listing.stdout) == table


# -- help, version, exit status ------------------------------------------------------------


def _walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _walk(sub, (*path, name))


def test_version() -> None:
    run = moe2("--version")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"moe2 {version('moe2')}"


def test_every_option_and_argument_has_help() -> None:
    from typer.main import get_command

    from moe2.cli import app

    missing = [
        f"moe2 {' '.join(path)} {param.name}"
        for path, command in _walk(get_command(app))
        for param in command.params
        if not getattr(param, "help", None)
    ]
    assert missing == []


def test_help_keeps_brackets_and_names_values_plainly() -> None:
    """Rich markup used to eat "[...]" in help strings, and Typer printed Python types
    ("<bool>" beside a flag, "<list[str]>")."""
    from typer.main import get_command
    from typer.testing import CliRunner

    from moe2.cli import app

    runner = CliRunner()
    paths = [p for p, c in _walk(get_command(app)) if p and not getattr(c, "commands", None)]
    assert len(paths) >= 15
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, (path, result.output)
        for python_type in ("<bool>", "<str>", "<int>", "<float>", "<list[str]>", "<path>"):
            assert python_type not in result.output, (path, result.output)
    agent = runner.invoke(app, ["agent", "run", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: host name]" in agent and "--agent-id  " in agent
    assert re.search(r"--max-tokens\s+INTEGER", runner.invoke(app, ["ask", "--help"]).output)
    cache = runner.invoke(app, ["cache-plan", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: 2 x the slowest agent]" in cache


def test_one_shot_commands_exit_1_on_an_unreachable_broker() -> None:
    for args in (("fleet", "--wait", "0"), ("budgets", "--energy-j", "3"), ("ask", "q")):
        run = moe2(*args, "--broker", "mqtt://127.0.0.1:1")
        _clean_error(run, 1, "cannot reach broker mqtt://127.0.0.1:1")


def test_fleet_with_no_agents_says_so_and_names_fleets_that_have_some(
    mosquitto: LocalBroker,
) -> None:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    topic = "moe2/hint-lab/agents/a1/status"
    client.publish(topic, b'{"seen": true}', qos=1, retain=True).wait_for_publish(5)
    try:
        run = moe2("fleet", "--broker", mosquitto.url, "--fleet", "hint-nobody", "--wait", "0.2")
        _clean_error(run, 1, "no agent under moe2/hint-nobody/agents/", "nothing is retained")
        assert "hint-lab" in run.stderr and "wrong --fleet?" in run.stderr
        as_json = moe2("fleet", "--broker", mosquitto.url, "--fleet", "hint-nobody", "--json")
        assert as_json.returncode == 1 and json.loads(as_json.stdout) == []
    finally:
        client.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        client.loop_stop()
        client.disconnect()
