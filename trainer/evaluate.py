"""`python -m trainer eval PRESET --data DIR`: measure a preset against real held-out notes.

Generation uses only onnxruntime and numpy (through `synth.inference.GeneratorSession`), so a
preset can be measured on a machine without torch. The figures, as stored in `preset.json`
`metrics` by `--update-preset`:

pitch_accuracy
    Share of generated notes whose f0 (`trainer.data.pitch.estimate_f0`, pYIN's threshold model)
    lies within ±50 cents of the target MIDI pitch. The notes: the default latent at every pitch of
    `--pitches` (default: the preset's range) at the middle velocity layer, plus `--latents` random
    latents z ~ N(0, I) at the same pitches. An unvoiced note (no f0) counts as a miss.
    Split into pitch_accuracy_default / pitch_accuracy_random (pitch_accuracy_random_std: its spread
    across the random latents). Pitched presets only.

log_mel_distance (dB)
    For every real note of `--split` (test by default; heldout = valid + test, the notes fit never
    trains on; all = every note) whose pitch is in `--pitches`, the default latent is generated at
    that note's pitch and velocity. Both notes are trimmed to the shorter length (the real one is
    resampled to the preset's rate first if the rates differ; when the data's rate is the lower, the
    generated note goes down to it instead, `compared_at_hz`) and each is scaled to unit RMS over
    its whole length (loudness normalisation). Each then becomes a log-mel power spectrogram:
    periodic-Hann STFT (`trainer.nn.stft`) with n_fft = 2^round(log2(0.0427 s · sr)) (1024 at
    24 kHz), hop n_fft/4, zero-padded at both ends by n_fft/2, power |X|², 80 triangular HTK-mel
    bands from 30 Hz to sr/2 (a band narrower than one FFT bin takes its nearest bin),
    10·log10(max(P, 1e-8)) dB (so a floor 80 dB below the note's mean power). The distance of a pair
    is the mean absolute difference of the two dB spectrograms over all time-frequency bins; the
    figure is the mean over the notes. Identical notes measure 0; a gain change measures 0.
    log_mel_distance_random is the steadier figure: the same over every note with each of `--latents`
    random latents (z ~ N(0, I), their own stream of `--seed`), the mean over latents, with
    log_mel_distance_random_std their spread (standard deviation of the per-latent means) and
    log_mel_distance_random_per_latent the means themselves; log_mel_distance (the default latent
    alone) stays for comparison with earlier figures.
    For scale (`python scripts/bench_model.py`, 60 notes of FluidR3_GM at 24 kHz): the acoustic
    grand against itself one velocity layer away 1.2 dB, against the Bright Acoustic program (the
    same samples, brighter) 2.5 dB, against the Electric Grand 18.5 dB.

diversity (dB)
    Mean pairwise log-mel distance (as above) between notes from `--latents`+2 random latents at the
    same pitch and middle velocity, over 5 pitches spread across the range. 0 means every latent
    gives the same sound (mode collapse).

class_accuracy (drums)
    A nearest-centroid classifier on standardised log-mel statistics (per band: mean over the whole
    hit, mean over its first 100 ms, standard deviation over time; 240 features) is fitted on the
    real kit's hits outside `--split`. class_accuracy_real is its accuracy on the real hits of the
    split (a check that the classifier can tell the classes apart at all: 22/22 on FluidR3's GM
    kit's valid+test hits); class_accuracy is its accuracy on generated hits (default latent and
    random latents, at every velocity layer; class_accuracy_default: the default latent alone),
    with the label of each key taken from the preset's drum_classes.

ms_per_note, ms_per_88 (and *_cuda)
    Median wall time of the ONNX generator on one note, and on one batch of 88 notes, on the CPU
    with one intra-op thread and no spinning (how the live synth's worker runs it); ms_per_88_all_cores
    with every core. CUDA figures are added when onnxruntime offers the CUDA provider.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import OneLineParser, UserError

N_MELS = 80
F_MIN = 30.0
DB_FLOOR_POWER = 1e-8           # -80 dB re the note's mean power (notes are unit-RMS)
PITCH_TOL_CENTS = 50.0
CHUNK = 16                      # notes per STFT batch: bounds memory for long notes


# --------------------------------------------------------------------------------------------------
# log-mel spectrograms and distances

def stft_params(sr: int) -> tuple[int, int]:
    """(n_fft, hop) in samples for sample rate `sr`: a ~43 ms window rounded to a power of two, hop 1/4."""
    n_fft = int(2 ** round(math.log2(0.0427 * sr)))
    return n_fft, n_fft // 4


_FB_CACHE: dict[tuple[int, int, int], np.ndarray] = {}


def mel_filterbank(sr: int, n_fft: int, n_mels: int = N_MELS, fmin: float = F_MIN) -> np.ndarray:
    """Triangular HTK-mel filters, float32[n_mels, n_fft // 2 + 1], peak weight 1, from fmin to sr/2.

    A filter too narrow to cover any FFT bin gets weight 1 on the bin nearest its centre, so every
    band carries signal and none sits at the floor for lack of bins.
    """
    key = (sr, n_fft, n_mels)
    if key in _FB_CACHE:
        return _FB_CACHE[key]
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(sr / 2), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
    lo, c, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    for m in np.nonzero(fb.sum(axis=1) <= 0)[0]:
        fb[m, int(round(edges[m + 1] * n_fft / sr))] = 1.0
    fb = fb.astype(np.float32)
    _FB_CACHE[key] = fb
    return fb


def power_spectrogram(audio: np.ndarray, sr: int) -> np.ndarray:
    """|STFT|² of float32[B, N] → float32[B, T, n_fft//2+1] (`trainer.nn.stft`, see `stft_params`)."""
    from trainer.nn import stft

    n_fft, hop = stft_params(sr)
    return stft.power(np.asarray(audio, np.float32), n_fft, hop)


def log_mel(audio: np.ndarray, sr: int, n_mels: int = N_MELS, normalise: bool = True) -> np.ndarray:
    """Log-mel power spectrogram in dB: float32[B, N] (or [N]) → float32[B, T, n_mels] (or [T, n_mels]).

    With `normalise`, each note is first scaled to unit RMS over its whole length (silence stays
    silence). Values are 10·log10(max(P, 1e-8)), i.e. floored 80 dB below the note's mean power.
    """
    a = np.asarray(audio, np.float32)
    single = a.ndim == 1
    a = np.atleast_2d(a)
    fb = mel_filterbank(sr, stft_params(sr)[0], n_mels)
    out = []
    for s in range(0, len(a), CHUNK):
        x = a[s:s + CHUNK].astype(np.float64)
        if normalise:
            rms = np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
            x = x / np.where(rms > 1e-12, rms, 1.0)
        p = power_spectrogram(x.astype(np.float32), sr) @ fb.T
        # float64: float32's log10(1e-8) rounds to -80.00001, below the documented floor
        out.append(10.0 * np.log10(np.maximum(p.astype(np.float64), DB_FLOOR_POWER)))
    res = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0, n_mels), np.float32)
    return res[0] if single else res


def log_mel_distance(a: np.ndarray, b: np.ndarray, sr: int) -> np.ndarray:
    """Mean |Δ dB| between loudness-normalised log-mel spectrograms, per pair.

    a, b: float32[B, Na] and [B, Nb] (or [N]) at `sr` Hz; both are trimmed to min(Na, Nb).
    Returns float64[B] (or a float for 1-D input), in dB. See the module docstring for the exact
    definition.
    """
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    single = a.ndim == 1 and b.ndim == 1
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if len(a) != len(b):
        raise ValueError(f"log_mel_distance: {len(a)} notes against {len(b)}")
    n = min(a.shape[1], b.shape[1])
    d = np.abs(log_mel(a[:, :n], sr) - log_mel(b[:, :n], sr)).mean(axis=(1, 2)).astype(np.float64)
    return float(d[0]) if single else d


def pairwise_distance(audio: np.ndarray, sr: int) -> float:
    """Mean log-mel distance (dB) over all pairs of the notes float32[K, N] (K >= 2)."""
    lm = log_mel(audio, sr)
    k = len(lm)
    ds = [np.abs(lm[i] - lm[j]).mean() for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(ds))


# --------------------------------------------------------------------------------------------------
# per-note descriptors (used by export to name knob directions)

def frame_levels_db(audio: np.ndarray, sr: int, hop_s: float = 0.01) -> np.ndarray:
    """RMS level of consecutive `hop_s` frames in dBFS: float32[B, N] → float64[B, T] (floor -120 dB)."""
    a = np.atleast_2d(np.asarray(audio, np.float64))
    h = max(1, int(round(hop_s * sr)))
    t = a.shape[1] // h
    ms = np.mean(a[:, :t * h].reshape(len(a), t, h) ** 2, axis=2)
    return 10.0 * np.log10(np.maximum(ms, 1e-12))


def descriptors(audio: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """Perceptual descriptors of notes float32[B, N] at `sr`; each value float64[B].

    - brightness: power-weighted mean frequency (spectral centroid) over the note's frames within
      30 dB of its loudest frame, in semitones re 440 Hz (12·log2(centroid/440)).
    - decay: seconds from the loudest 10 ms frame until the level first falls 20 dB below it (the
      note's length when it never does).
    - attack: seconds from the first frame within 40 dB of the peak to the loudest frame.
    - noise: spectral flatness (geometric / arithmetic mean power) over the same frames, in dB.
    - loudness: RMS over the note's frames within 30 dB of its peak, dBFS.
    """
    a = np.atleast_2d(np.asarray(audio, np.float32))
    lev = frame_levels_db(a, sr)
    hop = 0.01
    peak_i = lev.argmax(axis=1)
    peak = lev.max(axis=1)
    idx = np.arange(lev.shape[1])
    after = (idx[None] > peak_i[:, None]) & (lev < peak[:, None] - 20.0)
    decay = np.where(after.any(axis=1), (np.argmax(after, axis=1) - peak_i) * hop, (lev.shape[1] - peak_i) * hop)
    onset = np.argmax(lev >= peak[:, None] - 40.0, axis=1)
    attack = (peak_i - onset) * hop
    p = power_spectrogram(a, sr)                                     # [B, T, F]
    n_fft, h = stft_params(sr)
    freqs = np.arange(p.shape[2]) * sr / n_fft
    fl = 10 * np.log10(np.maximum(p.sum(axis=2), 1e-20))              # frame energy, dB
    loud = fl >= fl.max(axis=1, keepdims=True) - 30.0
    w = loud[..., None] * p
    tot = np.maximum(w.sum(axis=(1, 2)), 1e-20)
    centroid = (w * freqs).sum(axis=(1, 2)) / tot
    brightness = 12 * np.log2(np.maximum(centroid, 1.0) / 440.0)
    band = p[:, :, 1:]
    gm = np.exp(np.mean(np.log(band + 1e-20), axis=2))
    am = band.mean(axis=2) + 1e-20
    flat = np.where(loud, 10 * np.log10(gm / am + 1e-20), 0.0)
    noise = flat.sum(axis=1) / np.maximum(loud.sum(axis=1), 1)
    lin = 10 ** (lev / 10)
    lm = lev >= peak[:, None] - 30
    loudness = 10 * np.log10(np.maximum((lin * lm).sum(axis=1) / np.maximum(lm.sum(axis=1), 1), 1e-12))
    return {"brightness": brightness.astype(np.float64), "decay": decay.astype(np.float64),
            "attack": attack.astype(np.float64), "noise": noise.astype(np.float64),
            "loudness": loudness.astype(np.float64)}


# --------------------------------------------------------------------------------------------------
# pitch accuracy

def f0_cents_error(audio: np.ndarray, target_midi: np.ndarray, sr: int) -> np.ndarray:
    """Cents from each note's pYIN f0 to its target: float32[B, N], int[B] → float64[B] (NaN: unvoiced)."""
    from trainer.data.pitch import estimate_f0

    a = np.atleast_2d(np.asarray(audio, np.float32))
    t = np.asarray(target_midi, np.float64).reshape(-1)
    out = np.full(len(a), np.nan)
    for i, (x, key) in enumerate(zip(a, t, strict=True)):
        f_t = 440.0 * 2 ** ((key - 69) / 12)
        # A search range wide enough to catch octave errors on both sides of the target.
        fmax = min(0.45 * sr, max(4200.0, 2.5 * f_t))
        f0, _ = estimate_f0(x, sr, fmin=min(25.0, f_t / 2.5), fmax=fmax)
        if np.isfinite(f0) and f0 > 0:
            out[i] = 1200 * math.log2(f0 / f_t)
    return out


def pitch_accuracy(audio: np.ndarray, target_midi: np.ndarray, sr: int,
                   tol_cents: float = PITCH_TOL_CENTS) -> tuple[float, np.ndarray]:
    """(share of notes within ±tol_cents of their target, cents errors float64[B]); unvoiced = miss."""
    err = f0_cents_error(audio, target_midi, sr)
    ok = np.isfinite(err) & (np.abs(np.nan_to_num(err, nan=1e9)) <= tol_cents)
    return float(ok.mean()) if len(ok) else float("nan"), err


# --------------------------------------------------------------------------------------------------
# drum classifier

def drum_features(audio: np.ndarray, sr: int) -> np.ndarray:
    """float32[B, N] → float64[B, 3·N_MELS]: per-band mean, first-100-ms mean and std of the log-mel."""
    lm = log_mel(audio, sr).astype(np.float64)
    n_head = max(1, int(round(0.1 * sr / stft_params(sr)[1])))
    return np.concatenate([lm.mean(axis=1), lm[:, :n_head].mean(axis=1), lm.std(axis=1)], axis=1)


class CentroidClassifier:
    """Nearest class centroid in standardised feature space (features float64[B, D], labels str)."""

    def fit(self, feats: np.ndarray, labels: list[str]) -> CentroidClassifier:
        self.mu = feats.mean(axis=0)
        self.sd = feats.std(axis=0) + 1e-6
        x = (feats - self.mu) / self.sd
        self.classes = sorted(set(labels))
        lab = np.asarray(labels)
        self.centroids = np.stack([x[lab == c].mean(axis=0) for c in self.classes])
        return self

    def predict(self, feats: np.ndarray) -> list[str]:
        x = (feats - self.mu) / self.sd
        d = ((x[:, None, :] - self.centroids[None]) ** 2).sum(axis=2)
        return [self.classes[i] for i in d.argmin(axis=1)]


# --------------------------------------------------------------------------------------------------
# speed

def measure_speed(preset, providers: str = "cpu", threads: int = 1, repeats: int = 5) -> dict[str, float]:
    """Median ms for one note and for an 88-note batch with the given ORT providers and threads."""
    from synth.inference import GeneratorSession

    s = GeneratorSession(preset, providers=providers, threads=threads, warmup=True)
    keys = preset.playable_keys()
    mid = keys[len(keys) // 2]
    z1 = np.asarray([preset.default_latent], np.float32)
    one = []
    for _ in range(max(3, 2 * repeats)):
        t0 = time.perf_counter()
        s.generate(z1, np.array([mid], np.int64), np.array([0.8], np.float32))
        one.append(time.perf_counter() - t0)
    k88 = np.resize(np.asarray(keys, np.int64), 88)
    z88 = np.repeat(z1, 88, axis=0)
    v88 = np.full(88, 0.8, np.float32)
    s.generate(z88, k88, v88)
    batch = []
    for _ in range(max(2, repeats // 2)):
        t0 = time.perf_counter()
        s.generate(z88, k88, v88)
        batch.append(time.perf_counter() - t0)
    return {"ms_per_note": 1e3 * float(np.median(one)), "ms_per_88": 1e3 * float(np.median(batch)),
            "provider": s.provider}


def speed_report(preset, repeats: int = 5) -> dict[str, Any]:
    """CPU figures (1 thread, as the live worker runs; and all cores for a batch), plus CUDA if present."""
    import onnxruntime as ort

    out: dict[str, Any] = {}
    one = measure_speed(preset, "cpu", threads=1, repeats=repeats)
    out["ms_per_note"], out["ms_per_88"] = one["ms_per_note"], one["ms_per_88"]
    cores = os.cpu_count() or 1
    if cores > 1:
        out["ms_per_88_all_cores"] = measure_speed(preset, "cpu", threads=cores, repeats=repeats)["ms_per_88"]
    out["cpu_cores"] = cores
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            cu = measure_speed(preset, "cuda", threads=1, repeats=repeats)
            if cu["provider"] == "CUDAExecutionProvider":
                out["ms_per_note_cuda"], out["ms_per_88_cuda"] = cu["ms_per_note"], cu["ms_per_88"]
        except Exception as e:  # noqa: BLE001 - a broken CUDA install must not stop the CPU figures
            out["cuda_error"] = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
    return out


# --------------------------------------------------------------------------------------------------
# the evaluation

def parse_pitches(text: str) -> tuple[int, int]:
    """'28-96' or '60' → (lo, hi) MIDI notes."""
    try:
        if "-" in text:
            lo, hi = (int(x) for x in text.split("-", 1))
        else:
            lo = hi = int(text)
    except ValueError:
        raise UserError(f"--pitches {text!r}: expected LO-HI MIDI notes, e.g. 28-96") from None
    if not 0 <= lo <= hi <= 127:
        raise UserError(f"--pitches {text!r}: need 0 <= LO <= HI <= 127")
    return lo, hi


def resolve_preset(spec: str, preset_dirs=None):
    """A preset folder path, or a preset name looked up on the preset search path."""
    from synth.preset import find_preset, load_preset_dir

    p = Path(spec)
    if os.sep in spec or (os.altsep and os.altsep in spec) or (p.is_dir() and (p / "preset.json").is_file()):
        return load_preset_dir(p)
    return find_preset(spec, preset_dirs)


def _mid_velocity(preset) -> float:
    layers = preset.velocity_layers
    return layers[len(layers) // 2] / 127.0


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out:
        return x
    import soxr

    return np.stack([soxr.resample(r, sr_in, sr_out) for r in x]).astype(np.float32)


def evaluate(preset, data_root: str | os.PathLike, split: str = "test", pitches: tuple[int, int] | None = None,
             n_latents: int = 4, seed: int = 0, speed: bool = True, grid_rows: int = 4
             ) -> tuple[dict[str, Any], list[tuple[str, np.ndarray, np.ndarray]]]:
    """Measure `preset` (a `synth.preset.Preset`) against the dataset at `data_root`.

    Returns (report, grid) where report holds the figures of the module docstring and grid is a
    list of (title, real float32[N], generated float32[N]) examples for the spectrogram grid.
    """
    from synth.inference import GeneratorSession
    from trainer.data import OneShotDataset

    t_start = time.time()
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    ds = OneShotDataset(data_root)
    if (ds.info["kind"] == "drums") != preset.is_drums:
        raise UserError(f"{data_root}: a {ds.info['kind']} dataset cannot measure the {preset.kind} preset "
                        f"{preset.name!r}; pass the dataset the preset was trained on")
    in_split = np.array([n["split"] in SPLITS[split] for n in ds.notes], dtype=bool)
    if not in_split.any():
        raise UserError(f"{data_root}: the {split!r} split has no notes; pick another with --split")
    sr = preset.sample_rate
    rng = np.random.default_rng(seed)
    sess = GeneratorSession(preset, providers="cpu", threads=os.cpu_count() or 1, warmup=False)

    def gen(z, keys, vels):
        return sess.generate(np.asarray(z, np.float32), np.asarray(keys, np.int64), np.asarray(vels, np.float32))

    lo, hi, keys = _measured_keys(preset, pitches)
    rep: dict[str, Any] = {"preset": preset.name, "kind": preset.kind, "data": str(data_root), "split": split,
                           "pitches": [lo, hi], "seed": seed}
    if not preset.is_drums:
        rep.update(_pitch_report(preset, keys, gen, rng, n_latents))
    sel = [i for i in range(len(ds)) if in_split[i] and lo <= ds.pitches[i] <= hi]
    if not sel:
        raise UserError(f"{data_root}: no {split!r} notes between MIDI {lo} and {hi}; widen --pitches or use "
                        "another --split")
    # compared at the lower of the two rates, and over the data's note length: a 16-kHz set measures
    # a 24-kHz preset's first note_samples at 16 kHz (its extra band and tail are not the data's)
    sr_cmp = min(sr, int(ds.info["sample_rate"]))
    n_cmp = int(ds.info["note_samples"]) * sr_cmp // int(ds.info["sample_rate"])

    def gen_cmp(z, keys, vels):
        return _resample(gen(z, keys, vels), sr, sr_cmp)[:, :n_cmp]

    lmd, grid = _log_mel_report(preset, ds, sel, gen_cmp, grid_rows, n_latents, seed, sr_cmp)
    rep.update(lmd)
    rep.update(_diversity_report(preset, keys, gen, rng, n_latents))
    if preset.is_drums:
        rep.update(_drum_accuracy(preset, ds, in_split, split == "all", keys, gen_cmp, rng, n_latents, sr_cmp))
    if sr_cmp != sr:
        rep["compared_at_hz"] = sr_cmp
    if speed:
        rep.update(speed_report(preset))
    rep["eval_seconds"] = round(time.time() - t_start, 1)
    return rep, grid


def _measured_keys(preset, pitches: tuple[int, int] | None) -> tuple[int, int, list[int]]:
    """(lo, hi, keys): the preset's keys within `pitches` (default: all of them)."""
    if preset.is_drums:
        keys_all = preset.playable_keys()
        lo, hi = pitches or (min(keys_all), max(keys_all))
        keys = [k for k in keys_all if lo <= k <= hi]
    else:
        lo, hi = pitches or preset.pitch_range
        lo, hi = max(lo, preset.pitch_range[0]), min(hi, preset.pitch_range[1])
        if lo > hi:
            raise UserError(f"--pitches {pitches}: outside the preset's range {list(preset.pitch_range)}")
        keys = list(range(lo, hi + 1))
    if not keys:
        raise UserError(f"--pitches {lo}-{hi}: none of the preset's keys lie in this range")
    return lo, hi, keys


def _pitch_report(preset, keys: list[int], gen, rng, n_latents: int) -> dict[str, Any]:
    """pitch_accuracy (and its default / random split, misses, median error) over the keys."""
    sr, Z, v_mid = preset.sample_rate, preset.latent_size, _mid_velocity(preset)
    z0 = np.asarray(preset.default_latent, np.float32)
    k = np.asarray(keys, np.int64)
    audio = gen(np.repeat(z0[None], len(k), 0), k, np.full(len(k), v_mid))
    acc_d, err_d = pitch_accuracy(audio, k, sr)
    zr = rng.standard_normal((n_latents * len(k), Z)).astype(np.float32)
    kr = np.tile(k, n_latents)
    err_r = np.zeros(0)
    acc_r = float("nan")
    if n_latents:
        audio = gen(zr, kr, np.full(len(kr), v_mid))
        acc_r, err_r = pitch_accuracy(audio, kr, sr)
    err = np.concatenate([err_d, err_r])
    ok = np.isfinite(err) & (np.abs(np.nan_to_num(err, nan=1e9)) <= PITCH_TOL_CENTS)
    fin = np.isfinite(err)
    per_latent = ok[len(err_d):].reshape(n_latents, len(k)).mean(axis=1) if n_latents else np.zeros(0)
    return {"pitch_accuracy": float(ok.mean()), "pitch_accuracy_default": acc_d, "pitch_accuracy_random": acc_r,
            "pitch_accuracy_random_std": float(per_latent.std()) if n_latents else float("nan"),
            "pitch_notes": int(len(err)),
            "pitch_misses_default": [[int(p), None if not np.isfinite(e) else round(float(e), 1)]
                                     for p, e in zip(k, err_d, strict=True)
                                     if not (np.isfinite(e) and abs(e) <= PITCH_TOL_CENTS)][:40],
            "pitch_median_abs_cents": float(np.median(np.abs(err[fin]))) if fin.any() else None}


def _log_mel_report(preset, ds, sel: list[int], gen, grid_rows: int, n_latents: int = 0, seed: int = 0,
                    sr: int | None = None):
    """(log_mel_distance figures, grid): the default latent, and each of `n_latents` random ones,
    against each selected real note at its pitch and velocity, at rate `sr` (default the preset's;
    `gen` must give audio at that rate); the grid shows `grid_rows` of the default latent's notes
    spread over pitch."""
    sr = sr or preset.sample_rate
    z0 = np.asarray(preset.default_latent, np.float32)
    real = _resample(ds.audio_batch(np.asarray(sel)), ds.info["sample_rate"], sr)
    rk = ds.pitches[sel]
    rv = ds.velocities[sel] if preset.velocity_conditioned else np.full(len(sel), 1.0, np.float32)
    fake = gen(np.repeat(z0[None], len(sel), 0), rk, rv)
    d = log_mel_distance(real, fake, sr)
    by_vel: dict[str, list[float]] = {}
    for v, x in zip(ds.velocities[sel], d, strict=True):
        by_vel.setdefault(str(int(round(v * 127))), []).append(float(x))
    rep = {"log_mel_distance": float(d.mean()), "log_mel_distance_notes": len(sel),
           "log_mel_distance_by_velocity": {k: float(np.mean(v)) for k, v in sorted(by_vel.items(),
                                                                                 key=lambda t: int(t[0]))}}
    if n_latents:
        # their own stream: the figures drawn from `rng` (random pitch latents, diversity) stay as they were
        zs = np.random.default_rng([seed, 1]).standard_normal((n_latents, preset.latent_size)).astype(np.float32)
        per = [float(log_mel_distance(real, gen(np.repeat(z[None], len(sel), 0), rk, rv), sr).mean()) for z in zs]
        rep.update({"log_mel_distance_random": float(np.mean(per)), "log_mel_distance_random_std": float(np.std(per)),
                    "log_mel_distance_random_per_latent": [round(x, 4) for x in per],
                    "log_mel_distance_latents": n_latents})
    order = np.argsort(rk, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, min(grid_rows, len(order))).round().astype(int)]
    picks = list(dict.fromkeys(int(i) for i in picks))
    grid = [(f"{_key_name(preset, int(rk[i]))} vel {int(round(float(ds.velocities[sel][i]) * 127))}  "
             f"({d[i]:.1f} dB)", real[i], fake[i]) for i in picks]
    return rep, grid


def _diversity_report(preset, keys: list[int], gen, rng, n_latents: int) -> dict[str, Any]:
    """diversity: mean pairwise log-mel distance of n_latents + 2 random latents at up to 5 keys."""
    kd = np.asarray(keys, np.int64)[np.linspace(0, len(keys) - 1, min(5, len(keys))).round().astype(int)]
    kd = np.unique(kd)
    n_div = n_latents + 2
    zs = rng.standard_normal((n_div, preset.latent_size)).astype(np.float32)
    divs = [pairwise_distance(gen(zs, np.full(n_div, key), np.full(n_div, _mid_velocity(preset))),
                              preset.sample_rate) for key in kd]
    return {"diversity": float(np.mean(divs)), "diversity_latents": n_div}


def _key_name(preset, key: int) -> str:
    if preset.is_drums:
        return f"{preset.drum_classes.get(key, key)} ({key})"
    names = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    return f"{names[key % 12]}{key // 12 - 1} ({key})"


def _drum_accuracy(preset, ds, in_split, fit_on_all, keys, gen, rng, n_latents, sr) -> dict[str, Any]:
    """The classifier is fitted on the real hits outside the measured split (on all of them when the
    split is "all": nothing is held out then) and checked on the split's real hits and on generated ones."""
    ok_key = np.isin(ds.pitches, np.asarray(sorted(preset.drum_classes), np.int64))

    def labelled(mask):
        idx = np.nonzero(mask & ok_key)[0]
        if not len(idx):
            return None, []
        audio = _resample(ds.audio_batch(idx), ds.info["sample_rate"], sr)
        return audio, [preset.drum_classes[int(ds.pitches[i])] for i in idx]

    xa, y = labelled(np.ones(len(ds), bool) if fit_on_all else ~in_split)
    if xa is None:
        raise UserError(f"{ds.root}: no real hits of the preset's drum keys to train the classifier on")
    clf = CentroidClassifier().fit(drum_features(xa, sr), y)
    out: dict[str, Any] = {"classifier": "nearest centroid, standardised log-mel statistics",
                           "classifier_train_notes": len(y)}
    ta, tl = labelled(in_split)
    if ta is not None:
        out["class_accuracy_real"] = float(np.mean(np.asarray(clf.predict(drum_features(ta, sr))) == np.asarray(tl)))
    k = np.asarray(keys, np.int64)
    vels = np.asarray(preset.velocity_layers, np.float32) / 127.0
    kk = np.repeat(k, len(vels))
    vv = np.tile(vels, len(k))
    z0 = np.asarray(preset.default_latent, np.float32)
    zz = [np.repeat(z0[None], len(kk), 0)]
    zz += [np.repeat(rng.standard_normal((1, len(z0))).astype(np.float32), len(kk), 0) for _ in range(n_latents)]
    z_all = np.concatenate(zz)
    k_all = np.tile(kk, len(zz))
    v_all = np.tile(vv, len(zz))
    audio = gen(z_all, k_all, v_all)
    pred = clf.predict(drum_features(audio, sr))
    want = [preset.drum_classes[int(x)] for x in k_all]
    hit = np.asarray(pred) == np.asarray(want)
    out["class_accuracy"] = float(hit.mean())
    out["class_accuracy_default"] = float(hit[:len(kk)].mean())
    out["class_accuracy_notes"] = len(want)
    return out


# --split name -> the dataset splits it measures ("heldout": every note fit never trains on).
SPLITS = {"train": {"train"}, "valid": {"valid"}, "test": {"test"}, "heldout": {"valid", "test"},
          "all": {"train", "valid", "test"}}

# Scalar figures copied into preset.json `metrics` (lists and bookkeeping stay in the JSON report).
METRIC_KEYS = ("pitch_accuracy", "pitch_accuracy_default", "pitch_accuracy_random", "pitch_accuracy_random_std",
               "pitch_median_abs_cents", "log_mel_distance", "log_mel_distance_random", "log_mel_distance_random_std",
               "diversity", "class_accuracy", "class_accuracy_default", "class_accuracy_real",
               "ms_per_note", "ms_per_88", "ms_per_88_all_cores", "ms_per_note_cuda", "ms_per_88_cuda")


def metrics_for_manifest(rep: dict[str, Any], command: list[str] | None = None) -> dict[str, Any]:
    """The preset.json `metrics` dict for an eval report: scalar figures plus how they were measured."""
    m: dict[str, Any] = {}
    for k in METRIC_KEYS:
        v = rep.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            m[k] = round(float(v), 4)
    m["eval"] = {"data": rep.get("data"), "split": rep.get("split"), "pitches": rep.get("pitches"),
                 "log_mel_distance_notes": rep.get("log_mel_distance_notes"), "pitch_notes": rep.get("pitch_notes"),
                 "cpu_cores": rep.get("cpu_cores"), "date": time.strftime("%Y-%m-%d", time.gmtime()),
                 "definitions": "trainer/evaluate.py module docstring"}
    if command:
        m["eval"]["command"] = " ".join(command)
    return m


def update_preset(preset, rep: dict[str, Any], grid=None, command: list[str] | None = None):
    """Write the figures into `preset.json` (atomically), refresh card.md and, given a grid, spectrograms.png."""
    from synth.fsutil import atomic_write_text
    from synth.preset import load_preset_dir, manifest_dict, validate_manifest
    from trainer import card

    folder = preset.path
    current = load_preset_dir(folder)
    m = manifest_dict(current)
    m["metrics"] = metrics_for_manifest(rep, command)
    validate_manifest(json.loads(json.dumps(m)), folder)
    atomic_write_text(folder / "preset.json", json.dumps(m, indent=1) + "\n")
    if grid:
        card.spectrogram_grid(grid, rep.get("compared_at_hz", current.sample_rate), folder / card.GRID_FILE,
                              title=f"{current.name}: real (left) vs generated (right), log-mel dB")
    card.write_card(folder)
    return load_preset_dir(folder)



def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m trainer eval", description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("preset", help="preset folder, or a preset name on the search path")
    ap.add_argument("--data", required=True, help="dataset folder the preset was trained on (python -m trainer dataset)")
    ap.add_argument("--split", default="test", choices=tuple(SPLITS),
                    help="real notes to compare with (default test; heldout = valid + test, never trained on; "
                         "all = every note)")
    ap.add_argument("--pitches", default=None, help="MIDI range LO-HI to measure (default: the preset's range)")
    ap.add_argument("--latents", type=int, default=4,
                    help="random latents for pitch accuracy, diversity and the steady log-mel figure "
                         "(log_mel_distance_random: every note with each latent, mean and spread; default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON report here too")
    ap.add_argument("--png", help="write a spectrogram grid (real vs generated) here")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed measurement")
    ap.add_argument("--update-preset", action="store_true",
                    help="store the figures in preset.json, refresh card.md and spectrograms.png")
    ap.add_argument("--preset-dir", action="append", default=[], metavar="DIR", help="extra preset folder for names")
    ap.add_argument("--timbres", action="store_true",
                    help="a family preset's bars instead (trainer/family_eval.py): each timbre against its own "
                         "instrument and the other kinds, knobs, morphs, latent, speed; --update-preset stores them "
                         "as metrics.family and draws timbres.png and morph.png")
    ap.add_argument("--timbre-notes", type=int, default=8, metavar="N",
                    help="with --timbres: held-out notes per timbre compared with every other instrument (default 8)")
    return ap


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.latents < 0 or args.latents > 64:
        raise UserError(f"--latents {args.latents}: must be 0..64")
    preset = resolve_preset(args.preset, args.preset_dir)
    pitches = parse_pitches(args.pitches) if args.pitches else None
    if args.timbres:
        from trainer import family_eval

        return family_eval.main(args, argv, preset, pitches)
    rep, grid = evaluate(preset, args.data, split=args.split, pitches=pitches, n_latents=args.latents,
                         seed=args.seed, speed=not args.no_speed)
    text = json.dumps(rep, indent=1)
    print(text)
    from synth.fsutil import atomic_write_text

    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.png:
        from trainer import card

        card.spectrogram_grid(grid, rep.get("compared_at_hz", preset.sample_rate), args.png,
                              title=f"{preset.name}: real (left) vs generated (right), log-mel dB")
    if args.update_preset:
        update_preset(preset, rep, grid, ["python", "-m", "trainer", "eval", *argv])
        print(f"updated {preset.path / 'preset.json'} and its card", file=sys.stderr)
    return 0
