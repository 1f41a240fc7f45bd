"""A request id used again with other content, on real processes (Mosquitto, a controller, a
SmolLM2 agent; moe2/local/drills.py::reused_id, which benchmarks/faults.py prints): never another
prompt's answer. The secure broker's share (two logins, one id) is in
tests/firmware_setup/test_request_ids_secure.py."""

from __future__ import annotations

from pathlib import Path

from moe2.local import drills

ROUNDS = 2


def test_a_reused_request_id_never_gets_another_prompts_answer(tmp_path: Path) -> None:
    report = drills.reused_id(tmp_path, rounds=ROUNDS)
    assert report.lost == 0 and report.duplicated == 0, report.line()
    # Every answer came on its asker's own route, under the id it sent, and an ok one names
    # its own prompt's right choice (Tokyo for Japan, Paris for France): never the other's.
    assert report.figures["wrong"] == 0, report.line()
    # On the shared topic the second prompt under an id (answered or in flight) is refused
    # with a clear reason; two logins with one id are each answered; after the controller's
    # restart the agent ran France anew rather than re-sending Japan's kept result.
    assert report.statuses == {"ok": 4 * ROUNDS + 1, "rejected": 2 * ROUNDS}, report.line()
    assert len(report.problems) == 2 * ROUNDS, report.line()
    assert all("already in use by another prompt" in p for p in report.problems), report.line()
    assert report.figures["restart_right"] == 1.0, report.line()
