"""One active controller per fleet: which of the online controllers answers prompts.

Every controller publishes its retained ``ControllerStatus`` on ``controllers/{id}/status`` with
an MQTT will that sets it offline. A controller that takes over does so with a leadership
``term`` one above every term it has seen (``next_term``), and leadership is sticky: an active
controller stays active while it is online and no online active controller holds a higher
term; when no online controller is active, the standby online longest (lowest ``since_s``,
then lowest id) takes over. Of two active at once the higher term wins, so a controller that
was frozen or cut off, and comes back claiming its old term, loses to the one that took over
from it; between equal terms (two started together) the one with the lower key wins. Every
controller computes this from the same retained statuses, so they agree without talking to
each other.

A controller whose status carries a ``config_problem`` (it holds another configuration than the
fleet's, or has not fetched the fleet's yet: ``controller/config_sync.py``) is no candidate: it
does not lead, an active one with a problem steps down, and the others do not wait for it.
"""

from __future__ import annotations

from collections.abc import Iterable

from messages.controller import ControllerStatus


def _key(status: ControllerStatus) -> tuple[float, str]:
    return (status.since_s, status.controller_id)


def _beats(me: ControllerStatus, other: ControllerStatus) -> bool:
    """Whether ``me`` keeps leadership against another active controller."""
    mine, theirs = me.term or 0, other.term or 0
    return mine > theirs or (mine == theirs and _key(me) < _key(other))


def should_lead(me: ControllerStatus, others: Iterable[ControllerStatus]) -> bool:
    """Whether ``me`` should be the active controller, given the other controllers' latest
    statuses (offline ones and ``me`` itself are ignored)."""
    if me.config_problem is not None:
        return False  # never lead with less, or other, than the fleet's configuration
    online = [s for s in others if s.state == "online" and s.controller_id != me.controller_id]
    actives = [s for s in online if s.role == "active"]
    online = [s for s in online if s.config_problem is None]  # candidates only
    if actives:
        return me.role == "active" and all(_beats(me, s) for s in actives)
    if me.role == "active":
        return True  # sticky: an older standby coming back does not take over
    return all(_key(me) < _key(s) for s in online)


def next_term(seen: Iterable[int | None]) -> int:
    """The term of a controller taking over: one above every term it has seen (its own,
    other controllers' statuses and fleet plans, the plans agents say they hold)."""
    return 1 + max((t for t in seen if t is not None), default=0)
