"""Fleet churn decisions (controller/damping.py): coalesced re-plans, flapping agents held out
until steady, and announcements alone never planned beside agents heard alive."""

from __future__ import annotations

from controller.damping import FlapDamper, ReplanTimer, plannable


def test_changes_within_a_window_make_one_replan() -> None:
    timer = ReplanTimer(window_s=0.5)
    assert not timer.due(0.0)
    timer.note(10.0)
    timer.note(10.2)
    timer.note(10.49)
    assert not timer.due(10.3)
    assert timer.due(10.5)  # the window opened by the first change, not pushed back
    assert not timer.due(10.6)  # once per window
    timer.note(11.0)
    assert not timer.due(11.4) and timer.due(11.5)


def test_a_stream_of_changes_is_planned_at_most_a_window_late() -> None:
    timer = ReplanTimer(window_s=1.0)
    replans = 0
    for tick in range(600):  # a change every 0.1 s for a minute
        now = tick / 10
        timer.note(now)
        replans += timer.due(now)
    assert 50 <= replans <= 60  # one a window (and a tick of the loop), not one a change


def test_a_hold_ending_brings_the_replan_forward_never_back() -> None:
    timer = ReplanTimer(window_s=5.0)
    timer.at(3.0)
    assert not timer.due(2.9) and timer.due(3.0)
    timer.note(10.0)  # due at 15
    timer.at(20.0)  # later: ignored
    assert timer.due(15.0)
    timer.note(30.0)  # due at 35
    timer.at(31.0)
    assert timer.due(31.0)


def test_an_agent_flapping_is_held_until_steady() -> None:
    damper = FlapDamper(limit=4, window_s=60.0, steady_s=10.0)
    assert [damper.transition("a1", t) for t in (0.0, 1.0, 2.0)] == [False] * 3
    assert damper.held(2.5) == set() and not damper.holding
    assert damper.transition("a1", 3.0) is True  # the fourth within the window
    assert damper.holding
    assert damper.transition("a1", 4.0) is False  # already held: said once
    assert damper.held(5.0) == {"a1"}
    assert damper.next_release() == 14.0
    damper.transition("a1", 12.0)  # still moving: the hold runs from its last move
    assert damper.held(20.0) == {"a1"} and damper.next_release() == 22.0
    assert damper.held(22.0) == set()
    assert damper.next_release() is None
    # let back with a clean slate: it takes four moves again to hold it
    assert not any(damper.transition("a1", 23.0 + t) for t in range(3))


def test_the_controllers_own_absence_is_not_counted_as_flapping() -> None:
    # Two broker restarts: every agent's will, then every agent back, twice (four moves each);
    # the controller reconnects after each and forgets what it saw: no agent is held.
    damper = FlapDamper(limit=4, window_s=60.0, steady_s=10.0)
    held = []
    for restart in range(2):
        t = restart * 6.0
        held += [damper.transition(a, t) for a in ("a1", "a2")]  # the wills
        damper.forget_all()  # the controller's own reconnect
        held += [damper.transition(a, t + 2.0) for a in ("a1", "a2")]  # back online
    assert not any(held) and damper.held(12.0) == set()
    for t in range(4):  # a real flap after it is still held
        damper.transition("a1", 20.0 + t)
    assert damper.held(24.0) == {"a1"}
    damper.forget_all()
    assert damper.held(24.0) == set() and damper.next_release() is None


def test_moves_spread_wider_than_the_window_do_not_hold() -> None:
    damper = FlapDamper(limit=3, window_s=10.0, steady_s=5.0)
    assert not any(damper.transition("a1", t * 6.0) for t in range(20))
    assert damper.held(200.0) == set()


def test_quiet_agents_are_forgotten_so_memory_stays_bounded() -> None:
    damper = FlapDamper(limit=4, window_s=10.0, steady_s=5.0)
    for index in range(1000):
        damper.transition(f"g{index}", 0.0)
    for t in range(4):
        damper.transition("flappy", float(t))
    damper.forget_quiet(20.0)
    assert list(damper._moves) == ["flappy"]  # held: its history is kept until it is let back
    assert damper.held(20.0) == set()
    assert damper._moves == {}


def test_announcements_alone_are_not_planned_beside_agents_heard_alive() -> None:
    online = {"real": ["e1"], "ghost-1": ["e1"], "ghost-2": ["e2"], "flappy": ["e1"]}
    assert plannable(online, {"real", "flappy"}, {"flappy"}) == {"real": ["e1"]}
    # a heard agent that is offline still means the fleet speaks: ghosts stay out
    assert plannable(online, {"gone"}, set()) == {}


def test_a_fleet_where_none_has_spoken_plans_every_online_agent() -> None:
    online = {"a1": ["e1"], "a2": ["e2"]}
    assert plannable(online, set(), set()) == online
    assert plannable(online, set(), {"a2"}) == {"a1": ["e1"]}
