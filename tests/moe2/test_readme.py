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
