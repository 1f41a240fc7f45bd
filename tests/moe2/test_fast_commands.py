"""Commands import what they use when they use it (issue 24): ``moe2 --help`` lists every command
without importing one, and lists them as the commands themselves would; ``moe2 select --instance``
on a small instance prints what it always printed without loading numba; the compiled kernel,
where a large search needs it, works where numba cannot write its cache. Nothing here is timed:
benchmarks/startup.py measures the times (docs/measurements.md)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLUMNS": "100"}


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env or ENV,
    )
    assert run.returncode == 0, (run.stdout, run.stderr)
    return run


def test_each_summary_is_the_first_paragraph_of_its_commands_help() -> None:
    from typer.main import get_command

    from moe2.cli import app
    from moe2.cli.app import MoeGroup

    group = get_command(app)
    summaries = MoeGroup.lazy.summaries
    assert set(summaries) == {*MoeGroup.lazy.commands, *MoeGroup.lazy.groups}
    for name, summary in summaries.items():
        command = group.commands[name]  # type: ignore[attr-defined]
        assert summary == inspect.cleandoc(command.help or "").split("\n\n")[0], name


_HELP = """
import sys
from typer.main import get_command
from moe2.cli import app
if {load_all}:
    group = get_command(app)
    [group.commands[name] for name in list(group.commands)]
sys.argv = ["moe2", "--help"]
try:
    app()
except SystemExit:
    pass
loaded = sorted(m for m in sys.modules if m.startswith(("moe2.cli.", "messages", "controller")))
print("LOADED", " ".join(loaded), file=sys.stderr)
"""


def test_help_imports_no_command_and_reads_as_the_commands_own() -> None:
    lazy = _python(_HELP.format(load_all=False))
    loaded = lazy.stderr.split("LOADED", 1)[1].split()
    assert set(loaded) <= {"moe2.cli.app", "moe2.cli.help", "moe2.cli.lazy"}, loaded
    built = _python(_HELP.format(load_all=True))
    assert "moe2.cli.ask" in built.stderr  # every command was loaded there
    assert lazy.stdout == built.stdout
    for name in ("budgets", "select", "export-onnx", "controller", "gate"):
        assert f"│ {name} " in lazy.stdout


# What `moe2 select --instance examples/selection-instance.json` printed before issue 24 (the
# runtime row aside), each line stripped.
SELECTED = """\
moe2: 2 expert(s)
┌─────────────────────────┬────────────────────────────────────────┐
│ selected                │ smollm2-cloze@edge-a, gemma3-qa@edge-b │
│ loss                    │ 0.469428                               │
│ accuracy                │ 0.7667                                 │
│ energy J                │ 4.977                                  │
│ delay s (math)          │ 0.5266                                 │
│ optimal (proven)        │ yes                                    │
│ lower bound             │ 0.469428                               │
│ gap                     │ 0.00 %                                 │
│ subsets evaluated       │ 20                                     │
│ monotonicity violations │ 3                                      │"""

_SELECT = """
import sys
from moe2.cli import app
sys.argv = ["moe2", "select", "--instance", "examples/selection-instance.json"]
try:
    app()
except SystemExit as exc:
    assert not exc.code, exc.code
print("NUMBA", "numba" in sys.modules, file=sys.stderr)
"""


def test_select_on_a_small_instance_prints_as_before_without_numba() -> None:
    run = _python(_SELECT)
    lines = [line.strip() for line in run.stdout.splitlines()]  # the title is centred
    assert "\n".join(lines[:-2]) == SELECTED
    assert lines[-2].startswith("│ runtime s ") and lines[-1].startswith("└")
    assert "NUMBA False" in run.stderr


_UNCACHED = """
import logging, sys
import numpy as np
logging.basicConfig(level=logging.WARNING)
from controller.selection import subtrees
rng = np.random.default_rng(5)
n, c = 40, 7
x, w = rng.random((c, n)), np.exp(rng.normal(0, 1, (c, n)))
x *= w
rest = np.triu(np.ones((c, c), dtype=bool), k=1)
kw = dict(limit_j=1e9, floor=True, threshold=np.inf, recheck=1e-9, tie_tol=1e-12)
args = (x.copy(), w.copy(), x, w, rng.uniform(0.5, 2, c), rest, np.arange(c),
        np.ones(c), np.full(c, 5.0))
got = {k: subtrees.score_subtrees(*args, **kw, kernel=k) for k in ("compiled", "numpy")}
assert got["compiled"].scored == got["numpy"].scored == 2**c - 1 - c
assert np.allclose(got["compiled"].losses, got["numpy"].losses, rtol=1e-12)
print("SCORED", got["compiled"].scored)
"""


def test_the_compiled_kernel_works_where_numba_cannot_write_its_cache(tmp_path: Path) -> None:
    """numba's only cache folder is under a file (no user, root included, can create it):
    the kernels are compiled in memory, with a warning, and score as numpy does."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {
        **ENV,
        "NUMBA_CACHE_DIR": str(blocker / "numba"),
        "NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator",
    }
    run = _python(_UNCACHED, env)
    assert "SCORED 120" in run.stdout
    assert "compiling it in memory" in run.stderr and "cannot cache" in run.stderr
