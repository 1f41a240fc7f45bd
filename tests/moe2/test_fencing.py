"""Fencing on real processes: an active controller frozen (SIGSTOP) or cut off from the broker
(a relay that passes nothing while the process runs on), beside a standby or alone, under
one-shot prompts every 0.5 s. Nothing is lost, nothing answered twice, nothing answered
``failed``, no plan epoch goes back on any agent, never two controllers active at once
(moe2/local/drills.py; benchmarks/faults.py prints the same figures, and a 20 s cut)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moe2.local import drills


def _fenced(report: drills.Report) -> None:
    assert report.asked > 0, report.line()
    assert report.lost == 0, report.line()
    assert report.duplicated == 0, report.line()
    assert report.statuses == {"ok": report.asked}, report.line()  # no spurious `failed`
    assert report.figures["epochs_monotone"] == 1.0, report.line()
    assert report.figures["most_active"] == 1.0, report.line()


STANDBY = pytest.mark.parametrize("standby", [True, False], ids=["beside-a-standby", "alone"])


@STANDBY
@pytest.mark.parametrize("frozen_s", [20.0, 30.0], ids=["20s", "30s"])
def test_controller_frozen_answers_each_prompt_once(
    tmp_path: Path, frozen_s: float, standby: bool
) -> None:
    _fenced(drills.controller_frozen(tmp_path, frozen_s, standby))


@STANDBY
def test_controller_cut_off_30_s_answers_each_prompt_once(tmp_path: Path, standby: bool) -> None:
    _fenced(drills.controller_cut_off(tmp_path, 30.0, standby))
