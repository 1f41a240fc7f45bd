"""Prompts accepted and not yet answered, kept on disk so that a controller killed with prompts
in flight answers them after it restarts, and recent answers, so that a prompt delivered twice
(an MQTT redelivery, an asker re-sending after a reconnect) is answered once.

The journal is JSON lines: ``{"op": "add", ...}`` when a prompt is accepted, ``{"op": "done",
"request_id": ...}`` when it is answered. It is flushed at every line (a killed process loses
nothing) and, with ``sync`` (the controller's ``ledger_sync``, on by default), each "add" is synced
to disk before the prompt is acknowledged, so a power cut of the controller's host loses no
accepted prompt (a lost "done" only means a prompt answered twice). It is compacted at start and
every COMPACT_LINES lines, the rewritten file synced before it replaces the journal.

State that cannot be used never stops the controller. A journal that is not a readable file (a
directory, a FIFO, a file that cannot be read) is moved aside as ``ledger.jsonl.broken-<time>``
and a fresh one started; one with corrupt lines keeps its readable lines and a copy of the
original is moved aside the same way. A journal or folder that cannot be written (a full disk, a
read-only or immutable file, a state folder that is a file) leaves the ledger in memory only:
``durable`` is False, ``problem`` says what is wrong, one log line says it, and a background
thread tries every ``retry_s`` to rewrite the journal from memory, after which it is durable
again. Nothing the disk still holds is overwritten before it has been read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from messages.answers import Answer
from messages.base import now_s
from messages.prompts import Prompt

log = logging.getLogger(__name__)

# The journal is rewritten with the open entries only once it holds this many lines more.
COMPACT_LINES = 10_000
# A journal that cannot be written is tried again this often.
RETRY_S = 5.0


@dataclass(frozen=True)
class ReplyRoute:
    """Where an asker wants the answer besides ``answers/{request_id}``; ``request_id``: the
    id the asker sent, when the controller keys the prompt otherwise (scoped by its login,
    controller/request_ids.py), so the answer it reads carries its own id."""

    topic: str
    correlation_data: bytes | None = None
    request_id: str | None = None

    def dump(self) -> dict[str, Any]:
        data = None if self.correlation_data is None else self.correlation_data.hex()
        return {"topic": self.topic, "correlation_data": data, "request_id": self.request_id}

    @classmethod
    def load(cls, raw: dict[str, Any]) -> ReplyRoute:
        data = raw.get("correlation_data")
        asked = raw.get("request_id")
        return cls(
            str(raw["topic"]),
            None if data is None else bytes.fromhex(data),
            None if asked is None else str(asked),
        )


@dataclass
class Entry:
    """An accepted prompt: what was asked, by whom, when (wall clock), and its fingerprint."""

    request_id: str
    prompt: Prompt
    routes: list[ReplyRoute]
    received_s: float
    fingerprint: str

    @property
    def deadline_s(self) -> float:
        return self.received_s + self.prompt.timeout_s

    def add_routes(self, routes: list[ReplyRoute]) -> None:
        for route in routes:
            if route not in self.routes:
                self.routes.append(route)


class Ledger:
    """Accepted prompts by request id (journalled when ``path`` is given), and an LRU of the
    last ``remember`` answers with the fingerprint of the prompt each answered."""

    def __init__(
        self,
        path: Path | None,
        remember: int = 2048,
        *,
        sync: bool = False,
        retry_s: float = RETRY_S,
    ) -> None:
        self.path = path
        self.sync = sync
        self.retry_s = retry_s
        self.entries: dict[str, Entry] = {}
        self.problem: str | None = None  # what keeps the journal from being written, now
        self.notice: str | None = None  # what was moved aside at start
        self._answers: OrderedDict[str, tuple[str, Answer]] = OrderedDict()
        self._remember = remember
        self._file: IO[str] | None = None
        self._lines = 0
        self._io = threading.RLock()  # the journal file: writers, compaction, the retry thread
        self._unread = path is not None  # the journal on disk is not yet in memory
        self._done_unread: set[str] = set()  # answered before the journal could be read
        self._closed = threading.Event()
        self._retrying: threading.Thread | None = None
        if path is not None:
            self._open(path)
            if self.entries:
                log.info("ledger %s: %d prompts accepted and not answered", path, len(self.entries))

    @property
    def durable(self) -> bool:
        """Whether what is accepted now is written to the journal."""
        return self._file is not None

    @property
    def state_problem(self) -> str | None:
        """What is wrong with the journal now, else what was moved aside at start."""
        return self.problem or self.notice

    def _open(self, path: Path) -> bool:
        """Read the journal into memory (once) and rewrite it from memory, ready to append; on
        an OSError, go on in memory (``_fault``). Whether the journal is writable now."""
        with self._io:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                self._fault(f"its folder {path.parent} cannot be made ({_cause(exc)})")
                return False
            if self._unread:
                try:
                    self._read(path)
                except OSError as exc:
                    self._fault(str(exc))
                    return False
            try:
                self._compact(path)
            except OSError as exc:
                self._fault(f"cannot be written ({_cause(exc)})")
                return False
            return True

    def _read(self, path: Path) -> None:
        """Replay the journal; a journal that is not a readable file, or has corrupt lines, is
        moved aside (raises OSError, saying why, when it can be neither read nor moved)."""
        if not path.is_file():
            if path.is_symlink() or path.exists():
                self._set_aside(path, f"is {_kind(path)}, not a file")
            self._unread = False
            return
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            self._set_aside(path, f"cannot be read ({_cause(exc)})")
            self._unread = False
            return
        lines = text.splitlines()
        bad = 0
        for number, line in enumerate(lines, 1):
            try:
                self._replay(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                torn = number == len(lines)  # a kill or a power cut mid-write
                log.warning("ledger %s line %d unreadable, skipped: %s", path, number, exc)
                bad += 0 if torn else 1
        self._unread = False
        self._done_unread.clear()
        if bad:
            try:
                self._set_aside(path, f"has {bad} corrupt lines (the readable ones are kept)")
            except OSError as exc:
                log.warning("%s; a fresh journal replaces it", exc)

    def _set_aside(self, path: Path, why: str) -> None:
        """Rename ``path`` to ``{name}.broken-{time}``, saying so in one line."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        aside = path.with_name(f"{path.name}.broken-{stamp}")
        for n in range(2, 1000):  # never onto an earlier one: rename would replace it
            if not (aside.exists() or aside.is_symlink()):
                break
            aside = path.with_name(f"{path.name}.broken-{stamp}-{n}")
        try:
            os.rename(path, aside)
        except OSError as exc:
            raise OSError(f"{why}, and cannot be moved aside ({_cause(exc)})") from None
        self.notice = f"ledger {path} {why}: moved aside to {aside}"
        log.warning("%s; a fresh journal replaces it", self.notice)

    def _replay(self, record: dict[str, Any]) -> None:
        if record["op"] == "add":
            entry = Entry(
                request_id=record["request_id"],
                prompt=Prompt.model_validate_json(record["prompt"]),
                routes=[ReplyRoute.load(r) for r in record["routes"]],
                received_s=float(record["received_s"]),
                fingerprint=record["fingerprint"],
            )
            if entry.request_id not in self._done_unread:
                self.entries.setdefault(entry.request_id, entry)  # memory is newer than disk
        elif record["op"] == "done":
            self.entries.pop(record["request_id"], None)

    def _compact(self, path: Path) -> None:
        """Rewrite the journal with the entries still open (atomically), and append from there:
        at start, and every COMPACT_LINES lines, so a controller left running for months keeps
        a small file. Its first line is written even with no entry open: a full disk shows."""
        self._close_file()
        tmp = path.with_suffix(".tmp")
        try:
            with tmp.open("w") as out:
                out.write(json.dumps({"op": "open", "written_s": time.time()}) + "\n")
                for entry in list(self.entries.values()):
                    out.write(json.dumps(_dump(entry)) + "\n")
                # on disk before it replaces the journal: a power cut just after the rename
                # must find the open entries, not an empty file
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)  # the journal itself is left as it was
            raise
        _fsync_dir(path.parent)
        self._file = path.open("a")
        self._lines = len(self.entries) + 1

    def _write(self, record: dict[str, Any], durable: bool = False) -> None:
        with self._io:
            if self._file is None or self.path is None:
                return
            try:
                self._file.write(json.dumps(record) + "\n")
                self._file.flush()
                if durable and self.sync:
                    os.fsync(self._file.fileno())
                self._lines += 1
                if self._lines > COMPACT_LINES + len(self.entries):
                    self._compact(self.path)
            except OSError as exc:  # a full disk must not stop the answers
                self._fault(f"cannot be written ({_cause(exc)})")

    def _fault(self, cause: str) -> None:
        """Go on in memory: say so (once per cause) and retry in the background."""
        self._close_file()
        problem = f"ledger {self.path}: {cause}"
        if problem != self.problem:
            log.error(
                "%s: serving without durability (accepted prompts kept in memory only), "
                "retrying every %g s",
                problem,
                self.retry_s,
            )
        self.problem = problem
        if self._retrying is None and not self._closed.is_set():
            self._retrying = threading.Thread(target=self._retry, name="ledger-retry", daemon=True)
            self._retrying.start()

    def _retry(self) -> None:
        """Every ``retry_s``: read the journal if it was not, rewrite it from memory."""
        assert self.path is not None
        while not self._closed.wait(self.retry_s):
            with self._io:
                if self._closed.is_set() or not self._open(self.path):
                    continue
                self._retrying = None
                self.problem = None
                log.warning(
                    "ledger %s is written again (%d prompts accepted and not answered): durable",
                    self.path,
                    len(self.entries),
                )
                return

    def _close_file(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        # what did not reach the disk is rewritten from memory by the next compaction
        with contextlib.suppress(OSError):
            file.close()

    def add(self, entry: Entry) -> None:
        self.entries[entry.request_id] = entry
        self._write(_dump(entry), durable=True)  # a lost "done" only answers twice

    def done(self, request_id: str, answer: Answer | None = None) -> None:
        entry = self.entries.pop(request_id, None)
        if self._unread:
            self._done_unread.add(request_id)
        if entry is not None:
            self._write({"op": "done", "request_id": request_id})
        if answer is not None and entry is not None:
            self._answers[request_id] = (entry.fingerprint, answer)
            self._answers.move_to_end(request_id)
            while len(self._answers) > self._remember:
                self._answers.popitem(last=False)

    def answered(self, request_id: str, fingerprint: str) -> Answer | None:
        """The answer already sent for this very prompt (same id and fingerprint), if recent."""
        found = self._answers.get(request_id)
        return found[1] if found is not None and found[0] == fingerprint else None

    def bound(self, request_id: str) -> tuple[str, str] | None:
        """The fingerprint of the prompt this request id names, and whether that prompt is
        ``in flight`` or ``answered`` (among the last ``remember`` answers); None when the id
        is free."""
        entry = self.entries.get(request_id)
        if entry is not None:
            return entry.fingerprint, "in flight"
        found = self._answers.get(request_id)
        return None if found is None else (found[0], "answered")

    def was_answered(self, request_id: str) -> bool:
        return request_id in self._answers

    def expire(self, grace_s: float = 60.0) -> list[Entry]:
        """Forget entries whose deadline passed ``grace_s`` ago (a standby's shadow of prompts
        the active controller answered while the standby could not see it)."""
        cutoff = now_s() - grace_s
        gone = [e for e in self.entries.values() if e.deadline_s < cutoff]
        for entry in gone:
            self.done(entry.request_id)
        return gone

    def close(self) -> None:
        self._closed.set()
        with self._io:
            self._close_file()


def _cause(exc: OSError) -> str:
    """An OSError as a person reads it: ``No space left on device (ENOSPC)``."""
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, str(exc.errno))
    return f"{exc.strerror or os.strerror(exc.errno)} ({name})"


def _kind(path: Path) -> str:
    """What is at ``path`` instead of a file, in words."""
    try:
        mode = path.lstat().st_mode
    except OSError:
        return "missing"
    if stat.S_ISLNK(mode):
        return "a symbolic link to " + ("nothing" if not path.exists() else _kind(path.resolve()))
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the file system allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _dump(entry: Entry) -> dict[str, Any]:
    return {
        "op": "add",
        "request_id": entry.request_id,
        "prompt": entry.prompt.model_dump_json(),
        "routes": [r.dump() for r in entry.routes],
        "received_s": entry.received_s,
        "fingerprint": entry.fingerprint,
        "written_s": time.time(),
    }
