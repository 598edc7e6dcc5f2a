"""A short fine-tune of a preset's generator around a fitted latent: capture's second stage.

An 8-note latent search can only pick a point of the base's timbre space; for an instrument near one
of the family's timbres it finds little more than that timbre. Fine-tuning the generator's weights a
little, with the latent fixed at the fitted point, moves the whole keyboard towards the given notes
(docs/decisions-trainer.md, 2026-12-06: TimGM6mb's Piano 2 on the 12 keys not given, 0.49 → 1.48 dB
better than the nearest timbre).

- The torch generator is rebuilt from the preset alone: `training.generator_config` (written by
  `trainer export`) says how to build it, and the ONNX graph's initializers, named as in the torch
  state dict, hold its weights. It is checked against ONNX Runtime before use.
- The loss is `trainer eval`'s own measure: the L1 distance of loudness-normalised log-mel power
  spectrograms in dB (same STFT framing, mel filters and floor), so the fine-tune minimises what the
  bars measure.
- The result goes back into a copy of the base's graph (same ops, new initializers): no re-export.
"""

from __future__ import annotations

import copy
import datetime as dt
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import UserError

DATA_KEYS = ("sample_rate", "note_samples", "kind", "hold_seconds", "key_hz")
PARITY_TOL = 1e-3        # max |Δ| between torch and ONNX Runtime on the rebuilt generator
LR = 1e-4                # Adam; 1e-3 made both the given and the other keys worse within 10 steps
EVAL_EVERY = 10          # steps between checks of the held-back notes (with --check)


def generator_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """What `trainer.models.build_generator` needs, from a run's resolved config (kept in preset.json);
    None for a generator it cannot build (the tests' custom modules)."""
    from trainer.models import ARCHS

    arch, model, data = config.get("arch"), config.get("model"), config.get("data")
    if arch not in ARCHS or not isinstance(model, dict) or arch not in model or not isinstance(data, dict):
        return None
    return {"arch": arch, "model": {arch: dict(model[arch])},
            "data": {k: data[k] for k in DATA_KEYS if k in data}}


def torch_generator(preset):
    """The preset's generator as a torch module (eval mode), or None when the preset cannot say how to
    build it (exported before `training.generator_config`). Raises UserError when the rebuilt module
    does not play as the ONNX graph does."""
    import onnx
    import torch
    from onnx import numpy_helper

    from trainer.models import build_generator

    cfg = (preset.training or {}).get("generator_config")
    if not isinstance(cfg, dict):
        return None
    G = build_generator(cfg)
    inits = {t.name: t for t in onnx.load(str(preset.generator_path)).graph.initializer}
    state = {}
    for name, ref in G.state_dict().items():
        if name not in inits:
            raise UserError(f"{preset.generator_path}: no weight {name!r} in the graph; re-export {preset.name}")
        w = numpy_helper.to_array(inits[name])
        if tuple(w.shape) != tuple(ref.shape):
            raise UserError(f"{preset.generator_path}: weight {name!r} is {list(w.shape)}, the model wants "
                            f"{list(ref.shape)}; re-export {preset.name}")
        state[name] = torch.from_numpy(np.array(w))
    G.load_state_dict(state)
    G.eval()
    err = _parity(G, preset)
    if err > PARITY_TOL:
        raise UserError(f"{preset.generator_path}: the rebuilt generator differs from the graph by {err:.3g}; "
                        f"re-export {preset.name}")
    return G


def _parity(G, preset) -> float:
    import torch

    from synth.inference import GeneratorSession

    keys = preset.playable_keys()
    k = np.asarray([keys[len(keys) // 4], keys[3 * len(keys) // 4]], np.int64)
    z = np.random.default_rng(0).standard_normal((2, preset.latent_size)).astype(np.float32)
    v = np.asarray([0.4, 0.9], np.float32)
    got = GeneratorSession(preset, providers="cpu", threads=1, warmup=False).generate(z, k, v)
    with torch.no_grad():
        ref = G(torch.from_numpy(z), torch.from_numpy(k), torch.from_numpy(v)).numpy()
    return float(np.abs(got - ref).max())


class LogMelL1:
    """`trainer.evaluate.log_mel_distance` in torch, differentiable: unit-RMS notes, periodic Hann,
    centred zero-padded frames, HTK mel filters, 10·log10(max(P, 1e-8)), mean |Δ| per note."""

    def __init__(self, sr: int) -> None:
        import torch

        from trainer.evaluate import DB_FLOOR_POWER, mel_filterbank, stft_params

        self.n_fft, self.hop = stft_params(sr)
        self.fb = torch.from_numpy(mel_filterbank(sr, self.n_fft))
        self.window = torch.hann_window(self.n_fft)
        self.floor = DB_FLOOR_POWER

    def log_mel(self, x):
        import torch

        x = x / torch.sqrt((x ** 2).mean(dim=1, keepdim=True)).clamp_min(1e-12)
        s = torch.stft(x, self.n_fft, self.hop, window=self.window, center=True, pad_mode="constant",
                       return_complex=True)
        p = s.real ** 2 + s.imag ** 2                                # [B, F, T]
        return 10.0 * torch.log10(torch.matmul(self.fb, p).clamp_min(self.floor))

    def __call__(self, y, target_lm):
        return (self.log_mel(y) - target_lm).abs().mean(dim=(1, 2))


@dataclass
class Tuned:
    G: Any
    steps: int
    seconds: float
    given_before: float     # mean log-mel distance (dB) on the notes it was tuned on, before and after
    given_after: float
    check_before: float | None = None
    check_after: float | None = None
    kept_step: int = 0


def _groups(notes, idx: list[int], sr: int, loss: LogMelL1):
    """[(indices, length, target log-mels)] of the notes `idx`, grouped by length (as capture's Objective)."""
    import torch

    out = []
    for length in sorted({len(notes[i].audio) for i in idx}):
        g = [i for i in idx if len(notes[i].audio) == length]
        t = torch.from_numpy(np.stack([np.asarray(notes[i].audio, np.float32) for i in g]))
        out.append((g, length, loss.log_mel(t).detach()))
    return out


def _distance(G, z, notes, groups, keys, vels, loss, grad: bool = False):
    """Mean log-mel distance over the grouped notes (a tensor with grad, else a float)."""
    import torch

    idx = [i for g, _, _ in groups for i in g]
    with torch.set_grad_enabled(grad):
        y = G(z.expand(len(idx), -1), keys[idx], vels[idx])
        total, n, at = 0.0, 0, 0
        for g, length, target in groups:
            d = loss(y[at:at + len(g), :length], target)
            total, n, at = total + d.sum(), n + len(g), at + len(g)
        out = total / n
    return out if grad else float(out)


def finetune(G, z: np.ndarray, notes, sr: int, velocity_conditioned: bool, deadline: float,
             max_steps: int, check: list[int] | None = None, lr: float = LR, say=lambda m: None) -> Tuned:
    """Adam on all of G's weights, z fixed, on the notes not in `check`, until `deadline`
    (time.monotonic()) or `max_steps`. With `check`, the weights at the step with the lowest distance on
    those notes are kept (checked every EVAL_EVERY steps); without, the last."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    t0 = time.monotonic()
    G = copy.deepcopy(G).train()
    loss = LogMelL1(sr)
    check = sorted(check or [])
    fit_i = [i for i in range(len(notes)) if i not in check]
    fit_g, chk_g = _groups(notes, fit_i, sr, loss), (_groups(notes, check, sr, loss) if check else None)
    keys = torch.tensor([n.pitch for n in notes], dtype=torch.int64)
    vels = torch.tensor([n.velocity / 127.0 if velocity_conditioned else 1.0 for n in notes], dtype=torch.float32)
    zt = torch.from_numpy(np.asarray(z, np.float32)[None])
    opt = torch.optim.Adam(G.parameters(), lr=lr)
    before = _distance(G, zt, notes, fit_g, keys, vels, loss)
    c_before = best_c = _distance(G, zt, notes, chk_g, keys, vels, loss) if chk_g else None
    best_state, kept, step = None, 0, 0
    while step < max_steps and time.monotonic() < deadline:
        d = _distance(G, zt, notes, fit_g, keys, vels, loss, grad=True)
        opt.zero_grad()
        d.backward()
        opt.step()
        step += 1
        if chk_g and step % EVAL_EVERY == 0:
            c = _distance(G, zt, notes, chk_g, keys, vels, loss)
            if c < best_c:
                best_c, kept, best_state = c, step, copy.deepcopy(G.state_dict())
    if chk_g:
        if best_state is not None:
            G.load_state_dict(best_state)
    else:
        kept = step
    G.eval()
    after = _distance(G, zt, notes, fit_g, keys, vels, loss)
    say(f"fine-tune: {step} steps in {time.monotonic() - t0:.0f} s, given notes {before:.2f} -> {after:.2f} dB"
        + (f", held-back notes {c_before:.2f} -> {best_c:.2f} dB (step {kept})" if chk_g else ""))
    return Tuned(G, step, round(time.monotonic() - t0, 1), before, after, c_before, best_c if chk_g else None, kept)


def write_graph(base_path: Path, G, dest: Path, meta: dict[str, str]) -> None:
    """The base's ONNX graph with G's weights as its initializers and `meta` added to its metadata."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(base_path))
    state = {k: v.detach().cpu().numpy() for k, v in G.state_dict().items()}
    for i, t in enumerate(model.graph.initializer):
        if t.name in state:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(state[t.name].astype(np.float32), t.name))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(meta, created=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=str(k), value=str(v))
    onnx.save_model(model, str(dest), save_as_external_data=False)
