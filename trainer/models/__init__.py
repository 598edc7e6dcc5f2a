"""Generators and discriminators, built from a resolved config (see `trainer.config`).

Constructor defaults equal the recipes' (`trainer/recipes/base.json` + `arch/<arch>.json`).
`build_generator(cfg)` reads `cfg["arch"]`, `cfg["model"][arch]` and the data facts in
`cfg["data"]` (sample_rate, note_samples, kind, hold_seconds, key_hz for drum kits). Every generator has
`forward(z: float32[B, Z], pitch: int64[B], velocity: float32[B]) -> float32[B, N]` in [-1, 1] and
attributes `sample_rate`, `note_samples`, `latent_size`; all export to ONNX (opset 17) with plain ops.
"""

from __future__ import annotations

from typing import Any

from torch import nn

ARCHS = ("ddsp", "spectral", "wavegan")


def _parts(cfg: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(arch, model kwargs, data facts); a run config that predates a model key gets the value that
    reproduces it (`trainer.config.PREDATED`), not today's default."""
    from trainer.config import PREDATED

    arch = cfg["arch"]
    if arch not in ARCHS:
        from synth.errors import UserError
        raise UserError(f"config: unknown arch {arch!r}; choose from {', '.join(ARCHS)}")
    return arch, {**PREDATED.get(arch, {}), **cfg["model"][arch]}, cfg["data"]


def build_generator(cfg: dict[str, Any]) -> nn.Module:
    arch, m, d = _parts(cfg)
    common = {"sample_rate": d["sample_rate"], "note_samples": d["note_samples"], "kind": d["kind"]}
    if arch == "ddsp":
        from trainer.models.ddsp import DDSPGenerator
        return DDSPGenerator(**common, hold_seconds=d.get("hold_seconds"), key_hz=d.get("key_hz"), **m)
    if arch == "spectral":
        from trainer.models.spectral import SpectralGenerator
        return SpectralGenerator(**common, **m)
    from trainer.models.wavegan import WaveGANGenerator
    return WaveGANGenerator(**common, **m)


def build_discriminator(cfg: dict[str, Any]) -> nn.Module:
    arch, m, d = _parts(cfg)
    dcfg = dict(cfg.get("disc", {}).get(arch, {}))
    if arch == "ddsp":
        from trainer.models.ddsp import MultiResSpecDiscriminator
        from trainer.models.timbre import n_instruments

        n_inst = n_instruments(cfg)   # timbre training: D's realness is conditional on the instrument too
        extra = {"n_instruments": n_inst} if n_inst else {}
        return MultiResSpecDiscriminator(sample_rate=d["sample_rate"], kind=d["kind"], **dcfg, **extra)
    if arch == "spectral":
        from trainer.models.spectral import SpectralDiscriminator
        return SpectralDiscriminator(kind=d["kind"], n_fft=m.get("n_fft", 1024), hop=m.get("hop", 256), **dcfg)
    from trainer.models.wavegan import WaveGANDiscriminator
    return WaveGANDiscriminator(note_samples=d["note_samples"], kind=d["kind"], **dcfg)


def build_encoder(cfg: dict[str, Any]) -> nn.Module | None:
    """The reconstruction path's encoder E(x) -> (mu, logvar), or None when `train.encoder` is off."""
    if not cfg["train"].get("encoder"):
        return None
    from trainer.models.ddsp import SpecEncoder
    m = cfg["model"][cfg["arch"]]
    return SpecEncoder(sample_rate=cfg["data"]["sample_rate"], latent_size=m["latent_size"])


def build_timbres(cfg: dict[str, Any]) -> nn.Module | None:
    """The per-instrument latent codes (`trainer.models.timbre`), or None when `train.timbres` is off."""
    from trainer.models.timbre import build_timbres as _build
    return _build(cfg)


__all__ = ["ARCHS", "build_timbres", "build_discriminator", "build_encoder", "build_generator"]
