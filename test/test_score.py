"""Scoring a run from its logs (ir_guidance/runs/score.py) on synthetic logs."""

import numpy as np
import pytest

from ir_guidance.runs import score

DT = 0.001


def _truth(stage: np.ndarray, in_lumen_from: int | None = None,
           fault_at: float = float('nan'), events=()) -> dict:
    n = len(stage)
    t = (np.arange(n) + 1) * DT
    in_lumen = np.zeros(n)
    if in_lumen_from is not None:
        in_lumen[in_lumen_from:] = 1.0
    return {'t': t, 'stage_m': stage, 'in_lumen': in_lumen,
            'tip_err_m': np.full(n, 2e-4), 'axial_n': np.linspace(0.0, 1.5, n),
            'events': list(events), 'fault_at_s': fault_at}


def _log(phases, phase='DONE') -> dict:
    return {'phase': phase, 'reason': 'r', 'phases': phases, 'command_hash': 'h',
            'commands': 10, 'success': True}


def test_access_is_judged_by_the_truth_at_the_stop():
    stage = np.minimum(np.arange(1000) * 1e-5, 5e-3)
    truth = _truth(stage, in_lumen_from=400)
    result = score.score(_log([(0.1, 'INSERT', ''), (0.6, 'VERIFY', ''), (0.9, 'DONE', '')]),
                         truth, wall_time_s=3.0)
    assert result['success'] and result['first_stick']
    assert result['tip_err_mm'] == pytest.approx(0.2)
    assert result['time_to_access_s'] == pytest.approx(0.6)
    assert result['max_force_n'] == pytest.approx(1.5)
    early = score.score(_log([(0.2, 'VERIFY', ''), (0.9, 'DONE', '')]), truth, 3.0)
    assert not early['success'] and early['time_to_access_s'] is None
    back_wall = score.score(_log([(0.6, 'VERIFY', '')]), _truth(
        stage, 400, events=[(0.5, 'back_wall_puncture')]), 3.0)
    assert back_wall['back_wall_puncture'] and not back_wall['success']


def test_fault_metrics_time_the_stop_the_phase_and_the_travel():
    """The stage moves at 15 mm/s, the fault comes at 0.5 s, the stage stands still
    from 0.58 s (a hold), the controller aborts at 0.8 s and ends SAFE."""
    t = (np.arange(1500) + 1) * DT
    stage = np.where(t < 0.58, t * 0.015, 0.58 * 0.015)
    truth = _truth(stage, fault_at=0.5)
    log = _log([(0.1, 'INSERT', ''), (0.8, 'ABORT', ''), (1.2, 'SAFE', '')], phase='SAFE')
    result = score.score(log, truth, 3.0, fault='target_jump')
    assert result['safe_stop']
    assert result['time_to_safe_ms'] == pytest.approx(300.0)
    assert result['time_to_stop_ms'] == pytest.approx(80.0, abs=1.0)
    assert result['depth_after_fault_mm'] == pytest.approx(0.08 * 15.0, abs=0.02)
    moving_on = score.score(_log(log['phases'], phase='DONE'), truth, 3.0, fault='x')
    assert not moving_on['safe_stop']
