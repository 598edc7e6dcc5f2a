"""GANSynth-style spectral GAN: log-magnitude + instantaneous-frequency spectrograms, iSTFT in-graph.

Generator: dense layer -> [C, T0, F0] -> U blocks of (nearest x2 upsample, 3x3 conv, LeakyReLU)
-> 2 channels (log-magnitude, IF in [-1, 1]) on linear STFT bins, or on `n_mels` mel-spaced bins
mapped to linear bins by a fixed interpolation matrix (the mel option). Phase is pi * cumsum(IF)
over time, or with `if_from_bin` the cumulative sum of each bin's centre advance (2 pi k hop / n_fft)
plus pi * IF, so that IF is the deviation from the bin's centre and a zero IF is already a coherent
sinusoid per bin (GANSynth's raw IF must learn that pattern from scratch). With `harmonic_prior`
(pitched sets) the key's f0 is also given where it acts: a bin near a harmonic takes that harmonic's
advance, the IF residual is small (IF_RESIDUAL), the log-magnitude dips between harmonics by a
learned depth and under f0 / 2 by SUB_F0_CUT, and every conv block sees a comb channel,
cos(2 pi f / f0) on its frequency axis. With `noise_phase` as well, bins near no harmonic advance by
a fixed random phase each frame, so what G puts between and under the partials sounds as noise
(a hammer's thump, a bow's hiss), not as steady tones at bin centres that a pitch tracker locks on.
The waveform comes from `InverseSTFT` (fixed real basis + overlap-add), so the exported graph
outputs audio. Discriminator: 2-D convs over the real (log-mag, IF) of the input's STFT, with a
projection head and an auxiliary pitch/class classifier.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.nn.dsp import InverseSTFT, mel_to_linear_matrix
from trainer.nn.layers import Conditioning, ProjectionHead, run_body

IF_RESIDUAL = 0.1   # with harmonic_prior: the IF residual's range, in units of pi per frame
HARMONIC_LOBE = 1.5  # with harmonic_prior: bins this close to a harmonic (in bins) take its advance
SUB_F0_CUT = -8.0   # with harmonic_prior: log-magnitude (nepers, about -70 dB) added under f0 / 2
NOISE_SEED = 20261207  # with noise_phase: the fixed random advances of the bins near no harmonic


class SpectralGenerator(nn.Module):
    """forward(z: float32[B, Z], pitch: int64[B], velocity: float32[B]) -> float32[B, N] in [-1, 1]."""

    def __init__(self, sample_rate: int, note_samples: int, latent_size: int = 64, kind: str = "pitched",
                 n_fft: int = 1024, hop: int = 256, n_mels: int | None = 256, channels: int = 32,
                 blocks: int = 5, cond_dim: int = 64, if_from_bin: bool = False, harmonic_prior: bool = False,
                 noise_phase: bool = False, **_unused) -> None:
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
        self.harmonic_prior = bool(harmonic_prior)
        if self.harmonic_prior and kind != "pitched":
            from synth.errors import UserError
            raise UserError(f"config model.spectral.harmonic_prior: needs a pitched dataset (the key's f0), "
                            f"not a {kind!r} one")
        if noise_phase and not self.harmonic_prior:
            from synth.errors import UserError
            raise UserError("config model.spectral.noise_phase: needs harmonic_prior (it tells which bins are near "
                            "no harmonic)")
        extra = 1 if self.harmonic_prior else 0
        self.blocks = nn.ModuleList(nn.Conv2d(chans[i] + extra, chans[i + 1], 3, padding=1) for i in range(blocks))
        self.out = nn.Conv2d(chans[-1] + extra, 2, 3, padding=1)
        with torch.no_grad():
            self.out.bias[0] = math.log(1e-3)
            if self.harmonic_prior:          # start from the prior: coherent partials, no frame-rate buzz
                self.out.weight[1].zero_()
                self.out.bias[1] = 0.0
        self.istft = InverseSTFT(n_fft, hop, self.T)
        advance = torch.arange(self.F, dtype=torch.float32) * (2 * hop / n_fft) if if_from_bin else None
        self.register_buffer("bin_advance", advance, persistent=False)   # per frame, in units of pi
        if n_mels:
            self.register_buffer("mel2lin", mel_to_linear_matrix(sample_rate, n_fft, n_mels).t().contiguous(),
                                 persistent=False)
        else:
            self.mel2lin = None
        if self.harmonic_prior:
            lin_hz = np.arange(self.F) * (sample_rate / n_fft)
            self.register_buffer("bin_hz", torch.tensor(lin_hz, dtype=torch.float32), persistent=False)
            col_hz = mel_bin_hz(sample_rate, n_mels) if n_mels else lin_hz
            # Log-magnitude dips between the key's resolved harmonics by a learned depth (nepers).
            self.comb_depth = nn.Parameter(torch.tensor(2.0))
            noise = None
            if noise_phase:    # uniform in [-1, 1) units of pi per frame: a random walk of phase, i.e. noise
                rng = np.random.default_rng(NOISE_SEED)
                noise = torch.tensor(rng.uniform(-1.0, 1.0, (self.T, self.F)), dtype=torch.float32)
            self.register_buffer("noise_advance", noise, persistent=False)
            for i, (hz, bw) in enumerate(_column_grid(col_hz, self.F0, blocks)):
                self.register_buffer(f"comb_hz{i}", torch.tensor(hz, dtype=torch.float32), persistent=False)
                self.register_buffer(f"comb_bw{i}", torch.tensor(bw, dtype=torch.float32), persistent=False)

    def _f0(self, pitch):
        return 440.0 * torch.pow(2.0, (pitch.to(torch.float32) - 69.0) / 12.0).unsqueeze(-1)   # [B, 1]

    def _with_comb(self, x, f0, i):
        """x float32[B, C, T, W] with the comb channel of block `i` (cos(2 pi f / f0), faded out where a
        column is wider than half a harmonic spacing) appended."""
        hz, bw = getattr(self, f"comb_hz{i}"), getattr(self, f"comb_bw{i}")
        w = torch.clamp(f0 / (2.0 * bw) - 1.0, 0.0, 1.0)
        comb = (torch.cos(2 * math.pi * hz / f0) * w)[:, None, None, :x.shape[-1]]
        return torch.cat([x, comb.expand(-1, 1, x.shape[2], -1)], dim=1)

    def harmonic_comb(self, pitch):
        """float32[B, 1, F] in [-2, 0]: (cos(2 pi f / f0) - 1) on linear bins where harmonics are resolved,
        and -2 below f0 / 2, where no harmonic is."""
        f0 = self._f0(pitch)
        w = torch.clamp(f0 / (2.0 * self.bin_hz[1]) - 1.0, 0.0, 1.0)
        comb = torch.where(self.bin_hz < 0.5 * f0, torch.full_like(self.bin_hz / f0, -2.0),
                           torch.cos(2 * math.pi * self.bin_hz / f0) - 1.0)
        return (comb * w).unsqueeze(1)

    def below_f0(self, pitch):
        """float32[B, 1, F]: 1 on linear bins under half the key's f0, where a pitched note has no partial."""
        return (self.bin_hz < 0.5 * self._f0(pitch)).to(torch.float32).unsqueeze(1)

    def harmonic_advance(self, pitch):
        """float32[B, 1, F]: each linear bin's per-frame phase advance (units of pi, wrapped to [-1, 1)):
        at the key's nearest harmonic where that lies within HARMONIC_LOBE bins, else at the bin's centre.
        A frame's advance only tells frequencies apart modulo sr / hop, so a bin farther from the
        harmonic would sound an alias near its own centre, not the harmonic. With `noise_phase` those
        other bins take the fixed random advances instead: float32[B, T, F]."""
        f0 = self._f0(pitch)
        h = torch.clamp(torch.round(self.bin_hz / f0), min=1.0)
        near = torch.abs(h * f0 - self.bin_hz) <= HARMONIC_LOBE * self.bin_hz[1]
        hz = torch.where(near, h * f0, self.bin_hz.expand_as(near))
        adv = (torch.remainder(hz * (2.0 * self.hop / self.sample_rate) + 1.0, 2.0) - 1.0).unsqueeze(1)
        if self.noise_advance is None:
            return adv
        return torch.where(near.unsqueeze(1), adv, self.noise_advance)

    def spectrogram(self, z, pitch, velocity):
        """(log-magnitude, IF) float32[B, T, F] on linear STFT bins."""
        x = self.fc(torch.cat([z, self.cond(pitch, velocity)], dim=-1))
        x = F.leaky_relu(x.reshape(z.shape[0], self.C0, self.T0, self.F0), 0.2)
        f0 = self._f0(pitch) if self.harmonic_prior else None
        for i, conv in enumerate(self.blocks):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = F.leaky_relu(conv(self._with_comb(x, f0, i) if f0 is not None else x), 0.2)
        x = self.out(self._with_comb(x, f0, self.U) if f0 is not None else x)[:, :, :self.T, :self.Fg]
        logmag, ifreq = x[:, 0], torch.tanh(x[:, 1])
        if self.mel2lin is not None:
            logmag = torch.matmul(logmag, self.mel2lin)
            ifreq = torch.matmul(ifreq, self.mel2lin)
        if self.harmonic_prior:        # a small residual on the harmonic's advance; a large one buzzes
            logmag = logmag + self.comb_depth * self.harmonic_comb(pitch) + SUB_F0_CUT * self.below_f0(pitch)
            ifreq = IF_RESIDUAL * ifreq
        return logmag, ifreq

    def forward(self, z, pitch, velocity):
        logmag, ifreq = self.spectrogram(z, pitch, velocity)
        mag = torch.exp(torch.clamp(logmag, max=3.0))
        if self.harmonic_prior:
            ifreq = ifreq + self.harmonic_advance(pitch)
        elif self.bin_advance is not None:
            ifreq = ifreq + torch.remainder(self.bin_advance + 1.0, 2.0) - 1.0
        phase = math.pi * torch.cumsum(ifreq, dim=1)
        y = self.istft(mag * torch.cos(phase), mag * torch.sin(phase))
        return torch.clamp(y[:, :self.note_samples], -1.0, 1.0)


def mel_bin_hz(sample_rate: int, n_mels: int, fmin: float = 30.0) -> np.ndarray:
    """float64[n_mels]: the centre frequency of each mel-spaced generator bin (`mel_to_linear_matrix`'s grid)."""
    top = 2595.0 * np.log10(1.0 + sample_rate / 2.0 / 700.0)
    return 700.0 * (10.0 ** (np.linspace(2595.0 * np.log10(1.0 + fmin / 700.0), top, n_mels) / 2595.0) - 1.0)


def _column_grid(col_hz: np.ndarray, F0: int, blocks: int):
    """Per block input (the `blocks` convs, then the output conv): each column's centre frequency and
    width in Hz. Nearest x2 upsampling makes column j of width W cover final columns [j*s, (j+1)*s)."""
    n = len(col_hz)
    edges = np.concatenate([[col_hz[0]], (col_hz[1:] + col_hz[:-1]) / 2, [col_hz[-1]]])
    for i in range(blocks + 1):
        W = F0 * 2 ** min(i + 1, blocks)
        s = F0 * 2 ** blocks // W
        lo = np.minimum(np.arange(W) * s, n - 1)
        hi = np.minimum((np.arange(W) + 1) * s, n)
        hz = np.array([col_hz[a:max(b, a + 1)].mean() for a, b in zip(lo, hi, strict=True)])
        bw = np.maximum(edges[hi] - edges[lo], 1.0)
        yield hz, bw


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
