"""The discriminator's augmentation (`trainer.nn.augment`): it never changes pitch content, the same
draw can be shared by a real note and its fake, draws follow the global RNG (resume is exact), and
gradients pass through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synth.errors import UserError
from trainer.nn.augment import DiffAugment

SR = 8000
N = 4096
STRONG = {"shift_ms": 40.0, "gain_db": 6.0, "time_mask": 0.3, "freq_mask": 0.3}


def _tones(hz, n: int = N) -> torch.Tensor:
    """float32[len(hz), n]: decaying sines, one per frequency."""
    t = torch.arange(n) / SR
    return torch.stack([0.5 * torch.sin(2 * torch.pi * f * t) * torch.exp(-2.0 * t) for f in hz])


def _dominant_hz(x: torch.Tensor) -> np.ndarray:
    spec = torch.fft.rfft(x * torch.hann_window(x.shape[-1]), dim=-1).abs()
    return spec.argmax(-1).numpy() * SR / x.shape[-1]


@pytest.mark.parametrize("op", ["shift_ms", "gain_db", "time_mask"])
def test_shift_gain_and_time_mask_keep_the_dominant_frequency(op):
    torch.manual_seed(0)
    hz = [110.0, 261.6, 440.0, 1000.0, 2500.0] * 8
    x = _tones(hz)
    aug = DiffAugment(SR, **{op: STRONG[op]})
    y = aug(x)
    assert not torch.equal(y, x)
    bin_hz = SR / N
    assert np.all(np.abs(_dominant_hz(y) - _dominant_hz(x)) <= bin_hz), op


def test_all_ops_together_leave_the_strongest_frequency_on_one_of_the_notes_partials():
    """With every op at full strength, each output's strongest frequency is still one of its note's
    partials (a frequency mask may remove the fundamental, never put a partial elsewhere)."""
    torch.manual_seed(1)
    f0 = torch.tensor([110.0, 155.6, 220.0, 311.1] * 16)
    t = torch.arange(N) / SR
    x = sum(torch.sin(2 * torch.pi * k * f0[:, None] * t) / k for k in range(1, 6)) * torch.exp(-2.0 * t)
    y = DiffAugment(SR, **STRONG)(x)
    k = _dominant_hz(y) / f0.numpy()
    assert np.all(np.abs(k - np.round(k)) * f0.numpy() <= SR / N), k


def test_frequency_mask_removes_one_band_and_nothing_else():
    torch.manual_seed(2)
    partials = [200.0, 1000.0, 3500.0]       # 717 and 1019 mel apart: a band (<= 30% = 644 mel) takes one
    x = _tones(partials).sum(0, keepdim=True).repeat(64, 1)
    y = DiffAugment(SR, freq_mask=0.3)(x)
    X, Y = torch.fft.rfft(x, dim=-1).abs(), torch.fft.rfft(y, dim=-1).abs()
    bins = [round(f * N / SR) for f in partials]
    ratio = Y[:, bins] / X[:, bins]
    assert torch.all(ratio <= 1.0 + 1e-4)
    assert torch.all(Y <= X * (1.0 + 1e-4) + 1e-4)          # a gain in [0, 1] per bin: nothing added
    removed = (ratio < 0.5).sum(-1)
    assert (removed <= 1).all() and (removed == 1).any() and (removed == 0).any()


def test_paired_draws_treat_a_real_note_and_its_fake_alike():
    torch.manual_seed(3)
    real = _tones([196.0, 392.0, 523.3, 880.0])
    aug = DiffAugment(SR, **STRONG)
    y = aug(torch.cat([real, real]), pairs=4)
    assert torch.allclose(y[:4], y[4:], atol=1e-6)
    y = aug(torch.cat([real, real]))                       # DiffAugment's default: independent draws
    assert not torch.allclose(y[:4], y[4:], atol=1e-3)
    with pytest.raises(ValueError):
        aug(real[:3], pairs=2)


def test_draws_follow_the_global_rng_and_gradients_pass_through():
    aug = DiffAugment(SR, **STRONG)
    x = _tones([300.0, 600.0]).requires_grad_(True)
    torch.manual_seed(4)
    a = aug(x)
    torch.manual_seed(4)
    b = aug(x)
    assert torch.equal(a, b)
    (a.pow(2).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_off_is_the_identity_and_bad_strengths_are_refused():
    x = _tones([440.0])
    off = DiffAugment.from_config(SR, {"shift_ms": 0.0, "gain_db": 0.0, "time_mask": 0.0, "freq_mask": 0.0,
                                       "paired": False})
    state = torch.get_rng_state()
    assert not off.active and off(x) is x
    assert torch.equal(state, torch.get_rng_state())        # no draw: an off augmentation keeps old runs' RNG
    with pytest.raises(UserError, match="time_mask"):
        DiffAugment.from_config(SR, {"time_mask": 1.5})
    with pytest.raises(UserError, match="gain_db"):
        DiffAugment.from_config(SR, {"gain_db": -1})
