"""A controller's identity on this host: a stable id (its MQTT client id and session, so a
restart resumes the session the broker kept) and a state folder for its ledger.

Without ``--controller-id`` the id is the host name; a second controller started on the same
host for the same fleet takes ``{host}-2`` and so on. Each id is held by an exclusive lock on a
file in the state folder, and on a host-wide Unix socket name derived from that file's path, for
as long as the process lives, so two processes never share an id (they would take each other's
MQTT session in turn) and a restart gets its old id back. A state folder that cannot hold the
lock file (a file where the folder should be, a full disk) leaves the socket lock alone, with a
warning; the controller still starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from messages.base import TOPIC_LEVEL_RE

log = logging.getLogger(__name__)


class IdentityError(RuntimeError):
    """The controller id asked for is held by another process on this host."""


def default_state_root() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "moe2"


def host_id() -> str:
    host = socket.gethostname().split(".")[0]
    return host if TOPIC_LEVEL_RE.fullmatch(host) else "controller"


@dataclass
class ControllerIdentity:
    controller_id: str
    state_dir: Path
    _locks: list[IO[str] | socket.socket]

    def release(self) -> None:
        for lock in self._locks:
            lock.close()
        self._locks.clear()


def _file_lock(path: Path) -> IO[str] | None:
    """An exclusive lock on ``path`` (None when another process holds it), with our pid in it;
    raises OSError when the file cannot be made (a state folder that is a file, a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    try:  # who holds it, for a person looking: a full disk must not refuse the lock
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except OSError:
        pass
    return handle


def _socket_lock(path: Path) -> socket.socket | None:
    """The same lock without a file: a Unix socket bound to a name derived from ``path`` in the
    abstract namespace (Linux; released by the kernel when the process dies). None when another
    process holds it; raises OSError where there is no such namespace."""
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:40]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0moe2-controller-lock-{digest}")
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def _try_lock(path: Path) -> list[IO[str] | socket.socket] | None:
    """Both locks on ``path`` (None when another process holds either); where one cannot be
    had, the other alone, with a warning; where neither can, no lock, with a louder one."""
    locks: list[IO[str] | socket.socket] = []
    problems: list[str] = []
    for kind, take in (("socket", _socket_lock), ("file", _file_lock)):
        try:
            lock = take(path)
        except OSError as exc:
            problems.append(f"no {kind} lock ({exc})")
            continue
        if lock is None:
            for held in locks:
                held.close()
            return None
        locks.append(lock)
    if problems and locks:
        log.warning("controller id lock %s: %s; held by the other lock", path, problems[0])
    elif problems:
        log.error(
            "controller id lock %s cannot be taken: %s: two processes could take this id",
            path,
            "; ".join(problems),
        )
    return locks


def claim(state_root: Path, fleet: str, wanted: str | None = None) -> ControllerIdentity:
    """Lock ``wanted`` (an error when another process holds it), or the first free one of
    ``{host}``, ``{host}-2``, ``{host}-3``, ... The state folder is made where it can be (the
    ledger says what is wrong with it where it cannot)."""
    folder = state_root / fleet
    candidates = [wanted] if wanted else [host_id()] + [f"{host_id()}-{n}" for n in range(2, 64)]
    for candidate in candidates:
        locks = _try_lock(folder / f"{candidate}.lock")
        if locks is not None:
            state_dir = folder / candidate
            with contextlib.suppress(OSError):
                state_dir.mkdir(parents=True, exist_ok=True)
            return ControllerIdentity(candidate, state_dir, locks)
    if wanted:
        raise IdentityError(
            f"controller id {wanted!r} of fleet {fleet!r} is held by another process on this "
            f"host (lock {folder / wanted}.lock); give another --controller-id"
        )
    raise IdentityError(f"no free controller id under {folder}: too many controllers running")
