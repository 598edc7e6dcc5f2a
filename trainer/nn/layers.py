"""Reusable layers: conditioning embeddings, phase shuffle, spectral front-ends for discriminators."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.nn.dsp import mel_filterbank


class Conditioning(nn.Module):
    """(pitch int64[B], velocity float32[B]) -> float32[B, dim].

    Pitched sets use smooth Fourier features of the MIDI number, so that neighbouring keys share
    what they learn and held-out (pitch, velocity) pairs interpolate; drum kits add a learned
    table over MIDI keys (one class per key). Velocity enters as v and v^2.
    """

    def __init__(self, dim: int, kind: str = "pitched", n_freqs: int = 8) -> None:
        super().__init__()
        self.kind = kind
        self.register_buffer("freqs", torch.pow(2.0, torch.arange(n_freqs, dtype=torch.float32)) * math.pi / 2,
                             persistent=False)
        feat = 1 + 2 * n_freqs + 2
        self.proj = nn.Linear(feat, dim)
        self.table = nn.Embedding(128, dim) if kind == "drums" else None
        self.dim = dim

    def forward(self, pitch: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        p = (pitch.to(torch.float32) - 64.0) / 64.0                  # about [-0.7, 0.7] over a piano
        ang = p.unsqueeze(-1) * self.freqs
        v = velocity.to(torch.float32).unsqueeze(-1)
        feats = torch.cat([p.unsqueeze(-1), torch.sin(ang), torch.cos(ang), v, v * v], dim=-1)
        c = self.proj(feats)
        if self.table is not None:
            c = c + self.table(pitch.clamp(0, 127))
        return c


class PhaseShuffle(nn.Module):
    """WaveGAN phase shuffle: shift each example by a random integer in [-n, n], reflect-padded.

    Identity in eval mode. Uses the global torch RNG (saved in checkpoints), so resume is exact.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n == 0 or not self.training:
            return x
        B, C, T = x.shape
        shifts = torch.randint(-self.n, self.n + 1, (B,), device=x.device)
        xp = F.pad(x, (self.n, self.n), mode="reflect")
        idx = (torch.arange(T, device=x.device).unsqueeze(0) + self.n - shifts.unsqueeze(1))   # [B, T]
        return torch.gather(xp, 2, idx.unsqueeze(1).expand(B, C, T))


class _SafeAbs(torch.autograd.Function):
    """|z| of a complex tensor whose gradient is 0, not NaN, where z == 0."""

    @staticmethod
    def forward(ctx, z):
        m = z.abs()
        ctx.save_for_backward(z, m)
        return m

    @staticmethod
    def backward(ctx, g):
        z, m = ctx.saved_tensors
        return g * z / m.clamp_min(1e-30)     # z/|z|, and 0/tiny = 0 in a silent bin


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """|STFT| of float32[B, N] -> float32[B, n_fft//2+1, T] with a finite gradient everywhere.

    torch's complex `abs()` backward is NaN in a bin that is exactly zero: a generated note that
    ends in digital silence turned 7% of training steps non-finite. `sqrt(re^2 + im^2 + eps)` avoids
    it but made a drum-kit training step 25% slower; this costs what `abs()` costs.
    """
    return _SafeAbs.apply(torch.stft(x, n_fft, hop, window=window, center=True, return_complex=True))


class LogMel(nn.Module):
    """float32[B, N] audio -> float32[B, n_mels, T] natural-log mel magnitudes (training side only)."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("fb", mel_filterbank(sample_rate, n_fft, n_mels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = stft_magnitude(x.float(), self.n_fft, self.hop, self.window)
        return torch.log(torch.matmul(self.fb, S) + 1e-5)


def run_body(body: nn.Sequential, x: torch.Tensor, feats: list[torch.Tensor] | None) -> torch.Tensor:
    """`body(x)`, appending each activation's output to `feats` (D's intermediate features, for
    feature matching) when it is a list."""
    for layer in body:
        x = layer(x)
        if feats is not None and isinstance(layer, nn.LeakyReLU):
            feats.append(x)
    return x


class ProjectionHead(nn.Module):
    """Features h[B, C] -> (logit[B] with a projection-discriminator condition term, aux logits[B, n_cls])."""

    def __init__(self, channels: int, kind: str, n_classes: int = 128) -> None:
        super().__init__()
        self.cond = Conditioning(channels, kind)
        self.out = nn.Linear(channels, 1)
        self.aux = nn.Linear(channels, n_classes)

    def forward(self, h: torch.Tensor, pitch: torch.Tensor, velocity: torch.Tensor):
        logit = self.out(h).squeeze(-1) + (self.cond(pitch, velocity) * h).sum(-1) / math.sqrt(h.shape[-1])
        return logit, self.aux(h)
