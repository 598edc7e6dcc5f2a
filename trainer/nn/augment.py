"""Differentiable augmentation of what the discriminator sees (DiffAugment, Zhao et al. 2020), for audio.

A few hundred notes let D memorise the real set. DiffAugment applies one random transform T to
real and generated inputs alike, in D's update and in G's (G's gradient flows through T), so D
judges T(x) against T(G(z)) and cannot learn the exact real waveforms; the generator's optimum is
unchanged because both distributions go through the same T. Here T acts on the waveform, so it
serves every arch's discriminator (log-mel, log-magnitude + IF, raw waveform) without touching them:

- shift: delay or advance by an integer number of samples in [-shift_ms, shift_ms], zero filled;
- gain: a factor 10^(u·gain_db/20), u ~ U(-1, 1);
- time mask: zero one segment of up to `time_mask` of the note, with 2-ms raised edges;
- frequency mask: remove one band of up to `freq_mask` of the mel range (0 Hz..sr/2) from the note's
  whole-note spectrum (rfft, gain 0 in the band, linear 20-mel edges, irfft).

None of them moves a frequency: each output's spectrum holds only frequencies the input held, so
pitch is never changed (a pitch shift would tell D's auxiliary classifier the label). The draws
come from the global torch RNG, which checkpoints save, so a resumed run draws what the straight run
drew. DiffAugment draws each example's parameters independently (`paired=False`); `pairs=B` in
`DiffAugment.__call__` gives example i and i + B the same draw (feature matching compares such pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

EDGE_SECONDS = 0.002          # raised edges of a time mask: no click wider than D's shortest window needs
EDGE_MEL = 20.0               # linear edges of a frequency mask, in mel


def _mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


@dataclass
class DiffAugment:
    """The recipe's `train.augment` for one sample rate; `active` is False when every strength is 0.

    `aug(x: float32[B, N], pairs=None) -> float32[B, N]` at `sample_rate`; differentiable in x.
    """

    sample_rate: int
    shift_ms: float = 0.0
    gain_db: float = 0.0
    time_mask: float = 0.0
    freq_mask: float = 0.0
    paired: bool = False

    @classmethod
    def from_config(cls, sample_rate: int, cfg: dict[str, Any] | None) -> DiffAugment:
        cfg = cfg or {}
        for k in ("shift_ms", "gain_db", "time_mask", "freq_mask"):
            v = float(cfg.get(k, 0.0))
            if not (math.isfinite(v) and v >= 0.0) or (k in ("time_mask", "freq_mask") and v > 1.0):
                from synth.errors import UserError
                raise UserError(f"config: train.augment.{k} = {cfg.get(k)!r}; use a number >= 0"
                                + (" and <= 1 (a share of the note or of the mel range)" if "mask" in k else ""))
        return cls(int(sample_rate), float(cfg.get("shift_ms", 0.0)), float(cfg.get("gain_db", 0.0)),
                   float(cfg.get("time_mask", 0.0)), float(cfg.get("freq_mask", 0.0)), bool(cfg.get("paired", False)))

    @property
    def active(self) -> bool:
        return any(v > 0 for v in (self.shift_ms, self.gain_db, self.time_mask, self.freq_mask))

    def _draw(self, n: int, pairs: int | None, device) -> torch.Tensor:
        """float32[n] draws from U(0, 1), shared by example i and i + pairs when `pairs` is given."""
        if pairs is None:
            return torch.rand(n, device=device)
        u = torch.rand(pairs, device=device)
        return u.repeat(n // pairs)

    def __call__(self, x: torch.Tensor, pairs: int | None = None) -> torch.Tensor:
        if not self.active:
            return x
        B, N = x.shape
        if pairs is not None and B % pairs:
            raise ValueError(f"DiffAugment: {B} examples are not whole copies of {pairs} pairs")
        dev = x.device
        if self.shift_ms > 0:
            x = self._shift(x, self._draw(B, pairs, dev))
        if self.gain_db > 0:
            u = self._draw(B, pairs, dev) * 2.0 - 1.0
            x = x * torch.pow(10.0, u * self.gain_db / 20.0).unsqueeze(1)
        if self.time_mask > 0:
            x = x * self._time_mask(N, self._draw(B, pairs, dev), self._draw(B, pairs, dev)).to(x.dtype)
        if self.freq_mask > 0:
            x = self._freq_mask(x, self._draw(B, pairs, dev), self._draw(B, pairs, dev))
        return x

    def _shift(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """y[n] = x[n - s], s = round((2u - 1) · S) samples, zero outside the note."""
        B, N = x.shape
        S = max(1, int(round(self.shift_ms * 1e-3 * self.sample_rate)))
        s = torch.round((2.0 * u - 1.0) * S).long()
        xp = torch.nn.functional.pad(x, (S, S))
        idx = torch.arange(N, device=x.device).unsqueeze(0) + S - s.unsqueeze(1)
        return torch.gather(xp, 1, idx)

    def _time_mask(self, N: int, u_width: torch.Tensor, u_pos: torch.Tensor) -> torch.Tensor:
        """float32[B, N]: 0 inside one segment of u_width · time_mask · N samples, 1 outside."""
        half = 0.5 * u_width * self.time_mask * N
        centre = half + u_pos * (N - 2.0 * half)
        ramp = max(1.0, EDGE_SECONDS * self.sample_rate)
        n = torch.arange(N, device=u_width.device, dtype=torch.float32).unsqueeze(0)
        lin = ((n - centre.unsqueeze(1)).abs() - half.unsqueeze(1)) / ramp
        mask = 0.5 - 0.5 * torch.cos(math.pi * lin.clamp(0.0, 1.0))
        return torch.where(half.unsqueeze(1) >= 0.5, mask, torch.ones_like(mask))

    def _freq_mask(self, x: torch.Tensor, u_width: torch.Tensor, u_pos: torch.Tensor) -> torch.Tensor:
        """x with one mel band (u_width · freq_mask of the mel range, anywhere) removed from its spectrum."""
        B, N = x.shape
        X = torch.fft.rfft(x.float(), n=N)
        hz = torch.arange(X.shape[1], device=x.device, dtype=torch.float32) * self.sample_rate / N
        mel = _mel(hz).unsqueeze(0)
        top = float(_mel(torch.tensor(self.sample_rate / 2.0)))
        half = 0.5 * u_width * self.freq_mask * top
        centre = half + u_pos * (top - 2.0 * half)
        gain = (((mel - centre.unsqueeze(1)).abs() - half.unsqueeze(1)) / EDGE_MEL).clamp(0.0, 1.0)
        gain = torch.where(half.unsqueeze(1) > 0, gain, torch.ones_like(gain))
        return torch.fft.irfft(X * gain, n=N).to(x.dtype)
