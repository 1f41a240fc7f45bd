"""A controller's identity on this host: a stable id (its MQTT client id and session, so a
restart resumes the session the broker kept) and a state folder for its ledger.

Without ``--controller-id`` the id is the host name; a second controller started on the same
host for the same fleet takes ``{host}-2`` and so on. Each id is held by an exclusive lock on a
file in the state folder for as long as the process lives, so two processes never share an id
(they would take each other's MQTT session in turn) and a restart gets its old id back.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from messages.base import TOPIC_LEVEL_RE


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
    _lock: IO[str]

    def release(self) -> None:
        self._lock.close()


def _try_lock(path: Path) -> IO[str] | None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim(state_root: Path, fleet: str, wanted: str | None = None) -> ControllerIdentity:
    """Lock ``wanted`` (an error when another process holds it), or the first free one of
    ``{host}``, ``{host}-2``, ``{host}-3``, ..."""
    folder = state_root / fleet
    candidates = [wanted] if wanted else [host_id()] + [f"{host_id()}-{n}" for n in range(2, 64)]
    for candidate in candidates:
        lock = _try_lock(folder / f"{candidate}.lock")
        if lock is not None:
            state_dir = folder / candidate
            state_dir.mkdir(parents=True, exist_ok=True)
            return ControllerIdentity(candidate, state_dir, lock)
    if wanted:
        raise IdentityError(
            f"controller id {wanted!r} of fleet {fleet!r} is held by another process on this "
            f"host (lock {folder / wanted}.lock); give another --controller-id"
        )
    raise IdentityError(f"no free controller id under {folder}: too many controllers running")
