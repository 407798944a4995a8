"""The puncture detector and the sample-by-sample Butterworth filter on synthetic signals:
the peak-rise-drop signature is found, friction growth, tissue changes and stops are not."""

import math

import numpy as np
import pytest
from scipy import signal

from ir_guidance.force import ButterworthLowpass, PunctureDetector, PunctureParams

DT = 1e-3


def membrane_profile(speed=0.005, k1=150.0, k2=3.5e5, puncture_n=0.5, base_n=0.3,
                     after_n=0.35, hold_s=0.3, seed=0, noise=0.006):
    """Friction base, a membrane tented at ``speed`` until it gives, then the lower level."""
    d_max = (-k1 + math.sqrt(k1 * k1 + 4 * k2 * puncture_n)) / (2 * k2)
    ramp = np.arange(0.0, d_max, speed * DT)
    force = np.concatenate([np.full(200, base_n), base_n + k1 * ramp + k2 * ramp ** 2,
                            np.full(round(hold_s / DT), after_n)])
    pop = 200 + len(ramp)       # first sample after the drop
    rng = np.random.default_rng(seed)
    return force + rng.normal(0.0, noise, force.size), pop


SOS = signal.butter(2, 40.0, fs=1000.0, output='sos')


def filtered(force):
    """The monitor's 40 Hz low-pass, started at rest on the first value."""
    return signal.sosfilt(SOS, force, zi=signal.sosfilt_zi(SOS) * force[0])[0]


def detect(force, speed=None, params=None):
    detector = PunctureDetector(params)
    found = []
    for k, value in enumerate(force):
        event = detector.update(k * DT, float(value), None if speed is None else speed[k])
        if event is not None:
            found.append((k, event))
    return found


@pytest.mark.parametrize('speed', [0.002, 0.005, 0.01])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_a_vein_wall_puncture_is_found_soon_after_the_drop(speed, seed):
    raw, pop = membrane_profile(speed=speed, seed=seed)
    found = detect(filtered(raw))
    assert len(found) == 1, found
    k, event = found[0]
    # The filter delays by ~6 ms; the drop threshold is reached a few ms after that.
    assert 0 <= k - pop <= 12
    assert 0.72 < event.peak_n < 0.82   # the filter's lag flattens a fast peak
    assert event.drop_n >= 0.15
    assert abs(event.peak_stamp_s - (pop - 1) * DT) < 0.006


def test_the_skin_puncture_is_found():
    raw, pop = membrane_profile(k1=200.0, k2=1.6e5, puncture_n=1.5, base_n=0.0, after_n=0.4)
    found = detect(filtered(raw))
    assert [k - pop for k, _ in found] == [found[0][0] - pop] and 0 <= found[0][0] - pop <= 8
    assert found[0][1].peak_n == pytest.approx(1.5, abs=0.05)


def test_friction_growth_and_a_tissue_change_are_not_punctures():
    # Friction growing 0.15 N/s (5 mm/s in skin) for 1.5 s, then the tip leaves the skin:
    # cutting falls from 0.30 to 0.05 N at once. A drop without a membrane's rise.
    t = np.arange(0.0, 2.0, DT)
    force = 0.4 + 0.15 * t - 0.25 * (t > 1.5)
    force += np.random.default_rng(4).normal(0.0, 0.006, t.size)
    assert detect(filtered(force)) == []


def test_a_stop_after_a_start_is_not_a_puncture_when_the_speed_is_known():
    # Start cutting (the force steps up to cutting + friction), stop 80 ms later: the
    # cutting force vanishes. Rise and drop look like a puncture; the speed says "stopped".
    t = np.arange(0.0, 0.6, DT)
    moving = (t > 0.2) & (t < 0.28)
    force = 0.4 + 0.35 * moving + np.random.default_rng(5).normal(0.0, 0.006, t.size)
    speed = np.where(moving, 0.005, 0.0)
    # The speed drops when the stage stops, a little before the cutting force does.
    assert detect(filtered(force), speed=np.roll(speed, -3)) == []
    # Without the speed the detector cannot tell: it is a puncture signature.
    assert len(detect(filtered(force))) == 1


def test_refractory_period_and_reset():
    raw, pop = membrane_profile(hold_s=0.05)
    second, _ = membrane_profile(hold_s=0.3, base_n=0.35, after_n=0.35, seed=3)
    trace = np.concatenate([raw, second])
    assert len(detect(filtered(trace))) == 2            # 0.45 s apart: both
    slow = PunctureParams(refractory_s=1.0)
    assert len(detect(filtered(trace), params=slow)) == 1
    detector = PunctureDetector()
    for k, value in enumerate(filtered(raw)[:pop]):
        detector.update(k * DT, float(value))
    detector.reset()                                     # the peak is forgotten
    assert all(detector.update((pop + k) * DT, 0.3) is None for k in range(50))


@pytest.mark.parametrize('bad', [{'min_peak_n': -1.0}, {'drop_window_s': 0.0},
                                 {'drop_ratio': 1.5}, {'rise_window_s': math.nan}])
def test_bad_parameters_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        PunctureParams(**bad)


def test_unknown_parameter_is_refused():
    with pytest.raises(ValueError, match='unknown puncture parameters'):
        PunctureParams.from_dict({'min_peak': 0.3})


# -- the filter ------------------------------------------------------------------------
@pytest.mark.parametrize('order', [1, 2, 4])
def test_filter_matches_scipy_sosfilt(order):
    rng = np.random.default_rng(order)
    x = rng.normal(size=(500, 6)).cumsum(axis=0)
    lowpass = ButterworthLowpass(40.0, 1000.0, order=order)
    ours = np.array([lowpass.step(row.tolist()) for row in x])
    np.testing.assert_allclose(ours, signal.sosfilt(lowpass.sos, x, axis=0), atol=1e-12)


def test_filter_delay_and_reset():
    lowpass = ButterworthLowpass(40.0, 1000.0, order=2)
    # A second-order Butterworth delays low frequencies by sqrt(2) / (2 pi fc).
    assert lowpass.delay_s == pytest.approx(math.sqrt(2) / (2 * math.pi * 40.0), rel=0.02)
    # A ramp comes out delayed by that much.
    lowpass.reset(0.0)
    out = [lowpass.step([0.001 * k] * 6)[0] for k in range(400)]
    assert (0.001 * 399 - out[-1]) / 0.001 * 1e-3 == pytest.approx(lowpass.delay_s, rel=0.02)
    lowpass.reset(np.arange(6.0))
    np.testing.assert_allclose(lowpass.step(list(np.arange(6.0))), np.arange(6.0), atol=1e-12)
    with pytest.raises(ValueError, match='cutoff_hz'):
        ButterworthLowpass(600.0, 1000.0)
    with pytest.raises(ValueError, match='finite'):
        lowpass.reset(math.nan)
