"""INSERT's US servo on the synthetic plant: a frame without the vessel holds the needle.

The plant (``bench.plant``) has a straight vein seen by an ideal segmenter; moving the
vein out of the image plane is the patient moving (``--fault target_jump`` in the full
simulation). The stage must stop at the first frame that misses the vessel, go on if the
vessel comes back, and abort (retract) if it stays away for ``servo.lost_s``.
"""

from __future__ import annotations

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.bench.plant import Plant, Vein, default_vein, plan_answer
from ir_guidance.control.guidance import Guidance, Phase

STAGE = -1
SERVO = config.load()['controller']['servo']
US_PERIOD_S = 1.0 / config.load()['sim']['us_hz']
US_LATENCY_S = config.load()['lockstep']['us_latency_s']


def _inserting(ticks_in_insert: int = 150) -> tuple[Plant, Vein]:
    """A plant whose needle is moving in INSERT (still in the air, as at the fault)."""
    vein = default_vein()
    plant = Plant(Guidance(inline_jobs=True), vein, record=False)
    out = plant.run_until(lambda o: o.map_request_s is not None)
    plant.plan = plan_answer(vein, plant.q, out.map_request_s)
    plant.run_until(lambda o: o.phase == Phase.INSERT)
    for _ in range(ticks_in_insert):
        plant.tick()
    assert plant.g.phase == Phase.INSERT
    return plant, vein


def _moved(vein: Vein, metres: float) -> Vein:
    """The vein shifted sideways (world x: out of the longitudinal image plane)."""
    return Vein(vein.point + np.array([metres, 0.0, 0.0]), vein.direction, vein.radius)


def test_vessel_gone_holds_at_once_then_aborts_and_retracts():
    plant, vein = _inserting()
    before = plant.q[STAGE]
    plant.tick()
    speed = (plant.q[STAGE] - before) / plant.g.dt
    assert speed > 1e-3  # the needle is on its way
    plant.vein = _moved(vein, 0.004)
    fault_stage = plant.q[STAGE]
    stages, phases, events = [], [], []
    for _ in range(round(3.0 / plant.g.dt)):
        out = plant.tick()
        stages.append(plant.q[STAGE])
        phases.append(out.phase)
        events += out.events
        if out.phase == Phase.SAFE:
            break
    stages = np.array(stages)
    # The first frame captured after the move is due at most one period + latency later.
    held = [i for i, e in enumerate(events) if 'holding' in e]
    assert held, events
    steps = np.diff(stages)
    stopped = int(np.argmax(np.abs(steps) < 1e-12))
    stop_s = (stopped + 1) * plant.g.dt
    assert stop_s <= US_PERIOD_S + US_LATENCY_S + 0.05, stop_s
    travel = stages.max() - fault_stage
    assert travel <= speed * (US_PERIOD_S + US_LATENCY_S) + 0.5e-3, travel
    # While held nothing advances; then ABORT retracts along the needle to 0 and SAFE.
    aborted = phases.index(Phase.ABORT)
    assert np.all(steps[stopped:aborted] <= 1e-12)
    assert 'lost the vessel' in plant.g.reason
    assert phases[-1] == Phase.SAFE and stages[-1] == pytest.approx(0.0, abs=1e-9)
    assert aborted * plant.g.dt <= SERVO['lost_s'] + US_PERIOD_S + US_LATENCY_S + 0.01


def test_vessel_back_within_lost_s_resumes_and_reaches_the_lumen():
    plant, vein = _inserting()
    plant.vein = _moved(vein, 0.004)
    events = []
    for _ in range(round(0.04 / plant.g.dt)):  # one or two frames without the vessel
        events += plant.tick().events
    plant.vein = vein
    held_at = None
    for _ in range(round(0.2 / plant.g.dt)):
        out = plant.tick()
        events += out.events
        if held_at is None and any('holding' in e for e in out.events):
            held_at = plant.q[STAGE]
    assert held_at is not None, events
    assert plant.g.phase == Phase.INSERT
    out = plant.run_until(lambda o: o.phase in (Phase.VERIFY, Phase.ABORT, Phase.SAFE))
    assert out.phase == Phase.VERIFY, out.reason
    assert plant.q[STAGE] > held_at + 1e-3  # it went on after the hold
    assert 'tip in lumen on US' in out.reason
