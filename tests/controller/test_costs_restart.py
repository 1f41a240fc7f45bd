"""The live costs survive a controller restart: saved in its state folder when it stops, and
the next controller with that folder starts from them, not from the profile."""

from __future__ import annotations

from pathlib import Path

from controller.service import Controller
from controller.settings import ControllerSettings
from moe2.local.broker import LocalBroker


def test_a_restarted_controller_keeps_its_learnt_costs(
    mosquitto: LocalBroker,
    gated: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    settings = ControllerSettings.load(
        None,
        broker=mosquitto.url,
        fleet="sel",
        profile=gated[0],
        gate=gated[1],
        state_dir=tmp_path,
        controller_id="keeper",
    )
    first = Controller(settings)
    model = first.adaptation.model
    assert model is not None
    profiled = model.costs()["e1@a1"]
    category = sorted(profiled.delay_s)[0]
    for _ in range(5):  # three times slower than profiled, in one category
        model.observe("e1@a1", category, 3 * profiled.delay_s[category], None)
    first.start()
    first.stop()  # the adaptation loop saves on its way out
    assert (first.identity.state_dir / "costs.json").is_file()

    second = Controller(settings)
    try:
        assert second.adaptation.model is not None
        live = second.adaptation.model.current("e1@a1")
        assert live is not None and live.origin == "live" and live.delay_samples == 5
        assert live.cost.delay_s[category] == 3 * profiled.delay_s[category]
        # and the selection starts from them: the drift reference is the learnt cost
        assert (
            second.adaptation.drift.planned["e1@a1"].delay_s[category]
            == live.cost.delay_s[category]
        )
    finally:
        second.ledger.close()
        second.identity.release()
