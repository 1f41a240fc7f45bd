"""The controller's lease: renewed only by its own probe coming back on the same connection,
and only for ``length_s`` from when that probe was sent."""

from __future__ import annotations

from controller.lease import PROBES_PER_LEASE, Lease


def test_a_probe_echoed_renews_the_lease_from_when_it_was_sent() -> None:
    lease = Lease(4.0)
    assert not lease.fresh(0.0, 1)
    lease.probe(key=100.0, now=10.0, connection=1)
    assert not lease.fresh(10.1, 1)  # sent is not confirmed
    assert lease.echoed(100.0, 1)
    assert lease.fresh(13.9, 1)
    assert not lease.fresh(14.0, 1)  # 4 s after sending, whenever the echo came


def test_a_frozen_process_reading_an_old_echo_finds_its_lease_expired() -> None:
    lease = Lease(4.0)
    lease.probe(key=1.0, now=10.0, connection=1)
    # Frozen for 30 s right after sending: the echo was in the socket all along.
    assert lease.echoed(1.0, 1)
    assert not lease.fresh(40.0, 1)


def test_an_echo_on_another_connection_or_an_unknown_one_renews_nothing() -> None:
    lease = Lease(4.0)
    lease.probe(key=1.0, now=10.0, connection=1)
    assert not lease.echoed(1.0, 2)  # paho re-sent it after a reconnect
    assert not lease.fresh(10.5, 2) and not lease.fresh(10.5, 1)
    assert not lease.echoed(99.0, 1)  # not ours (our retained status from before a restart)
    lease.probe(key=2.0, now=11.0, connection=2)
    assert lease.echoed(2.0, 2)
    assert lease.fresh(11.5, 2) and not lease.fresh(11.5, 1)


def test_an_older_echo_does_not_shorten_the_lease() -> None:
    lease = Lease(4.0)
    lease.probe(key=1.0, now=10.0, connection=1)
    lease.probe(key=2.0, now=11.0, connection=1)
    assert lease.echoed(2.0, 1)
    assert not lease.echoed(1.0, 1)
    assert lease.fresh(14.5, 1)


def test_probes_are_due_several_times_per_lease() -> None:
    lease = Lease(4.0)
    assert lease.due(0.0)
    lease.probe(key=1.0, now=0.0, connection=1)
    assert not lease.due(4.0 / PROBES_PER_LEASE - 0.01)
    assert lease.due(4.0 / PROBES_PER_LEASE)
