"""Prompts accepted and not yet answered, kept on disk so that a controller killed with prompts
in flight answers them after it restarts, and recent answers, so that a prompt delivered twice
(an MQTT redelivery, an asker re-sending after a reconnect) is answered once.

The journal is JSON lines: ``{"op": "add", ...}`` when a prompt is accepted, ``{"op": "done",
"request_id": ...}`` when it is answered. It is flushed at every line (a killed process loses
nothing) and, with ``sync`` (the controller's ``ledger_sync``, on by default), each "add" is synced
to disk before the prompt is acknowledged, so a power cut of the controller's host loses no
accepted prompt (a lost "done" only means a prompt answered twice). It is compacted at start and
every COMPACT_LINES lines, the rewritten file synced before it replaces the journal.
"""

from __future__ import annotations

import json
import logging
import os
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

    def __init__(self, path: Path | None, remember: int = 2048, *, sync: bool = False) -> None:
        self.path = path
        self.sync = sync
        self.entries: dict[str, Entry] = {}
        self._answers: OrderedDict[str, tuple[str, Answer]] = OrderedDict()
        self._remember = remember
        self._file: IO[str] | None = None
        self._lines = 0
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                try:
                    self._replay(json.loads(line))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("ledger %s line %d unreadable, skipped: %s", path, number, exc)
        self._compact(path)
        if self.entries:
            log.info("ledger %s: %d prompts accepted and not answered", path, len(self.entries))

    def _replay(self, record: dict[str, Any]) -> None:
        if record["op"] == "add":
            entry = Entry(
                request_id=record["request_id"],
                prompt=Prompt.model_validate_json(record["prompt"]),
                routes=[ReplyRoute.load(r) for r in record["routes"]],
                received_s=float(record["received_s"]),
                fingerprint=record["fingerprint"],
            )
            self.entries[entry.request_id] = entry
        elif record["op"] == "done":
            self.entries.pop(record["request_id"], None)

    def _compact(self, path: Path) -> None:
        """Rewrite the journal with the entries still open (atomically), and append from there:
        at start, and every COMPACT_LINES lines, so a controller left running for months keeps
        a small file."""
        if self._file is not None:
            self._file.close()
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as out:
            for entry in self.entries.values():
                out.write(json.dumps(_dump(entry)) + "\n")
            # on disk before it replaces the journal: a power cut just after the rename must
            # find the open entries, not an empty file
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        self._file = path.open("a")
        self._lines = len(self.entries)

    def _write(self, record: dict[str, Any], durable: bool = False) -> None:
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
            log.error("ledger %s: cannot write: %s", self.path, exc)

    def add(self, entry: Entry) -> None:
        self.entries[entry.request_id] = entry
        self._write(_dump(entry), durable=True)  # a lost "done" only answers twice

    def done(self, request_id: str, answer: Answer | None = None) -> None:
        entry = self.entries.pop(request_id, None)
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
        if self._file is not None:
            self._file.close()
            self._file = None


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
