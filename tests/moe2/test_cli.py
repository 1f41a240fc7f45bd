"""The command line: clear errors for bad flags and configs, schemas for other clients."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from messages.prompts import Prompt


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


def test_agent_reports_an_unreachable_broker(tmp_path: Path) -> None:
    run = moe2("agent", "run", "--broker", "mqtt://127.0.0.1:1", "--expert", "s=smollm2-135m")
    _clean_error(run, 2, "cannot reach broker mqtt://127.0.0.1:1")


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
    assert prompt_schema["required"] == ["prompt"]
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
