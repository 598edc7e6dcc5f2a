"""pYIN f0 estimator and file-name parsing."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.pitch import estimate_f0, hz_to_midi, midi_to_hz
from trainer.data.samples import parse_name


def harmonic(f0: float, sr: int, seconds: float = 1.0, partials=(1, 2, 3, 4, 5), decay: float = 2.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    x = sum(np.sin(2 * np.pi * f0 * k * t + k) / k for k in partials) * np.exp(-decay * t)
    return (0.3 * x * np.minimum(1, t / 0.005)).astype(np.float32)


# The documented range: 25 Hz .. sr/5 (at least five samples per period).
CASES = [(sr, key) for sr in (16000, 24000, 48000) for key in (24, 33, 45, 57, 69, 81, 93, 100, 108)
         if midi_to_hz(key + 0.23) <= sr / 5]


@pytest.mark.parametrize("sr, key", CASES)
def test_estimate_f0_within_a_few_cents(sr, key):
    f0 = midi_to_hz(key + 0.23)  # off the semitone grid, so rounding cannot hide an error
    if f0 * 5 > sr / 2:
        x = harmonic(f0, sr, partials=(1,))
    else:
        x = harmonic(f0, sr)
    est, conf = estimate_f0(x, sr)
    assert abs(hz_to_midi(est) - (key + 0.23)) * 100 < 15
    assert conf > 0.8


def test_missing_fundamental_and_strong_octave():
    sr = 24000
    est, conf = estimate_f0(harmonic(110.0, sr, partials=(2, 3, 4, 5)), sr)  # no energy at 110 Hz
    assert abs(hz_to_midi(est) - hz_to_midi(110.0)) < 0.1 and conf > 0.8
    est, _ = estimate_f0(harmonic(220.0, sr, partials=(1, 2, 2, 2, 2, 4)), sr)  # a loud 2nd partial
    assert abs(hz_to_midi(est) - hz_to_midi(220.0)) < 0.1


def test_noise_and_silence_are_unsure():
    sr = 24000
    noise = np.random.default_rng(0).standard_normal(sr).astype(np.float32) * 0.1
    f0, conf = estimate_f0(noise, sr)
    assert conf < 0.3
    f0, conf = estimate_f0(np.zeros(sr, np.float32), sr)
    assert np.isnan(f0) and conf == 0.0
    f0, conf = estimate_f0(np.zeros(10, np.float32), sr)  # shorter than one frame
    assert np.isnan(f0) and conf == 0.0


@pytest.mark.parametrize("stem, want", [
    ("keyboard_acoustic_004-060-100", (60, 100)),
    ("piano_C4", (60, None)),
    ("A#2", (46, None)),
    ("Bb3", (58, None)),
    ("Cs4_v90", (61, 90)),
    ("Piano.ff.C4", (60, 112)),
    ("60", (60, None)),
    ("GuitarE2", (40, None)),
    ("C-1", (0, None)),
    ("kick", (None, None)),
    ("take_01_02", (None, None)),
    ("Rhodes mf 72", (72, 80)),
])
def test_parse_name(stem, want):
    assert parse_name(stem)[:2] == want
