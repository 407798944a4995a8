"""The whole stack on the embedded simulator: one insertion, and one e-stop (integration).

Both runs use every node in one process (``single_process``: the same nodes, parameters
and lockstep protocol as the default one-process-per-node run, which gives the same
command hash; about a minute here) and are judged by the simulator's ground truth.
"""

from __future__ import annotations

import re

import pytest

from ir_guidance.runs import insertion


@pytest.fixture(scope='module')
def accessed(tmp_path_factory):
    options = insertion.RunOptions(seed=1, single_process=True, quiet=True, timeout_s=400,
                                   workdir=tmp_path_factory.mktemp('seed1'))
    return insertion.run(options)


def test_seed_1_reaches_the_vein(accessed):
    assert accessed['success'], accessed['reason']
    assert accessed['final_phase'] == 'DONE'
    assert accessed['tip_err_mm'] <= 0.5
    assert not accessed['back_wall_puncture']
    assert accessed['verified_on_us']
    assert 0 < accessed['max_force_n'] < 3.0
    assert re.fullmatch('[0-9a-f]{64}', accessed['command_hash'])


def test_estop_stops_within_a_tick_and_holds(tmp_path):
    options = insertion.RunOptions(seed=1, single_process=True, quiet=True, timeout_s=300,
                                   workdir=tmp_path, fault='estop_at:2.0')
    result = insertion.run(options)
    assert result['safe_stop'] and result['final_phase'] == 'SAFE'
    assert 'emergency stop' in result['reason']
    assert not result['success']
    assert result['depth_after_fault_mm'] == 0.0
    assert 0.0 <= result['time_to_safe_ms'] <= 50.0
