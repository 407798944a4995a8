"""``ir_guidance.bench.control`` and its plant (``bench.plant``): structure, not timing.

The timed runs are short and no timing number is asserted (a loaded 2-core machine makes
any threshold flaky; the numbers belong in docs/control_timing.md). What is checked: the
guidance workload drives the real controller through its phases on the synthetic plant,
deterministically when its jobs are awaited, and ``run`` reports every key, including
the phases each run covered.
"""

from __future__ import annotations

import numpy as np
import pytest

from ir_guidance import config
from ir_guidance.bench import control
from ir_guidance.bench import plant as bench_plant
from ir_guidance.control.guidance import Phase

# The full cycle on the plant enters INSERT after ~11500 ticks (SCAN 0.3 s, MAP ~6 s,
# ALIGN ~5 s at 1 kHz); the bound leaves room but stays finite.
INSERT_WITHIN = 13000
KEYS = ('period_err_us_p50', 'period_err_us_p99', 'period_err_us_max', 'overruns',
        'update_us_p50', 'update_us_p99', 'rclpy_period_err_us_p50',
        'rclpy_period_err_us_p99', 'rclpy_period_err_us_max', 'rclpy_overruns',
        'ratio_p99', 'rt_scheduling', 'seconds', 'rate_hz', 'workload')


def _image_pose(x_axis, origin) -> np.ndarray:
    """us_image_frame pose with image y = world -z (the probe face level)."""
    x = np.asarray(x_axis, dtype=float)
    y = np.array([0.0, 0.0, -1.0])
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack((x, y, np.cross(x, y)))
    pose[:3, 3] = origin
    return pose


def test_vein_section_transverse_longitudinal_and_missed():
    vein = bench_plant.Vein(np.array([0.43, 0.13, 0.266]), np.array([0.0, 2.0, 0.0]), 0.0015)
    np.testing.assert_allclose(vein.direction, [0.0, 1.0, 0.0])
    # Across the vein (image x = world x): a circle 3.3 mm deep, 2 mm to the image's -x.
    cut = vein.section(_image_pose([1, 0, 0], [0.432, 0.14, 0.2693]), 0.038, 0.04)
    assert cut.x == pytest.approx(-0.002) and cut.y == pytest.approx(0.0033)
    assert cut.radius_major == pytest.approx(0.0015) and cut.radius_minor == pytest.approx(0.0015)
    # Along it, 1 mm off its axis: a band across the whole 38 mm image, 2 x 1.118 mm high.
    band = vein.section(_image_pose([0, 1, 0], [0.431, 0.10, 0.2693]), 0.038, 0.04)
    assert band.x == pytest.approx(0.0, abs=1e-12) and band.y == pytest.approx(0.0033)
    assert band.radius_major == pytest.approx(0.019)
    assert band.radius_minor == pytest.approx(np.sqrt(0.0015 ** 2 - 0.001 ** 2))
    # Along it but 10 mm to the side: not in the image plane at all.
    assert vein.section(_image_pose([0, 1, 0], [0.44, 0.10, 0.2693]), 0.038, 0.04) is None
    # Across it, 20 mm to the side: half the lumen inside the image's 19 mm half-width;
    # 30 mm to the side: outside.
    edge = vein.section(_image_pose([1, 0, 0], [0.45, 0.14, 0.2693]), 0.038, 0.04)
    assert edge.x == pytest.approx(-0.01875) and edge.radius_major == pytest.approx(0.00025)
    assert vein.section(_image_pose([1, 0, 0], [0.46, 0.14, 0.2693]), 0.038, 0.04) is None
    with pytest.raises(ValueError, match='radius'):
        bench_plant.Vein(np.zeros(3), np.array([0.0, 1.0, 0.0]), -1.0)
    with pytest.raises(ValueError, match='non-zero'):
        bench_plant.Vein(np.zeros(3), np.zeros(3), 0.001)


def test_plan_answer_is_the_real_plan_for_the_vein_under_the_probe():
    vein = bench_plant.default_vein()
    home = np.array(config.load()['robot']['home'], dtype=float)
    answer = bench_plant.plan_answer(vein, home, 1.25)
    assert answer.ok and answer.stamp_s == 1.25
    # The target is on the vein's axis, 4 mm under the skin, below the home probe.
    assert answer.target[2] == pytest.approx(bench_plant.SKIN_Z - bench_plant.VEIN_DEPTH_M)
    np.testing.assert_allclose(vein.site(answer.target), answer.target, atol=1e-12)
    assert 0.0 < answer.skin_travel < answer.stage_travel < 0.038
    assert answer.approach.duration > 0 and answer.retraction.duration > 0
    too_deep = bench_plant.Vein(vein.point - [0.0, 0.0, 0.011], vein.direction, vein.radius)
    refused = bench_plant.plan_answer(too_deep, home, 1.25)
    assert not refused.ok and refused.reason.startswith('planner: too deep')


def test_failed_plan_job_is_a_refused_plan():
    plant = bench_plant.Plant()
    control.GuidanceWorkload._answer(plant, 2.0, RuntimeError('worker died'))
    assert not plant.plan.ok and plant.plan.stamp_s == 2.0
    assert 'RuntimeError: worker died' in plant.plan.reason


def _step(work: control.GuidanceWorkload, ticks: int) -> list[np.ndarray]:
    """Up to ``ticks`` ticks, stopping at the first INSERT tick; the commands."""
    commands = []
    for _ in range(ticks):
        out = work()
        commands.append(out.command)
        if out.phase == Phase.INSERT:
            break
    return commands


def test_guidance_workload_reaches_insert_and_repeats_exactly():
    with control.GuidanceWorkload(wait_for_jobs=True) as work:
        first = _step(work, INSERT_WITHIN)
        summary = work.summary()
        assert summary['phase_now'] == 'INSERT', work.plant.g.reason
        for phase in ('SCAN', 'MAP', 'PLAN', 'ALIGN'):
            assert summary['phases'][phase]['ticks'] > 0, phase
        assert sum(p['ticks'] for p in summary['phases'].values()) == len(first)
        assert summary['jobs'] == 2  # the sweep line and the plan, both in the worker
        assert summary['cycles'] == []
        # The probe went over and down onto the skin: the commands moved the arm.
        assert np.ptp(np.array(first)[:, :6], axis=0).max() > 0.05
        # A fresh guidance and plant (what a new cycle gets) repeat it bit for bit.
        work.reset()
        assert work.summary()['phases'] == {}
        second = _step(work, len(first))
    assert len(second) == len(first)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


def test_run_times_the_guidance_and_reports_its_phases():
    result = control.run(seconds=1.0, realtime_priority=None)
    for key in (*KEYS, 'phases', 'rclpy_phases', 'cycles', 'jobs',
                'guidance_update_us_p50', 'guidance_update_us_p99',
                'rclpy_guidance_update_us_p50'):
        assert key in result, key
    assert result['workload'] == 'guidance' and result['rt_scheduling'] is False
    assert result['ticks'] + result['skipped'] == 1000
    # Every tick of each run is one Guidance.update, counted by the phase it started in;
    # both runs start at IDLE after their warm-up: 1 s is IDLE, SCAN (0.3 s), then MAP.
    for prefix, ticks in (('', result['ticks']), ('rclpy_', result['rclpy_ticks'])):
        phases = result[f'{prefix}phases']
        assert sum(p['ticks'] for p in phases.values()) == ticks
        assert list(phases)[:2] == ['IDLE', 'SCAN'] and phases['IDLE']['ticks'] == 1
        for stats in phases.values():
            assert 0 < stats['update_us_p50'] <= stats['update_us_p99'] <= stats['update_us_max']


def test_run_with_a_custom_update_calls_it_in_both_runs():
    calls = []
    result = control.run(seconds=0.3, update=calls.append, realtime_priority=None)
    for key in KEYS:
        assert key in result, key
    assert result['workload'] == 'custom' and 'phases' not in result
    assert result['rt_scheduling'] is False and result['seconds'] == 0.3
    assert result['ticks'] + result['skipped'] == 300
    assert result['rclpy_ticks'] > 1
    # Both runs called the same update: warm-up + loop ticks + timer ticks.
    assert len(calls) == control.WARM_UP_TICKS + result['ticks'] + result['rclpy_ticks']


def test_run_refuses_a_bad_duration():
    with pytest.raises(ValueError, match='seconds'):
        control.run(seconds=float('nan'), update=lambda t: None)
