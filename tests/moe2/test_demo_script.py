"""scripts/demo.sh installs only when it must: on a fresh machine, after pyproject.toml or the
installer changed, after a failed install, with a broken .venv, or when told to; otherwise the
demo starts at once. The real script runs in a copy of the repository's layout whose installer
writes down each run and builds a .venv whose ``moe2`` prints what it was asked."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

INSTALLER = """#!/usr/bin/env bash
set -euo pipefail
echo install >> installs.log
if [ -f fail-install ]; then exit 1; fi
mkdir -p .venv/bin
printf '#!/usr/bin/env bash\\nexec %s "$@"\\n' > .venv/bin/python
printf '#!/usr/bin/env bash\\necho "moe2 $*"\\n' > .venv/bin/moe2
chmod +x .venv/bin/python .venv/bin/moe2
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    (tmp_path / "scripts" / "install.sh").write_text(INSTALLER % sys.executable)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "moe2"\nversion = "1"\n')
    return tmp_path


def demo(repo: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """A run of demo.sh, and how many installs it made."""
    before = _installs(repo)
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    run = subprocess.run(
        ["bash", "scripts/demo.sh", "--embedded-broker"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": pythonpath, **env},
    )
    return run, _installs(repo) - before


def _installs(repo: Path) -> int:
    log = repo / "installs.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_a_fresh_machine_installs_and_a_second_run_does_not(repo: Path) -> None:
    run, installs = demo(repo)
    assert run.returncode == 0 and installs == 1, run.stderr
    assert run.stdout.strip() == "moe2 demo --embedded-broker"
    run, installs = demo(repo)
    assert run.returncode == 0 and installs == 0, run.stderr
    assert "skipping the install" in run.stderr
    assert run.stdout.strip() == "moe2 demo --embedded-broker"


def test_a_changed_pyproject_or_installer_installs_again(repo: Path) -> None:
    demo(repo)
    with (repo / "pyproject.toml").open("a") as f:
        f.write('dependencies = ["numpy"]\n')
    assert demo(repo)[1] == 1
    assert demo(repo)[1] == 0
    with (repo / "scripts" / "install.sh").open("a") as f:
        f.write("# a new step\n")
    assert demo(repo)[1] == 1


def test_a_broken_venv_a_failed_install_or_asking_installs_again(repo: Path) -> None:
    demo(repo)
    (repo / ".venv" / "bin" / "moe2").unlink()
    run, installs = demo(repo)
    assert run.returncode == 0 and installs == 1
    (repo / "fail-install").touch()
    run, installs = demo(repo, MOE2_REINSTALL="1")
    assert run.returncode != 0 and installs == 1  # the failure stops the demo
    (repo / "fail-install").unlink()
    run, installs = demo(repo)
    assert run.returncode == 0 and installs == 1  # no stamp was left by the failed install
    assert demo(repo, MOE2_REINSTALL="1")[1] == 1


def test_demo_sh_is_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    done = subprocess.run(
        ["shellcheck", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout
