"""GAN losses (hinge, non-saturating, WGAN-GP) and the paired multi-resolution spectral L1."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.nn.layers import stft_magnitude

LOSSES = ("hinge", "ns", "wgan-gp")


def d_adv_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Discriminator loss from logits real[B], fake[B]."""
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "ns":
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wgan-gp":
        return fake.mean() - real.mean()
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


def g_adv_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss from the discriminator's logits on generated audio."""
    if kind == "ns":
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake.mean()
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, pitch, velocity) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x_hat)||_2 - 1)^2 on random interpolates of real[B, N] and fake[B, N]."""
    eps = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    x = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    logit, _ = D(x, pitch, velocity)
    (g,) = torch.autograd.grad(logit.sum(), x, create_graph=True)
    return ((g.flatten(1).norm(dim=1) - 1.0) ** 2).mean()


class MultiResSTFTLoss(torch.nn.Module):
    """Paired spectral distance between x[B, N] (generated) and y[B, N] (real) over several STFT sizes.

    Sum over resolutions of: spectral convergence ||S_x - S_y||_F / ||S_y||_F plus mean |log S_x -
    log S_y| (natural log). The log term weighs quiet tails and upper partials like the log-mel
    metric the bars use; the linear term pins loud partials.

    `relative_floor_db` (-80 by default; the drum-kit recipe): both notes are first divided by the
    real note's RMS and the log floor sits that many dB below a unit-RMS white noise's magnitude per
    bin, as in `trainer.evaluate`'s log-mel distance, and the convergence term is taken per note, so
    quiet notes and tails count. None: the absolute floor `eps` (pitched recipes). Why each:
    docs/decisions-trainer.md.
    """

    def __init__(self, ffts=(2048, 1024, 512, 256), eps: float = 1e-5, log_weight: float = 1.0,
                 relative_floor_db: float | None = -80.0) -> None:
        super().__init__()
        self.ffts, self.eps, self.log_weight = tuple(ffts), eps, log_weight
        self.relative = relative_floor_db is not None
        self.floors = {}
        for n in self.ffts:
            w = torch.hann_window(n)
            self.register_buffer(f"win{n}", w, persistent=False)
            if self.relative:
                self.floors[n] = float(10.0 ** (relative_floor_db / 20.0) * w.pow(2).sum().sqrt())

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        x, y = x.float(), y.float()
        if self.relative:
            scale = y.pow(2).mean(dim=-1, keepdim=True).sqrt().clamp_min(1e-6)
            x, y = x / scale, y / scale
        for n in self.ffts:
            w = getattr(self, f"win{n}")
            Sx = stft_magnitude(x, n, n // 4, w)
            Sy = stft_magnitude(y, n, n // 4, w)
            if self.relative:
                eps = self.floors[n]
                sc = (torch.linalg.norm((Sx - Sy).flatten(1), dim=1)
                      / (torch.linalg.norm(Sy.flatten(1), dim=1) + 1e-7)).mean()
            else:
                eps = self.eps
                sc = torch.linalg.norm(Sx - Sy) / (torch.linalg.norm(Sy) + 1e-7)
            lg = (torch.log(Sx + eps) - torch.log(Sy + eps)).abs().mean()
            total = total + sc + self.log_weight * lg
        return total / len(self.ffts)
