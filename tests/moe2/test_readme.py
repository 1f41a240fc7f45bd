"""The README keeps its promises: the topic table is complete and CI runs its test command."""

from __future__ import annotations

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
