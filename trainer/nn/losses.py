"""GAN losses (hinge, non-saturating, WGAN-GP), the discriminator's regularisers (R1, feature
matching), the paired multi-resolution spectral L1 and a floor on latent diversity."""

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


def r1_penalty(D, real: torch.Tensor, pitch, velocity, augment=None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018; StyleGAN2): mean over examples of ||grad D||^2 on the real notes real[B, N].

    The gradient is taken with respect to what D's trainable layers see (`D.inputs(x)`: log-mel
    images for ddsp, log-magnitude + IF for spectral, the waveform for wavegan) of the augmented
    real notes, summed over D's resolutions. With respect to the waveform, a log front's gradient
    is dominated by near-silent samples (d log(m + eps) / dm = 1 / (m + eps)): 4.7e8 on GM piano
    notes at initialisation, a penalty about silence rather than smoothness. `create_graph` so
    that it trains D; float32, no autocast.
    """
    x = real.detach().float()
    with torch.no_grad():
        reps = D.inputs(augment(x) if augment is not None else x)
    reps = [r.float().requires_grad_(True) for r in reps]
    logit, _ = D.judge(reps, pitch, velocity)
    grads = torch.autograd.grad(logit.float().sum(), reps, create_graph=True)
    return sum(g.pow(2).flatten(1).sum(1) for g in grads).mean()


def feature_matching(real_feats, fake_feats) -> torch.Tensor:
    """MelGAN / HiFi-GAN feature matching: the mean over D's layers of mean |f_real - f_fake|.

    real_feats, fake_feats: equal-length lists of float tensors [B, ...], pairwise (example i of
    one is the real note of example i of the other); the real ones are detached here.
    """
    if len(real_feats) != len(fake_feats) or not real_feats:
        raise ValueError(f"feature_matching: {len(real_feats)} real against {len(fake_feats)} fake feature maps")
    terms = [(f.float() - r.detach().float()).abs().mean() for r, f in zip(real_feats, fake_feats, strict=True)]
    return torch.stack(terms).mean()


class LogMelDB(torch.nn.Module):
    """`trainer.evaluate.log_mel` in torch, differentiable: float32[B, N] -> dB [B, T, n_mels].

    Each note at unit RMS, |STFT|^2 (periodic Hann, centred frames, zero padding, `stft_params`),
    the eval's mel filters, 10·log10(max(P, 1e-8)): equal to the numpy figure to float32 rounding, so
    a training term in these units means what `trainer eval`'s diversity means."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__()
        from trainer.evaluate import mel_filterbank, stft_params

        self.n_fft, self.hop = stft_params(sample_rate)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.register_buffer("fb", torch.from_numpy(mel_filterbank(sample_rate, self.n_fft)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        rms = x.pow(2).mean(dim=-1, keepdim=True).sqrt()
        x = x / torch.where(rms > 1e-12, rms, torch.ones_like(rms))
        S = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                       return_complex=True)
        P = S.real.pow(2) + S.imag.pow(2)                      # [B, F, T]
        mel = torch.matmul(self.fb, P).transpose(1, 2)          # [B, T, n_mels]
        return 10.0 * torch.log10(mel.clamp_min(1e-8))


def diversity_floor(a_db: torch.Tensor, b_db: torch.Tensor, target_db: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A floor on how much the latent changes a note (DSGAN, Yang et al. 2019, clipped at `target_db`):
    a_db, b_db are `LogMelDB` of notes at the same pitch and velocity from two latents. Returns (the
    loss, mean over examples of max(0, target_db - d_i), and the distances d_i [B], mean |a - b| in dB).
    It pushes only examples under the target, so it does not fight the paired spectral L1 beyond it."""
    d = (a_db - b_db).abs().mean(dim=(1, 2))
    return F.relu(target_db - d).mean(), d


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
