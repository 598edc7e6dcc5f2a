"""`python -m trainer eval PRESET --data DIR --timbres`: a family preset's bars (issue 20).

A family preset (manifest `timbres`, one learned latent point per training instrument) is measured
as a set of instruments, with `trainer.evaluate`'s log-mel distance, pitch accuracy and speed:

timbres
    Each timbre's point (the latent the engine plays for its program, `synth.latent.LatentMapper`
    with the knobs at their defaults) is generated at every held-out (`--split`, test by default)
    note of its own instrument within `--pitches`, at that note's pitch and velocity; own_db is the
    mean log-mel distance. Bars: median over timbres <= 7 dB, max <= 9 dB. For the confusion, up to
    `--timbre-notes` of those notes (spread over pitch) are compared with every other instrument's
    real note at the same pitch and velocity (any split: a timbre never trains on another
    instrument's notes): a timbre passes when its own instrument is nearer than every instrument of
    another kind (`KINDS`: acoustic pianos 0-3, electric pianos 4-5, harpsichord 6, clavinet 7;
    within a kind, programs sharing samples are exempt).
knobs
    Each latent knob from the default timbre on the grid CC 0, 32, 64, 96, 127: the distance between
    CC 0 and 127 at C4 (mean over a few velocities; bar >= 6 dB); the distance from CC 0 grows
    monotonically and no step between neighbours is more than 60% of the whole; at every grid
    position pitch accuracy >= 0.95 over a few pitches and the level (RMS over the frames within
    30 dB of the peak) within ±3 dB of the default state's, note for note.
morphs
    CC 16 (amount) toward the timbre of the program in CC 17, same source: program 0 -> 4 and
    4 -> 6, amounts on the same grid; the same smoothness and pitch bars; the level bar against the
    straight line (in dB) between the two ends' levels, since the instruments themselves differ in
    level (keys: the real Rhodes is ~10 dB louder than the grand at C4, level_ends_real_db); the
    span and the level change between the ends are reported without a bar.
latent
    diversity_random_db: mean pairwise distance between random latents z ~ N(0, I) (trainer eval's
    diversity), beside timbre_spread_db, the same between the timbres' points.
speed and size
    generator.onnx <= 10 MB; `trainer.evaluate.speed_report`: <= 20 ms a note, <= 1 s for 88 keys.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import UserError
from trainer.evaluate import (
    PITCH_TOL_CENTS,
    SPLITS,
    _mid_velocity,
    _resample,
    frame_levels_db,
    log_mel,
    pairwise_distance,
    pitch_accuracy,
    speed_report,
)

GRID = (0, 32, 64, 96, 127)
BARS = {"own_median_db": 7.0, "own_max_db": 9.0, "knob_span_db": 6.0, "step_share": 0.6, "pitch_acc": 0.95,
        "level_db": 3.0, "onnx_mb": 10.0, "ms_per_note": 20.0, "ms_per_88": 1000.0}
# GM keyboard programs -> the kind of instrument; other programs fall back to their GM family.
KINDS = {0: "acoustic piano", 1: "acoustic piano", 2: "acoustic piano", 3: "acoustic piano",
         4: "electric piano", 5: "electric piano", 6: "harpsichord", 7: "clavinet"}
MORPH_PAIRS = ((0, 4), (4, 6))
C4 = 60
ACC_KEYS = (36, 48, 60, 72, 84)
TIMBRES_PNG = "timbres.png"
MORPH_PNG = "morph.png"


# --------------------------------------------------------------------------------------------------
# pure logic (tested on its own)

def instrument_kind(program: int | None, gm_kind: str | None = None) -> str:
    """The kind an instrument is compared by: `KINDS` for GM 0-7, else its GM family (or gm_kind)."""
    if program is not None and program in KINDS:
        return KINDS[program]
    if program is not None:
        from synth import gm

        return gm.FAMILIES[gm.family_of(int(program))]
    return gm_kind or "unknown"


def kind_confusion(dist: np.ndarray, own: list[int], timbre_kinds: list[str], inst_kinds: list[str],
                   inst_names: list[str]) -> list[dict[str, Any]]:
    """Per timbre: its own instrument's distance against the nearest instrument of another kind.

    dist float[T, I]: timbre t's distance to instrument i (NaN: not measured); own[t] its instrument.
    `ok` is True when the own distance is below every other kind's (None when nothing to compare)."""
    out = []
    for t in range(len(dist)):
        row = np.asarray(dist[t], float)
        others = [i for i in range(row.shape[0]) if inst_kinds[i] != timbre_kinds[t] and np.isfinite(row[i])]
        near = min(others, key=lambda i: row[i]) if others else None
        fin = [i for i in range(row.shape[0]) if np.isfinite(row[i])]
        any_near = min(fin, key=lambda i: row[i]) if fin else None
        d_own = float(row[own[t]])
        out.append({"own_db": round(d_own, 3),
                    "nearest_other_kind": None if near is None else inst_names[near],
                    "nearest_other_kind_db": None if near is None else round(float(row[near]), 3),
                    "nearest_instrument": None if any_near is None else inst_names[any_near],
                    "ok": None if near is None or not math.isfinite(d_own) else bool(d_own < row[near])})
    return out


def smoothness(dmat: np.ndarray) -> dict[str, Any]:
    """Figures of a sweep from its P x P matrix of distances between grid positions (in grid order).

    span: position 0 to the last; from_first: each position's distance to the first; steps: between
    neighbours; monotonic: from_first never falls; max_step_share: the largest step over the span."""
    d = np.asarray(dmat, float)
    span = float(d[0, -1])
    from0 = [float(x) for x in d[0]]
    steps = [float(d[k, k + 1]) for k in range(len(d) - 1)]
    mono = all(b >= a for a, b in zip(from0, from0[1:], strict=False))
    share = max(steps) / span if span > 0 else float("inf")
    return {"span_db": round(span, 3), "from_first_db": [round(x, 3) for x in from0],
            "steps_db": [round(x, 3) for x in steps], "monotonic": mono, "max_step_share": round(share, 3),
            "smooth": bool(mono and share <= BARS["step_share"])}


def level_db(audio: np.ndarray, sr: int) -> np.ndarray:
    """Per-note level (dBFS): RMS over the 10-ms frames within 30 dB of the note's loudest."""
    lev = frame_levels_db(audio, sr)
    keep = lev >= lev.max(axis=1, keepdims=True) - 30.0
    lin = np.where(keep, 10 ** (lev / 10), 0.0)
    return 10 * np.log10(np.maximum(lin.sum(axis=1) / np.maximum(keep.sum(axis=1), 1), 1e-12))


def _spread_idx(n: int, k: int) -> np.ndarray:
    """k indices spread evenly over range(n) (all of them when k >= n or k <= 0)."""
    if k <= 0 or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


# --------------------------------------------------------------------------------------------------
# generation

class _Family:
    """A family preset's session, knob mapper and dataset, with log-mel helpers on equal lengths."""

    def __init__(self, preset, ds=None, threads: int | None = None):
        from synth.inference import GeneratorSession
        from synth.latent import LatentMapper

        if not preset.timbres:
            raise UserError(f"preset {preset.name!r} has no timbres: --timbres measures family presets "
                            "(trained with train.timbres on a multi-instrument set)")
        self.preset, self.ds, self.sr = preset, ds, preset.sample_rate
        self.mapper = LatentMapper(preset)
        self.sess = GeneratorSession(preset, providers="cpu", threads=threads or os.cpu_count() or 1, warmup=False)
        self.n = preset.note_samples
        if ds is not None:
            self.n = min(self.n, int(round(ds.info["note_samples"] * self.sr / ds.info["sample_rate"])))

    def gen(self, z, keys, vels) -> np.ndarray:
        z = np.asarray(z, np.float32)
        keys = np.asarray(keys, np.int64)
        if z.ndim == 1:
            z = np.repeat(z[None], len(keys), 0)
        return self.sess.generate(z, keys, np.asarray(vels, np.float32))[:, :self.n]

    def real(self, idx) -> np.ndarray:
        a = _resample(self.ds.audio_batch(np.asarray(idx, np.int64)), self.ds.info["sample_rate"], self.sr)
        return a[:, :self.n]

    def timbre_latent(self, t: int, target: int | None = None, amount: int = 0, key=None) -> np.ndarray:
        base = self.mapper.default_key if key is None else key
        return self.mapper.latent(self.mapper.with_timbre(base, t, t if target is None else target, amount))

    @property
    def default_timbre(self) -> int:
        return int(self.mapper.default_key[-3])


def _lmd(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |Δ dB| of two stacks of log-mel spectrograms (trainer eval's distance, averaged over notes)."""
    return float(np.abs(a - b).mean())


# --------------------------------------------------------------------------------------------------
# the measurements

def match_instruments(timbres, instruments: list[dict[str, Any]]) -> list[int]:
    """Dataset instrument index of each timbre: same (source, bank, program), else the same position."""
    by = {(i.get("source"), i.get("bank"), i.get("program")): k for k, i in enumerate(instruments)}
    out = []
    for k, t in enumerate(timbres):
        j = by.get((t.source, t.bank, t.program))
        if j is None:
            if k >= len(instruments):
                raise UserError(f"timbre {t.name!r} ({t.source} {t.bank}:{t.program}) has no instrument in the "
                                "dataset; pass the dataset the preset was trained on")
            j = k
        out.append(j)
    return out


def timbre_report(fam: _Family, split: str, pitches: tuple[int, int], cross_notes: int) -> dict[str, Any]:
    """Each timbre against its own instrument's held-out notes, and against every other instrument."""
    ds, p = fam.ds, fam.preset
    insts = ds.info.get("instruments")
    if not insts:
        raise UserError(f"{ds.root}: not a multi-instrument set (no `instruments` in its manifest); --timbres "
                        "needs the family's dataset (python -m trainer dataset --soundfont A --soundfont B "
                        "--programs ...)")
    own = match_instruments(p.timbres, insts)
    lo, hi = pitches
    in_split = np.array([n["split"] in SPLITS[split] for n in ds.notes], bool)
    in_range = (ds.pitches >= lo) & (ds.pitches <= hi)
    v127 = np.round(ds.velocities * 127).astype(int)
    index = {(int(i), int(k), int(v)): n
             for n, (i, k, v) in enumerate(zip(ds.instruments, ds.pitches, v127, strict=True))}
    vel_in = ds.velocities if p.velocity_conditioned else np.ones(len(ds), np.float32)
    t_kinds = [instrument_kind(t.program, t.gm_kind) for t in p.timbres]
    i_kinds = [instrument_kind(i.get("program"), i.get("gm_kind")) for i in insts]
    i_names = [f"{i.get('name')} ({Path(str(i.get('source') or '')).stem})" for i in insts]
    dist = np.full((len(p.timbres), len(insts)), np.nan)
    per = []
    for t, j in enumerate(own):
        sel = np.flatnonzero(in_split & in_range & (ds.instruments == j))
        sel = sel[np.argsort(ds.pitches[sel], kind="stable")]
        if not len(sel):
            raise UserError(f"{ds.root}: instrument {insts[j].get('name')!r} has no {split!r} notes in MIDI "
                            f"{lo}-{hi}; widen --pitches or pick another --split")
        lm_g = log_mel(fam.gen(fam.timbre_latent(t), ds.pitches[sel], vel_in[sel]), fam.sr)
        lm_r = log_mel(fam.real(sel), fam.sr)
        own_all = [_lmd(g, r) for g, r in zip(lm_g, lm_r, strict=True)]
        sub = _spread_idx(len(sel), cross_notes)
        for i in range(len(insts)):
            pairs = [(s, index.get((i, int(ds.pitches[sel[s]]), int(v127[sel[s]])))) for s in sub]
            pairs = [(s, n) for s, n in pairs if n is not None]
            if not pairs:
                continue
            lm_o = lm_r[[s for s, _ in pairs]] if i == j else log_mel(fam.real([n for _, n in pairs]), fam.sr)
            dist[t, i] = _lmd(lm_g[[s for s, _ in pairs]], lm_o)
        per.append({"timbre": t, "name": p.timbres[t].name, "source": p.timbres[t].source,
                    "program": p.timbres[t].program, "kind": t_kinds[t], "instrument": j,
                    "own_db": round(float(np.mean(own_all)), 3), "own_notes": len(sel), "cross_notes": len(sub)})
    conf = kind_confusion(dist, own, t_kinds, i_kinds, i_names)
    for row, c in zip(per, conf, strict=True):
        row.update({"own_db_cross_notes": c["own_db"], **{k: v for k, v in c.items() if k != "own_db"}})
    owns = [r["own_db"] for r in per]
    return {"timbres": per, "own_median_db": float(np.median(owns)), "own_max_db": float(np.max(owns)),
            "confused": [r["name"] + f" ({Path(r['source']).stem})" for r in per if r["ok"] is False],
            "distance_matrix_db": np.round(dist, 3).tolist(), "instruments": i_names}


def sweep(fam: _Family, latents: list[np.ndarray], ref: np.ndarray, vels: list[float],
          acc_keys: list[int], level_line: bool = False, gains: list[float] | None = None) -> dict[str, Any]:
    """Figures of one sweep (latents in grid order): smoothness at C4 over `vels`, pitch accuracy over
    `acc_keys` at the middle velocity, and each position's level against `ref`'s, note for note.
    `level_line`: against the straight line (in dB) between the two ends' levels instead (a morph
    between instruments of different loudness), `level_vs_first_db` keeping the plain figures.
    `gains`: the linear gain the engine gives each latent's notes (`synth.latent.level_gain`)."""
    v_mid = _mid_velocity(fam.preset)
    keys = [C4] * len(vels) + list(acc_keys)
    vv = list(vels) + [v_mid] * len(acc_keys)
    zs = [ref] + list(latents)
    audio = fam.gen(np.repeat(np.asarray(zs, np.float32), len(keys), 0), np.tile(keys, len(zs)), np.tile(vv, len(zs)))
    audio = audio.reshape(len(zs), len(keys), -1)
    if gains is not None:
        audio[1:] *= np.asarray(gains, np.float32)[:, None, None]
    lm = [log_mel(a[:len(vels)], fam.sr) for a in audio[1:]]
    P = len(latents)
    dmat = np.array([[_lmd(lm[a], lm[b]) for b in range(P)] for a in range(P)])
    out = smoothness(dmat)
    lev_ref = level_db(audio[0], fam.sr)
    acc, lev = [], []
    for a in audio[1:]:
        acc.append(pitch_accuracy(a[len(vels):], np.asarray(acc_keys), fam.sr, PITCH_TOL_CENTS)[0] if acc_keys
                   else float("nan"))
        lev.append(float(np.mean(level_db(a, fam.sr) - lev_ref)))
    if level_line:
        out["level_vs_first_db"] = [round(x, 2) for x in lev]
        line = np.interp(GRID[:len(lev)], [GRID[0], GRID[len(lev) - 1]], [lev[0], lev[-1]])
        lev = [float(x - y) for x, y in zip(lev, line, strict=True)]
    out.update({"pitch_acc": [round(x, 3) for x in acc], "level_delta_db": [round(x, 2) for x in lev],
                "pitch_ok": bool(all(x >= BARS["pitch_acc"] for x in acc)),
                "level_ok": bool(all(abs(x) <= BARS["level_db"] for x in lev))})
    return out


def knob_reports(fam: _Family, vels: list[float], acc_keys: list[int]) -> list[dict[str, Any]]:
    """Each latent knob swept over `GRID` from the default timbre (other knobs at their defaults), at
    the level the engine plays each state (`synth.latent.level_gain`)."""
    from synth.latent import level_gain

    m, base = fam.mapper, fam.mapper.default_key
    out = []
    for k in fam.preset.knobs:
        if k.kind != "latent":
            continue
        states = [m.with_cc(base, k.cc, v) for v in GRID]
        gains = [level_gain(m, s, fam.sess.generate) for s in states]
        r = sweep(fam, [m.latent(s) for s in states], m.latent(base), vels, acc_keys, gains=gains)
        r["engine_gain_db"] = [round(20 * float(np.log10(g)), 2) for g in gains]
        r.update({"cc": k.cc, "name": k.name, "grid": list(GRID),
                  "span_ok": bool(r["span_db"] >= BARS["knob_span_db"])})
        out.append(r)
    return out


def morph_pairs(preset, pairs=MORPH_PAIRS) -> list[tuple[int, int]]:
    """(timbre a, timbre b) for each (program a, program b) in `pairs`, both from the default timbre's
    source when it has them (else the first with that program); pairs the family lacks are skipped.
    A family with none of them (not the keyboards) morphs its lowest program to its middle one and
    the middle one to its highest (`ensemble`: violin -> string ensemble -> choir)."""
    from synth.latent import LatentMapper

    ts = preset.timbres
    src = ts[LatentMapper(preset).default_key[-3]].source

    def pick(prog):
        c = [i for i, t in enumerate(ts) if t.program == prog]
        return next((i for i in c if ts[i].source == src), c[0] if c else None)
    out = []
    for a, b in pairs:
        ia, ib = pick(a), pick(b)
        if ia is not None and ib is not None and ia != ib:
            out.append((ia, ib))
    progs = sorted({t.program for t in ts if t.program is not None})
    if not out and len(progs) >= 2:
        mid = progs[len(progs) // 2]
        out = [(pick(a), pick(b)) for a, b in ((progs[0], mid), (mid, progs[-1])) if a != b]
    return out


def morph_reports(fam: _Family, vels: list[float], acc_keys: list[int]) -> list[dict[str, Any]]:
    """CC 16 amounts over `GRID` from timbre a toward b (CC 17), for each of `morph_pairs`, with the
    level the engine plays them at (`synth.latent.level_gain`)."""
    from synth.latent import level_gain

    out = []
    for a, b in morph_pairs(fam.preset):
        zs = [fam.timbre_latent(a, b, amt) for amt in GRID]
        gains = [level_gain(fam.mapper, fam.mapper.with_timbre(fam.mapper.default_key, a, b, amt), fam.sess.generate)
                 for amt in GRID]
        r = sweep(fam, zs, zs[0], vels, acc_keys, level_line=True, gains=gains)
        r["engine_gain_db"] = [round(20 * float(np.log10(g)), 2) for g in gains]
        ta, tb = fam.preset.timbres[a], fam.preset.timbres[b]
        r.update({"from": f"{ta.name} (program {ta.program})", "to": f"{tb.name} (program {tb.program})",
                  "timbres": [a, b], "grid": list(GRID), "level_ends_real_db": _real_level_gap(fam, a, b, vels)})
        out.append(r)
    return out


def _real_level_gap(fam: _Family, a: int, b: int, vels: list[float]) -> float | None:
    """Timbre b's real instrument minus a's, level at C4 (mean over `vels`), dB; None without data."""
    ds = fam.ds
    if ds is None or not ds.info.get("instruments"):
        return None
    ia, ib = match_instruments([fam.preset.timbres[a], fam.preset.timbres[b]], ds.info["instruments"])
    v127 = np.round(ds.velocities * 127).astype(int)
    gaps = []
    for v in vels:
        na = np.flatnonzero((ds.instruments == ia) & (ds.pitches == C4) & (v127 == round(v * 127)))
        nb = np.flatnonzero((ds.instruments == ib) & (ds.pitches == C4) & (v127 == round(v * 127)))
        if len(na) and len(nb):
            lev = level_db(fam.real([na[0], nb[0]]), fam.sr)
            gaps.append(float(lev[1] - lev[0]))
    return round(float(np.mean(gaps)), 2) if gaps else None


def latent_report(fam: _Family, keys: list[int], n_random: int, seed: int) -> dict[str, Any]:
    """Pairwise distance between random latents' notes, and between the timbres' points' notes."""
    p = fam.preset
    v = _mid_velocity(p)
    zr = np.random.default_rng([seed, 20]).standard_normal((max(2, n_random), p.latent_size)).astype(np.float32)
    zt = np.asarray([t.latent for t in p.timbres], np.float32)

    def spread(zs):
        return float(np.mean([pairwise_distance(fam.gen(zs, np.full(len(zs), k), np.full(len(zs), v)), fam.sr)
                              for k in keys]))
    return {"diversity_random_db": spread(zr), "timbre_spread_db": spread(zt) if len(zt) > 1 else float("nan"),
            "latent_keys": list(keys), "random_latents": len(zr)}


# --------------------------------------------------------------------------------------------------
# the report, its bars and the preset update

def family_report(preset, data_root, split: str = "test", pitches: tuple[int, int] | None = None,
                  cross_notes: int = 8, n_random: int = 8, seed: int = 0, speed: bool = True,
                  quick: bool = False) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
    """Measure family preset `preset` against its dataset at `data_root` (see the module docstring).

    Returns (report, strip): the figures with `bars` (rows as the bench scripts write them), and the
    morph strip's notes [(label, float32[N])] for `trainer.card.morph_strip`. `quick` measures fewer
    velocities and pitches."""
    from trainer.data import OneShotDataset

    t0 = time.time()
    if split not in SPLITS:
        raise UserError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    if preset.is_drums:
        raise UserError(f"preset {preset.name!r} is a drum kit; --timbres measures pitched family presets")
    fam = _Family(preset, OneShotDataset(data_root))
    lo, hi = pitches or preset.pitch_range
    lo, hi = max(lo, preset.pitch_range[0]), min(hi, preset.pitch_range[1])
    if lo > hi:
        raise UserError(f"--pitches {pitches}: outside the preset's range {list(preset.pitch_range)}")
    layers = [x / 127.0 for x in preset.velocity_layers]
    vels = [layers[i] for i in _spread_idx(len(layers), 2 if quick else 3)]
    acc_keys = [k for k in ACC_KEYS if lo <= k <= hi][::2 if quick else 1] or [min(max(C4, lo), hi)]
    rep: dict[str, Any] = {"preset": preset.name, "data": str(data_root), "split": split, "pitches": [lo, hi],
                           "seed": seed, "velocities": [round(v * 127) for v in vels], "pitch_keys": acc_keys}
    rep.update(timbre_report(fam, split, (lo, hi), cross_notes))
    rep["knobs"] = knob_reports(fam, vels, acc_keys)
    rep["morphs"] = morph_reports(fam, vels, acc_keys)
    rep.update(latent_report(fam, acc_keys[::2] if len(acc_keys) > 3 else acc_keys, n_random, seed))
    gen_file = preset.generator_path
    rep["onnx_mb"] = gen_file.stat().st_size / 1e6
    if speed:
        rep.update(speed_report(preset, repeats=3 if quick else 5))
    rep["bars"] = bars(rep)
    rep["eval_seconds"] = round(time.time() - t0, 1)
    return rep, morph_notes(fam)


def morph_notes(fam: _Family, steps: int = 8) -> list[tuple[str, np.ndarray]]:
    """C4 at the middle velocity morphing along the first of `morph_pairs`, `steps` amounts 0..127."""
    pairs = morph_pairs(fam.preset)
    if not pairs:
        return []
    a, b = pairs[0]
    amts = np.linspace(0, 127, steps).round().astype(int)
    zs = np.asarray([fam.timbre_latent(a, b, int(x)) for x in amts], np.float32)
    key = min(max(C4, fam.preset.pitch_range[0]), fam.preset.pitch_range[1])
    audio = fam.gen(zs, np.full(len(zs), key), np.full(len(zs), _mid_velocity(fam.preset)))
    ta, tb = fam.preset.timbres[a], fam.preset.timbres[b]
    return [(f"{ta.name} → {tb.name}: CC16 {x}", audio[i]) for i, x in enumerate(amts)]


def _row(name, value, unit, bar, ok, notes=""):
    v = None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), 4)
    return {"name": name, "value": v, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def bars(rep: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's figures as rows {name, value, unit, bar, pass, notes}, one per bar (and the latent)."""
    B, n = BARS, rep["preset"]
    tim = rep["timbres"]
    worst = max(tim, key=lambda r: r["own_db"])
    rows = [_row(f"family {n}: timbre to own instrument, median", rep["own_median_db"], "dB",
                 f"<= {B['own_median_db']:g} dB", rep["own_median_db"] <= B["own_median_db"],
                 f"{len(tim)} timbres, {sum(r['own_notes'] for r in tim)} {rep['split']} notes, MIDI {rep['pitches']}"),
            _row(f"family {n}: timbre to own instrument, max", rep["own_max_db"], "dB", f"<= {B['own_max_db']:g} dB",
                 rep["own_max_db"] <= B["own_max_db"], f"{worst['name']} ({Path(worst['source']).stem})")]
    judged = [r for r in tim if r["ok"] is not None]
    rows.append(_row(f"family {n}: timbres nearer their own instrument than any other kind",
                     sum(bool(r["ok"]) for r in judged), "timbres", f"{len(judged)} of {len(judged)}",
                     all(r["ok"] for r in judged),
                     "confused: " + ", ".join(rep["confused"]) if rep["confused"] else "none confused"))
    for k in rep["knobs"]:
        tag = f"family {n}: knob CC{k['cc']} {k['name']}"
        rows += [_row(f"{tag}: CC 0 to 127 at C4", k["span_db"], "dB", f">= {B['knob_span_db']:g} dB", k["span_ok"]),
                 *_sweep_rows(tag, k)]
    for m in rep["morphs"]:
        tag = f"family {n}: morph {m['from']} -> {m['to']}"
        gap = m.get("level_ends_real_db")
        rows += [_row(f"{tag}: amount 0 to 127 at C4", m["span_db"], "dB", "", None,
                      f"level, amount 127 vs 0: {m['level_vs_first_db'][-1]:+.1f} dB"
                      + ("" if gap is None else f" (the real instruments: {gap:+.1f} dB)")),
                 *_sweep_rows(tag, m, "vs the line between the ends")]
    rows += [_row(f"family {n}: diversity across random latents", rep["diversity_random_db"], "dB", "", None,
                  f"{rep['random_latents']} z ~ N(0, I); single-instrument presets 0.4-1.4 dB"),
             _row(f"family {n}: spread between the timbres", rep["timbre_spread_db"], "dB", "", None,
                  f"pairwise over {len(tim)} timbres at MIDI {rep['latent_keys']}"),
             _row(f"family {n}: generator.onnx size", rep["onnx_mb"], "MB", f"<= {B['onnx_mb']:g} MB",
                  rep["onnx_mb"] <= B["onnx_mb"])]
    if "ms_per_note" in rep:
        cores = f"CPU, 1 thread ({rep.get('cpu_cores', '?')} cores)"
        rows += [_row(f"family {n}: ms per note", rep["ms_per_note"], "ms", f"<= {B['ms_per_note']:g} ms",
                      rep["ms_per_note"] <= B["ms_per_note"], cores),
                 _row(f"family {n}: ms per 88 keys", rep["ms_per_88"], "ms", f"<= {B['ms_per_88']:g} ms",
                      rep["ms_per_88"] <= B["ms_per_88"], cores)]
    return rows


def _sweep_rows(tag: str, s: dict[str, Any], level: str = "vs default") -> list[dict[str, Any]]:
    """Smoothness, pitch and level rows of one sweep (a knob's or a morph's)."""
    B = BARS
    lev = max(s["level_delta_db"], key=abs)
    return [_row(f"{tag}: largest step / whole", s["max_step_share"], "share",
                 f"<= {B['step_share']:g}, monotonic", s["smooth"],
                 f"from CC 0: {s['from_first_db']} dB" + ("" if s["monotonic"] else " (not monotonic)")),
            _row(f"{tag}: pitch accuracy, worst grid position", min(s["pitch_acc"]), "share",
                 f">= {B['pitch_acc']:g}", s["pitch_ok"]),
            _row(f"{tag}: level {level}, worst grid position", lev, "dB", f"within ±{B['level_db']:g} dB",
                 s["level_ok"])]


FAMILY_METRIC_DROP = ("distance_matrix_db", "instruments", "bars", "data")


def metrics_for_manifest(rep: dict[str, Any], command: list[str] | None = None) -> dict[str, Any]:
    """preset.json `metrics.family`: the report without the matrix, the bars as {name: [value, pass]}."""
    fam = {k: v for k, v in rep.items() if k not in FAMILY_METRIC_DROP}
    fam["bars"] = {r["name"]: [r["value"], r["pass"], r["bar"]] for r in rep["bars"]}
    fam["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    fam["definitions"] = "trainer/family_eval.py module docstring"
    if command:
        fam["command"] = " ".join(command)
    return fam


def update_preset(preset, rep: dict[str, Any], strip, command: list[str] | None = None):
    """Store the figures as `metrics.family` in preset.json (other metrics kept), draw timbres.png and
    morph.png into the preset folder and refresh card.md."""
    import json

    from synth.fsutil import atomic_write_text
    from synth.preset import load_preset_dir, manifest_dict, validate_manifest
    from trainer import card

    folder = preset.path
    m = manifest_dict(load_preset_dir(folder))
    m["metrics"] = {**(m.get("metrics") or {}), "family": metrics_for_manifest(rep, command)}
    m = json.loads(json.dumps(m))
    validate_manifest(m, folder)
    atomic_write_text(folder / "preset.json", json.dumps(m, indent=1) + "\n")
    card.timbre_map(m, folder / card.TIMBRES_FILE)
    if strip:
        card.morph_strip(strip, preset.sample_rate, folder / card.MORPH_FILE,
                         title=f"{preset.name}: C4 morphing (CC 16 amount), log-mel dB")
    card.write_card(folder)
    return load_preset_dir(folder)


def main(args, argv: list[str], preset, pitches) -> int:
    """`trainer eval ... --timbres`: print the JSON report; --out, --update-preset as for single presets."""
    import json
    import sys

    from synth.fsutil import atomic_write_text

    rep, strip = family_report(preset, args.data, split=args.split, pitches=pitches, cross_notes=args.timbre_notes,
                               n_random=max(2, args.latents + 2), seed=args.seed, speed=not args.no_speed)
    text = json.dumps(rep, indent=1)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    if args.update_preset:
        update_preset(preset, rep, strip, ["python", "-m", "trainer", "eval", *_portable(argv, args.preset, preset)])
        print(f"updated {preset.path / 'preset.json'}, its card, timbres.png and morph.png", file=sys.stderr)
    return 0


def _portable(argv: list[str], spec: str, preset) -> list[str]:
    """The command as the card records it: the preset by name, folders relative to the working
    directory where they lie under it (no machine paths in a card)."""
    out = []
    for a in argv:
        if a == spec:
            a = preset.name
        elif os.path.isabs(a) and Path(a).exists():
            rel = os.path.relpath(a)
            a = rel if not rel.startswith("..") else Path(a).name
        out.append(a)
    return out
