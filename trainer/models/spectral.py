"""GANSynth-style spectral GAN: log-magnitude + instantaneous-frequency spectrograms, iSTFT in-graph.

Generator: dense layer -> [C, T0, F0] -> U blocks of (nearest x2 upsample, 3x3 conv, LeakyReLU)
-> 2 channels (log-magnitude, IF in [-1, 1]) on linear STFT bins, or on `n_mels` mel-spaced bins
mapped to linear bins by a fixed interpolation matrix (the mel option). Phase is pi * cumsum(IF)
over time, or with `if_from_bin` the cumulative sum of each bin's centre advance (2 pi k hop / n_fft)
plus pi * IF, so that IF is the deviation from the bin's centre and a zero IF is already a coherent
sinusoid per bin (GANSynth's raw IF must learn that pattern from scratch); the waveform comes from `InverseSTFT` (fixed real basis + overlap-add), so the exported
graph outputs audio. Discriminator: 2-D convs over the real (log-mag, IF) of the input's STFT, with
a projection head and an auxiliary pitch/class classifier.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.nn.dsp import InverseSTFT, mel_to_linear_matrix
from trainer.nn.layers import Conditioning, ProjectionHead, run_body


class SpectralGenerator(nn.Module):
    """forward(z: float32[B, Z], pitch: int64[B], velocity: float32[B]) -> float32[B, N] in [-1, 1]."""

    def __init__(self, sample_rate: int, note_samples: int, latent_size: int = 64, kind: str = "pitched",
                 n_fft: int = 1024, hop: int = 256, n_mels: int | None = 256, channels: int = 32,
                 blocks: int = 5, cond_dim: int = 64, if_from_bin: bool = False, **_unused) -> None:
        super().__init__()
        self.sample_rate, self.note_samples, self.latent_size = int(sample_rate), int(note_samples), int(latent_size)
        self.hop = hop
        self.T = -(-self.note_samples // hop)
        self.F = n_fft // 2 + 1
        self.Fg = int(n_mels) if n_mels else self.F
        self.U = blocks
        self.T0, self.F0 = -(-self.T // 2 ** blocks), -(-self.Fg // 2 ** blocks)
        self.C0 = channels * 4
        self.cond = Conditioning(cond_dim, kind)
        self.fc = nn.Linear(latent_size + cond_dim, self.C0 * self.T0 * self.F0)
        chans = [self.C0] + [max(channels // 2, self.C0 // 2 ** (i + 1)) for i in range(blocks)]
        self.blocks = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, padding=1) for i in range(blocks))
        self.out = nn.Conv2d(chans[-1], 2, 3, padding=1)
        with torch.no_grad():
            self.out.bias[0] = math.log(1e-3)
        self.istft = InverseSTFT(n_fft, hop, self.T)
        advance = torch.arange(self.F, dtype=torch.float32) * (2 * hop / n_fft) if if_from_bin else None
        self.register_buffer("bin_advance", advance, persistent=False)   # per frame, in units of pi
        if n_mels:
            self.register_buffer("mel2lin", mel_to_linear_matrix(sample_rate, n_fft, n_mels).t().contiguous(),
                                 persistent=False)
        else:
            self.mel2lin = None

    def spectrogram(self, z, pitch, velocity):
        """(log-magnitude, IF) float32[B, T, F] on linear STFT bins."""
        x = self.fc(torch.cat([z, self.cond(pitch, velocity)], dim=-1))
        x = F.leaky_relu(x.reshape(z.shape[0], self.C0, self.T0, self.F0), 0.2)
        for conv in self.blocks:
            x = F.leaky_relu(conv(F.interpolate(x, scale_factor=2.0, mode="nearest")), 0.2)
        x = self.out(x)[:, :, :self.T, :self.Fg]
        logmag, ifreq = x[:, 0], torch.tanh(x[:, 1])
        if self.mel2lin is not None:
            logmag = torch.matmul(logmag, self.mel2lin)
            ifreq = torch.matmul(ifreq, self.mel2lin)
        return logmag, ifreq

    def forward(self, z, pitch, velocity):
        logmag, ifreq = self.spectrogram(z, pitch, velocity)
        mag = torch.exp(torch.clamp(logmag, max=3.0))
        if self.bin_advance is not None:
            ifreq = ifreq + torch.remainder(self.bin_advance + 1.0, 2.0) - 1.0
        phase = math.pi * torch.cumsum(ifreq, dim=1)
        y = self.istft(mag * torch.cos(phase), mag * torch.sin(phase))
        return torch.clamp(y[:, :self.note_samples], -1.0, 1.0)


def logmag_if(x: torch.Tensor, n_fft: int, hop: int, window: torch.Tensor) -> torch.Tensor:
    """float32[B, N] -> float32[B, 2, T, F]: log-magnitude and instantaneous frequency / pi."""
    S = torch.stft(x.float(), n_fft, hop, window=window, center=True, return_complex=True).transpose(1, 2)
    logmag = torch.log(S.abs() + 1e-5)
    ph = torch.angle(S)
    d = torch.diff(ph, dim=1, prepend=torch.zeros_like(ph[:, :1]))
    d = torch.remainder(d + math.pi, 2 * math.pi) - math.pi
    return torch.stack([logmag, d / math.pi], dim=1)


class SpectralDiscriminator(nn.Module):
    """forward(x: float32[B, N], pitch, velocity) -> (logit float32[B], aux float32[B, n_classes]);
    with `features=True` also the list of every conv layer's activations (for feature matching)."""

    def __init__(self, kind: str = "pitched", n_fft: int = 1024, hop: int = 256, channels: int = 32,
                 blocks: int = 5, n_classes: int = 128, **_unused) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        mods: list[nn.Module] = [nn.Conv2d(2, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for _ in range(blocks):
            mods += [nn.Conv2d(c, min(2 * c, 256), 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = min(2 * c, 256)
        self.body = nn.Sequential(*mods)
        self.head = ProjectionHead(c, kind, n_classes)

    def inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the trainable layers see: [float32[B, 2, T, F] log-magnitude and IF]."""
        return [logmag_if(x, self.n_fft, self.hop, self.window)]

    def forward(self, x, pitch, velocity, features: bool = False):
        return self.judge(self.inputs(x), pitch, velocity, features)

    def judge(self, reps: list[torch.Tensor], pitch, velocity, features: bool = False):
        """`forward` from `inputs(x)` (R1 takes its gradient with respect to these)."""
        feats: list[torch.Tensor] | None = [] if features else None
        f = run_body(self.body, reps[0], feats)
        logit, aux = self.head(f.mean(dim=(2, 3)), pitch, velocity)
        return (logit, aux, feats) if features else (logit, aux)
