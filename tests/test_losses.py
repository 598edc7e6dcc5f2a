"""The paired spectral loss: loudness-relative floor (what the log-mel metric sees) and its old
absolute mode, kept for runs that resume."""

from __future__ import annotations

import torch

from trainer.nn.losses import MultiResSTFTLoss


def _note(gain: float, tail: float, n: int = 8000) -> torch.Tensor:
    """A 440 Hz tone at 8 kHz that stops at n/2, plus a decaying noise `tail` (relative) after it."""
    torch.manual_seed(0)
    t = torch.arange(n) / 8000.0
    x = torch.sin(2 * torch.pi * 440.0 * t) * (t < 0.5)
    x = x + tail * torch.randn(n) * (t >= 0.5)
    return (gain * x).unsqueeze(0)


def test_relative_floor_sees_a_quiet_notes_tail_that_the_absolute_floor_misses():
    rel, ab = MultiResSTFTLoss((256, 64)), MultiResSTFTLoss((256, 64), relative_floor_db=None)
    real = _note(0.001, 0.0)
    fake = _note(0.001, 1e-3)            # a tail 60 dB below the tone, on a very quiet note
    assert float(rel(real, real)) == 0.0
    gap_rel = float(rel(fake, real))
    gap_abs = float(ab(fake, real))
    assert gap_rel > 0.5 and gap_abs < 0.25 * gap_rel, (gap_rel, gap_abs)   # measured 1.37 against 0.23


def test_relative_loss_is_the_same_at_any_loudness_and_still_sees_level_errors():
    loss = MultiResSTFTLoss((256, 64))
    a = float(loss(_note(0.5, 1e-3), _note(0.5, 0.0)))
    b = float(loss(_note(0.005, 1e-3), _note(0.005, 0.0)))
    assert abs(a - b) < 1e-3 * a
    assert float(loss(_note(0.5, 0.0), _note(0.25, 0.0))) > 0.3   # 6 dB too loud is an error


def test_per_note_convergence_weighs_a_quiet_note_like_a_loud_one():
    loss = MultiResSTFTLoss((256,), log_weight=0.0)
    real = torch.cat([_note(1.0, 0.0), _note(0.001, 0.0)])
    bad_quiet = torch.cat([_note(1.0, 0.0), _note(0.002, 0.0)])
    bad_loud = torch.cat([_note(2.0, 0.0), _note(0.001, 0.0)])
    assert abs(float(loss(bad_quiet, real)) - float(loss(bad_loud, real))) < 1e-4
