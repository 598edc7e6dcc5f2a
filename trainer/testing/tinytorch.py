"""A tiny torch generator with the `trainer.fit.load_generator` interface, for export/eval tests.

`TinyTorchGenerator(sample_rate, note_samples, latent_size)`: `forward(z float32[B, Z], pitch int64[B],
velocity float32[B]) -> audio float32[B, N]` in [-1, 1]. It plays the MIDI pitch's frequency with a
2nd harmonic mixed in by `sigmoid(z · w_bright)` (brightness) and an exponential decay whose time
constant is scaled by `2 ** tanh(z · w_decay)` (decay), so tests know which latent directions do what.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class TinyTorchGenerator(nn.Module):
    def __init__(self, sample_rate: int = 16000, note_samples: int = 8000, latent_size: int = 8, seed: int = 0):
        super().__init__()
        self.sample_rate, self.note_samples, self.latent_size = sample_rate, note_samples, latent_size
        g = torch.Generator().manual_seed(seed)
        w = torch.linalg.qr(torch.randn(latent_size, 2, generator=g))[0].T   # two orthonormal directions
        self.bright = nn.Linear(latent_size, 1)
        self.decay = nn.Linear(latent_size, 1)
        with torch.no_grad():
            self.bright.weight.copy_(2.0 * w[0:1])
            self.bright.bias.zero_()
            self.decay.weight.copy_(1.5 * w[1:2])
            self.decay.bias.zero_()
        t = torch.arange(note_samples, dtype=torch.float32) / sample_rate
        self.register_buffer("t", t)
        fade = torch.clamp((note_samples - 1 - torch.arange(note_samples)) / (0.01 * sample_rate), max=1.0)
        self.register_buffer("fade", fade * torch.clamp(t / 0.003, max=1.0))

    def forward(self, z: torch.Tensor, pitch: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        f = 440.0 * torch.pow(2.0, (pitch.float() - 69.0) / 12.0)
        cycles = f[:, None] * self.t[None, :]
        # Phase from the fractional cycle count keeps sin's argument small (identical in torch and ORT).
        ph = 2 * math.pi * (cycles - torch.floor(cycles))
        ph2 = 2 * math.pi * (2 * cycles - torch.floor(2 * cycles))
        mix = torch.sigmoid(self.bright(z))
        tau = 0.08 * torch.pow(2.0, 2.0 * torch.tanh(self.decay(z)))
        env = torch.exp(-self.t[None, :] / tau) * self.fade
        tone = (1 - mix) * torch.sin(ph) + mix * torch.sin(ph2)
        return torch.tanh(0.9 * tone * env * velocity[:, None])
