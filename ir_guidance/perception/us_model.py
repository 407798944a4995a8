"""A small U-Net for vein lumen segmentation in B-mode frames, and its CPU inference wrapper.

The network (:class:`UNet`) is built for CPU speed: four levels of 8-16-32-64 channels,
stride-2 convolutions instead of pooling, transposed convolutions up, one convolution
(not two) on the full-resolution level, 3x3 convolutions with BatchNorm and ReLU (the
BatchNorm is folded into the convolutions for inference). It runs at ``input_size``
(128): a 256 x 256 frame is area-downsampled to it, and the logits are bilinearly
upsampled back to the frame's size before the threshold, so the mask keeps sub-pixel
edges (training computes its loss the same way, on the upsampled logits).

:class:`UsSegmenter` loads ``us_unet.pt`` (a state_dict) and ``us_unet.json`` beside it
(architecture, input size, normalisation, threshold, the chosen inference backend) and
turns a uint8 frame into a probability map and a mask. Backends (``BACKENDS``):
``eager``; ``channels_last``; ``jit`` (torch.jit.trace + freeze); ``jit_channels_last``;
``compile`` (torch.compile, inductor; slow to warm up); ``int8`` (static post-training
quantization with torch.ao FX, calibrated on frames given to it). :func:`benchmark`
measures them; ``docs/perception.md`` has the numbers.

torch is imported here, not at ``ir_guidance.perception`` import.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from ir_guidance.perception.us_classical import check_image

WEIGHTS_DIR = Path(__file__).resolve().parent / 'weights'
WEIGHTS_NAME = 'us_unet.pt'
BACKENDS = ('eager', 'channels_last', 'jit', 'jit_channels_last', 'compile', 'int8')


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    top_convs: int = 1            # convolutions on the full-resolution level (1 or 2)

    def __post_init__(self) -> None:
        channels = tuple(int(c) for c in self.channels)
        if not 2 <= len(channels) <= 6 or min(channels) < 1:
            raise ValueError(f'U-Net channels must be 2-6 positive ints, got {self.channels}')
        if self.top_convs not in (1, 2):
            raise ValueError(f'top_convs must be 1 or 2, got {self.top_convs}')
        object.__setattr__(self, 'channels', channels)

    @property
    def stride(self) -> int:
        """The input side must be a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {'name': 'unet', 'channels': list(self.channels), 'top_convs': self.top_convs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`to_dict`."""
        if data.get('name', 'unet') != 'unet':
            raise ValueError(f'unknown architecture {data.get("name")!r}')
        return cls(channels=tuple(data['channels']), top_convs=int(data.get('top_convs', 1)))


def _conv(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class UNet(nn.Module):
    """U-Net: one input channel (B-mode), one output channel (lumen logit), same size."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig()
        ch = self.config.channels
        top = self.config.top_convs
        self.enc = nn.ModuleList()
        c_prev = 1
        for level, c in enumerate(ch):
            layers = _conv(c_prev, c, 1 if level == 0 else 2)
            if level > 0 or top == 2:
                layers += _conv(c, c)
            self.enc.append(nn.Sequential(*layers))
            c_prev = c
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for level in range(len(ch) - 2, -1, -1):
            c = ch[level]
            self.up.append(nn.ConvTranspose2d(c_prev, c, 2, stride=2))
            layers = _conv(2 * c, c)
            if level > 0 or top == 2:
                layers += _conv(c, c)
            self.dec.append(nn.Sequential(*layers))
            c_prev = c
        self.head = nn.Conv2d(c_prev, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, 1, H, W)`` of a batch ``(N, 1, H, W)``; H, W multiples of the stride."""
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
        for i, (up, block) in enumerate(zip(self.up, self.dec, strict=True)):
            x = block(torch.cat([up(x), skips[-2 - i]], dim=1))
        return self.head(x)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair of ``model`` (in eval mode) into the conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return model


def resolve_weights(path: str | Path | None = None) -> Path:
    """The weights file: the package's own for None, else ``path``.

    A relative ``path`` (as config/'s ``ultrasound.weights``) is taken from the directory
    that holds the package, so it works in the source tree and installed alike.
    """
    if path is None:
        return WEIGHTS_DIR / WEIGHTS_NAME
    path = Path(path)
    return path if path.is_absolute() else Path(__file__).resolve().parents[2] / path


def calibration_frames(inference: dict[str, Any]) -> list[np.ndarray]:
    """Simulated held-out frames for int8 calibration, as the weights' JSON names them."""
    from ir_guidance.perception import us_data

    lo, hi = inference.get('calibration_seeds', [13_000, 13_004])
    images, _, _ = us_data.make_split(range(int(lo), int(hi)),
                                      int(inference.get('calibration_frames_per_seed', 4)))
    return list(images)


def _example_input(size: int, channels_last: bool) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def build_runner(model: nn.Module, backend: str, size: int,
                 calibration: Sequence[np.ndarray] | None = None,
                 prepare: Callable[[np.ndarray], torch.Tensor] | None = None
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A callable ``(1, 1, size, size) float tensor -> logits`` for one backend.

    ``model`` is an eval-mode :class:`UNet` with BatchNorm (not folded: ``int8`` fuses it
    itself, the others fold it here on a copy). ``int8`` needs ``calibration`` frames
    and the ``prepare`` function that turns one into a network input.
    """
    import copy

    if backend not in BACKENDS:
        raise ValueError(f'unknown backend {backend!r}; known: {BACKENDS}')
    model = copy.deepcopy(model).eval()
    if backend == 'int8':
        if not calibration or prepare is None:
            raise ValueError('int8 needs calibration frames and a prepare function')
        return _quantize(model, size, calibration, prepare)
    model = fold_batchnorm(model)
    channels_last = backend in ('channels_last', 'jit_channels_last')
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if backend in ('jit', 'jit_channels_last'):
        import warnings

        with warnings.catch_warnings(), torch.inference_mode():
            # TorchScript is deprecated in favour of torch.compile; it is still measured.
            warnings.simplefilter('ignore', DeprecationWarning)
            traced = torch.jit.trace(model, _example_input(size, channels_last))
            runner = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
    elif backend == 'compile':
        runner = torch.compile(model, dynamic=False)
    else:
        runner = model

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return runner(x)

    return run


def _quantize(model: nn.Module, size: int, calibration: Sequence[np.ndarray],
              prepare: Callable[[np.ndarray], torch.Tensor]
              ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Static int8 via torch.ao FX graph mode (oneDNN engine), calibrated on frames.

    The transposed convolutions and the 1x1 head stay in float: quantized
    ConvTranspose2d on the x86/fbgemm/onednn engines gave logit errors of 2-3 (measured,
    torch 2.13), against 0.05 with them in float; qnnpack is accurate but 2x slower.
    """
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    engine = 'onednn'
    torch.backends.quantized.engine = engine
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao (not installed here);
        # oneDNN warns about CPUs without VNNI: the Dice is checked by benchmark().
        warnings.simplefilter('ignore', DeprecationWarning)
        warnings.simplefilter('ignore', UserWarning)
        mapping = (get_default_qconfig_mapping(engine)
                   .set_object_type(nn.ConvTranspose2d, None).set_module_name('head', None))
        prepared = prepare_fx(model, mapping, example_inputs=(_example_input(size, False),))
        with torch.inference_mode():
            for frame in calibration:
                prepared(prepare(frame))
        quantized = convert_fx(prepared)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return quantized(x)

    return run


@dataclass
class Segmentation:
    """The segmenter's answer for one frame, at the frame's size."""

    mask: np.ndarray          # uint8 0/1
    probability: np.ndarray   # float32 in [0, 1]
    logits: np.ndarray        # float32


class UsSegmenter:
    """Vein lumen segmentation of B-mode frames with the trained :class:`UNet`.

    ``weights``: the ``.pt`` file (default: :func:`resolve_weights`); its JSON config is
    the same path with ``.json``. ``backend``: one of ``BACKENDS`` or ``'auto'`` (the one
    the JSON names, measured fastest with Dice intact). ``threads``: torch intra-op
    threads (process-wide; None leaves them). ``calibration``: frames for ``int8``;
    by default the simulated frames the JSON names (``inference.calibration_seeds``,
    held-out phantoms; about a second to make). With ``'auto'``, a backend that cannot
    be built on this torch (int8 relies on the deprecated torch.ao.quantization) falls
    back to ``channels_last`` with a warning; a backend asked for by name raises.
    """

    def __init__(self, weights: str | Path | None = None, backend: str = 'auto',
                 threads: int | None = 2, threshold: float | None = None,
                 calibration: Sequence[np.ndarray] | None = None) -> None:
        path = resolve_weights(weights)
        meta_path = path.with_suffix('.json')
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f'US segmenter needs {path} and {meta_path}')
        with open(meta_path, encoding='utf-8') as stream:
            self.config: dict[str, Any] = json.load(stream)
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.net_config = UNetConfig.from_dict(self.config['architecture'])
        self.input_size = int(self.config['input_size'])
        if self.input_size % self.net_config.stride:
            raise ValueError(f'input_size {self.input_size} is not a multiple of '
                             f'{self.net_config.stride}')
        norm = self.config['normalize']
        self._scale = np.float32(1.0 / (255.0 * float(norm['std'])))
        self._offset = np.float32(-float(norm['mean']) / float(norm['std']))
        self.threshold = float(self.config['threshold'] if threshold is None else threshold)
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f'threshold must be in (0, 1), got {self.threshold}')
        self._logit_threshold = np.float32(math.log(self.threshold / (1.0 - self.threshold)))
        self.model = UNet(self.net_config)
        state = torch.load(path, map_location='cpu', weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        inference = self.config.get('inference', {})
        auto = backend == 'auto'
        if auto:
            backend = str(inference.get('backend', 'eager'))
        if backend not in BACKENDS:
            raise ValueError(f'unknown backend {backend!r}; known: {BACKENDS}')
        if backend == 'int8' and not calibration:
            calibration = calibration_frames(inference)
        try:
            self._run = build_runner(self.model, backend, self.input_size, calibration,
                                     self.prepare)
        except (ImportError, AttributeError, RuntimeError, NotImplementedError) as exc:
            if not auto:
                raise
            import warnings

            warnings.warn(f'US segmenter backend {backend} unavailable ({exc}); using '
                          'channels_last', RuntimeWarning, stacklevel=2)
            backend = 'channels_last'
            self._run = build_runner(self.model, backend, self.input_size)
        self.backend = backend

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """The network input ``(1, 1, S, S)`` of a frame (validated, resized, normalised)."""
        image = check_image(image)
        size = self.input_size
        if image.shape != (size, size):
            image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        x = image.astype(np.float32)
        x *= self._scale
        x += self._offset
        return torch.from_numpy(x).reshape(1, 1, size, size)

    def logits(self, image: np.ndarray) -> np.ndarray:
        """Lumen logits (float32) at the frame's size."""
        frame = check_image(image)
        out = self._run(self.prepare(frame))[0, 0].float().numpy()
        h, w = frame.shape[:2]
        if out.shape != (h, w):
            out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
        return out

    def segment(self, image: np.ndarray) -> Segmentation:
        """Mask (logit above the threshold's), probability and logits of one frame."""
        logits = self.logits(image)
        mask = (logits > self._logit_threshold).view(np.uint8)
        probability = np.empty_like(logits)
        np.negative(logits, out=probability)
        np.exp(np.minimum(probability, np.float32(80.0), out=probability), out=probability)
        probability += np.float32(1.0)
        np.reciprocal(probability, out=probability)
        return Segmentation(mask=mask, probability=probability, logits=logits)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The 0/1 uint8 mask of one frame."""
        return self.segment(image).mask


def benchmark(weights: str | Path | None = None, backends: Sequence[str] = BACKENDS,
              frames: int = 64, seed_start: int = 900, threads: int = 2, rounds: int = 5,
              calls: int = 60) -> dict[str, Any]:
    """Per backend: warm-up time, ms per frame and fps, mean Dice on held-out frames.

    Frames come from held-out phantoms (``test_seeds`` from ``seed_start``, away from the
    training script's test set); ``int8`` calibrates on the first quarter of them. The
    timed call is the full pipeline for one frame at a time: validation, resize,
    network, logit upsampling, threshold, probability and the cross-sections
    (:func:`ir_guidance.perception.us_vessels.cross_sections`); ``net_ms`` is the
    network call alone. The backends are timed in interleaved rounds (``rounds`` x
    ``calls`` frames each), so that load from other processes hits them all alike;
    the median over all calls is reported, and the best round's median. A backend that
    fails is reported with its error.
    """
    from ir_guidance.perception import us_data, us_metrics, us_vessels

    images, masks, meta = us_data.make_split(us_data.test_seeds(max(1, frames // 4),
                                                                seed_start), 4)
    results: dict[str, Any] = {'frames': len(images), 'threads': threads,
                               'torch': torch.__version__, 'backends': {}}
    live: dict[str, UsSegmenter] = {}
    for backend in backends:
        entry: dict[str, Any] = {'pipeline': [], 'net': []}
        try:
            start = time.perf_counter()
            seg = UsSegmenter(weights, backend=backend, threads=threads,
                              calibration=list(images[:max(1, len(images) // 4)]))
            for _ in range(3):
                seg(images[0])
            entry['warmup_s'] = time.perf_counter() - start
            entry['dice'] = us_metrics.mean_dice([seg(img) for img in images], masks)
            live[backend] = seg
        except Exception as exc:  # reported in the results, not hidden
            entry['error'] = f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
        results['backends'][backend] = entry
    for _ in range(rounds):
        for backend, seg in live.items():
            entry = results['backends'][backend]
            pipeline, net = [], []
            for i in range(calls):
                img, m = images[i % len(images)], meta[i % len(images)]
                x = seg.prepare(img)
                mid = time.perf_counter()
                seg._run(x)
                net.append(time.perf_counter() - mid)
                start2 = time.perf_counter()
                out = seg.segment(img)
                us_vessels.cross_sections(out.mask, m['width_m'], m['depth_m'],
                                          probability=out.probability)
                pipeline.append(time.perf_counter() - start2)
            entry['pipeline'].append(pipeline)
            entry['net'].append(net)
    for entry in results['backends'].values():
        if 'error' in entry:
            continue
        pipeline, net = entry.pop('pipeline'), entry.pop('net')
        entry['net_ms'] = statistics.median(t for r in net for t in r) * 1e3
        entry['pipeline_ms'] = statistics.median(t for r in pipeline for t in r) * 1e3
        entry['pipeline_ms_best_round'] = min(statistics.median(r) for r in pipeline) * 1e3
        entry['fps'] = 1e3 / entry['pipeline_ms']
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ir_guidance.perception.us_model``: benchmark the inference backends."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument('--weights', default=None)
    parser.add_argument('--backends', nargs='+', default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument('--frames', type=int, default=64)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--rounds', type=int, default=5)
    parser.add_argument('--calls', type=int, default=60)
    parser.add_argument('--json', default=None, help='write the results here too')
    args = parser.parse_args(argv)
    results = benchmark(args.weights, args.backends, args.frames, threads=args.threads,
                        rounds=args.rounds, calls=args.calls)
    for name, entry in results['backends'].items():
        if 'error' in entry:
            print(f'{name:18s} failed: {entry["error"]}')
        else:
            print(f'{name:18s} warm-up {entry["warmup_s"]:6.2f} s  net {entry["net_ms"]:5.2f} ms'
                  f'  pipeline {entry["pipeline_ms"]:5.2f} ms (best round '
                  f'{entry["pipeline_ms_best_round"]:5.2f})  {entry["fps"]:6.1f} fps'
                  f'  dice {entry["dice"]:.4f}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as stream:
            json.dump(results, stream, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
