"""WaveGAN (Donahue et al., 2018) with pitch/velocity/class conditioning.

Generator: dense layer -> [16d, L0] -> L layers of (nearest x4 upsample, 25-tap conv, ReLU) with
channels halving down to d, a last 25-tap conv to 1 channel and tanh; output cropped to N
(L0 * 4^L >= N; 16 x 4^5 = 16384 in the paper, more layers or a longer L0 for longer notes).
Discriminator: stride-4 25-tap convs with LeakyReLU(0.2) and phase shuffle (n=2), then a projection
head with an auxiliary pitch/class classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.nn.layers import Conditioning, PhaseShuffle, ProjectionHead, run_body


class WaveGANGenerator(nn.Module):
    """forward(z: float32[B, Z], pitch: int64[B], velocity: float32[B]) -> float32[B, N] in [-1, 1]."""

    def __init__(self, sample_rate: int, note_samples: int, latent_size: int = 100, kind: str = "pitched",
                 model_size: int = 16, cond_dim: int = 64, layers: int | None = None, **_unused) -> None:
        super().__init__()
        self.sample_rate, self.note_samples, self.latent_size = int(sample_rate), int(note_samples), int(latent_size)
        L = int(layers or 5)
        while 16 * 4 ** L < self.note_samples and layers is None:
            L += 1
        self.L0 = -(-self.note_samples // 4 ** L)
        d = model_size
        chans = [min(16, 2 ** (L - 1)) * d]
        for _ in range(L - 1):
            chans.append(max(d, chans[-1] // 2))
        self.chans = chans
        self.cond = Conditioning(cond_dim, kind)
        self.fc = nn.Linear(latent_size + cond_dim, chans[0] * self.L0)
        self.convs = nn.ModuleList()
        for i in range(L):
            c_out = chans[i + 1] if i + 1 < L else 1
            self.convs.append(nn.Conv1d(chans[i], c_out, 25, padding=12))

    def forward(self, z, pitch, velocity):
        x = self.fc(torch.cat([z, self.cond(pitch, velocity)], dim=-1))
        x = F.relu(x.reshape(z.shape[0], self.chans[0], self.L0))
        for i, conv in enumerate(self.convs):
            x = conv(F.interpolate(x, scale_factor=4.0, mode="nearest"))
            x = torch.tanh(x) if i == len(self.convs) - 1 else F.relu(x)
        return x[:, 0, :self.note_samples]


class WaveGANDiscriminator(nn.Module):
    """forward(x: float32[B, N], pitch, velocity) -> (logit float32[B], aux float32[B, n_classes]);
    with `features=True` also the list of every conv layer's activations (for feature matching)."""

    def __init__(self, note_samples: int, kind: str = "pitched", model_size: int = 16, phase_shuffle: int = 2,
                 layers: int | None = None, n_classes: int = 128, **_unused) -> None:
        super().__init__()
        L = int(layers or 5)
        while 16 * 4 ** L < note_samples and layers is None:
            L += 1
        d = model_size
        chans = [1] + [min(16, 2 ** i) * d for i in range(L)]
        mods: list[nn.Module] = []
        for i in range(L):
            mods += [nn.Conv1d(chans[i], chans[i + 1], 25, stride=4, padding=11), nn.LeakyReLU(0.2)]
            if i < L - 1:
                mods.append(PhaseShuffle(phase_shuffle))
        self.body = nn.Sequential(*mods)
        self.head = ProjectionHead(chans[-1], kind, n_classes)

    def inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What the trainable layers see: [the waveform float32[B, 1, N]]."""
        return [x.unsqueeze(1)]

    def forward(self, x, pitch, velocity, features: bool = False):
        return self.judge(self.inputs(x), pitch, velocity, features)

    def judge(self, reps: list[torch.Tensor], pitch, velocity, features: bool = False):
        """`forward` from `inputs(x)` (R1 takes its gradient with respect to these)."""
        feats: list[torch.Tensor] | None = [] if features else None
        f = run_body(self.body, reps[0], feats)
        logit, aux = self.head(f.mean(-1), pitch, velocity)
        return (logit, aux, feats) if features else (logit, aux)
