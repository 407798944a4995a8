"""Scoring one simulated insertion from its two logs (ROS-free).

The controller's log (JSON: phases with sim times, events, the insertion trace, the
command hash) says what the stack did and when; the simulator's truth log (``.npz``: the
needle tip, its distance to the nearest vein centre, in-lumen, forces and stage travel
every tick, the tissue events) says what really happened. The score joins them at the
moment the insertion stopped (the controller's VERIFY), so it judges the stack by the
ground truth it never saw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ir_guidance import config

SAFE_PHASES = ('SAFE',)
STILL_M_S = 1e-4  # the needle stage "stands still" below 0.1 mm/s (truth log, per tick)


def load_truth(path: Path) -> dict[str, Any]:
    """The truth log as named columns plus events and metadata."""
    with np.load(path, allow_pickle=False) as data:
        ticks = data['ticks']
        truth = {name: ticks[:, i] for i, name in enumerate(data['columns'].tolist())}
        truth['events'] = list(zip(data['event_t'].tolist(), data['event_kind'].tolist(),
                                   strict=True))
        truth['centerlines'] = data['centerlines']
        truth['fault'] = str(data['fault'])
        truth['fault_at_s'] = float(data['fault_at_s'])
    return truth


def phase_time(log: dict[str, Any], phase: str) -> float | None:
    """Sim time the controller first entered ``phase`` (None if never)."""
    for t, name, _ in log['phases']:
        if name == phase:
            return float(t)
    return None


def _at(truth: dict[str, Any], t: float) -> int:
    return int(np.clip(np.searchsorted(truth['t'], t - 1e-9), 0, len(truth['t']) - 1))


def score(log: dict[str, Any], truth: dict[str, Any], wall_time_s: float,
          fault: str = '', fault_at_s: float | None = None) -> dict[str, Any]:
    """The run's result (the keys ``ir-guidance sim --json`` writes; docs/control.md)."""
    stop = phase_time(log, 'VERIFY')
    back_wall = any(kind == 'back_wall_puncture' for _, kind, in truth['events'])
    result: dict[str, Any] = {
        'final_phase': log['phase'], 'reason': log['reason'],
        'back_wall_puncture': back_wall,
        'max_force_n': round(float(np.max(truth['axial_n'], initial=0.0)), 4),
        'wall_time_s': round(wall_time_s, 2),
        'sim_time_s': round(float(truth['t'][-1]) if len(truth['t']) else 0.0, 3),
        'command_hash': log['command_hash'], 'commands': log['commands'],
        'plan': log.get('plan', {}),
    }
    if stop is not None:
        i = _at(truth, stop)
        in_lumen = bool(truth['in_lumen'][i])
        result.update(tip_err_mm=round(float(truth['tip_err_m'][i]) * 1e3, 3),
                      tip_in_lumen_at_stop=in_lumen,
                      time_to_access_s=round(stop, 3) if in_lumen else None)
    else:
        result.update(tip_err_mm=None, tip_in_lumen_at_stop=False, time_to_access_s=None)
    success = bool(result['tip_in_lumen_at_stop'] and not back_wall
                   and log['phase'] == 'DONE')
    result['success'] = success
    result['first_stick'] = success  # one insertion per run: access on it is first-stick
    result['verified_on_us'] = bool(log.get('success'))
    if fault:
        at = fault_at_s if fault_at_s is not None else truth['fault_at_s']
        result['fault'] = fault
        result.update(_fault_metrics(log, truth, at))
    return result


def _fault_metrics(log: dict[str, Any], truth: dict[str, Any], at: float) -> dict[str, Any]:
    """Did the stack end safe, how fast, and how far did the needle go after the fault.

    ``time_to_stop_ms``: until the needle stage first stands still after the fault (a
    hold stops it before the phase changes; 0 if it was not moving).
    """
    safe_t = phase_time(log, 'SAFE')
    abort_t = phase_time(log, 'ABORT')
    # The controller's ticks run up to lockstep_delay_ticks behind the simulator's clock,
    # which times a kill: a reaction on a tick from before the kill counts as at once.
    sim = config.load()['sim']
    lag = sim['lockstep_delay_ticks'] / sim['physics_hz']
    reacted = min((t for t in (safe_t, abort_t) if t is not None and t >= at - lag - 1e-9),
                  default=None)
    safe = log['phase'] in SAFE_PHASES
    out: dict[str, Any] = {'fault_at_s': None if math.isnan(at) else round(at, 4),
                           'safe_stop': bool(safe and not math.isnan(at)),
                           'time_to_safe_ms': None, 'time_to_stop_ms': None,
                           'depth_after_fault_mm': None}
    if math.isnan(at):
        return out
    if reacted is not None:
        out['time_to_safe_ms'] = round(max(0.0, reacted - at) * 1e3, 1)
    i = _at(truth, at)
    stage = truth['stage_m']
    speed = np.abs(np.diff(stage[i:])) / np.maximum(np.diff(truth['t'][i:]), 1e-9)
    still = np.flatnonzero(speed <= STILL_M_S)
    if still.size:
        out['time_to_stop_ms'] = round((float(truth['t'][i + still[0]]) - at) * 1e3, 1)
    out['depth_after_fault_mm'] = round(float(max(0.0, np.max(stage[i:], initial=stage[i])
                                                  - stage[i])) * 1e3, 3)
    return out


def load_log(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding='utf-8'))
