"""PNG report of one simulated insertion, for people without Foxglove (entry-point layer).

Four figures from the run's logs (``runs.insertion`` leaves them in its workdir):

- ``us_at_stop.png``: the US frame captured when the insertion stopped, with the trained
  segmenter's lumen mask (the same model the ultrasound node runs) and the needle tip;
- ``map_vs_truth.png``: the vessel map the mapper published against the true
  centrelines, top and side views, with the planned target;
- ``force_vs_depth.png``: axial needle force (the simulator's truth and the controller's
  filtered F/T) against stage travel, with the puncture events the controller detected;
- ``tip_trajectory.png``: the needle tip over time with its distance to the nearest vein
  centre and the in-lumen flag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ir_guidance.runs import score


def write(workdir: Path, out_dir: Path) -> list[Path]:
    """Draw the report of the run in ``workdir`` into ``out_dir``; returns the files."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    log = score.load_log(workdir / 'controller.json')
    truth = score.load_truth(workdir / 'truth.npz')
    with np.load(workdir / 'truth.npz') as data:
        frame = data['us_stop_image']
        frame_pose = data['us_stop_pose']
    files = []
    files.append(_us_frame(plt, frame, frame_pose, truth, log, out_dir / 'us_at_stop.png'))
    files.append(_map(plt, workdir / 'map.npz', truth, log, out_dir / 'map_vs_truth.png'))
    files.append(_force(plt, truth, log, out_dir / 'force_vs_depth.png'))
    files.append(_tip(plt, truth, log, out_dir / 'tip_trajectory.png'))
    return [f for f in files if f is not None]


def _us_frame(plt, image, pose, truth, log, path: Path) -> Path | None:
    if image.size == 0:
        return None
    from ir_guidance import config
    from ir_guidance.perception.us_model import UsSegmenter

    cfg = config.load()['ultrasound']
    mask = UsSegmenter(cfg['weights'], threshold=float(cfg['mask_threshold']))(image)
    fig, ax = plt.subplots(figsize=(6, 6))
    w, d = float(cfg['width_m']) * 1e3, float(cfg['depth_m']) * 1e3
    extent = (-w / 2, w / 2, d, 0)
    ax.imshow(image, cmap='gray', extent=extent)
    overlay = np.zeros((*mask.shape, 4))
    overlay[mask > 0] = (0.1, 0.9, 0.3, 0.35)
    ax.imshow(overlay, extent=extent)
    stop = score.phase_time(log, 'VERIFY')
    if stop is not None:
        i = int(np.searchsorted(truth['t'], stop))
        tip = np.array([truth['tip_x'][i], truth['tip_y'][i], truth['tip_z'][i], 1.0])
        local = np.linalg.solve(pose, tip)[:3] * 1e3
        ax.plot(local[0], local[1], 'r+', markersize=14, label='needle tip (truth)')
        ax.legend(loc='lower right')
    ax.set_xlabel('lateral (mm)')
    ax.set_ylabel('depth (mm)')
    ax.set_title('US at the stop, with the segmented lumen')
    return _save(plt, fig, path)


def _map(plt, map_file: Path, truth, log, path: Path) -> Path:
    fig, (top, side) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, line in enumerate(truth['centerlines']):
        top.plot(line[:, 1] * 1e3, line[:, 0] * 1e3, 'b-', alpha=0.6,
                 label='true centreline' if i == 0 else None)
        side.plot(line[:, 1] * 1e3, line[:, 2] * 1e3, 'b-', alpha=0.6)
    if map_file.is_file():
        with np.load(map_file) as m:
            for vid in np.unique(m['vessel_id']):
                sel = m['vessel_id'] == vid
                top.plot(m['y'][sel] * 1e3, m['x'][sel] * 1e3, 'o', markersize=3,
                         label=f'map vessel {int(vid)}')
                side.plot(m['y'][sel] * 1e3, m['z'][sel] * 1e3, 'o', markersize=3)
    target = log.get('plan', {}).get('target')
    if target:
        top.plot(target[1] * 1e3, target[0] * 1e3, 'r*', markersize=14, label='target')
        side.plot(target[1] * 1e3, target[2] * 1e3, 'r*', markersize=14)
    top.set_xlabel('y along the arm (mm)')
    top.set_ylabel('x across (mm)')
    side.set_xlabel('y along the arm (mm)')
    side.set_ylabel('z height (mm)')
    top.set_title('vessel map vs ground truth (top)')
    side.set_title('side')
    top.legend(fontsize=7)
    return _save(plt, fig, path)


def _force(plt, truth, log, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    start, stop = score.phase_time(log, 'INSERT'), score.phase_time(log, 'VERIFY')
    t = truth['t']
    inserting = (t >= (start or np.inf)) & (t <= (stop if stop is not None else t[-1]))
    ax.plot(truth['stage_m'][inserting] * 1e3, truth['axial_n'][inserting], 'k-', lw=1,
            label='needle force (simulator truth)')
    trace = np.asarray(log.get('insertion') or np.zeros((0, 4)), dtype=float)
    if len(trace):
        ax.plot(trace[:, 1] * 1e3, trace[:, 3], 'g-', lw=1,
                label='axial F/T (controller, filtered)')
    for when, text in log.get('events', []):
        if ' puncture (' not in text:
            continue
        i = min(int(np.searchsorted(t, when)), len(t) - 1)
        depth = truth['stage_m'][i] * 1e3
        ax.axvline(depth, color='r', ls='--', lw=0.8)
        ax.annotate(text.split(' (')[0], (depth, 0.95), xycoords=('data', 'axes fraction'),
                    rotation=90, fontsize=7, color='r', va='top', ha='right')
    ax.set_xlabel('needle stage travel (mm)')
    ax.set_ylabel('axial force (N)')
    ax.set_title('force against depth, with detected punctures')
    ax.legend(fontsize=8, loc='upper left')
    return _save(plt, fig, path)


def _tip(plt, truth, log, path: Path) -> Path:
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    t = truth['t']
    a.plot(t, truth['tip_err_m'] * 1e3, 'k-', lw=1)
    a.set_ylabel('tip to vein centre (mm)')
    a.set_ylim(0, min(30.0, float(np.nanmax(truth['tip_err_m'][np.isfinite(truth['tip_err_m'])]
                                            * 1e3, initial=1.0)) + 1))
    b.plot(t, truth['tip_z'] * 1e3, 'b-', lw=1, label='tip z')
    b2 = b.twinx()
    b2.fill_between(t, 0, truth['in_lumen'], color='g', alpha=0.3, label='in lumen')
    b.set_xlabel('sim time (s)')
    b.set_ylabel('tip height (mm)')
    for when, name, _ in log['phases']:
        for axis in (a, b):
            axis.axvline(when, color='gray', lw=0.5)
        a.text(when, a.get_ylim()[1] * 0.95, name, fontsize=6, rotation=90)
    a.set_title('needle tip')
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
