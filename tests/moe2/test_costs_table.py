"""``moe2 costs`` at 80 columns (moe2/cli/tables.py): every ``expert@agent`` key whole (the other
columns fold instead), the budgets in the title, a newcomer's profiling progress (n/N)."""

from __future__ import annotations

from rich.console import Console

from messages.budgets import Budgets
from messages.costs import CostTable, ExpertCostRow
from moe2.cli.tables import costs_table

KEYS = ["smollm2-cloze@edge-a", "smollm2-letter@edge-a", "gemma3-cloze@edge-b", "gemma3-qa@edge-b"]


def _render(width: int) -> str:
    delays = {"geography": 0.412, "math": 1.734, "science": 0.521}
    rows = [
        ExpertCostRow(
            key=key,
            online=True,
            planned=n % 2 == 0,
            in_gate=True,
            energy_j=2.345,
            energy_source="model",
            delay_s=delays,
            origin="live",
            delay_samples=16,
            energy_samples=15,
            delay_ratio=1.02,
            energy_ratio=0.97,
        )  # fmt: skip
        for n, key in enumerate(KEYS)
    ]
    rows.append(
        ExpertCostRow(
            key="smol-ort@edge-c",
            online=True,
            planned=False,
            in_gate=False,
            origin="unknown",
            profiling="profiling 40/150 prompts (then 958 more in the gate)",
            profiled=40,
            profile_of=150,
        )  # fmt: skip
    )
    table = CostTable(
        controller_id="c", time_s=1.0, budgets=Budgets(energy_j=3.0, delay_s={"science": 1.5}),
        feasible=True, drift_threshold=0.5, window=16, experts=rows,
    )  # fmt: skip
    console = Console(width=width, record=True, color_system=None)
    console.print(costs_table(table))
    return console.export_text()


def test_at_80_columns_every_key_is_whole_and_the_progress_shows() -> None:
    text = _render(80)
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), text
    for key in [*KEYS, "smol-ort@edge-c"]:
        assert any(line.split()[:1] == [key] for line in lines), (key, text)
    assert "…" not in text
    assert "profiling" in text and "40/150" in text
    assert "science 1.5 s" in text and "0.521" in text and "1.734" in text


def test_wide_consoles_keep_one_line_per_value() -> None:
    text = _render(160)
    assert "16/15" in text and "1.02/" in text and "live (model)" in text
