"""`python -m trainer export RUN --preset presets/NAME`: a run folder → a playable, self-describing preset.

All inside a temporary folder beside the destination, renamed into place at the end
(`synth.fsutil.atomic_dir`), so a crash or a refusal leaves any previous preset untouched:

1. Rebuild the EMA generator from the run folder alone (`trainer.fit.load_generator`): the best
   validation's weights (checkpoints/best.pt) when the run kept them, else (or with `--last`) last.pt.
2. ONNX: the dynamo exporter (opset 18), the TorchScript one (opset 17) as a fallback; dynamic batch,
   inputs z / pitch / velocity, output audio, weights inline, metadata_props as in the preset contract.
3. Parity with torch at batch 1 and 8: max |Δ| <= 1e-4, or, for a sustained note's phase drift (float32
   GEMMs round partial frequencies differently in torch and ORT), the first 4096 samples within 1e-4,
   the whole-note STFT magnitudes within 1e-3 of the peak and max |Δ| under 1e-2.
4. The default latent (`choose_default_latent`) and the knob directions (`knob_directions`), measured
   on the exported graph; a kit's engine knobs (`engine_knobs`). A family run (`train.timbres`)
   instead writes its learned codes as `timbres`, defaults to the first source's lowest program and
   puts the knobs on the directions through the timbres that sound furthest apart (`measured_timbre_axes`).
5. Envelope facts from the real notes when the run's dataset folder is reachable (else from
   generated notes): sustain mode, release time, velocity curve.
6. preset.json (validated by `synth.preset`), with the commands that rebuild it (`trainer.commands`),
   card.md and spectrograms.png (`trainer.card`).
7. Save = write, validate, reload, call: the manifest is reloaded and the graph run once.

Dataset facts come from the run's resolved config (`config["data"]`); the real notes from the folder
it records (`data.root`) or `--data`. Measurements behind these choices: docs/decisions-trainer.md.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import OneLineParser, UserError

PARITY_TOL = 1e-4
PARITY_EARLY = 4096                    # samples (the attack) held to PARITY_TOL whatever the note length
PARITY_SPECTRAL_TOL = 1e-3             # whole-note STFT magnitude difference / peak magnitude
PARITY_DRIFT_CAP = 1e-2                # whole-note max |Δ| allowed for a phase drift
OPSET = 17
DYNAMO_OPSET = 18
MAX_SHIPPED_MB = 10.0
DEFAULT_CCS = (74, 70, 71, 76)         # CC 74 the brightness-like knob, the rest in rank order; not CC 1 (GM vibrato)
KNOB_SIGMA = 2.0                       # knob extremes at ±2 prior standard deviations along the direction
KNOB_SAMPLES = 96                      # latents sampled for the feature PCA
KNOB_LEVEL_DB = 9.0                    # a family knob's level within this of the default's: the engine's level_gain (±12 dB) brings it back
KNOB_STEP_SHARE = 0.55                 # ... and no step on its grid over this share of its span (eval's bar: 0.6)
KNOB_PITCH_ACC = 0.95                  # ... and this share of their notes in tune (trainer eval's bar)
KNOB_GRID = (0, 32, 64, 96, 127)       # the CC values a family knob's level is checked at (trainer eval's grid)
MIN_EFFECT_DB = 0.5                    # a direction that changes the log-mel by less is not a knob
SUSTAIN_DB = -10.0                     # median level just before note-off within 10 dB of the peak: sustained

# Descriptor (`trainer.evaluate.descriptors`) -> (knob name, a clearly audible change, its unit)
DESCRIPTORS = {
    "brightness": ("brightness", 1.0, "semitones of spectral centroid"),
    "decay": ("decay", 0.3, "log2 of the -20 dB decay time"),
    "attack": ("attack", 0.5, "log2 of the attack time"),
    "noise": ("noise", 2.0, "dB of spectral flatness"),
    "loudness": ("level", 3.0, "dB"),
}


class ExportError(UserError):
    """The export was refused (parity, contract); nothing was written."""


# --------------------------------------------------------------------------------------------------
# run folder

def load_run(run_dir: str | os.PathLike, which: str = "auto"):
    """(G, config, facts, encoder) from a run folder alone.

    which: "auto" (checkpoints/best.pt, the best validation, when the run kept one, else last.pt),
    "best" or "last" (`trainer.fit.run_checkpoint`). G and config come from
    `trainer.fit.load_generator(run_dir, ema=True, which)`; facts (`run_facts`): "steps" and "minutes"
    trained up to the exported weights, "checkpoint" (best.pt or last.pt) and, from last.pt, what
    the run recorded ("run_steps" and "run_minutes" when they differ, "ended_by", "steps_per_second",
    "hardware") and
    "validation" (the exported step's figures); encoder is the run's E (eval mode) of the same
    checkpoint when it trained one, else None.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run}: run folder not found; train one with `python -m trainer fit`")
    from trainer.fit import BEST_KEYS, load_checkpoint, load_generator, run_checkpoint

    path = run_checkpoint(run, which)
    G, config = load_generator(run, ema=True, which=which)
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    ck = load_checkpoint(path, BEST_KEYS) if path.name == "best.pt" else last
    facts: dict[str, Any] = {"steps": int(ck.get("step", 0)),
                             "minutes": round(float(ck.get("train_seconds", 0.0)) / 60.0, 2),
                             "checkpoint": path.name}
    if path.name == "best.pt" and int(last.get("step", 0)) != facts["steps"]:
        facts["run_steps"] = int(last.get("step", 0))
        facts["run_minutes"] = round(float(last.get("train_seconds", 0.0)) / 60.0, 2)
    for k in ("ended_by", "steps_per_second", "hardware"):
        if isinstance(last.get(k), (str, int, float)):
            facts[k] = last[k]
    valid = ck.get("valid") or _valid_at(last.get("valid_state"), int(ck.get("step", -1)))
    if valid:
        tr = config.get("train") or {}
        facts["validation"] = {**{k: v for k, v in valid.items() if k != "seconds"},
                               "every": tr.get("valid_every"), "latents": tr.get("valid_latents"),
                               "metric": tr.get("valid_metric")}
    encoder = None
    if ck.get("E") is not None:
        from trainer.models import build_encoder

        encoder = build_encoder(config)
        if encoder is not None:
            encoder.load_state_dict(ck["E"])
            encoder.eval()
    return G, config, facts, encoder


def _valid_at(state: dict[str, Any] | None, step: int) -> dict[str, Any] | None:
    """The validation record of `step` in a checkpoint's valid_state (None when it was not evaluated)."""
    for h in (state or {}).get("history") or []:
        if int(h.get("step", -1)) == step:
            return dict(h)
    return None


def encoder_codes(encoder, ds, max_notes: int = 512, batch: int = 16) -> np.ndarray:
    """Posterior means mu float32[M, Z] of up to `max_notes` real notes of `ds` (evenly spread)."""
    import torch

    idx = np.linspace(0, len(ds) - 1, min(max_notes, len(ds))).round().astype(np.int64)
    out = []
    with torch.no_grad():
        for s in range(0, len(idx), batch):
            mu, _ = encoder(torch.from_numpy(ds.audio_batch(idx[s:s + batch])))
            out.append(mu.float().numpy())
    return np.concatenate(out)


def dataset_info(config: dict[str, Any]) -> dict[str, Any]:
    """The dataset facts in a run's resolved config: sample_rate, note_samples, kind, pitch_range,
    velocities, drum_classes, and root / source when recorded. Looks in config["dataset"],
    config["data"], then the top level."""
    for key in ("dataset", "data"):
        d = config.get(key)
        if isinstance(d, dict) and ("pitch_range" in d or "kind" in d):
            return d
    return config


def _int_keys(d: dict | None) -> dict[int, str]:
    return {int(k): str(v) for k, v in (d or {}).items()}


# --------------------------------------------------------------------------------------------------
# ONNX

EXPORTERS = ("dynamo", "torchscript")


def onnx_bytes(G, latent_size: int, method: str = "dynamo") -> tuple[bytes, int]:
    """Serialise G to ONNX with weights inline. Returns (model bytes, opset).

    method "dynamo" (torch.export, opset 18: symbolic shapes, so lengths computed from tensor
    shapes stay right) or "torchscript" (tracing, opset 17: faster, but it can bake in shapes).
    """
    import torch

    args = (torch.zeros(2, latent_size), torch.tensor([60, 64], dtype=torch.int64), torch.full((2,), 0.5))
    names = dict(input_names=["z", "pitch", "velocity"], output_names=["audio"])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if method == "torchscript":
                buf = io.BytesIO()
                torch.onnx.export(G, args, buf, opset_version=OPSET, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={"z": {0: "B"}, "pitch": {0: "B"}, "velocity": {0: "B"},
                                                "audio": {0: "B"}}, **names)
                return buf.getvalue(), OPSET
            batch = torch.export.Dim("B", min=1, max=4096)
            prog = torch.onnx.export(G, args, dynamo=True, opset_version=DYNAMO_OPSET, verbose=False,
                                     dynamic_shapes={"z": {0: batch}, "pitch": {0: batch}, "velocity": {0: batch}},
                                     **names)
            return prog.model_proto.SerializeToString(), DYNAMO_OPSET
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types; the caller tries the next
        raise ExportError(f"{method} exporter: {str(e).splitlines()[0] if str(e) else type(e).__name__}"[:300]) from e


def write_onnx(data: bytes, path: Path, meta: dict[str, Any]) -> None:
    """Add metadata_props and save `data` as one self-contained .onnx file at `path`."""
    import onnx

    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=str(k), value=str(v))
    relative_source_paths(model)
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path), save_as_external_data=False)


def relative_source_paths(model) -> int:
    """Make the source file paths in node metadata (the dynamo exporter's stack traces) relative to the
    repository, so a preset names no machine's folders. Only metadata changes. Returns the count."""
    from trainer.commands import REPO

    prefix, count = str(REPO) + os.sep, 0
    for nodes in (model.graph.node, *(fn.node for fn in model.functions)):
        for node in nodes:
            for prop in node.metadata_props:
                if prefix in prop.value:
                    prop.value = prop.value.replace(prefix, "")
                    count += 1
    return count


def _ort_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or (os.cpu_count() or 1)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def _stft_mag(x: np.ndarray, n_fft: int = 2048, hop: int = 512) -> np.ndarray:
    """|STFT| of float[B, N] in float64 (`trainer.nn.stft`): float[B, frames, n_fft // 2 + 1]."""
    from trainer.nn import stft

    return stft.magnitude(np.asarray(x, np.float64), n_fft, hop)


def parity_check(G, onnx_path: Path, keys: list[int], latent_size: int, seed: int = 0,
                 tol: float = PARITY_TOL, details: dict[str, float] | None = None) -> float:
    """Max |Δ| between torch G and the ONNX graph at batch 1 and 8; raise ExportError when it fails.

    Passes when the whole-note max |Δ| <= `tol`, or, for a phase drift along long notes (module
    docstring, step 3), when the first PARITY_EARLY samples are within `tol`, the whole-note STFT
    magnitudes within PARITY_SPECTRAL_TOL of their peak and the whole-note max |Δ| under
    PARITY_DRIFT_CAP. Also refuses outputs that are not finite, outside [-1, 1], or of the wrong
    shape. Returns the whole-note max |Δ|; `details` (if given) receives all three figures.
    """
    import torch

    rng = np.random.default_rng(seed)
    try:
        sess = _ort_session(onnx_path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"{onnx_path}: ONNX Runtime cannot load the exported graph "
                          f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
    worst = early = spectral = 0.0
    n = int(G.note_samples)
    for b in (1, 8):
        z = rng.standard_normal((b, latent_size)).astype(np.float32)
        p = rng.choice(np.asarray(keys, np.int64), size=b)
        v = rng.uniform(0.05, 1.0, size=b).astype(np.float32)
        with torch.no_grad():
            ref = G(torch.from_numpy(z), torch.from_numpy(p), torch.from_numpy(v)).float().numpy()
        try:
            got = sess.run(["audio"], {"z": z, "pitch": p, "velocity": v})[0]
        except Exception as e:  # noqa: BLE001 - ORT raises its own types (Fail, RuntimeException)
            raise ExportError(f"{onnx_path}: ONNX Runtime fails on a batch of {b} "
                              f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        if got.shape != (b, n) or ref.shape != (b, n):
            raise ExportError(f"{onnx_path}: output shape {list(got.shape)} (torch {list(ref.shape)}), expected "
                              f"[{b}, {n}]; the generator breaks the [B, note_samples] contract")
        if not (np.isfinite(got).all() and np.isfinite(ref).all()):
            raise ExportError(f"{onnx_path}: the generator outputs NaN or Inf; check the checkpoint")
        peak = float(np.abs(ref).max())
        if peak > 1.0 + 1e-6:
            raise ExportError(f"{onnx_path}: the generator outputs peaks of {peak:.3f}, outside [-1, 1]; end the "
                              "model with tanh or a clamp")
        d = np.abs(got - ref)
        worst = max(worst, float(d.max()))
        early = max(early, float(d[:, :PARITY_EARLY].max()))
        S, T = _stft_mag(ref), _stft_mag(got)
        spectral = max(spectral, float((np.abs(S - T).max(axis=(1, 2)) / np.maximum(S.max(axis=(1, 2)), 1e-12)).max()))
    if details is not None:
        details.update({"max_abs": worst, "max_abs_attack": early, "spectral_rel": spectral})
    drift_ok = early <= tol and spectral <= PARITY_SPECTRAL_TOL and worst <= PARITY_DRIFT_CAP
    if not (worst <= tol or drift_ok):
        raise ExportError(f"{onnx_path}: ONNX Runtime differs from torch by max |Δ| = {worst:.3g} > {tol:g} "
                          f"(first {PARITY_EARLY} samples {early:.3g}, spectra {spectral:.3g} of the peak); "
                          "nothing was written. An op is exported wrongly: try another opset, or replace "
                          "the op (data-dependent control flow, in-place index writes)")
    return worst


# --------------------------------------------------------------------------------------------------
# knob directions

def _spread(keys: list[int], k: int) -> list[int]:
    if len(keys) <= k:
        return list(keys)
    idx = np.linspace(0, len(keys) - 1, k + 2)[1:-1].round().astype(int)
    return sorted({keys[i] for i in idx})


def _coarse_features(audio: np.ndarray, sr: int, segments: int = 8) -> np.ndarray:
    """Loudness-normalised log-mel dB pooled into `segments` time slices: float32[B, N] → [B, segments·80]."""
    from trainer.evaluate import log_mel

    lm = log_mel(audio, sr)                                            # [B, T, M]
    t = lm.shape[1] // segments * segments
    return lm[:, :t].reshape(len(lm), segments, -1, lm.shape[2]).mean(axis=2).reshape(len(lm), -1)


def knob_directions(gen, latent_size: int, keys: list[int], velocity: float, sr: int, n_knobs: int = 4,
                    default: np.ndarray | None = None, pitched: bool = True, n_samples: int = KNOB_SAMPLES,
                    seed: int = 0, ccs: tuple[int, ...] = DEFAULT_CCS,
                    candidates: np.ndarray | None = None) -> tuple[list[dict[str, Any]], str]:
    """Find, rank, measure and name the latent directions that the knobs move along.

    gen(z float32[B, Z], pitch int64[B], velocity float32[B]) -> audio float32[B, N] at `sr`.
    GANSpace-style, on the sound itself so it works for any generator: principal components of the
    notes' loudness-normalised log-mel features over `n_samples` random latents, mapped back to latent
    directions by regression (`_latent_directions`; `candidates`, e.g. an encoder's code axes, rank
    alongside). The audible ones are kept (`_pick_knobs`), named by the descriptor that changes most
    and signed so that CC up increases it (`_make_knob`); ranges are ±KNOB_SIGMA prior standard
    deviations around `default`, stored as [-r, r·63/64] so that CC 64 is the default exactly, and
    halved for pitched models while an end leaves ±50 cents. CC 74 goes to the brightness knob.
    Returns (knobs as manifest dicts, a one-paragraph description of the method for the card).
    """
    rng = np.random.default_rng(seed)
    z0 = np.zeros(latent_size, np.float32) if default is None else np.asarray(default, np.float32)
    kk = _spread(list(keys), 3)
    n_samples = max(n_samples, 8)
    zs = rng.standard_normal((n_samples, latent_size)).astype(np.float32)
    dirs = _latent_directions(gen, zs, kk, velocity, sr, n_knobs, candidates)
    if not dirs:
        return [], "the generator ignores its latent: no knob direction changes the sound"
    ends = _knob_ends(gen, z0, kk, velocity)
    chosen = _pick_knobs(_measure_directions(dirs, ends, sr), n_knobs)
    in_tune = _in_tune(gen(np.repeat(z0[None], len(kk), 0), np.asarray(kk, np.int64),
                           np.full(len(kk), velocity, np.float32)), kk, sr) if pitched else None
    knobs: list[dict[str, Any]] = []
    used_names: set[str] = set()
    for rank, measured in enumerate(chosen):
        knobs.append(_make_knob(measured, rank, used_names, ends, kk, sr, in_tune))
    _assign_ccs(knobs, ccs)
    method = (("principal axes of the encoder's codes of real notes and " if candidates is not None else "")
              + f"principal components of loudness-normalised log-mel features of {n_samples} random latents "
              f"at MIDI {kk} (velocity {velocity:.2f}), mapped back to latent directions by regression, "
              f"ranked by the log-mel distance between each knob's ends, named by the descriptor that changes "
              f"most, ranges ±{KNOB_SIGMA:g} prior standard deviations (see trainer/export.py knob_directions)")
    return [{"cc": k["cc"], "name": k["name"], "description": k["description"], "direction": k["direction"],
             "range": k["range"], "default": k["default"]} for k in knobs], method


def _latent_directions(gen, zs: np.ndarray, kk: list[int], velocity: float, sr: int, n_knobs: int,
                       candidates: np.ndarray | None) -> list[np.ndarray]:
    """Unit, mutually orthogonal latent directions float64[Z]: the `candidates` first, then the
    regressions of the latents zs float32[S, Z] on the principal components of their notes' features."""
    n_samples, latent_size = zs.shape
    feats = []
    for k in kk:
        audio = gen(zs, np.full(n_samples, k, np.int64), np.full(n_samples, velocity, np.float32))
        feats.append(_coarse_features(audio, sr))
    f = np.concatenate(feats, axis=1).astype(np.float64)
    f -= f.mean(axis=0)
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    n_cand = int(min(2 * n_knobs, latent_size, n_samples - 1, int((s > 1e-9 * max(s[0], 1e-30)).sum())))
    dirs: list[np.ndarray] = []
    for w in ([] if candidates is None else list(np.asarray(candidates, np.float64))):
        for d in dirs:
            w = w - (w @ d) * d
        if np.linalg.norm(w) > 1e-8:
            dirs.append(w / np.linalg.norm(w))
    for c in range(n_cand):
        score = u[:, c] * s[c]
        w = zs.T.astype(np.float64) @ score / max(float(score @ score), 1e-30)
        raw = np.linalg.norm(w)
        for d in dirs:
            w -= (w @ d) * d
        norm = np.linalg.norm(w)
        # A component whose direction mostly lies along earlier ones is a nonlinear echo of them
        # (e.g. their square), not a new control: skip it.
        if norm > 1e-8 and norm >= 0.5 * raw:
            dirs.append(w / norm)
    return dirs


def _knob_ends(gen, z0: np.ndarray, kk: list[int], velocity: float):
    """ends(d, r) -> (notes at z0 - r·d, notes at z0 + r·d), each float32[len(kk), N] at the keys kk."""
    def ends(d: np.ndarray, r: float):
        lo = np.repeat((z0 - r * d)[None], len(kk), 0).astype(np.float32)
        hi = np.repeat((z0 + r * d)[None], len(kk), 0).astype(np.float32)
        kv = np.asarray(kk, np.int64)
        vv = np.full(len(kk), velocity, np.float32)
        return gen(lo, kv, vv), gen(hi, kv, vv)
    return ends


def _measure_directions(dirs: list[np.ndarray], ends, sr: int) -> list[tuple]:
    """(effect dB, direction, mean descriptor change, descriptors at -end, at +end) per direction, by effect."""
    from trainer.evaluate import descriptors, log_mel_distance

    measured = []
    for d in dirs:
        a_lo, a_hi = ends(d, KNOB_SIGMA)
        effect = float(np.mean(log_mel_distance(a_lo, a_hi, sr)))
        dl, dh = descriptors(a_lo, sr), descriptors(a_hi, sr)
        change = {}
        for key in DESCRIPTORS:
            if key in ("decay", "attack"):
                delta = np.log2(np.maximum(dh[key], 0.005) / np.maximum(dl[key], 0.005))
            else:
                delta = dh[key] - dl[key]
            change[key] = float(np.mean(delta))
        measured.append((effect, d, change, dl, dh))
    measured.sort(key=lambda t: -t[0])
    return measured


def _pick_knobs(measured: list[tuple], n_knobs: int) -> list[tuple]:
    """The `n_knobs` strongest audible directions, preferring ones whose main descriptor no stronger one has."""
    audible = [m for m in measured if m[0] >= MIN_EFFECT_DB]

    def primary(m) -> str:
        return max(m[2], key=lambda k: abs(m[2][k]) / DESCRIPTORS[k][1])

    firsts, seen = [], set()
    for m in audible:
        if primary(m) not in seen:
            seen.add(primary(m))
            firsts.append(m)
    chosen = (firsts + [m for m in audible if not any(m is f for f in firsts)])[:n_knobs]
    chosen.sort(key=lambda t: -t[0])
    return chosen


def _in_tune(audio: np.ndarray, kk: list[int], sr: int) -> np.ndarray:
    """bool[len(kk)]: the notes float32[K, N] within ±50 cents of their keys."""
    from trainer.evaluate import f0_cents_error

    return np.abs(np.nan_to_num(f0_cents_error(audio, kk, sr), nan=1e9)) <= 50


def _knob_name(change: dict[str, float], used_names: set[str], rank: int) -> tuple[str, str]:
    """(name, descriptor): the most audible descriptor names the knob; a name already taken falls to the
    next clearly audible one, else to a numbered one ("decay 2"), else to "timbre N"."""
    scores = sorted(((abs(v) / DESCRIPTORS[k][1], k) for k, v in change.items()), reverse=True)
    key, name = scores[0][1], None
    for i, (sc, k) in enumerate(scores):
        if DESCRIPTORS[k][0] not in used_names and (sc >= 1.0 or i == 0):
            name, key = DESCRIPTORS[k][0], k
            break
    if name is None and scores[0][0] >= 1.0:
        base, num = DESCRIPTORS[key][0], 2
        while f"{base} {num}" in used_names:
            num += 1
        name = f"{base} {num}"
    if name is None:
        name = f"timbre {rank + 1}"
    return name, key


def _make_knob(measured: tuple, rank: int, used_names: set[str], ends, kk: list[int], sr: int,
               in_tune: np.ndarray | None) -> dict[str, Any]:
    """A knob (no CC yet) for one measured direction: named, signed so that CC up increases its
    descriptor, its range halved (down to 0.5) while either end puts an in-tune key out of tune."""
    effect, d, change, dl, dh = measured
    name, key = _knob_name(change, used_names, rank)
    used_names.add(name)
    if change[key] < 0:
        d = -d
        dl, dh = dh, dl
        change = {k: -v for k, v in change.items()}
    r = KNOB_SIGMA
    if in_tune is not None and in_tune.any():
        while r > 0.5:
            a_lo, a_hi = ends(d, r)
            if all(_in_tune(a, kk, sr)[in_tune].all() for a in (a_lo, a_hi)):
                break
            r /= 2
    return {"name": name, "direction": [float(x) for x in d], "range": [-r, r * 63 / 64], "default": 64,
            "description": _describe(name, key, change, dl, dh, effect, r)}


def _assign_ccs(knobs: list[dict[str, Any]], ccs: tuple[int, ...]) -> None:
    """CC 74, a keyboard's brightness control, to the brightness knob (to another only when every other
    CC is taken); the others in rank order."""
    free = [c for c in ccs if c != 74] + [c for c in ccs if c == 74]
    bright = next((k for k in knobs if k["name"] == "brightness"), None)
    if bright is not None and 74 in free:
        bright["cc"] = 74
        free.remove(74)
    for k in knobs:
        if "cc" not in k:
            k["cc"] = free.pop(0) if free else next(c for c in range(1, 128) if c not in {x.get("cc") for x in knobs})


# --------------------------------------------------------------------------------------------------
# family presets: timbres and the knobs between them

def timbre_entries(codes: np.ndarray, instruments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The manifest's `timbres`: one entry per training instrument (config data.instruments, in order)
    with its learned code float32[n, Z] as `latent`."""
    codes = np.asarray(codes, np.float64)
    if len(codes) != len(instruments):
        raise ExportError(f"the run holds {len(codes)} timbre codes but its data set lists {len(instruments)} "
                          "instruments; export a run trained on this data set")
    out = []
    for i, (c, inst) in enumerate(zip(codes, instruments, strict=True)):
        if not np.isfinite(c).all():
            raise ExportError(f"timbre code {i} ({inst.get('name')!r}) is not finite; the run diverged")
        out.append({"name": str(inst.get("name") or inst.get("id") or f"timbre {i + 1}"),
                    "source": str(inst.get("source") or ""), "bank": inst.get("bank"),
                    "program": inst.get("program"), "gm_kind": inst.get("gm_kind"),
                    "latent": [float(x) for x in c]})
    return out


def default_timbre(timbres: list[dict[str, Any]]) -> int:
    """The default timbre's index: the lowest (bank, program) of the first source (SoundFont) listed."""
    first = timbres[0]["source"]
    mine = [i for i, t in enumerate(timbres) if t["source"] == first]
    return min(mine, key=lambda i: (timbres[i]["program"] if timbres[i]["program"] is not None else 999,
                                    timbres[i]["bank"] if timbres[i]["bank"] is not None else 999, i))


def _code_span(codes: np.ndarray, z0: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, float, float, int]:
    """(d signed, lo, hi, d0): a knob along unit `d` from z0 spanning the codes' projections (see
    `timbre_knobs`), signed so that the default CC d0 sits in the lower half."""
    proj = (codes - np.asarray(z0, np.float64)) @ d
    if -proj.min() > proj.max():
        d, proj = -d, -proj
    w = max(float(proj.max() - proj.min()), 1e-3)
    d0 = int(np.clip(round(127 * -float(proj.min()) / w), 0, 127))
    # widen for the rounding of d0, so both ends still reach the farthest codes
    if d0 > 0:
        w = max(w, -float(proj.min()) * 127 / d0)
    if d0 < 127:
        w = max(w, float(proj.max()) * 127 / (127 - d0))
    return d, -w * d0 / 127, w * (127 - d0) / 127, d0


def measured_timbre_axes(gen, codes: np.ndarray, z0: np.ndarray, keys: list[int], velocity: float, sr: int,
                         n_axes: int = 4, max_cos: float = 0.7, pitched: bool = True,
                         names: list[str] | None = None, velocities: list[float] | None = None
                         ) -> tuple[np.ndarray, list[str]]:
    """Knob directions for a family, by measurement from the default timbre z0: (axes float64[k, Z],
    a note on each).

    Candidates, each spanning the codes from z0 (`_code_span`): the codes' principal axes, the line
    between the timbres at the ends of each heard axis (PCA of their coarse log-mel at 3 keys), and
    the line towards each timbre. Strongest first by the log-mel distance between the two ends,
    among those whose level stays within KNOB_LEVEL_DB of z0's on the KNOB_GRID (as `trainer eval`
    measures it: C4 at `velocities`, keys 36-84 at `velocity`), which the engine's gain
    (`synth.latent.level_gain`) takes back to the timbre's level, and whose C4 moves smoothly over
    the grid (KNOB_STEP_SHARE); none within `max_cos` of one taken,
    none out of tune on the grid (`pitched`), no more than the codes span. Why: principal axes alone
    left two of `keys`' four knobs under 6 dB (docs/decisions-trainer.md, 2026-12-05)."""
    from trainer.evaluate import log_mel as eval_log_mel
    from trainer.evaluate import log_mel_distance, pitch_accuracy
    from trainer.family_eval import level_db, smoothness

    codes = np.asarray(codes, np.float64)
    z0 = np.asarray(z0, np.float64)
    kk = np.asarray(_spread(list(keys), 3), np.int64)
    n = len(codes)
    pk = np.asarray([k for k in (36, 48, 60, 72, 84) if min(keys) <= k <= max(keys)] or [int(kk[1])], np.int64)

    def play(zs: np.ndarray, at: np.ndarray = kk) -> np.ndarray:
        z = np.repeat(zs.astype(np.float32), len(at), 0)
        return gen(z, np.tile(at, len(zs)), np.full(len(z), velocity, np.float32))

    _, sv, vt = np.linalg.svd(codes - codes.mean(axis=0), full_matrices=False)
    total = float((sv ** 2).sum()) or 1.0
    cands = [(vt[k], f"latent principal axis {k + 1}") for k in range(min(n - 1, len(sv)))
             if sv[k] ** 2 > 1e-6 * total]
    n_axes = min(n_axes, len(cands))      # no more knobs than the codes span dimensions
    feats = _coarse_features(play(codes), sr).reshape(n, -1).astype(np.float64)
    u, fs, _ = np.linalg.svd(feats - feats.mean(axis=0), full_matrices=False)
    for k in range(min(n - 1, len(fs))):
        score = u[:, k] * fs[k]
        lo_i, hi_i = int(np.argmin(score)), int(np.argmax(score))
        cands.append((codes[hi_i] - codes[lo_i], f"heard axis {k + 1}"))
    cands += [(codes[i] - z0, f"towards {names[i] if names else f'timbre {i}'}") for i in range(n)]
    scale = max(1.0, float(np.linalg.norm(codes, axis=1).max()))
    spans, labels = [], []
    for d, label in cands:
        norm = float(np.linalg.norm(d))
        if norm > 1e-6 * scale:
            spans.append(_code_span(codes, z0, d / norm))
            labels.append(label)
    # Each candidate: the effect between its ends, and on the knob grid its level's largest distance
    # from z0's, measured as `trainer eval` does (C4 at `velocities`, its pitch keys at `velocity`).
    vl = list(velocities or [velocity])
    lk = np.asarray([60] * len(vl) + pk.tolist(), np.int64)        # C4 at each velocity, then pk
    lv = np.asarray(vl + [velocity] * len(pk), np.float32)

    def levels(zs: np.ndarray) -> tuple[np.ndarray, bool]:
        """Each latent's mean level over (lk, lv), and whether C4's log-mel moves smoothly over them
        (monotonic, no step over KNOB_STEP_SHARE of the span), as eval's sweep measures them."""
        a = gen(np.repeat(zs.astype(np.float32), len(lk), 0), np.tile(lk, len(zs)), np.tile(lv, len(zs)))
        lev = level_db(a, sr).reshape(len(zs), -1).mean(axis=1)
        lm = [eval_log_mel(x[:len(vl)], sr) for x in a.reshape(len(zs), len(lk), -1)]
        sm = smoothness([[float(np.abs(x - y).mean()) for y in lm] for x in lm])
        return lev, bool(sm["monotonic"] and sm["max_step_share"] <= KNOB_STEP_SHARE)

    lev0 = float(levels(z0[None])[0][0])
    effect, lev, smooth = [], [], []
    for d, lo, hi, _ in spans:
        grid = np.stack([z0 + (lo + (hi - lo) * g / 127) * d for g in KNOB_GRID])
        a = play(grid[[0, -1]])
        effect.append(float(np.mean(log_mel_distance(a[:len(kk)], a[len(kk):], sr))))
        gl, ok = levels(grid)
        lev.append(float(np.abs(gl - lev0).max()))
        smooth.append(ok)

    def in_tune(j: int) -> bool:    # at every grid position, KNOB_PITCH_ACC of the keys within 50 cents (pYIN)
        d, lo, hi, _ = spans[j]
        for g in KNOB_GRID:
            a = play((z0 + (lo + (hi - lo) * g / 127) * d)[None], pk)
            if pitch_accuracy(a, pk, sr)[0] < KNOB_PITCH_ACC:
                return False
        return True

    axes, notes = [], []
    # The strongest first among the smooth ones whose level stays within KNOB_LEVEL_DB of the default
    # timbre's (the engine's level_gain brings it back), then the rest; pitched ones in tune.
    for j in sorted(range(len(spans)), key=lambda j: (lev[j] > KNOB_LEVEL_DB or not smooth[j], -effect[j])):
        d = spans[j][0]
        if all(abs(float(d @ a)) <= max_cos for a in axes) and (not pitched or in_tune(j)):
            axes.append(d)
            notes.append(f"{labels[j]}; {effect[j]:.1f} dB between its ends at 3 keys, level within "
                         f"{lev[j]:.1f} dB of the default's on the CC grid")
        if len(axes) == n_axes:
            break
    return np.asarray(axes, np.float64).reshape(len(axes), codes.shape[1]), notes


def timbre_knobs(codes: np.ndarray, z0: np.ndarray, names: list[str], n_knobs: int = 4,
                 ccs: tuple[int, ...] = DEFAULT_CCS, axes: tuple[np.ndarray, list[str]] | None = None
                 ) -> tuple[list[dict[str, Any]], str]:
    """Knobs along axes through the timbre codes float32[n, Z]: `axes` (directions, a note on each)
    as `measured_timbre_axes` gives them, else the codes' principal axes (PCA in latent units).

    At most min(n_knobs, n - 1) principal axes with a share of the variance above 1e-6. Each knob's
    range spans the codes along its axis, [min, max] of (code - z0)·axis, and its default CC d0 is
    where z0 lies in that span, the range adjusted so that CC d0 gives offset 0 exactly (lo = -w·d0/127,
    hi = w·(127 - d0)/127, w = max - min, widened for the rounding): with the default timbre at one
    end of an axis its knob starts at CC 0 or 127. Axes are signed so that the default sits in the
    lower half (`_code_span`). Returns (knobs, method)."""
    codes = np.asarray(codes, np.float64)
    if axes is None:
        _, s, vt = np.linalg.svd(codes - codes.mean(axis=0), full_matrices=False)
        var = s ** 2
        total = float(var.sum())
        keep = [k for k in range(min(n_knobs, len(codes) - 1, len(var))) if total > 0 and var[k] > 1e-6 * total]
        dirs = [vt[k] for k in keep]
        notes = [f"{100 * var[k] / total:.0f}% of the spread of the {len(codes)} timbres" for k in keep]
    else:
        dirs, notes = list(axes[0][:n_knobs]), list(axes[1][:n_knobs])
    knobs = []
    for rank, (v, note) in enumerate(zip(dirs, notes, strict=True)):
        d, lo, hi, d0 = _code_span(codes, z0, v / np.linalg.norm(v))
        proj = (codes - np.asarray(z0, np.float64)) @ d
        lo_i, hi_i = int(np.argmin(proj)), int(np.argmax(proj))
        knobs.append({"cc": ccs[rank] if rank < len(ccs) else next(x for x in range(1, 128) if x not in ccs),
                      "name": f"morph {rank + 1}",
                      "description": f"timbre axis {rank + 1} ({note}): CC 0 {names[lo_i]}, CC 127 "
                                     f"{names[hi_i]}; CC {d0} the default timbre",
                      "direction": [float(x) for x in d], "range": [lo, hi], "default": d0})
    if axes is None:
        method = (f"principal axes of the {len(codes)} learned timbre codes (one per training instrument; "
                  f"PCA in latent units), ranges spanning the codes along each axis from the default timbre "
                  f"(see trainer/export.py timbre_knobs)")
    else:
        method = (f"the directions through the {len(codes)} learned timbres whose ends sound furthest apart "
                  f"from the default timbre, by measurement: candidates are the codes' principal axes, the "
                  f"lines between the timbres at the ends of each heard axis of variation and the lines towards "
                  f"each timbre, no two within 45 degrees; each spans the codes from the default timbre (see "
                  f"trainer/export.py measured_timbre_axes, timbre_knobs)")
    return knobs, method


def engine_knobs(kind: str, knobs: list[dict[str, Any]], note_seconds: float,
                 ccs: tuple[int, ...] = DEFAULT_CCS) -> list[dict[str, Any]]:
    """Drum-machine knobs for a kit, on the CCs the latent knobs left free: `tune` (the voices play
    every hit 12 semitones lower to 12 higher, faster or slower, as a drum machine's tune does; no
    regeneration) and `decay` (each hit fades to -60 dB in as little as 50 ms; at CC 127 the hits are
    as trained). A kit's latent moves its sound too little to carry knobs of its own
    (docs/decisions-trainer.md). Pitched presets get none: their knobs are timbre directions."""
    if kind != "drums":
        return []
    taken = {k["cc"] for k in knobs}
    free = [c for c in ccs if c not in taken] + [c for c in (72, 73, 75, 77, 78, 79) if c not in taken]
    longest = max(0.1, float(note_seconds))
    return [   # decay on the first free CC (74, a keyboard's cutoff knob, on a kit without latent knobs)
        {"cc": free[1], "name": "tune", "kind": "tune", "range": [-12.0, 12.0 * 63 / 64], "default": 64,
         "description": "transposes the whole kit: CC 0 an octave down, 64 as trained, 127 up 11.8 semitones; the hits "
                        "play slower or faster (shorter), like a drum machine's tune; answers at once"},
        {"cc": free[0], "name": "decay", "kind": "decay", "range": [0.05, longest], "default": 127,
         "description": f"shortens every hit: CC 127 as trained, lower values fade each hit (after its first "
                        f"5 ms) to -60 dB within {longest:g} s down to 0.05 s; the kit is re-cached as it settles"},
    ]


def _describe(name: str, key: str, change: dict[str, float], dl, dh, effect: float, r: float) -> str:
    def one(k: str) -> str:
        if k == "brightness":
            return f"spectral centroid {change[k]:+.1f} semitones"
        if k == "decay":
            return f"decay (-20 dB) {np.mean(dl[k]):.2f} → {np.mean(dh[k]):.2f} s"
        if k == "attack":
            return f"attack {1e3 * np.mean(dl[k]):.0f} → {1e3 * np.mean(dh[k]):.0f} ms"
        if k == "noise":
            return f"spectral flatness {change[k]:+.1f} dB"
        return f"level {change[k]:+.1f} dB"

    others = [k for k in DESCRIPTORS if k != key and abs(change[k]) >= DESCRIPTORS[k][1]]
    parts = [one(key)] + [one(k) for k in others]
    return f"CC 0 → 127: {'; '.join(parts)} (log-mel change {effect:.1f} dB between the ends)"


# --------------------------------------------------------------------------------------------------
# envelope facts

def envelope_facts(audio: np.ndarray, sr: int, hold_seconds: float | None, kind: str
                   ) -> tuple[str, str, float, str]:
    """(sustain mode, evidence, release seconds, evidence) from notes float32[B, N] at `sr`.

    A note is sustained when its level just before note-off (the 100 ms ending 50 ms before
    `hold_seconds`, or the note's last 10 % when the hold time is unknown) is within 10 dB of its
    peak; the preset loops when the median note is. Release: the median time after note-off for the
    level to fall 30 dB (measurable only when the hold time is known and the notes run past it);
    otherwise 0.3 s. Drum hits play out: release = the note length (at most 30 s).
    """
    from trainer.evaluate import frame_levels_db

    n = audio.shape[1]
    dur = n / sr
    if kind == "drums":
        return "oneshot", "drum hits are one-shots", float(min(30.0, dur)), "drum hits play out after note-off"
    lev = frame_levels_db(audio, sr)                                   # 10 ms frames
    peak = lev.max(axis=1)
    loud = peak > peak.max() - 60                                      # ignore silent notes
    if not loud.any():
        return "oneshot", "the notes are silent", 0.3, "default"
    lev, peak = lev[loud], peak[loud]
    T = lev.shape[1]
    if hold_seconds and 0.2 < hold_seconds <= dur:
        off = int(hold_seconds / 0.01)
        a, b = max(0, off - 15), max(1, off - 5)
        where = f"just before note-off at {hold_seconds:.2f} s"
    else:
        off = None
        a, b = int(0.88 * T), max(int(0.88 * T) + 1, T - 2)
        where = "over the note's last 10 %"
    drop = float(np.median(10 * np.log10(np.mean(10 ** (lev[:, a:b] / 10), axis=1)) - peak))
    mode = "loop" if drop > SUSTAIN_DB else "oneshot"
    evidence = f"median level {where} is {drop:.0f} dB re the peak"
    release, rel_ev = 0.3, "default (no note-off in the data)"
    if off is not None and off + 5 < T:
        at_off = 10 * np.log10(np.mean(10 ** (lev[:, max(0, off - 3):off] / 10), axis=1))
        times = []
        for row, l0 in zip(lev, at_off, strict=True):
            below = np.nonzero(row[off:] < l0 - 30)[0]
            times.append((below[0] if len(below) else T - off) * 0.01)
        release = float(np.clip(np.median(times), 0.02, 3.0))
        rel_ev = "median time for the level to fall 30 dB after note-off in the data"
    return mode, evidence, release, rel_ev


def velocity_curve(audio: np.ndarray, keys: np.ndarray, velocities: np.ndarray, sr: int) -> float:
    """Exponent c of amplitude ∝ (v/127)^c: the slope of level (dB) against 20·log10(v/127) within each key.

    audio float32[B, N] at `sr`, keys int[B], velocities float[B] as MIDI 1..127. 1.0 when the
    notes hold fewer than two velocities of one key.
    """
    from trainer.evaluate import descriptors

    level = descriptors(audio, sr)["loudness"]
    x = 20 * np.log10(np.asarray(velocities, np.float64) / 127.0)
    keys = np.asarray(keys)
    xs, ys = [], []
    for k in np.unique(keys):
        m = keys == k
        if len(np.unique(x[m])) >= 2:
            xs.append(x[m] - x[m].mean())
            ys.append(level[m] - level[m].mean())
    if not xs:
        return 1.0
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    c = float(xs @ ys / max(float(xs @ xs), 1e-12))
    return float(np.clip(c if math.isfinite(c) else 1.0, 0.1, 10.0))


# --------------------------------------------------------------------------------------------------
# the export

def _real_notes(root: Path | None, sr: int, keys: list[int], n_keys: int = 12):
    """(dataset, indices): every note (all velocities, all splits) of up to `n_keys` keys spread over
    `keys`, for the envelope facts, the velocity curve and the grid; None without a usable dataset."""
    if root is None or not (Path(root) / "manifest.json").is_file():
        return None
    from trainer.data import OneShotDataset

    ds = OneShotDataset(root)
    if not len(ds) or ds.info["sample_rate"] != sr:
        return None
    present = sorted(set(ds.pitches.tolist()) & set(keys))
    if not present:
        return None
    idx = np.nonzero(np.isin(ds.pitches, _spread(present, n_keys)))[0]
    return ds, idx


def choose_default_latent(gen, root: Path, sr: int, keys: list[int], z_start: np.ndarray, start_name: str = "",
                          seed: int = 0,
                          n_notes: int = 64, n_random: int = 32, rounds: tuple[float, ...] = (0.5, 0.25, 0.12),
                          per_round: int = 12) -> tuple[np.ndarray, str] | None:
    """The latent whose notes sound closest to the instrument: (z, how it was chosen) or None.

    A GAN's latent picks one timbre out of those it learned; the synth plays one latent at a time,
    so the default should be the instrument itself rather than the prior's centre. Candidates:
    `z_start`, `n_random` draws from N(0, I), then `rounds` of `per_round` perturbations (the
    given scales) around the best so far. Score: mean log-mel distance (`trainer.evaluate`) to up to
    `n_notes` real notes of the train and valid splits, spread over pitch and velocity, generated
    at their pitch and velocity. The test split is never looked at, so `trainer eval` stays an
    honest held-out figure. `gen(z, pitch, velocity)` is the exported ONNX generator.
    """
    from trainer.data import OneShotDataset
    from trainer.evaluate import log_mel_distance

    if not (Path(root) / "manifest.json").is_file():
        return None
    ds = OneShotDataset(root)
    if not len(ds) or ds.info["sample_rate"] != sr:
        return None
    ok = np.isin(ds.pitches, keys) & (np.asarray([n["split"] for n in ds.notes]) != "test")
    idx = np.nonzero(ok)[0]
    if len(idx) < 4:
        return None
    order = idx[np.lexsort((ds.velocities[idx], ds.pitches[idx]))]
    idx = order[np.linspace(0, len(order) - 1, min(n_notes, len(order))).round().astype(int)]
    idx = np.unique(idx)
    real = ds.audio_batch(idx)
    pk, vel = ds.pitches[idx].astype(np.int64), ds.velocities[idx].astype(np.float32)

    def score(z: np.ndarray) -> float:
        return float(log_mel_distance(real, gen(np.repeat(z[None], len(idx), 0), pk, vel), sr).mean())

    rng = np.random.default_rng(seed + 7)
    Z = len(z_start)
    best_z, best = np.asarray(z_start, np.float32), score(np.asarray(z_start, np.float32))
    start = best
    tried = 1
    for z in rng.standard_normal((n_random, Z)).astype(np.float32):
        s, tried = score(z), tried + 1
        if s < best:
            best_z, best = z, s
    for scale in rounds:
        for dz in rng.standard_normal((per_round, Z)).astype(np.float32):
            z = (best_z + scale * dz).astype(np.float32)
            s, tried = score(z), tried + 1
            if s < best:
                best_z, best = z, s
    doc = (f"the best of {tried} candidate latents (the start, {n_random} prior draws, then local search) by "
           f"log-mel distance to {len(idx)} real train/valid notes: {best:.2f} dB against {start:.2f} dB for "
           f"the start ({start_name or 'given'}); the test split is not used")
    return best_z.astype(np.float32), doc


def _describe_preset(arch: str, kind: str, data: dict[str, Any]) -> str:
    what = data.get("source preset") or (Path(str(data["root"])).name if data.get("root") else None)
    sf = Path(str(data["source soundfont"])).name if data.get("source soundfont") else None
    where = f"{what} ({sf})" if what and sf else (what or "its dataset")
    return f"{'Drum kit' if kind == 'drums' else 'Pitched instrument'}: a {arch} GAN generator trained on {where}"


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {platform.system()}"


def _train_facts(config: dict[str, Any], run_facts: dict[str, Any] | None) -> dict[str, Any]:
    """steps / minutes actually trained, the budgets, loss, batch, seed and hardware of a run."""
    tr = config.get("train") if isinstance(config.get("train"), dict) else {}
    out: dict[str, Any] = {}
    facts = run_facts or {}
    out["steps"] = facts.get("steps", config.get("steps"))
    out["minutes"] = facts.get("minutes", config.get("minutes"))
    budget = {k: tr[k] for k in ("steps", "minutes") if k in tr}
    if budget:
        out["budget"] = budget
    for k in ("checkpoint", "run_steps", "run_minutes", "ended_by", "steps_per_second", "validation"):
        if k in facts:
            out[k] = facts[k]
    for k in ("loss", "batch", "spectral_weight", "encoder", "ema"):
        if k in tr:
            out[k] = tr[k]
    from trainer.config import TRAIN_ABSENT

    regs = {k: tr[k] for k in ("adv_weight", "augment", "r1_gamma", "r1_every", "fm_weight", "d_start")
            if k in tr and (k == "adv_weight" or tr[k] != TRAIN_ABSENT.get(k))}
    if not regs.get("r1_gamma"):
        regs.pop("r1_every", None)
    if regs:
        out["discriminator"] = regs
    if tr.get("div_weight"):
        out["diversity_floor"] = {k: tr[k] for k in ("div_weight", "div_target_db") if k in tr}
    if tr.get("timbres"):
        out["timbres"] = {k: tr[k] for k in ("timbre_sigma", "timbre_radius") if k in tr}
    if "seed" in config:
        out["seed"] = config["seed"]
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    hw = facts.get("hardware") or config.get("hardware") or run.get("hardware")
    if hw:
        out["hardware"] = hw
    else:
        dev = run.get("device", "?")
        out["hardware"] = f"not recorded by the run (device setting {dev!r}); exported on {_hardware()}"
    return out


@dataclass
class _Facts:
    """What export needs to know about a generator and its data (from G and the run config)."""
    info: dict[str, Any]
    sr: int
    n: int
    Z: int
    kind: str
    drum_classes: dict[int, str]
    lo: int
    hi: int
    keys: list[int]
    layers: list[int]
    arch: Any
    arch_name: str
    params: int = 0

    @property
    def conditioned(self) -> bool:
        return len(self.layers) > 1

    @property
    def v_mid(self) -> float:
        return self.layers[len(self.layers) // 2] / 127.0


def _export_facts(G, config: dict[str, Any], run_dir) -> _Facts:
    """Sample rate, note length, latent size, kind, keys and velocity layers; UserError when missing."""
    info = dataset_info(config)
    sr = int(getattr(G, "sample_rate", 0) or info.get("sample_rate", 0))
    n = int(getattr(G, "note_samples", 0) or info.get("note_samples", 0))
    Z = int(getattr(G, "latent_size", 0) or config.get("latent_size", 0))
    if not (sr and n and Z):
        raise UserError(f"{run_dir or 'run'}: the generator lacks sample_rate / note_samples / latent_size")
    kind = str(info.get("kind", "pitched"))
    drum_classes = _int_keys(info.get("drum_classes")) if kind == "drums" else {}
    if kind == "drums" and not drum_classes:
        raise UserError(f"{run_dir or 'run'}: a drum run's config must list drum_classes (key -> class)")
    pr = [min(drum_classes), max(drum_classes)] if drum_classes else info.get("pitch_range")
    if not pr:
        raise UserError(f"{run_dir or 'run'}: config.json lacks the dataset's pitch_range")
    lo, hi = int(pr[0]), int(pr[1])
    keys = sorted(drum_classes) if drum_classes else list(range(lo, hi + 1))
    layers = sorted({int(v) for v in (info.get("velocities") or [127])})
    arch = config.get("arch")
    arch_name = arch.get("name", str(arch)) if isinstance(arch, dict) else str(arch or type(G).__name__)
    return _Facts(info, sr, n, Z, kind, drum_classes, lo, hi, keys, layers, arch, arch_name)


def _export_graph(G, f: _Facts, tmp: Path, dest: Path, name: str, seed: int, tolerance: float,
                  exporters: tuple[str, ...], say) -> tuple[Path, int, dict[str, float]]:
    """generator.onnx in `tmp` from the first exporter whose graph passes the parity check:
    (path, opset, parity figures {"max_abs", "max_abs_attack", "spectral_rel"})."""
    meta = {"name": name, "sample_rate": f.sr, "note_samples": f.n, "pitch_lo": f.lo, "pitch_hi": f.hi,
            "latent_size": f.Z, "arch": f.arch_name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    onnx_path = tmp / "generator.onnx"
    errors = []
    for method in exporters:
        say(f"ONNX export of {f.arch_name} ({f.params:,} parameters, {method} exporter)")
        try:
            data, opset = onnx_bytes(G, f.Z, method)
            write_onnx(data, onnx_path, meta)
            parity: dict[str, float] = {}
            parity_check(G, onnx_path, f.keys, f.Z, seed=seed, tol=tolerance, details=parity)
            break
        except ExportError as e:
            errors.append(str(e))
            say(f"refused: {e}")
    else:
        raise ExportError(f"{dest}: no exporter gave a graph that matches torch, nothing was written: "
                          + " | ".join(errors))
    size_mb = onnx_path.stat().st_size / 1e6
    say(f"parity max |Δ| = {parity['max_abs']:.2e} (first {PARITY_EARLY} samples {parity['max_abs_attack']:.2e}, "
        f"spectra {parity['spectral_rel']:.2e} of the peak); {size_mb:.2f} MB")
    if size_mb > MAX_SHIPPED_MB:
        say(f"warning: {size_mb:.1f} MB is over the {MAX_SHIPPED_MB:g} MB bar for shipped presets")
    return onnx_path, opset, parity


def _onnx_generator(onnx_path: Path):
    """gen(z float32[B, Z], pitch int64[B], velocity float32[B]) -> float32[B, N] through ONNX Runtime, 32 at a time."""
    sess = _ort_session(onnx_path)

    def gen(z, p, v):
        out = []
        for s in range(0, len(z), 32):
            out.append(sess.run(["audio"], {"z": np.ascontiguousarray(z[s:s + 32], np.float32),
                                            "pitch": np.ascontiguousarray(p[s:s + 32], np.int64),
                                            "velocity": np.ascontiguousarray(v[s:s + 32], np.float32)})[0])
        return np.concatenate(out)
    return gen


def _default_latent(gen, f: _Facts, root: Path | None, real, encoder, n_knobs: int, seed: int,
                    say) -> tuple[np.ndarray, str, np.ndarray | None]:
    """(default latent, how it was chosen, the encoder codes' principal axes or None).

    Start: zeros, the mean and mode of the N(0, I) prior (the truncation centre); with a trained
    encoder, the mean code of the real notes. Then `choose_default_latent` searches by sound.
    """
    z0 = np.zeros(f.Z, np.float32)
    default_doc = "zeros: the mean and mode of the N(0, I) prior (the truncation centre)"
    code_axes = None
    if encoder is not None and real is not None:
        from trainer.data import OneShotDataset

        codes = encoder_codes(encoder, OneShotDataset(root, split="train"))
        z0 = codes.mean(axis=0).astype(np.float32)
        # Principal axes of the real notes' codes: where the data itself varies in latent space.
        _, _, vt = np.linalg.svd(codes - z0, full_matrices=False)
        code_axes = vt[:2 * n_knobs]
        default_doc = (f"the mean encoder code of {len(codes)} real training notes (the data's own "
                       "timbre; the run trained an encoder)")
    if root is not None:
        pick = choose_default_latent(gen, root, f.sr, f.keys, z0, default_doc.split(":")[0], seed=seed)
        if pick is not None:
            z0, default_doc = pick
            say(f"default latent: {default_doc}")
    return z0, default_doc, code_axes


def _all_knobs(gen, f: _Facts, z0: np.ndarray, n_knobs: int, seed: int, code_axes, say):
    """(knobs, method): the latent knobs (`knob_directions`) plus a kit's engine knobs."""
    say("knob directions")
    knobs, knob_method = knob_directions(gen, f.Z, f.keys, f.v_mid, f.sr, n_knobs=n_knobs, default=z0,
                                         pitched=f.kind != "drums", seed=seed, candidates=code_axes)
    extra = engine_knobs(f.kind, knobs, f.n / f.sr)
    if extra:
        knobs = knobs + extra
        knob_method += ("; plus engine knobs (no latent): " + ", ".join(k["name"] for k in extra)
                        + " (trainer/export.py engine_knobs)")
    return knobs, knob_method


def _envelope(gen, f: _Facts, z0: np.ndarray, real, say) -> dict[str, Any]:
    """Sustain mode (and loop end), release time and velocity curve, with their evidence, measured on
    the real notes when there are some, else on generated ones."""
    src = f.info.get("source") or {}
    hold = f.info.get("hold_seconds")
    if hold is None and isinstance(src, dict) and src.get("seconds") and src.get("release") is not None:
        hold = float(src["seconds"]) - float(src["release"])
    if real is not None:
        ds, idx = real
        env_audio, env_from = ds.audio_batch(idx), f"{len(idx)} real notes"
    else:
        kk = np.asarray(_spread(f.keys, 12), np.int64)
        env_audio = gen(np.repeat(z0[None], len(kk), 0), kk, np.full(len(kk), f.v_mid, np.float32))
        env_from = f"{len(kk)} generated notes"
    mode, sus_ev, release, rel_ev = envelope_facts(env_audio, f.sr, hold, f.kind)
    curve, curve_from = 1.0, "not velocity-conditioned"
    if f.conditioned and real is not None:
        ds, idx = real
        curve = velocity_curve(ds.audio_batch(idx), ds.pitches[idx], ds.velocities[idx] * 127, f.sr)
        curve_from = f"fitted to the loudness of {len(idx)} real notes across velocities"
    elif f.conditioned:
        kk = np.repeat(np.asarray(_spread(f.keys, 3), np.int64), len(f.layers))
        vv = np.tile(np.asarray(f.layers, np.float32), len(kk) // len(f.layers))
        curve = velocity_curve(gen(np.repeat(z0[None], len(kk), 0), kk, vv / 127), kk, vv, f.sr)
        curve_from = f"fitted to the loudness of {len(kk)} generated notes across velocities"
    sustain: dict = {"mode": mode}
    if mode == "loop" and hold is not None and 0.2 < hold <= f.n / f.sr:
        # loop the held part only: end 50 ms before the data's note-off, where the release begins
        sustain["loop_end_seconds"] = round(float(hold) - 0.05, 3)
    say(f"sustain {mode} ({sus_ev}, {env_from}); release {release:.2f} s; velocity curve {curve:.2f}")
    return {"sustain": sustain, "release": release, "curve": curve, "sustain_evidence": f"{sus_ev} ({env_from})",
            "release_evidence": rel_ev, "velocity_curve_evidence": curve_from}


def _data_description(info: dict[str, Any]) -> dict[str, Any]:
    """The dataset facts shown in the manifest and card (root relative to the repository when inside it)."""
    from trainer.commands import repo_relative

    data_desc = {k: info[k] for k in ("root", "kind", "sample_rate", "note_samples", "pitch_range", "velocities",
                                      "n_notes") if k in info}
    if "root" in data_desc:
        data_desc["root"] = repo_relative(data_desc["root"])
    src = info.get("source") or {}
    if isinstance(src, dict):
        for k in ("type", "soundfont", "preset", "program", "bank", "seconds", "release"):
            if k in src:
                data_desc[f"source {k}"] = src[k]
    return data_desc


def _manifest(f: _Facts, config: dict[str, Any], name: str, description: str, z0: np.ndarray, default_doc: str,
              knobs: list[dict[str, Any]], knob_method: str, env: dict[str, Any], opset: int,
              parity: dict[str, float], run_facts, run_dir, commands: list[str]) -> dict[str, Any]:
    """The preset.json dict (before validation): sound facts, knobs, training facts, no metrics yet."""
    from trainer.commands import repo_relative
    from trainer.finetune import generator_config

    data_desc = _data_description(f.info)
    training = {"data": data_desc, "arch": f.arch_name, "params": f.params, **_train_facts(config, run_facts),
                "run": repo_relative(run_dir, os.getcwd()) if run_dir else None, "commands": commands, "onnx_opset": opset,
                "parity_max_abs": float(f"{parity['max_abs']:.3g}"),
                "parity_max_abs_attack": float(f"{parity['max_abs_attack']:.3g}"),
                "parity_spectral_rel": float(f"{parity['spectral_rel']:.3g}"), "knob_method": knob_method,
                "default_latent": default_doc, "latent_prior": "normal(0, 1)",
                "sustain_evidence": env["sustain_evidence"], "release_evidence": env["release_evidence"],
                "velocity_curve_evidence": env["velocity_curve_evidence"],
                "generator_config": generator_config(config)}
    if isinstance(f.arch, dict):
        training["arch_details"] = json.dumps(f.arch, sort_keys=True)[:600]
    training = {k: v for k, v in training.items() if v is not None and v != ""}
    m = {"format": "neural-synth-preset", "version": 1, "name": name,
         "description": description or _describe_preset(f.arch_name, f.kind, data_desc),
         "kind": f.kind, "sample_rate": f.sr, "note_samples": f.n, "pitch_range": [f.lo, f.hi],
         "velocity": {"conditioned": f.conditioned, "layers": f.layers, "curve": round(env["curve"], 3)},
         "latent": {"size": f.Z, "default": [float(x) for x in z0]}, "knobs": knobs,
         "release_seconds": round(env["release"], 3), "sustain": env["sustain"], "gain_db": 0.0,
         "generator": "generator.onnx", "training": training, "metrics": {}}
    if f.drum_classes:
        m["drum_classes"] = {str(k): v for k, v in sorted(f.drum_classes.items())}
    return m


def _write_grid(gen, f: _Facts, z0: np.ndarray, real, tmp: Path, name: str) -> None:
    """spectrograms.png: real vs generated at a few keys and velocities (generated only without data)."""
    from trainer import card

    gv = [f.layers[-1], f.layers[0]] if len(f.layers) > 1 else f.layers
    grid = []
    for i, k in enumerate(_spread(f.keys, 4)):
        v = gv[i % len(gv)]
        fake = gen(z0[None], np.array([k], np.int64), np.array([v / 127.0], np.float32))[0]
        r = None
        if real is not None:
            ds, _ = real
            cand = np.nonzero((ds.pitches == k) & (np.abs(ds.velocities * 127 - v) < 0.5))[0]
            r = ds[int(cand[0])]["audio"] if len(cand) else None
        label = f"{f.drum_classes.get(k, k)}" if f.drum_classes else f"MIDI {k}"
        grid.append((f"{label} vel {v}", r, fake))
    card.spectrogram_grid(grid, f.sr, tmp / card.GRID_FILE, title=f"{name}: real vs generated, log-mel dB")


def _write_validation_plot(run_dir, tmp: Path, run_facts: dict[str, Any] | None, name: str) -> None:
    """validation.png: the run's validation curve (its validation.json), the exported step marked; none
    when the run did not validate."""
    path = Path(run_dir) / "validation.json" if run_dir is not None else None
    if path is None or not path.is_file():
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable validation curve ({e}); delete it or fix it, then export again") from None
    from trainer import card

    card.validation_plot(doc, tmp / card.VALID_FILE, (run_facts or {}).get("steps"), title=f"{name}: validation")


def _check_reload(tmp: Path, f: _Facts, dest: Path) -> None:
    """Save = write, validate, reload, call: the folder reloads as a preset and its graph generates a note."""
    from synth.inference import GeneratorSession
    from synth.preset import load_preset_dir

    reloaded = load_preset_dir(tmp)
    out = GeneratorSession(reloaded, providers="cpu", threads=1, warmup=False).generate(
        np.asarray([reloaded.default_latent], np.float32), np.array([f.keys[len(f.keys) // 2]], np.int64),
        np.array([f.v_mid], np.float32))
    if not np.isfinite(out).all():
        raise ExportError(f"{dest}: the reloaded preset generates NaN; nothing was written")


def export_preset(G, config: dict[str, Any], dest: str | os.PathLike, *, name: str | None = None,
                  description: str = "", force: bool = False, run_dir: str | os.PathLike | None = None,
                  data_root: str | os.PathLike | None = None, commands: list[str] | None = None,
                  n_knobs: int = 4, seed: int = 0, tolerance: float = PARITY_TOL, quiet: bool = False,
                  exporters: tuple[str, ...] = EXPORTERS, run_facts: dict[str, Any] | None = None,
                  encoder=None, timbre_codes: np.ndarray | None = None, timbre_search: int = 30):
    """Export generator `G` (eval mode; `forward(z float32[B, Z], pitch int64[B], velocity float32[B])
    -> audio float32[B, N]` in [-1, 1]; attributes sample_rate, note_samples, latent_size) with its run's
    resolved `config` into the preset folder `dest`. Returns the reloaded `synth.preset.Preset`.

    commands: this export's own command line (recorded after the dataset and fit commands). run_facts:
    {"steps", "minutes"} trained up to these weights and what else the run recorded (`load_run`); with
    run_dir's validation.json the card gets the validation curve. encoder: the run's E(audio) -> (mu,
    logvar) or None; with one, the default latent starts at the mean code of the real notes and the
    codes' principal axes join the knob candidates. timbre_codes: float32[n_instruments, Z], the run's
    learned timbre codes (`trainer.fit.load_timbres`) for a family preset: they become the manifest's
    `timbres`, the default latent is the first source's lowest program and the knobs run along the
    directions through the timbres that sound furthest apart (`measured_timbre_axes`, `timbre_knobs`).
    timbre_search: generations of the search that refines each code against its instrument's notes
    before that (`trainer.timbre_fit`; 0 keeps the learned codes; needs the dataset).
    """
    from synth.fsutil import atomic_dir
    from synth.preset import NAME_RE, load_preset_dir, manifest_dict, validate_manifest
    from trainer import card
    from trainer.commands import reproduce

    dest = Path(dest)
    name = name or dest.name
    if not NAME_RE.match(name):
        raise UserError(f"{dest}: preset name {name!r} is not valid; use letters, digits, '_', '.', '-' "
                        "(pass --name)")
    if dest.exists() and not force:
        raise UserError(f"{dest}: already exists; pass --force to replace it")
    t0 = time.time()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[export {time.time() - t0:5.1f}s] {msg}", file=sys.stderr)

    f = _export_facts(G, config, run_dir)
    G.eval()
    f.params = int(sum(p.numel() for p in G.parameters()))
    with atomic_dir(dest, replace=force) as tmp:
        onnx_path, opset, parity = _export_graph(G, f, tmp, dest, name, seed, tolerance, exporters, say)
        gen = _onnx_generator(onnx_path)
        info = f.info
        root = Path(data_root) if data_root else (Path(info["root"]) if info.get("root") else None)
        real = _real_notes(root, f.sr, f.keys)
        timbres = None
        fit_rec = None
        if timbre_codes is not None and timbre_search > 0 and real is not None:
            from trainer.timbre_fit import refine_codes

            say(f"refining {len(timbre_codes)} timbre codes ({timbre_search} generations each)")
            timbre_codes, fit_rec = refine_codes(gen, timbre_codes, root, f.sr, f.n, f.conditioned,
                                                 generations=timbre_search, seed=seed, say=say)
            say(f"timbre codes: {fit_rec['moved']} of {len(timbre_codes)} moved ({fit_rec['seconds']:.0f} s)")
        if timbre_codes is not None:
            timbres = timbre_entries(timbre_codes, list(info.get("instruments") or []))
            i0 = default_timbre(timbres)
            z0 = np.asarray(timbres[i0]["latent"], np.float32)
            t0_ = timbres[i0]
            default_doc = (f"the timbre of {t0_['name']} ({t0_['source']} program {t0_['program']}): the lowest "
                           f"program of the first source, one of the {len(timbres)} learned timbre codes")
            vels = [f.layers[i] / 127.0 for i in sorted({0, len(f.layers) // 2, len(f.layers) - 1})]
            axes = measured_timbre_axes(gen, timbre_codes, z0, f.keys, f.v_mid, f.sr, n_knobs,
                                        pitched=f.kind != "drums", names=[t["name"] for t in timbres],
                                        velocities=vels)
            knobs, knob_method = timbre_knobs(timbre_codes, z0, [t["name"] for t in timbres], n_knobs, axes=axes)
            say(f"{len(timbres)} timbres; default {t0_['name']}; {len(knobs)} knobs by measured effect")
        else:
            z0, default_doc, code_axes = _default_latent(gen, f, root, real, encoder, n_knobs, seed, say)
            knobs, knob_method = _all_knobs(gen, f, z0, n_knobs, seed, code_axes, say)
        env = _envelope(gen, f, z0, real, say)
        cmds = reproduce(config, info, run_dir, commands, cwd=os.getcwd())
        m = _manifest(f, config, name, description, z0, default_doc, knobs, knob_method, env, opset, parity,
                      run_facts, run_dir, cmds)
        if timbres:
            m["timbres"] = timbres
        if fit_rec:
            m["training"]["timbre_fit"] = fit_rec
        preset = validate_manifest(json.loads(json.dumps(m)), tmp)
        (tmp / "preset.json").write_text(json.dumps(manifest_dict(preset), indent=1) + "\n", encoding="utf-8")
        _write_grid(gen, f, z0, real, tmp, name)
        _write_validation_plot(run_dir, tmp, run_facts, name)
        card.write_card(tmp)
        _check_reload(tmp, f, dest)
    say(f"wrote {dest} ({len(knobs)} knobs: " + ", ".join(f"CC{k['cc']} {k['name']}" for k in knobs) + ")")
    return load_preset_dir(dest)



def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m trainer export", description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="run folder written by `python -m trainer fit`")
    ap.add_argument("--preset", required=True, metavar="DIR", help="preset folder to write, e.g. presets/piano")
    ap.add_argument("--name", help="preset name (default: the folder's name)")
    ap.add_argument("--description", default="", help="one line for the manifest and the card")
    ap.add_argument("--data", help="dataset folder for the card's real spectrograms and the envelope facts "
                                   "(default: the one recorded in the run's config)")
    ap.add_argument("--knobs", type=int, default=4, help="number of knobs (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true", help="replace an existing preset folder")
    ap.add_argument("--timbre-search", type=int, default=30, metavar="GENS",
                    help="family presets: generations of the search that refines each timbre code against its "
                         "instrument's train notes, kept where nearer on its valid notes (default 30; 0: off)")
    ap.add_argument("--last", action="store_true",
                    help="export the run's last weights (checkpoints/last.pt) instead of its best validation's "
                         "(checkpoints/best.pt, the default when the run kept one)")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.knobs <= 8:
        raise UserError(f"--knobs {args.knobs}: must be 0..8")
    if not 0 <= args.timbre_search <= 1000:
        raise UserError(f"--timbre-search {args.timbre_search}: must be 0..1000")
    G, config, facts, encoder = load_run(args.run, "last" if args.last else "auto")
    from trainer.fit import load_timbres

    codes = load_timbres(args.run, facts["checkpoint"].removesuffix(".pt"))
    print(f"[export] {args.run}: checkpoints/{facts['checkpoint']} (step {facts['steps']}"
          + (f" of {facts['run_steps']}, the best validation" if "run_steps" in facts else "") + ")", file=sys.stderr)
    export_preset(G, config, args.preset, name=args.name, description=args.description, force=args.force,
                  run_dir=args.run, data_root=args.data, n_knobs=args.knobs, seed=args.seed,
                  commands=["python", "-m", "trainer", "export", *argv], run_facts=facts, encoder=encoder,
                  timbre_codes=codes, timbre_search=args.timbre_search)
    return 0
