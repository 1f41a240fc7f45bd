"""One active controller: every controller decides the same from the same statuses."""

from __future__ import annotations

from controller.leadership import next_term, should_lead
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


def _term(s: ControllerStatus, term: int | None) -> ControllerStatus:
    return s.model_copy(update={"term": term})


def test_of_two_actives_the_higher_term_wins_whoever_is_older() -> None:
    # c1 (older) was frozen and comes back claiming term 1; c2 took over with term 2.
    thawed = _term(status("c1", 1, "active"), 1)
    took_over = _term(status("c2", 50, "active"), 2)
    assert not should_lead(thawed, [took_over])
    assert should_lead(took_over, [thawed])
    # Equal terms (two started together): the older one, as before terms.
    a, b = _term(status("a", 5, "active"), 3), _term(status("b", 6, "active"), 3)
    assert should_lead(a, [b]) and not should_lead(b, [a])
    # A status without a term (an older controller) counts as term 0.
    assert should_lead(_term(status("new", 9, "active"), 1), [status("old", 1, "active")])


def test_a_standby_does_not_take_over_from_an_active_one_whatever_its_term() -> None:
    assert not should_lead(_term(status("c1", 1), 7), [_term(status("c2", 50, "active"), 2)])


def test_the_next_term_is_above_every_term_seen() -> None:
    assert next_term([]) == 1
    assert next_term([None, 0]) == 1
    assert next_term([3, None, 7, 2]) == 8
