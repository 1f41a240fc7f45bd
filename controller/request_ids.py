"""Whose a request id is: the controller's key for a prompt.

A request id is chosen by its asker, so two askers may choose the same one. A prompt from a
login's own topic (``clients/{login}/prompts``, the only prompt topic a client may publish on
the secure broker) is kept under the id scoped by that login, ``{login}:{request_id}``: the
ledger, the dispatcher, the jobs and results, ``answers/{key}`` and the answers remembered
all use that key, so one login's ``q1`` is never another's. The answer on the asker's reply
route still carries the id it sent. A prompt on the shared ``prompts`` topics (the open
broker) keeps its id as it came: there the content fingerprint binds the id to one prompt
(``controller.service.accept``).
"""

from __future__ import annotations

import hashlib

from messages.base import TOPIC_LEVEL_RE

# A scoped key too long for one topic level keeps this much of the login, then a digest.
_LOGIN_CHARS = 60
_DIGEST_CHARS = 40


def scoped_id(owner: str | None, request_id: str) -> str:
    """The controller's key for ``request_id`` from ``owner`` (None: a shared prompt topic):
    ``{owner}:{request_id}``, or, when that is no topic level (over 128 characters),
    ``{owner[:60]}:h{digest of both}``. A key that two askers could still share (an id
    written on purpose to look scoped) binds to the first prompt's fingerprint, which holds
    its reply routes: the second is refused, never answered with the first's result."""
    if owner is None:
        return request_id
    key = f"{owner}:{request_id}"
    if TOPIC_LEVEL_RE.fullmatch(key):
        return key
    digest = hashlib.sha256(f"{owner}\0{request_id}".encode()).hexdigest()[:_DIGEST_CHARS]
    return f"{owner[:_LOGIN_CHARS]}:h{digest}"
