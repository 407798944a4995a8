"""``ir-guidance campaign``: many simulated insertions in parallel, summarised.

Each run is ``ir-guidance sim`` in its own worker process (all its nodes in that one
process by default, ``--single-process``: K workers then load K cores, not 8K
processes; a lockstep run gives the same commands either way) on its own ROS domain.
The summary: success and first-stick rates, the tip-error distribution, back-wall
punctures, aborts with their reasons, time to access.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np


def parse_seeds(text: str) -> list[int]:
    """``A-B`` (inclusive) or a comma list, e.g. ``1-50`` or ``3,7,9``."""
    seeds: list[int] = []
    for part in text.split(','):
        if '-' in part.strip()[1:]:
            a, b = part.split('-', 1)
            lo, hi = int(a), int(b)
            if hi < lo:
                raise ValueError(f'empty seed range {part!r}')
            seeds.extend(range(lo, hi + 1))
        else:
            seeds.append(int(part))
    return seeds


def _one(job: dict[str, Any], workdir: Path, fault: str, processes: bool) -> dict[str, Any]:
    run_dir = workdir / job['name']
    out = run_dir / 'result.json'
    cmd = [sys.executable, '-m', 'ir_guidance.cli', 'sim', '--json', str(out),
           '--workdir', str(run_dir)]
    cmd += ['--seed', str(job['seed'])] if 'seed' in job else ['--phantom', job['phantom']]
    if fault:
        cmd += ['--fault', fault]
    if not processes:
        cmd.append('--single-process')
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / 'run.log', 'w', encoding='utf-8') as log:
        status = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if out.is_file():
        result = json.loads(out.read_text(encoding='utf-8'))
    else:
        result = {'success': False, 'first_stick': False, 'final_phase': 'CRASH',
                  'reason': f'exit {status.returncode}, see {run_dir / "run.log"}',
                  'back_wall_puncture': False, 'tip_err_mm': None}
    result['name'] = job['name']
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Rates and distributions over the runs."""
    n = len(results)
    errors = np.array([r['tip_err_mm'] for r in results if r.get('tip_err_mm') is not None])
    times = np.array([r['time_to_access_s'] for r in results
                      if r.get('time_to_access_s') is not None])
    failed = Counter(f"{r.get('final_phase')}: {r.get('reason')}" for r in results
                     if not r.get('success'))

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 3) if len(values) else None

    return {
        'runs': n,
        'success_rate': round(sum(bool(r.get('success')) for r in results) / n, 4),
        'first_stick_rate': round(sum(bool(r.get('first_stick')) for r in results) / n, 4),
        'back_wall_punctures': sum(bool(r.get('back_wall_puncture')) for r in results),
        'tip_err_mm': {'p50': pct(errors, 50), 'p90': pct(errors, 90),
                       'max': round(float(errors.max()), 3) if len(errors) else None},
        'time_to_access_s': {'p50': pct(times, 50), 'max': round(float(times.max()), 3)
                             if len(times) else None},
        'wall_time_s_p50': pct(np.array([r['wall_time_s'] for r in results
                                         if 'wall_time_s' in r]), 50),
        'not_accessed': dict(failed),
        'safe_stops': sum(bool(r.get('safe_stop')) for r in results),
    }


def run(seeds: str | None = None, phantoms: Path | None = None, workers: int = 2,
        fault: str = '', workdir: Path | None = None, processes: bool = False
        ) -> dict[str, Any]:
    """Run the campaign; returns ``{'summary': ..., 'runs': [...]}``."""
    if workers < 1:
        raise ValueError('workers must be >= 1')
    if seeds:
        jobs = [{'name': f'seed_{s}', 'seed': s} for s in parse_seeds(seeds)]
    elif phantoms:
        files = sorted(Path(phantoms).glob('*.yaml'))
        if not files:
            raise ValueError(f'no *.yaml phantoms in {phantoms}')
        jobs = [{'name': f.stem, 'phantom': str(f.resolve())} for f in files]
    else:
        raise ValueError('give seeds or a phantom folder')
    root = Path(workdir or tempfile.mkdtemp(prefix='ir_guidance_campaign_'))
    results: list[dict[str, Any]] = []
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_one, job, root, fault, processes) for job in jobs]
        for done, future in enumerate(as_completed(futures), 1):
            r = future.result()
            results.append(r)
            bar = '#' * round(30 * done / len(jobs))
            verdict = 'ACCESS' if r.get('success') else r.get('final_phase', '?')
            print(f'[{bar:<30}] {done}/{len(jobs)} {r["name"]}: {verdict} tip '
                  f'{r.get("tip_err_mm")} mm ({time.monotonic() - start:.0f} s)',
                  file=sys.stderr, flush=True)
    results.sort(key=lambda r: r['name'])
    return {'summary': summarise(results), 'runs': results, 'workdir': str(root)}
