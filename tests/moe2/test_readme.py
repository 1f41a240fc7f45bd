"""The README keeps its promises: the topic table is complete, CI runs its test command, the
commands that need no fleet run as written, and every file and command it names exists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from messages.topics import TOPICS

ROOT = Path(__file__).resolve().parents[2]


def test_every_topic_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [t.pattern for t in TOPICS if f"| `{t.pattern}` |" not in readme]
    assert not missing, f"README topic table lacks {missing}"


def test_ci_runs_the_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/test.sh    # installs" in readme
    assert "bash scripts/demo.sh    # installs" in readme
    assert [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ] == ["bash scripts/test.sh"]


def _bash_lines(kind: str = "bash") -> list[str]:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(rf"```{kind}\n(.*?)```", readme, re.S)
    joined = [re.sub(r"\\\n\s*", " ", block) for block in blocks]
    return [line.strip() for block in joined for line in block.splitlines() if line.strip()]


def test_readme_commands_that_need_no_fleet_run_as_written() -> None:
    """`moe2 --version` and the solver examples, exactly as the README gives them."""
    wanted = ("moe2 --version", "moe2 select --instance ", "moe2 cache-plan --instance ")
    lines = [line for line in _bash_lines() if line.startswith(wanted)]
    assert len(lines) >= 4, lines
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    outputs = {}
    for line in lines:
        done = subprocess.run(
            ["bash", "-c", line], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        outputs[line] = done.stdout
    first = next(o for line, o in outputs.items() if line.startswith("moe2 select --instance"))
    assert "smollm2-cloze@edge-a, gemma3-qa@edge-b" in first and "0.7667" in first
    cache = next(o for line, o in outputs.items() if line.startswith("moe2 cache-plan --inst"))
    placement = json.loads(cache)["placement"]
    assert placement == {
        "edge-a": [[0, "gemma3-cloze"], [0, "smollm2-cloze"]],
        "edge-b": [[0, "gemma3-qa"]],
    }
    assert round(json.loads(cache)["expected_latency_s"], 3) == 0.186  # as the README says


def test_every_file_the_readme_names_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    pattern = r"\b((?:examples|docs|scripts|data|firmware_setup)/[\w./-]+\.\w+)"
    named = set(re.findall(pattern, readme))
    assert "examples/selection-instance.json" in named and "docs/design.md" in named
    missing = sorted(n for n in named if not (ROOT / n).exists())
    assert missing == []
    assert "../shared" not in readme and "DESIGN.md" not in readme


def test_every_readme_moe2_command_exists() -> None:
    """Each `moe2 ...` line of the README names a command that `--help` knows."""
    from typer.testing import CliRunner

    from moe2.cli import app

    commands = set()
    for line in _bash_lines() + _bash_lines(kind=""):  # the shell blocks and the usage block
        words = line.strip().split()
        if words[:1] == ["moe2"] and len(words) > 1 and not words[1].startswith("-"):
            sub = words[1:3] if words[1] in ("agent", "controller", "gate") else words[1:2]
            commands.add(tuple(sub))
    assert ("select",) in commands and ("gate", "train") in commands
    runner = CliRunner()
    for command in sorted(commands):
        result = runner.invoke(app, [*command, "--help"])
        assert result.exit_code == 0, (command, result.output)


def _moe2_section_agent_lines() -> list[str]:
    """The README's `moe2 agent run --config examples/edge-*.toml` lines, as written."""
    return [
        line.split("#")[0].strip().removesuffix("&").strip()
        for line in _bash_lines()
        if line.startswith("moe2 agent run --config examples/edge-")
    ]


def test_the_moe2_sections_agents_start_as_written_on_another_broker(tmp_path: Path) -> None:
    """The MoE² section's two agents, each from its config file, with the broker the README
    says overrides the file's port 1883: a flag for edge-a, MOE2_BROKER for edge-b. Both come
    online on a broker of the test's own, three experts each."""
    from moe2.local.broker import start_mosquitto

    lines = _moe2_section_agent_lines()
    assert [line.split()[-1] for line in lines] == ["examples/edge-a.toml", "examples/edge-b.toml"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "--config examples/edge-a.toml --broker mqtt://" in readme and "MOE2_BROKER=" in readme
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.pop("MOE2_BROKER", None)
    with start_mosquitto(log_file=tmp_path / "mosquitto.log") as broker:
        edge_a = lines[0] + f" --broker {broker.url}"
        edge_b = dict(env, MOE2_BROKER=broker.url)
        logs = [open(tmp_path / f"agent-{i}.log", "wb") for i in range(2)]  # noqa: SIM115
        procs = [
            subprocess.Popen(["bash", "-c", f"exec {edge_a}"], cwd=ROOT, env=env,
                             stdout=logs[0], stderr=subprocess.STDOUT),
            subprocess.Popen(["bash", "-c", f"exec {lines[1]}"], cwd=ROOT, env=edge_b,
                             stdout=logs[1], stderr=subprocess.STDOUT),
        ]  # fmt: skip
        try:
            rows = _wait_for_agents(broker.url, {"edge-a", "edge-b"}, procs, tmp_path)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            for log in logs:
                log.close()
    assert {r["agent_id"]: len(r["experts"]) for r in rows} == {"edge-a": 3, "edge-b": 3}


def _wait_for_agents(
    url: str, wanted: set[str], procs: list[subprocess.Popen[bytes]], logs: Path
) -> list[dict[str, object]]:
    """`moe2 fleet --json` until every agent in ``wanted`` is online (4 minutes at most)."""
    import time

    deadline = time.monotonic() + 240
    rows: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        for proc in procs:
            tails = [p.read_text()[-2000:] for p in sorted(logs.glob("agent-*.log"))]
            assert proc.poll() is None, tails
        run = subprocess.run(
            [sys.executable, "-m", "moe2", "fleet", "--broker", url, "--fleet", "lab", "--json",
             "--wait", "1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        rows = json.loads(run.stdout) if run.stdout.strip() else []
        if {r["agent_id"] for r in rows if r["state"] == "online"} >= wanted:
            return rows
        time.sleep(1)
    raise AssertionError(f"agents not online within 240 s: {rows}")
