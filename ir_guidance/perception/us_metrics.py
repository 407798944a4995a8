"""Scores of a vein segmentation against the simulator's ground truth.

- Dice per frame (an empty prediction of an empty truth scores 1), its mean over frames,
  and the pooled Dice (all pixels of all frames as one).
- Centre error: per frame, detected cross-sections (:func:`us_vessels.cross_sections`)
  are matched one-to-one to the true lumen centres by nearest distance (Hungarian on the
  distances, within ``gate_mm``); the error of a match is the distance of the centres in
  millimetres. Unmatched true vessels are misses, unmatched detections false positives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from ir_guidance.perception import us_vessels


def _pair(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f'prediction {pred.shape} and truth {truth.shape} must be 2-D and '
                         'of the same shape')
    return pred != 0, truth != 0


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary masks (nonzero = inside); 1.0 when both are empty."""
    p, t = _pair(pred, truth)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & t)) / total


def mean_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Mean of the per-frame Dice."""
    if len(preds) != len(truths) or len(preds) == 0:
        raise ValueError(f'need equal, non-zero numbers of masks, got {len(preds)} and '
                         f'{len(truths)}')
    return float(np.mean([dice(p, t) for p, t in zip(preds, truths, strict=True)]))


def pooled_dice(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """Dice over all pixels of all frames together."""
    if len(preds) != len(truths) or len(preds) == 0:
        raise ValueError('need equal, non-zero numbers of masks')
    inter = total = 0
    for pred, truth in zip(preds, truths, strict=True):
        p, t = _pair(pred, truth)
        inter += int(np.count_nonzero(p & t))
        total += int(p.sum()) + int(t.sum())
    return 1.0 if total == 0 else 2.0 * inter / total


def match_centres(detected: np.ndarray, truth: np.ndarray, gate_mm: float = 3.0
                  ) -> tuple[list[tuple[int, int]], np.ndarray]:
    """One-to-one nearest matches of centres ``(k, 2)`` and ``(m, 2)`` (metres).

    Returns the ``(detected index, truth index)`` pairs within ``gate_mm`` and their
    distances in millimetres.
    """
    d = np.asarray(detected, dtype=float).reshape(-1, 2)
    t = np.asarray(truth, dtype=float).reshape(-1, 2)
    if len(d) == 0 or len(t) == 0:
        return [], np.zeros(0)
    dist = np.hypot(d[:, None, 0] - t[None, :, 0], d[:, None, 1] - t[None, :, 1]) * 1e3
    rows, cols = linear_sum_assignment(dist)
    pairs = [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if dist[r, c] <= gate_mm]
    return pairs, np.array([dist[r, c] for r, c in pairs])


def truth_centres(meta: dict[str, Any], min_area_mm2: float | None = None) -> np.ndarray:
    """The true lumen centres ``(m, 2)`` of a frame's meta at least ``min_area_mm2`` large."""
    min_area = (us_vessels._defaults()['min_area_mm2'] if min_area_mm2 is None
                else min_area_mm2) * 1e-6
    centres = np.asarray(meta['centres'], dtype=float).reshape(-1, 2)
    areas = np.asarray(meta['areas_m2'], dtype=float)
    return centres[areas >= min_area]


def evaluate(preds: Sequence[np.ndarray], truths: Sequence[np.ndarray],
             meta: Sequence[dict[str, Any]],
             probabilities: Sequence[np.ndarray] | None = None,
             min_area_mm2: float | None = None, gate_mm: float = 3.0) -> dict[str, float]:
    """Dice and centre-error summary of predicted masks against the truth.

    ``meta`` is :func:`us_data.make_split`'s (image geometry, true centres). Returns
    ``dice`` (mean per frame), ``dice_pooled``, ``centre_err_mm_p50`` / ``_p90`` /
    ``_max`` over matched vessels (NaN if none), ``detection_rate`` (matched / true
    vessels), ``false_positives_per_frame`` and the counts.
    """
    if not (len(preds) == len(truths) == len(meta)):
        raise ValueError('preds, truths and meta must have the same length')
    errors: list[float] = []
    n_true = n_matched = n_false = 0
    for i, (pred, m) in enumerate(zip(preds, meta, strict=True)):
        prob = probabilities[i] if probabilities is not None else None
        found = us_vessels.cross_sections(pred, m['width_m'], m['depth_m'], prob,
                                          min_area_mm2)
        detected = np.array([[s.x, s.y] for s in found]).reshape(-1, 2)
        truth = truth_centres(m, min_area_mm2)
        pairs, dist = match_centres(detected, truth, gate_mm)
        errors.extend(dist.tolist())
        n_true += len(truth)
        n_matched += len(pairs)
        n_false += len(detected) - len(pairs)
    err = np.array(errors)
    has = err.size > 0
    return {
        'dice': mean_dice(preds, truths),
        'dice_pooled': pooled_dice(preds, truths),
        'centre_err_mm_p50': float(np.percentile(err, 50)) if has else float('nan'),
        'centre_err_mm_p90': float(np.percentile(err, 90)) if has else float('nan'),
        'centre_err_mm_max': float(err.max()) if has else float('nan'),
        'detection_rate': n_matched / n_true if n_true else 1.0,
        'false_positives_per_frame': n_false / len(preds),
        'frames': len(preds), 'true_vessels': n_true, 'matched': n_matched,
    }
