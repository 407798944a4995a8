"""Train the ultrasound vein segmenter (``ir-guidance train us``) on simulated frames.

Data: :func:`us_data.make_split` on training phantoms ``0 .. train_seeds - 1`` and, for
scoring, on held-out phantoms from ``us_data.TEST_SEED_BASE`` (10 000) up, plus a shifted
set (``shifted=True``) on other held-out phantoms. The network (:class:`us_model.UNet`)
sees frames area-downsampled to ``input_size`` (128); its logits are upsampled
bilinearly to the 256 x 256 mask, where the loss (BCE + soft Dice over the batch) is
computed, exactly as :class:`us_model.UsSegmenter` infers. Adam with a one-cycle
learning rate; random left-right flips per batch on top of the generator's augmentation.
Deterministic: torch, numpy and the batch order all follow ``--seed``.

Writes ``us_unet.pt`` (state_dict) and ``us_unet.json`` (architecture, input size,
normalisation, threshold, inference backend, data seeds and ranges, training settings,
time, held-out metrics of the network and of the classical baseline, torch version)
into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias

from ir_guidance.perception import us_data, us_metrics
from ir_guidance.perception.us_classical import segment_classical
from ir_guidance.perception.us_model import (
    BACKENDS,
    WEIGHTS_DIR,
    WEIGHTS_NAME,
    UNet,
    UNetConfig,
    UsSegmenter,
)

SHIFTED_SEED_OFFSET = 5000      # shifted set: phantoms TEST_SEED_BASE + 5000 ..
CALIBRATION_SEED_OFFSET = 3000  # int8 calibration: 4 phantoms from TEST_SEED_BASE + 3000


def _downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Frames area-resized to ``size`` (float32, 0-255)."""
    out = np.empty((len(images), size, size), np.float32)
    for i, img in enumerate(images):
        out[i] = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    return out


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE plus soft Dice (over the whole batch, so empty frames are harmless)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    soft_dice = 1.0 - (2.0 * inter + 1.0) / (prob.sum() + target.sum() + 1.0)
    return bce + soft_dice


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog='ir-guidance train us',
        description='Train the ultrasound vein segmentation U-Net on simulated frames.')
    parser.add_argument('--out', default=str(WEIGHTS_DIR),
                        help='directory for us_unet.pt and us_unet.json (default: %(default)s)')
    parser.add_argument('--train-seeds', type=int, default=160,
                        help='training phantoms 0 .. N-1 (default: %(default)s)')
    parser.add_argument('--frames-per-seed', type=int, default=10)
    parser.add_argument('--test-seeds', type=int, default=64,
                        help='held-out phantoms from 10000 up (default: %(default)s)')
    parser.add_argument('--test-frames-per-seed', type=int, default=4)
    parser.add_argument('--epochs', type=int, default=16)
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--lr', type=float, default=4e-3)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--input-size', type=int, default=128,
                        help='network input side; frames are resized to it')
    parser.add_argument('--channels', type=int, nargs='+', default=[8, 16, 32, 64])
    parser.add_argument('--threshold', type=float, default=0.5)
    parser.add_argument('--backend', default='int8', choices=BACKENDS,
                        help='inference backend recorded for UsSegmenter(backend="auto")')
    parser.add_argument('--quiet', action='store_true')
    args = parser.parse_args(argv)
    for name in ('train_seeds', 'frames_per_seed', 'test_seeds', 'test_frames_per_seed',
                 'epochs', 'batch', 'threads'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1')
    if args.train_seeds >= us_data.TEST_SEED_BASE:
        parser.error(f'--train-seeds must be < {us_data.TEST_SEED_BASE} (held-out seeds)')
    if not 0.0 < args.threshold < 1.0:
        parser.error('--threshold must be in (0, 1)')
    return args


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Generate data, train, save, evaluate; returns the JSON written beside the weights."""
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net_config = UNetConfig(channels=tuple(args.channels))
    if args.input_size % net_config.stride or args.input_size < 16:
        raise SystemExit(f'--input-size must be a multiple of {net_config.stride} and >= 16')

    seeds = us_data.train_seeds(args.train_seeds)
    test = us_data.test_seeds(args.test_seeds)
    shifted = us_data.test_seeds(args.test_seeds, start=SHIFTED_SEED_OFFSET)
    calibration = us_data.test_seeds(4, start=CALIBRATION_SEED_OFFSET)
    images, masks, _ = us_data.make_split(seeds, args.frames_per_seed)
    data_s = time.perf_counter() - started
    log(f'{len(images)} training frames in {data_s:.0f} s')

    small = _downsample(images, args.input_size) / 255.0
    mean, std = float(small.mean()), float(small.std())
    x_all = torch.from_numpy((small - mean) / std).unsqueeze(1)
    y_all = torch.from_numpy(masks).unsqueeze(1)
    model = UNet(net_config)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    steps = args.epochs * ((len(images) + args.batch - 1) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr,
                                                   total_steps=steps, pct_start=0.15)
    size = masks.shape[1:]
    model.train()
    train_started = time.perf_counter()
    history = []
    for epoch in range(args.epochs):
        order = rng.permutation(len(images))
        total, batches = 0.0, 0
        for start in range(0, len(order), args.batch):
            index = torch.from_numpy(order[start:start + args.batch])
            x, y = x_all[index], y_all[index].float()
            flip = torch.from_numpy(rng.uniform(size=len(index)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            y = torch.where(flip[:, None, None, None], y.flip(-1), y)
            logits = F.interpolate(model(x), size=size, mode='bilinear', align_corners=False)
            loss = _loss(logits, y)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss.detach())
            batches += 1
        history.append(total / batches)
        log(f'epoch {epoch + 1}/{args.epochs}: loss {history[-1]:.4f} '
            f'({time.perf_counter() - train_started:.0f} s)')
    train_s = time.perf_counter() - train_started

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / WEIGHTS_NAME
    model.eval()
    torch.save(model.state_dict(), weights)
    meta: dict[str, Any] = {
        'architecture': net_config.to_dict(),
        'input_size': args.input_size,
        'image_size': int(images.shape[1]),
        'normalize': {'mean': mean, 'std': std,
                      'note': 'x = (image / 255 - mean) / std on the resized frame'},
        'threshold': args.threshold,
        'inference': {'backend': args.backend,
                      'calibration_seeds': [calibration[0], calibration[-1] + 1],
                      'calibration_frames_per_seed': 4,
                      'note': 'logits bilinearly upsampled to the frame size, then '
                              'thresholded; backends measured in docs/perception.md'},
        'data': {
            'generator': 'ir_guidance.perception.us_data.make_split',
            'train_seeds': [seeds[0], seeds[-1] + 1], 'train_frames_per_seed': args.frames_per_seed,
            'test_seeds': [test[0], test[-1] + 1],
            'test_frames_per_seed': args.test_frames_per_seed,
            'shifted_seeds': [shifted[0], shifted[-1] + 1],
            'ranges': 'half-open [first, end)', 'train_frames': len(images),
        },
        'training': {
            'epochs': args.epochs, 'batch': args.batch, 'lr': args.lr, 'seed': args.seed,
            'threads': args.threads, 'optimizer': 'Adam, one-cycle lr',
            'loss': 'BCE + soft Dice on logits upsampled to 256', 'loss_history': history,
            'data_s': data_s, 'train_s': train_s,
        },
        'torch_version': torch.__version__,
        'python': platform.python_version(),
    }
    meta_path = weights.with_suffix('.json')
    _write(meta_path, meta)

    eval_started = time.perf_counter()
    meta['metrics'] = evaluate(weights, test, args.test_frames_per_seed, shifted,
                               args.backend)
    meta['training']['eval_s'] = time.perf_counter() - eval_started
    meta['training']['total_s'] = time.perf_counter() - started
    _write(meta_path, meta)
    log(json.dumps(meta['metrics'], indent=1))
    log(f'wrote {weights} ({weights.stat().st_size / 1024:.0f} KiB) and {meta_path} in '
        f'{meta["training"]["total_s"]:.0f} s')
    return meta


def evaluate(weights: Path, test: list[int], frames_per_seed: int, shifted: list[int],
             backend: str) -> dict[str, Any]:
    """Held-out metrics of the saved network and of the classical baseline.

    The network runs with the recorded inference ``backend`` (what
    ``UsSegmenter(backend='auto')`` uses); ``test_dice_fp32`` is the eager float Dice.
    """
    seg = UsSegmenter(weights, backend=backend, threads=None)
    images, masks, meta = us_data.make_split(test, frames_per_seed)
    outs = [seg.segment(img) for img in images]
    net = us_metrics.evaluate([o.mask for o in outs], masks, meta,
                              [o.probability for o in outs])
    fp32 = UsSegmenter(weights, backend='eager', threads=None)
    net['dice_fp32'] = us_metrics.mean_dice([fp32(img) for img in images], masks)
    classical = us_metrics.evaluate(
        [segment_classical(img, m['width_m'], m['depth_m']) for img, m in zip(images, meta,
                                                                               strict=True)],
        masks, meta)
    s_images, s_masks, s_meta = us_data.make_split(shifted, frames_per_seed, shifted=True)
    s_net = us_metrics.evaluate([seg(img) for img in s_images], s_masks, s_meta)
    metrics: dict[str, Any] = {f'test_{k}': v for k, v in net.items()}
    metrics.update({f'classical_{k}': v for k, v in classical.items()})
    metrics.update({f'shifted_{k}': v for k, v in s_net.items()})
    return metrics


def _write(path: Path, data: dict[str, Any]) -> None:
    with open(path, 'w', encoding='utf-8') as stream:
        json.dump(data, stream, indent=2, allow_nan=True)
        stream.write('\n')


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``ir-guidance train us [options]`` (see ``--help``)."""
    train(parse_args(argv))
    return 0


if __name__ == '__main__':
    sys.exit(main())
