"""Timbre codes refined by sound at export: each family timbre's latent, searched against its own notes.

Training learns one code per instrument under the training loss (multi-scale spectral plus the
adversary), on random crops and with every other instrument pulling on the shared generator. The
point in latent space that sounds nearest to an instrument by `trainer eval`'s log-mel distance is
usually a little away from it (keys, 2026-12-06: 0.1-0.9 dB nearer on held-out notes). Export looks
for that point with capture's search (`trainer.capture.Objective` and `cma_es`, ONNX only):
- the search sees `notes` train-split notes of the instrument, spread over pitch and velocity;
- the code moves only when the result is also nearer on the instrument's valid-split notes, which
  neither training nor the search saw (the test split stays for `trainer eval`);
- the figures (train and valid, before and after) go into the manifest's `training.timbre_fit`.
The knobs and morphs are then made from the refined codes. Details: docs/decisions-trainer.md.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

DEFAULT_GENERATIONS = 30
DEFAULT_NOTES = 16
SIGMA = 0.15            # the first step, in latent units (codes lie around |z| ~ 4-8)
MIN_VALID_NOTES = 1


def _spread(idx: np.ndarray, ds, k: int) -> np.ndarray:
    """Up to k of `idx`, evenly spread in (pitch, velocity) order."""
    idx = idx[np.lexsort((ds.velocities[idx], ds.pitches[idx]))]
    if len(idx) <= k:
        return idx
    return idx[np.linspace(0, len(idx) - 1, k).round().astype(np.int64)]


def _notes(ds, idx: np.ndarray, sr: int, n: int):
    from trainer.capture import Note
    from trainer.evaluate import _resample

    audio = _resample(ds.audio_batch(np.asarray(idx, np.int64)), ds.info["sample_rate"], sr)[:, :n]
    return [Note(int(ds.pitches[i]), int(round(float(ds.velocities[i]) * 127)), audio[k], f"note {i}", "dataset")
            for k, i in enumerate(idx)]


def refine_codes(gen, codes: np.ndarray, root: str | Path, sr: int, note_samples: int, velocity_conditioned: bool,
                 generations: int = DEFAULT_GENERATIONS, notes: int = DEFAULT_NOTES, seed: int = 0,
                 say=lambda msg: None) -> tuple[np.ndarray, dict[str, Any]]:
    """(codes float32[T, Z], record): each code searched against its instrument's notes (module
    docstring). Codes without train notes, or not nearer on the valid notes, stay as learned."""
    from trainer.capture import Objective, cma_es
    from trainer.data import OneShotDataset

    ds = OneShotDataset(root)
    split = np.array([n["split"] for n in ds.notes])
    sess = SimpleNamespace(generate=gen)            # capture.Objective's session interface
    out = np.asarray(codes, np.float32).copy()
    rows, t0 = [], time.monotonic()
    for t in range(len(out)):
        mine = ds.instruments == t
        train = _spread(np.flatnonzero(mine & (split == "train")), ds, notes)
        valid = np.flatnonzero(mine & (split == "valid"))
        if not len(train) or len(valid) < MIN_VALID_NOTES:
            rows.append({"timbre": t, "moved": False, "why": "too few train or valid notes"})
            continue
        obj = Objective(sess, _notes(ds, train, sr, note_samples), sr, velocity_conditioned)
        chk = Objective(sess, _notes(ds, valid, sr, note_samples), sr, velocity_conditioned)
        path = cma_es(obj, out[t].astype(np.float64), np.eye(out.shape[1]), SIGMA, generations, float("inf"),
                      np.random.default_rng(seed + t))
        z1 = path[-1][0]
        before, after = chk(np.stack([out[t], z1]).astype(np.float32))
        moved = bool(after < before)
        rows.append({"timbre": t, "moved": moved, "train_db": [round(path[0][1], 3), round(path[-1][1], 3)],
                     "valid_db": [round(float(before), 3), round(float(after), 3)],
                     "distance": round(float(np.linalg.norm(z1 - out[t])), 3), "generations": generations,
                     "train_notes": len(train), "valid_notes": len(valid)})
        if moved:
            out[t] = z1
        say(f"timbre {t}: valid {before:.2f} -> {after:.2f} dB ({'moved' if moved else 'kept'})")
    rec = {"method": "trainer/timbre_fit.py: CMA-ES on train notes, kept when nearer on valid notes",
           "generations": generations, "notes": notes, "seconds": round(time.monotonic() - t0, 1),
           "moved": sum(r["moved"] for r in rows), "timbres": rows}
    return out, rec
