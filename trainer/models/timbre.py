"""Timbre codes: one learned latent point per training instrument of a multi-instrument ("family") set.

GANSynth's "one latent = one timbre across all pitches", learned GLO-style: the table is trained with
the generator (in its optimiser), and every training note's latent is its instrument's code plus
`train.timbre_sigma` of N(0, I) noise, so the codes carry the instrument and the space around and
between them is trained too (the latent stays alive for knobs). The generator and its ONNX contract
do not change: a timbre is a point in z. Codes are kept within `train.timbre_radius` x sqrt(Z) of the
origin (the N(0, I) prior's typical shell at radius 1), so they cannot run away from the noise.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class TimbreTable(nn.Module):
    """forward(instrument int64[B]) -> float32[B, Z]: the instruments' codes. `codes`: float32[n, Z]."""

    def __init__(self, n_instruments: int, latent_size: int, radius: float = 1.0) -> None:
        super().__init__()
        self.n, self.latent_size = int(n_instruments), int(latent_size)
        self.max_norm = float(radius) * math.sqrt(self.latent_size)
        self.codes = nn.Parameter(torch.randn(self.n, self.latent_size))   # GLO: start at prior draws
        self.project_()

    def forward(self, instrument: torch.Tensor) -> torch.Tensor:
        return self.codes[instrument.long()]

    @torch.no_grad()
    def project_(self) -> None:
        """Shrink any code longer than max_norm back onto that sphere (after each optimiser step)."""
        norms = self.codes.norm(dim=1, keepdim=True).clamp_min(1e-12)
        self.codes.mul_(torch.clamp(self.max_norm / norms, max=1.0))


def n_instruments(cfg: dict[str, Any]) -> int:
    """How many timbre codes a run trains: the data set's instruments with `train.timbres`, else 0."""
    if not cfg.get("train", {}).get("timbres"):
        return 0
    insts = cfg.get("data", {}).get("instruments")
    if not isinstance(insts, list) or not insts:
        from synth.errors import UserError
        raise UserError("config train.timbres: needs a multi-instrument data set (built with several "
                        "--soundfont or --programs); this one lists no instruments; drop train.timbres")
    return len(insts)


def build_timbres(cfg: dict[str, Any]) -> TimbreTable | None:
    """The run's timbre table (None when `train.timbres` is off)."""
    n = n_instruments(cfg)
    if n == 0:
        return None
    Z = int(cfg["model"][cfg["arch"]]["latent_size"])
    return TimbreTable(n, Z, float(cfg["train"].get("timbre_radius") or 1.0))
