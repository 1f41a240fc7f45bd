"""One active controller per fleet: which of the online controllers answers prompts.

Every controller publishes its retained ``ControllerStatus`` on ``controllers/{id}/status`` with
an MQTT will that sets it offline. Leadership is sticky: a controller that is active stays
active while it is online; when no online controller is active, the standby online longest
(lowest ``since_s``, then lowest id) takes over. Should two claim it at once (two started
together), the one with the higher key steps down. Every controller computes this from the
same retained statuses, so they agree without talking to each other.
"""

from __future__ import annotations

from collections.abc import Iterable

from messages.controller import ControllerStatus


def _key(status: ControllerStatus) -> tuple[float, str]:
    return (status.since_s, status.controller_id)


def should_lead(me: ControllerStatus, others: Iterable[ControllerStatus]) -> bool:
    """Whether ``me`` should be the active controller, given the other controllers' latest
    statuses (offline ones and ``me`` itself are ignored)."""
    online = [s for s in others if s.state == "online" and s.controller_id != me.controller_id]
    actives = [s for s in online if s.role == "active"]
    if actives:
        return me.role == "active" and all(_key(me) < _key(s) for s in actives)
    if me.role == "active":
        return True  # sticky: an older standby coming back does not take over
    return all(_key(me) < _key(s) for s in online)
