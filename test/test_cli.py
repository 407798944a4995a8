"""The ir-guidance CLI: the kinematics benchmark (rig and another arm) and `node`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ir_guidance import cli

REQUIRED = ('fk_us_p50', 'jacobian_us_p50', 'ik_success_rate', 'ik_us_p50',
            'ik_pos_err_mm_max', 'ik_axis_err_deg_max', 'pink_success_rate', 'pink_us_p50')


def _panda_urdf() -> Path:
    found = sorted(Path(sys.prefix).glob('**/panda_description/urdf/panda.urdf'))
    if not found:
        pytest.skip('example-robot-data Panda URDF not installed')
    return found[0]


def _check(result: dict, targets: int) -> None:
    for key in REQUIRED:
        assert isinstance(result[key], float), key
    assert result['targets'] == targets
    assert result['ik_success_rate'] >= 0.95
    assert result['pink_success_rate'] >= 0.95
    assert 0 < result['ik_pos_err_mm_max'] <= 0.01
    assert 0 < result['ik_axis_err_deg_max'] <= 0.01
    assert result['ik_us_p50'] > 0 and result['pink_us_p50'] > 0
    assert result['ik_over_pink_p50'] == pytest.approx(result['ik_us_p50'] / result['pink_us_p50'])


def test_bench_kinematics_rig(tmp_path, capsys):
    out = tmp_path / 'k.json'
    assert cli.main(['bench', 'kinematics', '--targets', '30', '--json', str(out)]) == 0
    result = json.loads(out.read_text())
    _check(result, 30)
    assert result['tip_link'] == 'needle_tip'
    assert json.loads(capsys.readouterr().out) == result


def test_bench_kinematics_other_arm(tmp_path):
    out = tmp_path / 'k.json'
    argv = ['bench', 'kinematics', '--targets', '20', '--json', str(out), '--urdf',
            str(_panda_urdf()), '--base-link', 'panda_link0', '--tip-link', 'panda_hand']
    assert cli.main(argv) == 0
    result = json.loads(out.read_text())
    _check(result, 20)
    assert (result['base_link'], result['tip_link'], result['dof']) == \
        ('panda_link0', 'panda_hand', 7)


def test_bench_same_seed_same_targets(tmp_path):
    """Accuracy numbers depend only on the seed (timings do not)."""
    runs = []
    for name in ('a.json', 'b.json'):
        cli.main(['bench', 'kinematics', '--targets', '10', '--seed', '3', '--json',
                  str(tmp_path / name)])
        runs.append(json.loads((tmp_path / name).read_text()))
    assert runs[0]['ik_pos_err_mm_max'] == runs[1]['ik_pos_err_mm_max']
    assert runs[0]['pink_pos_err_mm_max'] == runs[1]['pink_pos_err_mm_max']


@pytest.mark.parametrize('argv', [
    ['bench', 'kinematics', '--base-link', 'base_link'],
    ['bench', 'kinematics', '--urdf', 'x.urdf'],
    ['bench', 'kinematics', '--home', '0', '0'],
])
def test_bench_bad_arguments(argv):
    with pytest.raises((SystemExit, ValueError)):
        cli.main(argv)


def test_unknown_node_is_refused():
    with pytest.raises(ValueError, match='arm_interface'):
        cli.main(['node', 'no_such_node'])


def test_console_script_help():
    exe = Path(sys.executable).parent / 'ir-guidance'
    if not exe.exists():
        pytest.skip('package not installed into this environment')
    done = subprocess.run([str(exe), '--help'], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert 'node' in done.stdout and 'bench' in done.stdout


def test_bench_perception_reports_every_metric():
    """A small run of the perception benchmark (the full one runs from the CLI)."""
    from ir_guidance.bench import perception

    result = perception.run(us_phantoms=2, us_frames_per_phantom=2, nir_frames=2)
    for key in ('us_dice', 'us_center_err_mm_p50', 'us_dice_classical', 'us_fps',
                'nir_precision', 'nir_recall', 'nir_fps', 'us_dice_shifted'):
        assert key in result, key
    assert 0.0 <= result['us_dice'] <= 1.0 and result['us_fps'] > 0
    assert result['us_frames'] == 4 and result['nir_frames'] == 2
