"""One active controller: every controller decides the same from the same statuses."""

from __future__ import annotations

from controller.leadership import should_lead
from messages.controller import ControllerStatus


def status(
    cid: str, since: float, role: str = "standby", state: str = "online"
) -> ControllerStatus:
    return ControllerStatus(
        controller_id=cid,
        state=state,  # type: ignore[arg-type]
        role=role,  # type: ignore[arg-type]
        since_s=since,
        incarnation=int(since * 1000),
        version="t",
        time_s=since,
        agents_online=0,
        requests_answered=0,
    )


def test_alone_it_leads() -> None:
    assert should_lead(status("a", 10), [])


def test_among_standbys_the_one_online_longest_leads_and_ids_break_ties() -> None:
    assert should_lead(status("b", 5), [status("a", 10)])
    assert not should_lead(status("a", 10), [status("b", 5)])
    assert should_lead(status("a", 5), [status("b", 5)])
    assert not should_lead(status("b", 5), [status("a", 5)])


def test_leadership_sticks_while_the_active_one_is_online() -> None:
    # An older controller coming back does not take over from the active one...
    assert not should_lead(status("old", 1), [status("new", 50, "active")])
    assert should_lead(status("new", 50, "active"), [status("old", 1)])
    # ...until it goes offline.
    assert should_lead(status("old", 1), [status("new", 50, "active", "offline")])


def test_two_actives_resolve_to_one() -> None:
    a, b = status("a", 5, "active"), status("b", 6, "active")
    assert should_lead(a, [b]) and not should_lead(b, [a])


def test_its_own_retained_status_does_not_count_as_another() -> None:
    me = status("a", 10)
    assert should_lead(me, [status("a", 1, "active")])
