"""The live loop's drill on real processes (moe2/local/drills.py ``slowed_expert``): the lab
fleet's two agents with the shipped profile and gate, delay budgets at 2.5 x the delays the
controller learnt, one planned agent stopped 0.4 s of every 0.5 s (SIGSTOP/SIGCONT) while a
suite prompt comes every 1.5 s. The agent is planned away within 60 s of the slowdown and
back within 60 s of its recovery (deadlines to wait for the plan, not timings), and no prompt
fails: the other agent is online throughout, and a late answer is an answer, marked so."""

from __future__ import annotations

import math
from pathlib import Path

from moe2.local.drills import slowed_expert


def test_a_slowed_agent_is_planned_away_and_back_and_no_prompt_fails(tmp_path: Path) -> None:
    report = slowed_expert(tmp_path)
    print(report.line())
    assert not math.isnan(report.figures["away_s"]), report.line()  # within 60 s of slowing
    assert not math.isnan(report.figures["back_s"]), report.line()  # within 60 s of recovery
    assert report.lost == 0 and report.duplicated == 0, report.line()
    assert report.statuses.get("failed", 0) == 0, report.line()
    # prompts flowed throughout: at least those of the still-slow spell (6 s, one every 1.5 s)
    assert report.answered == report.asked >= 4, report.line()
