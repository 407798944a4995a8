"""NeedleTissueModel: force profile of an insertion through skin, fat and a vein.

The phantom has one straight vein with known geometry: the skin top is at
z = axis_z + arm_radius = 0.27 m above x = axis_x = 0.43 m; the vein's centre is 4.8 mm
below it (z = 0.2652 m) at x = 0.43 m, lumen 4.5 mm wide and 3 mm high, wall 0.4 mm.
Insertions run at 5 mm/s with 1 kHz steps unless stated otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest

from ir_guidance.sim.needle_tissue import (
    BACK_WALL_PUNCTURE,
    EXIT,
    SKIN_PUNCTURE,
    WALL_PUNCTURE,
    NeedleForce,
    NeedleTissueModel,
    TissueParameters,
)
from ir_guidance.sim.phantom import AIR, FAT, LUMEN, SKIN, WALL, Phantom, PhantomState, Vein

SPEED = 5e-3
DT = 1e-3
SKIN_TOP_Z = 0.27
VEIN_CENTRE = np.array([0.43, 0.13, 0.2652])
PARAMS = TissueParameters()
ANGLE = math.radians(20)

AXES = {
    'vertical': np.array([0.0, 0.0, -1.0]),
    # 20 deg below the skin plane, along the vein (the usual clinical approach).
    'along_20deg': np.array([0.0, math.cos(ANGLE), -math.sin(ANGLE)]),
    # 20 deg, across the vein from the -x side (the rig's in-plane needle, transverse probe).
    'across_20deg': np.array([math.cos(ANGLE), 0.0, -math.sin(ANGLE)]),
}


def phantom(**overrides: float) -> Phantom:
    return Phantom(veins=(Vein(x=0.43, depth=4.8e-3, width=4.5e-3, height=3e-3),),
                   **overrides)


@dataclass
class Run:
    forces: list[NeedleForce]
    tips: np.ndarray
    labels: np.ndarray      # phantom.labels at each tip, for the state passed to step()
    rho: np.ndarray         # phantom.vein_coordinates rho at each tip, same state
    state: PhantomState

    def __post_init__(self) -> None:
        self.axial = np.array([f.axial_n for f in self.forces])
        self.contact = [f.contact for f in self.forces]
        self.in_lumen = np.array([f.in_lumen for f in self.forces])

    def event_steps(self, name: str) -> list[int]:
        return [k for k, f in enumerate(self.forces) if name in f.events]

    def events(self) -> list[str]:
        return [e for f in self.forces for e in f.events]


def drive(tips: np.ndarray, axis: np.ndarray, ph: Phantom, model: NeedleTissueModel | None = None,
          state: PhantomState | None = None, times: np.ndarray | None = None) -> Run:
    model = model or NeedleTissueModel(ph)
    state = state or ph.new_state()
    tips = np.asarray(tips)
    forces, seen = [], []
    for k, tip in enumerate(tips):
        if times is not None:
            state.time_s = float(times[k])
        seen.append((state.time_s, tuple(state.roll)))  # the state step() is given
        forces.append(model.step(tip, axis, state, DT))
    # The phantom's own answers at each tip, for the state each step saw (in runs of
    # steps that saw the same state, to keep the test fast).
    labels = np.empty(len(tips), dtype=int)
    rho = np.empty(len(tips))
    first = 0
    for k in range(1, len(tips) + 1):
        if k == len(tips) or seen[k] != seen[first]:
            ref = dataclasses.replace(state, time_s=seen[first][0], roll=list(seen[first][1]))
            labels[first:k] = ph.labels(tips[first:k], ref)
            rho[first:k] = ph.vein_coordinates(tips[first:k], ref)[1]
            first = k
    return Run(forces, tips, labels, rho, state)


def line(start: np.ndarray, axis: np.ndarray, travel: float, speed: float = SPEED
         ) -> np.ndarray:
    n = round(travel / (speed * DT))
    return start + np.outer(np.arange(n + 1) * speed * DT, axis)


def insertion(name: str, travel: float = 0.032, offset: np.ndarray | None = None,
              **kw: object) -> Run:
    axis = AXES[name]
    target = VEIN_CENTRE + (offset if offset is not None else 0.0)
    start = target - 0.02 * axis
    assert start[2] > SKIN_TOP_Z  # starts in air
    return drive(line(start, axis, travel), axis, phantom(), **kw)


@pytest.fixture(scope='module', params=sorted(AXES))
def through(request: pytest.FixtureRequest) -> tuple[str, Run]:
    """A straight insertion through the whole vein and beyond."""
    return request.param, insertion(request.param)


# -- parameters -----------------------------------------------------------------------------
def test_default_membranes_puncture_after_plausible_tenting() -> None:
    assert PARAMS.puncture_deflection_m('skin') == pytest.approx(2.5e-3)
    assert PARAMS.puncture_deflection_m('wall') == pytest.approx(1.0e-3)
    k1, k2 = PARAMS.skin_k1_n_per_m, PARAMS.skin_k2_n_per_m2
    d = PARAMS.puncture_deflection_m('skin')
    assert k1 * d + k2 * d * d == pytest.approx(PARAMS.skin_puncture_n)
    assert 1.0 <= PARAMS.skin_puncture_n <= 2.5          # van Gerwen et al. 2012 range
    assert 0.3 <= PARAMS.wall_puncture_n <= 0.8          # venipuncture literature range
    with pytest.raises(ValueError):
        PARAMS.puncture_deflection_m('fascia')


@pytest.mark.parametrize('change', [
    {'skin_puncture_n': 0.0}, {'wall_puncture_n': -0.1}, {'friction_fat_n_per_m': math.nan},
    {'cutting_skin_n': math.inf}, {'skin_k1_n_per_m': 0.0, 'skin_k2_n_per_m2': 0.0},
    {'min_contact_cosine': 1.5}, {'stick_velocity_m_s': 0.0}])
def test_parameters_are_validated(change: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TissueParameters(**change)


def test_constructor_is_validated() -> None:
    with pytest.raises(ValueError):
        NeedleTissueModel(phantom(), gauge_mm=0.0)
    with pytest.raises(ValueError):
        NeedleTissueModel(phantom(), gauge_mm=math.nan)
    with pytest.raises(TypeError):
        NeedleTissueModel('arm')  # type: ignore[arg-type]


# -- inputs -----------------------------------------------------------------------------------
@pytest.mark.parametrize(('tip', 'axis', 'dt'), [
    ((0.43, 0.13, math.nan), (0, 0, -1), DT),
    ((0.43, 0.13, 0.28), (0, 0, math.inf), DT),
    ((0.43, 0.13, 0.28), (0, 0, 0), DT),
    ((0.43, 0.13, 0.28), (0, 0, -2), DT),
    ((0.43, 0.13, 0.28), (0, 0.1, -1), DT),
    ((0.43, 0.13), (0, 0, -1), DT),
    ((0.43, 0.13, 0.28), (0, 0, -1), 0.0),
    ((0.43, 0.13, 0.28), (0, 0, -1), -DT),
])
def test_invalid_input_raises_and_leaves_the_model_unchanged(tip: tuple, axis: tuple,
                                                            dt: float) -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    tips = line(np.array([0.43, 0.13, 0.2705]), AXES['vertical'], 1.5e-3)
    reference = drive(tips, AXES['vertical'], ph).axial
    first = drive(tips[:150], AXES['vertical'], ph, model=model, state=state).axial
    with pytest.raises(ValueError):
        model.step(np.array(tip, dtype=float), np.array(axis, dtype=float), state, dt)
    rest = drive(tips[150:], AXES['vertical'], ph, model=model, state=state).axial
    np.testing.assert_array_equal(np.concatenate((first, rest)), reference)


def test_needle_in_air_feels_nothing() -> None:
    run = drive(line(np.array([0.43, 0.13, 0.30]), AXES['vertical'], 0.02), AXES['vertical'],
                phantom())
    assert run.labels.max() == AIR  # never reaches the skin
    for f in run.forces:
        assert f.axial_n == 0.0 and f.lateral_n == 0.0 and f.events == ()
        assert not f.force_world.any()
        assert f.tip_label == AIR and not f.in_lumen and f.inserted_length_m == 0.0
    # Beside the arm, level with the skin: still air.
    run = drive(line(np.array([0.50, 0.13, 0.27]), AXES['vertical'], 0.01), AXES['vertical'],
                phantom())
    assert not run.axial.any()


# -- the insertion profile --------------------------------------------------------------------
def test_events_happen_once_each_in_order(through: tuple[str, Run]) -> None:
    _, run = through
    assert run.events() == [SKIN_PUNCTURE, WALL_PUNCTURE, BACK_WALL_PUNCTURE]


def test_skin_peak_and_drop(through: tuple[str, Run]) -> None:
    _, run = through
    (k,) = run.event_steps(SKIN_PUNCTURE)
    tenting = [i for i, c in enumerate(run.contact) if c == 'skin']
    assert tenting and max(tenting) == k - 1  # tented right up to the puncture
    peak = run.axial[tenting].max()
    assert peak == pytest.approx(PARAMS.skin_puncture_n, rel=0.10)
    assert peak <= PARAMS.skin_puncture_n
    # The drop is immediate and lasts: > 50 % of the peak lost over the next 5 ms.
    assert run.axial[k:k + 6].max() < 0.5 * peak
    # While tenting nothing is inserted and the force is the membrane spring alone.
    for i in tenting:
        f = run.forces[i]
        d = f.deflection_m
        assert f.tip_label == SKIN and f.inserted_length_m == 0.0 and f.friction_n == 0.0
        assert f.axial_n == pytest.approx(PARAMS.skin_k1_n_per_m * d
                                          + PARAMS.skin_k2_n_per_m2 * d * d)
    assert run.forces[k - 1].deflection_m == pytest.approx(2.5e-3, abs=1e-5)


@pytest.mark.parametrize(('event', 'contact'), [(WALL_PUNCTURE, 'wall'),
                                                (BACK_WALL_PUNCTURE, 'back_wall')])
def test_vein_wall_peak_and_pop(through: tuple[str, Run], event: str, contact: str) -> None:
    _, run = through
    (k,) = run.event_steps(event)
    tenting = [i for i, c in enumerate(run.contact) if c == contact]
    assert tenting and max(tenting) == k - 1
    stiffness = np.array([run.forces[i].stiffness_n for i in tenting])
    assert stiffness.max() == pytest.approx(PARAMS.wall_puncture_n, rel=0.10)
    assert all(run.forces[i].tip_label == WALL for i in tenting)
    # The pop: the force falls by most of the wall's puncture force in one step and does
    # not recover within the next 5 ms.
    before = run.axial[k - 1]
    assert before - run.axial[k] > 0.6 * PARAMS.wall_puncture_n
    assert run.axial[k:k + 6].max() < before - 0.5 * PARAMS.wall_puncture_n
    # The wall peak is smaller than the skin peak.
    assert before < run.axial.max()


def test_axial_force_is_the_sum_of_its_parts(through: tuple[str, Run]) -> None:
    name, run = through
    axis = AXES[name]
    for f in run.forces:
        for value in (f.axial_n, f.lateral_n, f.stiffness_n, f.friction_n, f.cutting_n,
                      f.inserted_length_m, f.deflection_m):
            assert type(value) is float
        assert type(f.tip_label) is int and type(f.in_lumen) is bool
        assert f.force_world.shape == (3,) and f.force_world.dtype == np.float64
        assert f.axial_n == pytest.approx(f.stiffness_n + f.friction_n + f.cutting_n, abs=1e-12)
        assert -float(f.force_world @ axis) == pytest.approx(f.axial_n, abs=1e-12)
        lateral = f.force_world + f.axial_n * axis
        assert np.linalg.norm(lateral) == pytest.approx(f.lateral_n, abs=1e-12)
        assert f.axial_n >= 0.0  # always pushing in here


def test_in_lumen_between_the_walls_agrees_with_the_phantom(through: tuple[str, Run]) -> None:
    _, run = through
    (front,) = run.event_steps(WALL_PUNCTURE)
    back_contact = run.contact.index('back_wall')
    assert not run.in_lumen[:front].any()
    inside = np.flatnonzero(run.in_lumen)
    assert inside.size > 100 and inside.min() >= front and inside.max() < back_contact
    # Once in the lumen the tip stays there until it meets the back wall.
    assert run.in_lumen[inside.min():back_contact].all()
    # Wherever no membrane is tented, in_lumen is the phantom's rho < 1 at the tip, and the
    # tip label is the phantom's label.
    free = np.array([c == '' for c in run.contact])
    clear = free & (np.abs(run.rho - 1.0) > 1e-6)
    np.testing.assert_array_equal(run.in_lumen[clear], run.rho[clear] < 1.0)
    labels = np.array([f.tip_label for f in run.forces])
    np.testing.assert_array_equal(labels[clear], run.labels[clear])
    # While the back wall is tented the tip is at the wall, not in the lumen.
    assert not run.in_lumen[back_contact:].any()


def test_inserted_length_and_track(through: tuple[str, Run]) -> None:
    name, run = through
    (k,) = run.event_steps(SKIN_PUNCTURE)
    lengths = np.array([f.inserted_length_m for f in run.forces])
    assert not lengths[:k].any()
    steps = np.diff(lengths[k:])
    np.testing.assert_allclose(steps, SPEED * DT, atol=1e-9)
    # The inserted length is the distance from the skin entry point along the axis.
    entry = run.tips[k] - lengths[k] * AXES[name]
    ph = phantom()
    assert float(ph.skin_z(entry[0], entry[1])) == pytest.approx(entry[2], abs=1e-9)


def test_force_levels_follow_the_tissue(through: tuple[str, Run]) -> None:
    _, run = through
    scale = 1.0
    for f in run.forces:
        if f.contact:
            assert f.cutting_n == 0.0
        elif f.tip_label != AIR:
            cutting = {SKIN: PARAMS.cutting_skin_n, FAT: PARAMS.cutting_fat_n,
                       WALL: PARAMS.cutting_wall_n, LUMEN: PARAMS.cutting_lumen_n}
            if f.tip_label in cutting:
                assert f.cutting_n == pytest.approx(scale * cutting[f.tip_label])
    # Friction grows with the inserted length; in blood it barely grows.
    friction = np.array([f.friction_n for f in run.forces])
    lumen = np.flatnonzero(run.in_lumen)
    per_m = (friction[lumen[-1]] - friction[lumen[0]]) / (
        run.forces[lumen[-1]].inserted_length_m - run.forces[lumen[0]].inserted_length_m)
    assert 0.0 < per_m < 2 * (PARAMS.friction_lumen_n_per_m
                              + PARAMS.viscous_lumen_ns_per_m2 * SPEED)


# -- withdrawal -------------------------------------------------------------------------------
def insert_then_retract(name: str, depth_travel: float, back: float) -> tuple[Run, Run]:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    axis = AXES[name]
    start = VEIN_CENTRE - 0.02 * axis
    tips_in = line(start, axis, depth_travel)
    run_in = drive(tips_in, axis, ph, model=model, state=state)
    tips_out = line(tips_in[-1], -axis, back)[1:]
    run_out = drive(tips_out, axis, ph, model=model, state=state)
    return run_in, run_out


@pytest.mark.parametrize('name', sorted(AXES))
def test_withdrawal_reverses_friction_without_new_punctures(name: str) -> None:
    run_in, run_out = insert_then_retract(name, 0.021, 0.025)
    assert run_in.in_lumen[-1]  # withdrawn from inside the vein
    assert run_in.events() == [SKIN_PUNCTURE, WALL_PUNCTURE]
    assert run_out.events() == [EXIT]
    (k,) = run_out.event_steps(EXIT)
    inside = run_out.forces[:k]
    assert all(f.axial_n < 0.0 for f in inside)                   # tissue pulls it back in
    assert all(f.cutting_n == 0.0 and f.stiffness_n == 0.0 for f in inside)
    assert all(f.friction_n < 0.0 for f in inside)
    # Reversed friction equals the insertion friction at the same length (symmetric model).
    lengths = np.array([f.inserted_length_m for f in inside])
    assert np.all(np.diff(lengths) < 0)
    assert all(f.axial_n == 0.0 and f.inserted_length_m == 0.0 and f.tip_label == AIR
               for f in run_out.forces[k:])


def test_readvancing_through_the_same_holes_punctures_nothing() -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    axis = AXES['along_20deg']
    start = VEIN_CENTRE - 0.02 * axis
    first = drive(line(start, axis, 0.021), axis, ph, model=model, state=state)
    assert first.in_lumen[-1]
    out = drive(line(first.tips[-1], -axis, 0.008)[1:], axis, ph, model=model, state=state)
    assert out.forces[-1].tip_label == FAT  # back out of the vein, still in the tissue
    assert out.events() == []
    again = drive(line(out.tips[-1], axis, 0.008)[1:], axis, ph, model=model, state=state)
    assert again.events() == []
    assert again.in_lumen[-1]
    assert all(f.stiffness_n == 0.0 for f in again.forces)
    # Withdrawn from the skin and pushed in again along the same line: no skin peak.
    out = drive(line(again.tips[-1], -axis, 0.032)[1:], axis, ph, model=model, state=state)
    assert out.events() == [EXIT]
    back_in = drive(line(out.tips[-1], axis, 0.02)[1:], axis, ph, model=model, state=state)
    assert back_in.events() == []
    assert back_in.axial.max() < 0.5 * PARAMS.skin_puncture_n


def test_a_needle_held_still_feels_no_cutting_or_friction() -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    axis = AXES['vertical']
    run = drive(beside_the_vein(ph), axis, ph, model=model, state=state)
    assert run.events() == [SKIN_PUNCTURE] and run.forces[-1].tip_label == FAT
    held = model.step(run.tips[-1], axis, state, DT)
    assert held.axial_n == 0.0 and held.tip_label == FAT and held.inserted_length_m > 0


def test_reset_forgets_the_insertion() -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    axis = AXES['vertical']
    tips = beside_the_vein(ph)
    first = drive(tips, axis, ph, model=model)
    model.reset()
    second = drive(tips, axis, ph, model=model)
    assert second.events() == [SKIN_PUNCTURE]
    np.testing.assert_array_equal(first.axial, second.axial)


def beside_the_vein(ph: Phantom) -> np.ndarray:
    """Vertical, 15 mm to the side of the vein, from 0.5 mm above the skin to 3 mm below."""
    x = 0.415
    top = float(ph.skin_z(x, 0.13))
    return line(np.array([x, 0.13, top + 0.5e-3]), AXES['vertical'], 3.5e-3)


# -- determinism, gauge, large steps ------------------------------------------------------------
def test_runs_are_deterministic() -> None:
    a = insertion('across_20deg')
    b = insertion('across_20deg')
    np.testing.assert_array_equal(a.axial, b.axial)
    np.testing.assert_array_equal(np.array([f.force_world for f in a.forces]),
                                  np.array([f.force_world for f in b.forces]))
    assert a.state.roll == b.state.roll


def test_forces_scale_with_needle_diameter() -> None:
    ph = phantom()
    axis = AXES['vertical']
    tips = line(VEIN_CENTRE - 0.02 * axis, axis, 0.02)
    thin = drive(tips, axis, ph, model=NeedleTissueModel(ph, gauge_mm=0.4))
    thick = drive(tips, axis, ph, model=NeedleTissueModel(ph, gauge_mm=0.8))
    assert thin.axial.max() == pytest.approx(0.5 * PARAMS.skin_puncture_n, rel=0.05)
    assert thick.axial.max() == pytest.approx(PARAMS.skin_puncture_n, rel=0.05)
    # Thinner needles tent the skin less before it gives.
    assert thin.event_steps(SKIN_PUNCTURE)[0] < thick.event_steps(SKIN_PUNCTURE)[0]


def test_one_large_step_punctures_skin_and_wall_in_order() -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    axis = AXES['vertical']
    model.step(np.array([0.43, 0.13, 0.271]), axis, state, DT)
    f = model.step(VEIN_CENTRE, axis, state, DT)  # skin tented 4.8 mm, front wall 1.9 mm
    assert f.events == (SKIN_PUNCTURE, WALL_PUNCTURE)
    assert f.in_lumen and f.tip_label == LUMEN and f.stiffness_n == 0.0
    assert f.cutting_n == pytest.approx(PARAMS.cutting_lumen_n)


def test_custom_parameters_are_used() -> None:
    params = dataclasses.replace(PARAMS, skin_puncture_n=2.2, wall_puncture_n=0.35)
    run = insertion('vertical', model=NeedleTissueModel(phantom(), params))
    assert run.events() == [SKIN_PUNCTURE, WALL_PUNCTURE, BACK_WALL_PUNCTURE]
    assert run.axial.max() == pytest.approx(2.2, rel=0.02)
    wall = [run.forces[i].stiffness_n for i, c in enumerate(run.contact) if c == 'wall']
    assert max(wall) == pytest.approx(0.35, rel=0.02)


# -- rolling ------------------------------------------------------------------------------------
def test_a_centred_approach_does_not_roll_the_vein() -> None:
    for name in ('vertical', 'along_20deg'):
        run = insertion(name)
        assert run.state.roll == [0.0]
        assert all(f.lateral_n == 0.0 for f in run.forces)


def test_an_off_centre_approach_rolls_the_vein_away() -> None:
    # Vertical needle 1 mm to the +x side of the vein's centre: the vein slides to -x.
    run = insertion('vertical', offset=np.array([1.0e-3, 0.0, 0.0]))
    pushing = [f for f in run.forces if f.contact == 'wall']
    assert pushing and max(f.lateral_n for f in pushing) > 0.05
    assert all(f.force_world[0] >= 0.0 for f in pushing)  # the vein pushes the needle to +x
    assert run.state.roll[0] < -1e-4
    assert run.state.roll[0] >= -phantom().veins[0].max_roll
    # Further out the vein rolls out of the needle's way: no wall is punctured.
    miss = insertion('vertical', offset=np.array([1.6e-3, 0.0, 0.0]))
    assert miss.events() == [SKIN_PUNCTURE]
    assert not miss.in_lumen.any()
    assert miss.state.roll[0] < -5e-4


def test_the_rig_in_plane_approach_pushes_the_vein_ahead() -> None:
    # Coming across the vein from -x, the needle hits its near side and pushes it to +x.
    run = insertion('across_20deg')
    assert run.state.roll[0] > 1e-4
    assert run.events() == [SKIN_PUNCTURE, WALL_PUNCTURE, BACK_WALL_PUNCTURE]


def test_a_displaced_vein_returns_after_withdrawal() -> None:
    ph = phantom()
    model = NeedleTissueModel(ph)
    state = ph.new_state()
    axis = AXES['vertical']
    start = VEIN_CENTRE + np.array([1.6e-3, 0.0, 0.0]) - 0.02 * axis
    run = drive(line(start, axis, 0.022), axis, ph, model=model, state=state)
    rolled = state.roll[0]
    assert rolled < -5e-4
    out = drive(line(run.tips[-1], -axis, 0.02)[1:], axis, ph, model=model, state=state)
    assert EXIT in out.events()
    assert abs(state.roll[0]) < 0.01 * abs(rolled)


# -- other phantoms -----------------------------------------------------------------------------
def test_labels_follow_a_drifting_arm() -> None:
    ph = phantom(motion_amplitude=0.3e-3, motion_period_s=4.0)
    axis = AXES['along_20deg']
    tips = line(VEIN_CENTRE - 0.02 * axis, axis, 0.032)
    run = drive(tips, axis, ph, times=np.arange(len(tips)) * DT)
    assert run.events() == [SKIN_PUNCTURE, WALL_PUNCTURE, BACK_WALL_PUNCTURE]
    free = np.array([c == '' for c in run.contact]) & (np.abs(run.rho - 1.0) > 1e-6)
    labels = np.array([f.tip_label for f in run.forces])
    np.testing.assert_array_equal(labels[free], run.labels[free])
    np.testing.assert_array_equal(run.in_lumen[free], run.rho[free] < 1.0)


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
def test_random_phantoms_agree_with_phantom_labels(seed: int) -> None:
    ph = Phantom.random(seed)
    state = ph.new_state()
    vein = ph.veins[0]
    centre = ph.centerline(0, np.array([ph.center_y + 0.01]), state)[0]
    axis = np.array([0.0, math.cos(ANGLE), -math.sin(ANGLE)])
    start = centre - (vein.depth / math.sin(ANGLE) + 6e-3) * axis
    tips = line(start, axis, 2 * vein.depth / math.sin(ANGLE) + 0.01)
    run = drive(tips, axis, ph, state=copy.deepcopy(state))
    assert run.events()[0] == SKIN_PUNCTURE
    assert all(run.events().count(e) <= 1 for e in (WALL_PUNCTURE, BACK_WALL_PUNCTURE))
    free = np.array([c == '' for c in run.contact]) & (np.abs(run.rho - 1.0) > 1e-6)
    labels = np.array([f.tip_label for f in run.forces])
    np.testing.assert_array_equal(labels[free], run.labels[free])
