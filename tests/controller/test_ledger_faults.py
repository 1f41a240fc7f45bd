"""The ledger on state that cannot be used: moved aside when it can be, kept in memory (not
durable) when it cannot, and durable again once the disk takes it; real files, a real full
tmpfs, a real immutable file."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.identity import IdentityError, claim
from controller.ledger import Entry, Ledger, ReplyRoute
from messages.prompts import Prompt
from moe2.local.drills import fill_disk
from moe2.local.fleet import wait_until
from tests.helpers import small_tmpfs


def entry(rid: str) -> Entry:
    prompt = Prompt(prompt="q", request_id=rid, timeout_s=10.0)
    return Entry(rid, prompt, [ReplyRoute("inbox/x")], received_s=1000.0, fingerprint=rid)


def journal(path: Path, *rids: str) -> None:
    ledger = Ledger(path)
    for rid in rids:
        ledger.add(entry(rid))
    ledger.close()


def aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".broken-*"))


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "disk") as folder:
        yield folder


def test_a_directory_where_the_journal_should_be_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ledger.jsonl"
    path.mkdir()
    (path / "kept").write_text("someone's file")
    ledger = Ledger(path)
    ledger.add(entry("r1"))
    assert ledger.durable and ledger.problem is None
    ledger.close()
    (moved,) = aside(path)
    assert (moved / "kept").read_text() == "someone's file"
    assert ledger.notice is not None and str(path) in ledger.notice and "directory" in ledger.notice
    assert any("moved aside" in r.message and str(path) in r.message for r in caplog.records)
    assert list(Ledger(path).entries) == ["r1"]


def test_a_fifo_journal_is_moved_aside_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    os.mkfifo(path)
    ledger = Ledger(path)  # reading a FIFO would wait for a writer forever
    assert ledger.durable and "FIFO" in (ledger.state_problem or "")
    assert len(aside(path)) == 1 and path.is_file()


def test_corrupt_lines_keep_the_readable_ones_and_the_original_aside(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    journal(path, "r1", "r2")
    lines = path.read_text().splitlines()
    original = "\n".join([lines[0], lines[1], "\x00garbage{", lines[2]]) + "\n"
    path.write_text(original)
    ledger = Ledger(path)
    assert sorted(ledger.entries) == ["r1", "r2"] and ledger.durable
    (moved,) = aside(path)
    assert moved.read_text() == original
    ledger.close()
    # a torn last line (a kill mid-write) is only skipped: nothing is moved aside for it
    path.write_text(path.read_text() + '{"op": "add", "requ')
    assert sorted(Ledger(path).entries) == ["r1", "r2"] and len(aside(path)) == 1


def test_an_immutable_journal_is_read_kept_and_written_once_it_can_be(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    path = tmp_path / "ledger.jsonl"
    journal(path, "r1")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    before = path.read_text()
    try:
        ledger = Ledger(path, retry_s=0.1)
        assert list(ledger.entries) == ["r1"]  # what the disk holds is not lost
        assert not ledger.durable and ledger.problem is not None
        assert str(path) in ledger.problem and "EPERM" in ledger.problem
        errors = [r.message for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "without durability" in errors[0] and str(path) in errors[0]
        ledger.add(entry("r2"))
        assert path.read_text() == before
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
    assert wait_until(lambda: ledger.durable, 30)
    assert ledger.problem is None
    ledger.close()
    assert sorted(Ledger(path).entries) == ["r1", "r2"]


def test_a_state_folder_that_is_a_file_serves_in_memory_until_it_is_a_folder(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "state"
    folder.write_text("not a folder")
    path = folder / "fleet" / "c1" / "ledger.jsonl"
    ledger = Ledger(path, retry_s=0.1)
    assert not ledger.durable
    assert ledger.problem is not None and str(path.parent) in ledger.problem
    ledger.add(entry("r1"))
    assert folder.read_text() == "not a folder"  # a folder named by a person is not touched
    folder.unlink()
    assert wait_until(lambda: ledger.durable, 30)
    ledger.close()
    assert list(Ledger(path).entries) == ["r1"]


def test_a_disk_full_at_start_keeps_the_journal_and_what_it_holds(disk: Path) -> None:
    path = disk / "ledger.jsonl"
    journal(path, "r1", "r2")
    before = path.read_text()
    filler = fill_disk(disk)
    ledger = Ledger(path, retry_s=0.1)
    assert sorted(ledger.entries) == ["r1", "r2"] and not ledger.durable
    assert "ENOSPC" in (ledger.problem or "")
    ledger.done("r1")
    ledger.add(entry("r3"))
    assert path.read_text() == before and not list(disk.glob("*.tmp"))
    filler.unlink()
    assert wait_until(lambda: ledger.durable, 30)
    ledger.close()
    assert sorted(Ledger(path).entries) == ["r2", "r3"]


def test_a_disk_that_fills_while_running_loses_nothing_once_it_has_room(disk: Path) -> None:
    path = disk / "ledger.jsonl"
    ledger = Ledger(path, sync=True, retry_s=0.1)
    ledger.add(entry("r1"))
    filler = fill_disk(disk)
    accepted = []
    while ledger.durable and len(accepted) < 100:  # the journal's last block may have room
        accepted.append(f"f{len(accepted)}")
        ledger.add(entry(accepted[-1]))
    assert not ledger.durable and "ENOSPC" in (ledger.problem or "")
    ledger.add(entry("r3"))
    ledger.done("r1")
    filler.unlink()
    assert wait_until(lambda: ledger.durable, 30)
    ledger.add(entry("r4"))
    # what a SIGKILL now leaves on disk: the journal as written, nothing closed
    assert sorted(Ledger(path).entries) == sorted([*accepted, "r3", "r4"])
    ledger.close()


def test_the_id_lock_holds_without_a_state_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "state"
    root.write_text("not a folder")
    first = claim(root, "fleet", "c1")
    assert any("held by the other lock" in r.message for r in caplog.records)
    with pytest.raises(IdentityError):
        claim(root, "fleet", "c1")
    first.release()
    claim(root, "fleet", "c1").release()
    # with a working folder both locks are taken, and either one refuses a second process
    good = claim(tmp_path / "good", "fleet", "c1")
    with pytest.raises(IdentityError):
        claim(tmp_path / "good", "fleet", "c1")
    assert (tmp_path / "good" / "fleet" / "c1.lock").read_text() == f"{os.getpid()}\n"
    good.release()


def test_a_journal_that_can_be_neither_read_nor_moved_is_left_alone_until_it_can(
    tmp_path: Path,
) -> None:
    """A FIFO in a folder that cannot change (immutable): nothing is read, nothing overwritten;
    in memory until the folder can change, then moved aside and written."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    folder = tmp_path / "c1"
    folder.mkdir()
    path = folder / "ledger.jsonl"
    os.mkfifo(path)
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable flag")
    try:
        ledger = Ledger(path, retry_s=0.1)
        assert not ledger.durable and ledger.problem is not None
        assert "FIFO" in ledger.problem and "cannot be moved aside" in ledger.problem
        ledger.add(entry("r1"))
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    assert wait_until(lambda: ledger.durable, 30)
    assert len(aside(path)) == 1 and path.is_file()
    ledger.close()
    assert list(Ledger(path).entries) == ["r1"]


def test_what_was_moved_aside_is_never_replaced_by_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    for n in range(3):  # three starts in the same second, each on a corrupt journal
        journal(path, f"r{n}")
        path.write_text(path.read_text() + "corrupt\n" + path.read_text())
        Ledger(path).close()
    assert len(aside(path)) == 3
    assert sorted(Ledger(path).entries) == ["r0", "r1", "r2"]
