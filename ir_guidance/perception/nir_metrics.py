"""Scoring NIR vein detections against the simulator's ground truth (ROS-free).

The truth of a vein in an image is its centreline as the camera sees it: for each ``y``
along the arm, the skin point straight above the vein's centre (the phantom's
:meth:`~ir_guidance.sim.phantom.Phantom.centerline` moved up to
:meth:`~ir_guidance.sim.phantom.Phantom.skin_z`), projected with
:meth:`~ir_guidance.sim.nir.NirSimulator.project`. The shadow of a vein is drawn on the
skin above it (the simulator, like diffuse light through tissue, darkens the skin over
the vein), and that is also the surface the depth camera measures; projecting the
centre itself, a few millimetres deeper, would misplace it by up to ~10 px at the edge
of the image by parallax. Only points that the camera sees are kept: inside the image
by ``margin_px``, in front of the camera, on skin that faces it (``cos >= min_cos``).

- **Precision** of a frame: the fraction of detected centreline points within
  ``tol_px`` of any vein's true centreline (every vein counts, however deep).
- **Recall** of a vein: the fraction of its true centreline points within ``tol_px`` of
  a detected centreline. Veins are split by the depth of the top of the lumen under
  the skin (the median over the visible part): shallower than ``shallow_m`` (3 mm, about
  where NIR stops seeing veins) or deeper.

:func:`evaluate_random` runs the detector on random phantoms (one frame each) and also
times it; ``python -m ir_guidance.perception.nir_metrics`` prints that as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import yaml

from ir_guidance.perception.nir_veins import NirDetection, NirParams, NirVeinDetector
from ir_guidance.sim.nir import NirSimulator
from ir_guidance.sim.phantom import Phantom, PhantomState

SHALLOW_M = 3.0e-3
# Bins of the depth of a vein's top (mm) for evaluate_random's recall by depth.
DEPTH_BINS_MM = ((0.0, 2.5), (2.5, 3.0), (3.0, 3.5), (3.5, 4.0), (4.0, 5.0), (5.0, 99.0))


@dataclass(frozen=True)
class TrueVein:
    """One vein's visible centreline in an image.

    ``pixels``: ``(N, 2)`` ``(u, v)``; ``skin_world``: the ``(N, 3)`` world skin points
    above the centre that project there; ``top_depth_m``: median depth of the top of
    the lumen under the skin over those points.
    """

    index: int
    pixels: np.ndarray
    skin_world: np.ndarray
    top_depth_m: float


@dataclass(frozen=True)
class VeinScore:
    """Recall of one true vein in one frame."""

    index: int
    top_depth_m: float
    recall: float
    points: int


@dataclass(frozen=True)
class FrameScore:
    """Precision of a frame's detections and the recall of each visible vein."""

    detected_points: int
    true_positive_points: int
    veins: tuple[VeinScore, ...]

    @property
    def precision(self) -> float:
        """Fraction of detected points near a true vein (NaN when nothing was detected)."""
        if self.detected_points == 0:
            return math.nan
        return self.true_positive_points / self.detected_points


def looking_down_pose(phantom: Phantom, height_m: float, x: float | None = None,
                      y: float | None = None, tilt_rad: tuple[float, float] = (0.0, 0.0)
                      ) -> np.ndarray:
    """4x4 world pose of the optical frame ``height_m`` above the top of the arm.

    Looking straight down (optical z = world -z, image x along world x), then tilted by
    ``tilt_rad`` about the optical x and y axes. ``x``/``y`` default to the arm's axis
    and centre.
    """
    x = phantom.axis_x if x is None else x
    y = phantom.center_y if y is None else y
    pose = np.eye(4)
    z_axis = np.array([0.0, 0.0, -1.0])
    x_axis = np.array([1.0, 0.0, 0.0])
    pose[:3, 0], pose[:3, 1], pose[:3, 2] = x_axis, np.cross(z_axis, x_axis), z_axis
    ax, ay = tilt_rad
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    pose[:3, :3] = pose[:3, :3] @ rx @ ry
    pose[:3, 3] = [x, y, phantom.axis_z + phantom.arm_radius + height_m]
    return pose


def true_veins(phantom: Phantom, sim: NirSimulator, camera_pose: np.ndarray,
               state: PhantomState | None = None, step_m: float = 1.0e-4,
               margin_px: float = 8.0, min_cos: float = 0.5) -> list[TrueVein]:
    """The visible part of each vein's centreline in the image (see the module docs)."""
    cfg = sim.config
    half = phantom.length / 2
    ys = np.arange(phantom.center_y - half, phantom.center_y + half + step_m / 2, step_m)
    ys = ys + phantom.offset(state)[1]
    eye = np.asarray(camera_pose, dtype=float)[:3, 3]
    off = phantom.offset(state)
    out = []
    for i in range(len(phantom.veins)):
        g = phantom.vein_geometry(i, ys, state)
        skin = np.asarray(phantom.skin_z(g['x'], ys, state), dtype=float)
        on_arm = np.isfinite(skin)
        top = skin - (g['z'] + g['b'])
        world = np.column_stack((g['x'], ys, np.where(on_arm, skin, 0.0)))
        u, v, z = sim.project(camera_pose, world)
        # The skin's outward normal (the arm is a cylinder along y) against the view.
        normal = np.column_stack((world[:, 0] - phantom.axis_x - off[0], np.zeros(len(ys)),
                                  world[:, 2] - phantom.axis_z - off[2])) / phantom.arm_radius
        view = eye - world
        cos = np.einsum('ij,ij->i', normal, view) / np.linalg.norm(view, axis=1)
        with np.errstate(invalid='ignore'):
            seen = (on_arm & (z > 0) & (cos >= min_cos)
                    & (u >= margin_px) & (u <= cfg.width - 1 - margin_px)
                    & (v >= margin_px) & (v <= cfg.height - 1 - margin_px))
        if not seen.any():
            continue
        out.append(TrueVein(index=i, pixels=np.column_stack((u[seen], v[seen])),
                            skin_world=world[seen], top_depth_m=float(np.median(top[seen]))))
    return out


def _distance_map(lines: Iterable[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Distance (px) from every pixel to the nearest of the polylines."""
    canvas = np.full(shape, 255, np.uint8)
    for line in lines:
        pts = np.round(np.asarray(line, dtype=float) * 16).astype(np.int32)
        if len(pts) == 1:
            pts = np.repeat(pts, 2, axis=0)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 0, 1, cv2.LINE_8, shift=4)
    return cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)


def _lookup(dist: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``dist`` at the nearest pixel of each ``(u, v)`` (inf outside the image)."""
    h, w = dist.shape
    col = np.rint(pts[:, 0]).astype(np.intp)
    row = np.rint(pts[:, 1]).astype(np.intp)
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.full(len(pts), np.inf)
    out[inside] = dist[row[inside], col[inside]]
    return out


def score(detection: NirDetection | Sequence[np.ndarray], truth: Sequence[TrueVein],
          shape: tuple[int, int], tol_px: float = 4.0) -> FrameScore:
    """Precision and per-vein recall of one frame's centrelines (see the module docs)."""
    lines = detection.centerlines if isinstance(detection, NirDetection) else detection
    lines = [np.asarray(line, dtype=float).reshape(-1, 2) for line in lines]
    detected = np.concatenate(lines) if lines else np.zeros((0, 2))
    tp = 0
    if len(detected) and truth:
        near = _lookup(_distance_map([t.pixels for t in truth], shape), detected) <= tol_px
        tp = int(near.sum())
    veins = []
    to_detection = _distance_map(lines, shape) if lines else None
    for t in truth:
        if to_detection is None:
            recall = 0.0
        else:
            recall = float(np.mean(_lookup(to_detection, t.pixels) <= tol_px))
        veins.append(VeinScore(index=t.index, top_depth_m=t.top_depth_m, recall=recall,
                               points=len(t.pixels)))
    return FrameScore(detected_points=len(detected), true_positive_points=tp,
                      veins=tuple(veins))


def summarize(scores: Sequence[FrameScore], shallow_m: float = SHALLOW_M
              ) -> dict[str, float | int]:
    """Pooled precision, and the mean recall of shallow and deeper veins, over frames."""
    detected = sum(s.detected_points for s in scores)
    tp = sum(s.true_positive_points for s in scores)
    shallow = [v.recall for s in scores for v in s.veins if v.top_depth_m < shallow_m]
    deep = [v.recall for s in scores for v in s.veins if v.top_depth_m >= shallow_m]
    empty = sum(1 for s in scores if s.detected_points == 0)
    return {
        'frames': len(scores),
        'precision': tp / detected if detected else math.nan,
        'detected_points': detected,
        'frames_without_detection': empty,
        'shallow_veins': len(shallow),
        'shallow_recall_mean': float(np.mean(shallow)) if shallow else math.nan,
        'shallow_recall_min': float(np.min(shallow)) if shallow else math.nan,
        'deep_veins': len(deep),
        'deep_recall_mean': float(np.mean(deep)) if deep else math.nan,
        'deep_found': sum(1 for r in deep if r >= 0.5),
    }


def random_view(seed: int, height_m: tuple[float, float] = (0.09, 0.12),
                offset_m: tuple[float, float] = (0.01, 0.06), tilt_rad: float = 0.1
                ) -> tuple[Phantom, np.ndarray]:
    """Phantom ``Phantom.random(seed)`` and a camera looking down at it (seeded).

    Height uniform in ``height_m`` above the top of the arm, offset up to ``offset_m``
    across and along the arm, tilted up to ``tilt_rad`` about each image axis.
    """
    phantom = Phantom.random(seed)
    rng = np.random.default_rng((seed, 0x4E1F))
    pose = looking_down_pose(
        phantom, float(rng.uniform(*height_m)),
        x=phantom.axis_x + float(rng.uniform(-offset_m[0], offset_m[0])),
        y=phantom.center_y + float(rng.uniform(-offset_m[1], offset_m[1])),
        tilt_rad=(float(rng.uniform(-tilt_rad, tilt_rad)),
                  float(rng.uniform(-tilt_rad, tilt_rad))))
    return phantom, pose


def evaluate_random(seeds: Iterable[int], params: NirParams | None = None,
                    tol_px: float = 4.0, repeats: int = 3, **view: Any
                    ) -> dict[str, float | int]:
    """Detect on one frame of each :func:`random_view` (``view``: its keywords).

    The frames are rendered first; then ``repeats`` passes run
    :meth:`NirVeinDetector.detect_points` (detection and back-projection) on them one
    after the other, as on a live stream, after one warm-up call. Reported: the median,
    90th percentile and maximum of the per-frame times over all passes, and ``fps``,
    frames processed per second of the passes' total time. The scores are those of the
    first pass (every pass gives the same detections), with the mean recall of the veins
    in bins of depth (``recall_<lo>-<hi>mm``) and their count (``veins_<lo>-<hi>mm``).
    """
    detector = NirVeinDetector(params)
    frames = []
    for seed in seeds:
        phantom, pose = random_view(seed, **view)
        sim = NirSimulator(phantom, seed=seed)
        state = phantom.new_state()
        ir, depth = sim.render(pose, state, seed)
        frames.append((ir, depth, sim, true_veins(phantom, sim, pose, state)))
    if not frames:
        raise ValueError('no seeds to evaluate')
    ir, depth, sim, _ = frames[0]
    detector.detect_points(ir, depth, sim.camera_info()['K'], sim.config.depth_scale)
    times = []
    scores = []
    total = 0.0
    for run in range(max(1, repeats)):
        for ir, depth, sim, truth in frames:
            start = time.perf_counter()
            detection, _ = detector.detect_points(ir, depth, sim.camera_info()['K'],
                                                  sim.config.depth_scale)
            elapsed = time.perf_counter() - start
            times.append(elapsed * 1e3)
            total += elapsed
            if run == 0:
                scores.append(score(detection, truth, ir.shape, tol_px))
    out = summarize(scores)
    veins = [v for s in scores for v in s.veins]
    for lo, hi in DEPTH_BINS_MM:
        rec = [v.recall for v in veins if lo <= v.top_depth_m * 1e3 < hi]
        out[f'veins_{lo:g}-{hi:g}mm'] = len(rec)
        out[f'recall_{lo:g}-{hi:g}mm'] = float(np.mean(rec)) if rec else math.nan
    out['tol_px'] = tol_px
    out['ms_p50'] = float(np.median(times))
    out['ms_p90'] = float(np.percentile(times, 90))
    out['ms_max'] = float(np.max(times))
    out['fps'] = len(times) / total
    return out


def _seed_range(text: str) -> range:
    """``A-B`` (inclusive) or a single seed."""
    first, _, last = text.partition('-')
    return range(int(first), int(last or first) + 1)


def main(argv: Sequence[str] | None = None) -> int:
    """Print :func:`evaluate_random` as JSON (detector: ``NirParams()``, or the config)."""
    parser = argparse.ArgumentParser(
        prog='python -m ir_guidance.perception.nir_metrics',
        description='Score and time the NIR vein detector on random simulated phantoms.')
    parser.add_argument('--seeds', default='1000-1199', help='A-B inclusive (default 1000-1199)')
    parser.add_argument('--tol-px', type=float, default=4.0)
    parser.add_argument('--repeats', type=int, default=3, help='timed passes over the frames')
    parser.add_argument('--config', action='store_true',
                        help="use config/ir_guidance.yaml's nir section over the defaults")
    parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                        help='override a parameter (YAML value), e.g. --set clahe_clip=2')
    parser.add_argument('--height', type=float, nargs=2, default=(0.09, 0.12),
                        metavar=('MIN', 'MAX'), help='camera height above the arm, m')
    parser.add_argument('--offset', type=float, nargs=2, default=(0.01, 0.06),
                        metavar=('ACROSS', 'ALONG'), help='largest camera offsets, m')
    parser.add_argument('--tilt', type=float, default=0.1, help='largest tilt, rad')
    args = parser.parse_args(argv)
    section: dict[str, object] = {}
    if args.config:
        from ir_guidance import config

        section.update(config.load()['nir'])
    for item in args.set:
        key, sep, value = item.partition('=')
        if not sep:
            parser.error(f'--set needs KEY=VALUE, got {item!r}')
        section[key.strip()] = yaml.safe_load(value)
    params = NirParams.from_config(section)
    view = {'height_m': tuple(args.height), 'offset_m': tuple(args.offset),
            'tilt_rad': args.tilt}
    result: dict[str, object] = dict(evaluate_random(_seed_range(args.seeds), params,
                                                     args.tol_px, args.repeats, **view))
    result.update(seeds=args.seeds, view=view, params=dataclasses.asdict(params))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write('\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
