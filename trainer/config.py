"""Training configuration: defaults, JSON overlays, CLI overrides, resolution and hashing.

A resolved config is a plain JSON-able dict:
`{"name", "arch", "seed", "data": {dataset facts}, "model": {arch: kwargs}, "disc": {arch: kwargs},
"train": {...}, "run": {device, amp}}`. Models take plain keyword arguments; binding happens only
here and in `trainer.fit`. The run folder's name carries `config_hash(cfg)`, which ignores "run"
(where and how fast it runs does not change what is trained).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from synth.errors import UserError

DEFAULTS: dict[str, Any] = {
    "name": None,
    "arch": "ddsp",
    "seed": 0,
    "data": {},
    "model": {
        "ddsp": {"latent_size": 16, "n_harmonics": 96, "n_noise_bands": 16, "hop": 240, "hidden": 256,
                 "layers": 3, "ctrl_frames": 48, "ctrl_bands": 8, "noise_seconds": 0.5,
                 "noise_ctrl_bands": 0, "noise_decay_stages": 1, "attack_audio_rate": False, "end_stage": False,
                 "end_min_seconds": 0.0, "noise_release_tied": True},
        "spectral": {"latent_size": 64, "n_fft": 1024, "hop": 256, "n_mels": 256, "channels": 32, "blocks": 5,
                     "cond_dim": 64},
        "wavegan": {"latent_size": 100, "model_size": 16, "cond_dim": 64},
    },
    "disc": {
        "ddsp": {"channels": 64, "n_mels": 80, "layers": 4, "resolutions": [[2048, 512], [1024, 256]]},
        "spectral": {"channels": 32, "blocks": 5},
        "wavegan": {"model_size": 16, "phase_shuffle": 2},
    },
    "train": {
        "steps": 6000, "minutes": 60.0, "batch": 8, "spec_ffts": [2048, 1024, 256], "spec_floor_db": None,
        "lr_g": None, "lr_d": None, "betas": None,
        "loss": "hinge", "spectral_weight": None, "adv_weight": 1.0, "aux_weight": 0.1, "gp_weight": 10.0,
        "encoder": False, "kl_weight": 0.01,
        "ema": 0.995, "grad_clip": 10.0,
        "ckpt_every": 250, "keep": 3, "log_every": 10, "sample_every": 500, "threads": 0,
    },
    "run": {"device": "auto", "amp": False},
}

# Per-kind model defaults, between DEFAULTS and the overlays. Drum kits get a finer noise bank (64
# mel bands with a 16-band correction grid and two-stage decays): what tells one hit from another is
# spectral detail and decay shape, not partials at the key's frequency.
KIND_MODEL: dict[str, dict[str, Any]] = {
    "drums": {"ddsp": {"n_noise_bands": 64, "noise_ctrl_bands": 16, "noise_decay_stages": 2, "end_stage": True, "attack_audio_rate": True,
                       "end_min_seconds": 0.05}},
}
# Per-kind training defaults, likewise. The loudness-relative spectral floor (trainer/nn/losses.py)
# is the kit recipe (drum class accuracy 0.57 -> 0.67 with it and per-key tuning); on the GM piano
# one 60-minute run with it measured log-mel 7.43 dB and pitch accuracy 0.96 against 6.57 dB and
# 1.00 for the shipped piano's absolute floor, so pitched sets keep the absolute floor.
# Kits train with 0.3 of the adversarial weight: on the 218-hit GM kit the discriminator wins
# outright (hinge D loss 1.2 -> 0.1 by step 7000) and the generator's adversarial gradient then pulls
# it off the paired spectral fit (spectral L1 1.29 at step 5000 -> 1.50 at 7000; class accuracy 0.91
# at 10 minutes -> 0.82 at 30 with 1.0; 0.97 at 10 minutes with 0.3). The price is a latent the kit
# barely uses (diversity 0.39 dB). Pitched sets, whose knobs are latent directions, were kept at 1.0
# until the piano showed the same drift (below); at 0.3 their latent still moves the sound (piano
# diversity 1.08 dB, knobs 1.1-2.8 dB).
KIND_TRAIN: dict[str, dict[str, Any]] = {
    "drums": {"spec_floor_db": -80.0, "adv_weight": 0.3},
    # The GM piano: with 1.0 the discriminator wins from ~2,000 steps on and the fit drifts (8.5 dB
    # log-mel after 60 minutes); with 0.3, 24 minutes gave 6.05 dB, pitch accuracy 0.99 and knobs of
    # 1.1-2.8 dB (docs/architecture.md).
    "pitched": {"adv_weight": 0.3},
}

# Per-architecture training defaults, used where "train" leaves a value as None.
ARCH_TRAIN: dict[str, dict[str, Any]] = {
    "ddsp": {"lr_g": 3e-3, "lr_d": 2e-4, "betas": [0.8, 0.99], "spectral_weight": 10.0},
    "spectral": {"lr_g": 4e-4, "lr_d": 4e-4, "betas": [0.0, 0.99], "spectral_weight": 1.0},
    "wavegan": {"lr_g": 1e-4, "lr_d": 1e-4, "betas": [0.5, 0.9], "spectral_weight": 1.0},
}


def deep_merge(base: dict[str, Any], over: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A copy of `base` with `over` merged in; unknown keys are errors (typos must not pass silently)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in out and where != "config.data":
            raise UserError(f"{where}: unknown key {k!r}; known keys: {', '.join(sorted(out))}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "data":
            out[k] = deep_merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_overlay(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON overlay file (a partial config)."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{p}: config overlay not found; pass an existing JSON file to --config") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{p}: not a readable JSON config overlay ({e}); fix the file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{p}: a config overlay must be a JSON object; fix the file")
    return obj


def resolve(overlays: list[dict[str, Any]], data_info: dict[str, Any]) -> dict[str, Any]:
    """DEFAULTS <- KIND_MODEL/KIND_TRAIN[data kind] <- overlays (in order) <- dataset facts; fill per-arch training defaults."""
    cfg = copy.deepcopy(DEFAULTS)
    for arch, kw in KIND_MODEL.get(str(data_info.get("kind")), {}).items():
        cfg["model"][arch].update(copy.deepcopy(kw))
    cfg["train"].update(copy.deepcopy(KIND_TRAIN.get(str(data_info.get("kind")), {})))
    for o in overlays:
        cfg = deep_merge(cfg, o)
    from trainer.models import ARCHS
    if cfg["arch"] not in ARCHS:
        raise UserError(f"config: unknown arch {cfg['arch']!r}; choose from {', '.join(ARCHS)}")
    from trainer.nn.losses import LOSSES
    if cfg["train"]["loss"] not in LOSSES:
        raise UserError(f"config: unknown loss {cfg['train']['loss']!r}; choose from {', '.join(LOSSES)}")
    for k, v in ARCH_TRAIN[cfg["arch"]].items():
        if cfg["train"].get(k) is None:
            cfg["train"][k] = copy.deepcopy(v)
    cfg["data"] = {**data_info, **cfg["data"]}
    if cfg["name"] is None:
        src = Path(str(cfg["data"].get("root", "run"))).name or "run"
        cfg["name"] = f"{src}-{cfg['arch']}"
    return cfg


def config_hash(cfg: dict[str, Any]) -> str:
    """8 hex digits identifying what is trained (everything but the "run" section)."""
    body = {k: v for k, v in cfg.items() if k != "run"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:8]
