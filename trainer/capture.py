"""`python -m trainer capture`: fit a new instrument from a few notes into a preset, without training.

A family preset's generator already knows a space of timbres; an instrument it never heard is often
close to some point of that space. Capture looks for that point: given a handful of real notes (a
sample folder, or a SoundFont preset rendered with FluidSynth as the dataset code renders), it
searches the latent z whose notes, generated at the given notes' pitches and velocities, are
nearest by `trainer eval`'s log-mel distance, then fine-tunes a copy of the base's generator around
that z (`trainer.finetune`), and writes a preset that plays it over the base's whole range.

Search (all given notes of a candidate in one generator batch, every candidate of a generation in
one call):
1. Start: every timbre of the base (or its default latent when it has none) is scored; the
   nearest is the baseline the capture must beat, and the midpoints between it and the next two
   are scored too.
2. CMA-ES in the full latent space from the best start; its first covariance is the spread of the
   base's timbres (half of it) plus an isotropic half, so the first steps follow the family's own
   axes (those its knobs are made of), then it adapts. Stops after `--steps` generations or
   `--seconds`, whichever comes first.
3. Optionally (`--check N`) N of the notes (spread over pitch) are left out of the search and pick
   the stopping point: the z on the search path with the lowest distance on them. Off by default:
   with 8 notes one check note chose worse than the search's own best (docs/decisions-trainer.md).
4. Fine-tune (`--finetune-seconds`, 40% of `--seconds` by default), taken out of `--seconds`: Adam on all of the
   generator's weights with z fixed, on the log-mel distance itself. Kept only when the given notes
   (with `--check`, the held-back ones) come out nearer; bases exported before `generator_config`
   was recorded skip it, and the capture says so.

The preset: the fine-tuned graph, or the base's `generator.onnx` (hard-linked, else copied) when the
fine-tune was skipped or not kept, `latent.default` = the fitted z,
the base's knobs with their ranges shifted so that each knob's default CC is the fitted z itself,
no `timbres`, and `training.capture` (base name and generator sha256, source, notes, command,
steps, seconds, log-mel figures). Written atomically; an existing preset is kept unless `--force`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import OneLineParser, UserError

DEFAULT_PITCHES = (36, 43, 50, 57, 64, 71, 78, 85)
DEFAULT_VELOCITY = 100
MIN_NOTES = 2
MIN_NOTE_SECONDS = 0.05
MAX_FOLDER_NOTES = 64
DEFAULT_SECONDS = 150.0
DEFAULT_STEPS = 200
FINISH_SECONDS = 8.0       # kept for what follows the search: the check, pitch accuracy, the write
FINETUNE_SHARE = 0.4        # of --seconds, by default, for the fine-tune (60 of the default 150)
DEFAULT_FINETUNE_STEPS = 400
FINETUNE_SETUP_SECONDS = 6.0   # torch, the rebuilt generator, its parity check and the graph write


@dataclass
class Note:
    """One given note: its audio at the base's rate (the length that is compared) and where it came from."""
    pitch: int
    velocity: int
    audio: np.ndarray
    label: str
    pitch_from: str


# --------------------------------------------------------------------------------------------------
# sources

_KEY_VEL_TAIL = re.compile(r"[_-](\d{3})[_-](\d{3})$")


def name_pitch(stem: str) -> tuple[int | None, int | None, str | None]:
    """(pitch, velocity, how) from a file name: `trainer.data.samples.parse_name` (C4, 60, NSynth's
    name-060-100), and also NSynth's numbers behind underscores (name_060_100)."""
    from trainer.data.samples import parse_name

    pitch, vel, how = parse_name(stem)
    m = _KEY_VEL_TAIL.search(stem)
    if pitch is None and m and int(m.group(1)) <= 127 and 1 <= int(m.group(2)) <= 127:
        return int(m.group(1)), int(m.group(2)), "name _PPP_VVV"
    return pitch, vel, how

def notes_from_folder(root: Path, preset, velocity: int) -> list[Note]:
    """Every audio file under `root` as a note: pitch from its name, else pYIN; a bad file is an error."""
    from trainer.data.folder import MIN_CONFIDENCE, PITCH_EXCERPT_S, check_file, list_audio
    from trainer.data.pitch import estimate_f0, hz_to_midi
    from trainer.data.samples import Skip, prepare, read_audio

    if not root.is_dir():
        raise UserError(f"{root}: folder not found; pass --from-folder DIR holding your notes")
    files, ignored = list_audio(root)
    if not files:
        raise UserError(f"{root}: no WAV/FLAC/AIFF/OGG files ({ignored} other files ignored); "
                        "put at least 2 notes of the instrument there")
    if len(files) > MAX_FOLDER_NOTES:
        raise UserError(f"{root}: {len(files)} audio files; capture takes at most {MAX_FOLDER_NOTES} notes, "
                        "pick a few spread over the keyboard")
    sr, n = preset.sample_rate, preset.note_samples
    out = []
    for f in files:
        rel = f.relative_to(root).as_posix()
        try:
            check_file(f)
            data, file_sr = read_audio(f)
            prep = prepare(data, file_sr, target_sr=sr, note_samples=n, min_seconds=MIN_NOTE_SECONDS,
                           normalize="note")
        except Skip as e:
            raise UserError(f"{root / rel}: {e}; remove the file or fix it") from None
        pitch, vel, how = name_pitch(f.stem)
        if pitch is None:
            f0, conf = estimate_f0(prep.audio[:int(PITCH_EXCERPT_S * sr)], sr)
            if math.isnan(f0) or conf < MIN_CONFIDENCE:
                raise UserError(f"{root / rel}: no pitch: the name holds no note and pYIN is unsure "
                                f"({'nothing voiced' if math.isnan(f0) else f'confidence {conf:.2f}'}); "
                                "name the file by its note, e.g. C4.wav or 60.wav")
            pitch, how = int(round(hz_to_midi(f0))), "pYIN"
        length = min(n, max(int(round(prep.duration * sr)), int(0.1 * sr)))
        out.append(Note(int(pitch), int(vel or velocity), prep.audio[:length].copy(), rel, how))
    return out


def notes_from_soundfont(path: Path, program: int, bank: int, pitches: list[int], velocity: int,
                         preset) -> list[Note]:
    """The SoundFont preset's notes at `pitches`, rendered with FluidSynth as `trainer dataset` does."""
    from trainer.data import soundfont as sf
    from trainer.data.family import RENDER_OPTIONS

    found = sf.find_preset(path, program, bank)
    sf.fluidsynth_version()
    data = preset.training.get("data") if isinstance(preset.training.get("data"), dict) else {}
    seconds = preset.note_samples / preset.sample_rate
    release = float(data.get("source release", min(1.0, seconds / 4)))
    voice = sf.Voice(path, program, bank, False)
    specs = [sf.NoteSpec(k, velocity) for k in pitches]
    out = []
    for _, spec, audio, peak, _ in sf.render_parts([(voice, specs)], seconds=seconds, release=release,
                                                     sample_rate=preset.sample_rate, jobs=1, chunk=64,
                                                     options=RENDER_OPTIONS):
        if peak <= 1e-6:
            raise UserError(f"{path}: {found.name!r} (bank {bank}, program {program}) is silent at key {spec.key}; "
                            "leave that key out of --pitches")
        out.append(Note(spec.key, velocity, audio[:preset.note_samples], f"key {spec.key}", "rendered"))
    return out


def check_notes(notes: list[Note], preset, where: str) -> None:
    """Refuse too few notes and pitches the base cannot play."""
    if len(notes) < MIN_NOTES:
        raise UserError(f"{where}: {len(notes)} note; capture needs at least {MIN_NOTES} (8 spread over the "
                        "keyboard work well)")
    lo, hi = preset.pitch_range
    for nt in notes:
        if not lo <= nt.pitch <= hi:
            raise UserError(f"{where}: {nt.label} is MIDI {nt.pitch}, outside the base preset's range {lo}-{hi}; "
                            "leave it out")


# --------------------------------------------------------------------------------------------------
# the objective

def log_mel(audio: np.ndarray, sr: int) -> np.ndarray:
    """`trainer.evaluate.log_mel` (loudness-normalised, dB) of float32[B, N], with the mel projection as
    one 2-D matrix product: numpy's stacked 3-D product took 13x longer here, and the search spends
    most of its time in this function. Equal to the evaluate version within float rounding."""
    from trainer.evaluate import CHUNK, DB_FLOOR_POWER, mel_filterbank, power_spectrogram, stft_params

    a = np.atleast_2d(np.asarray(audio, np.float32))
    fb = mel_filterbank(sr, stft_params(sr)[0])
    out = []
    for s in range(0, len(a), CHUNK):     # bounds the STFT's memory, as evaluate does
        x = a[s:s + CHUNK].astype(np.float64)
        rms = np.sqrt(np.mean(x ** 2, axis=1, keepdims=True))
        p = power_spectrogram((x / np.where(rms > 1e-12, rms, 1.0)).astype(np.float32), sr)
        mel = (p.reshape(-1, p.shape[2]) @ fb.T).reshape(p.shape[0], p.shape[1], fb.shape[0])
        out.append(10.0 * np.log10(np.maximum(mel.astype(np.float64), DB_FLOOR_POWER)))
    return np.concatenate(out).astype(np.float32)


class Objective:
    """Mean log-mel distance (`trainer.evaluate`) of generated notes to a set of given notes, per latent.

    The given notes' log-mels are computed once; `__call__(zs)` generates every note for every
    latent of float32[K, Z] in one batch and returns float64[K]. Notes are grouped by length, and a
    generated note is cut to its given note's length first, as `trainer eval` trims the pair.
    """

    def __init__(self, session, notes: list[Note], sr: int, velocity_conditioned: bool):
        self.session, self.sr = session, sr
        self.keys = np.asarray([n.pitch for n in notes], np.int64)
        self.vels = np.asarray([n.velocity / 127.0 if velocity_conditioned else 1.0 for n in notes], np.float32)
        self.groups = []
        for length in sorted({len(n.audio) for n in notes}):
            idx = np.asarray([i for i, n in enumerate(notes) if len(n.audio) == length])
            self.groups.append((idx, length, log_mel(np.stack([notes[i].audio for i in idx]), sr)))
        self.calls = 0

    def per_note(self, zs: np.ndarray) -> np.ndarray:
        """float64[K, n]: each latent's distance to each given note."""
        zs = np.atleast_2d(np.asarray(zs, np.float32))
        k, n = len(zs), len(self.keys)
        audio = self.session.generate(np.repeat(zs, n, axis=0), np.tile(self.keys, k), np.tile(self.vels, k))
        audio = audio.reshape(k, n, -1)
        out = np.zeros((k, n))
        for idx, length, target in self.groups:
            lm = log_mel(audio[:, idx, :length].reshape(k * len(idx), length), self.sr)
            d = np.abs(lm.reshape(k, len(idx), *lm.shape[1:]) - target[None]).mean(axis=(2, 3))
            out[:, idx] = d
        self.calls += k
        return out

    def __call__(self, zs: np.ndarray) -> np.ndarray:
        return self.per_note(zs).mean(axis=1)


# --------------------------------------------------------------------------------------------------
# the search

def start_points(preset) -> tuple[list[str], np.ndarray]:
    """(names, float32[S, Z]): the base's timbres, or its default latent when it has none."""
    if preset.timbres:
        return [t.name for t in preset.timbres], np.asarray([t.latent for t in preset.timbres], np.float32)
    return [f"{preset.name} (default)"], np.asarray([preset.default_latent], np.float32)


def initial_shape(preset, starts: np.ndarray) -> tuple[np.ndarray, float]:
    """(covariance float64[Z, Z] with trace Z, sigma): half the timbres' spread, half isotropic."""
    z = preset.latent_size
    eye = np.eye(z)
    if len(starts) < 3:
        return eye, 0.5
    cov = np.cov(starts.astype(np.float64).T)
    cov = cov * (z / max(np.trace(cov), 1e-12))
    spread = float(np.sqrt(np.mean(starts.astype(np.float64).std(axis=0) ** 2)))
    return 0.5 * cov + 0.5 * eye, 0.5 * max(spread, 0.2)


def cma_es(fn, x0: np.ndarray, cov0: np.ndarray, sigma0: float, max_gens: int, deadline: float,
           rng: np.random.Generator, lam: int | None = None) -> list[tuple[np.ndarray, float]]:
    """Minimise `fn(float32[K, Z]) -> float64[K]` by CMA-ES (Hansen's standard settings) from `x0`.

    Returns the path of improvements, [(z, value)], best last; the first is x0. Stops after
    `max_gens` generations, or before a generation that would end after `deadline` (time.monotonic()).
    """
    n = len(x0)
    lam = lam or 4 + int(3 * math.log(n))
    mu = lam // 2
    w = math.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    w /= w.sum()
    mueff = 1.0 / float((w ** 2).sum())
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    cs = (mueff + 2) / (n + mueff + 5)
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    damps = 1 + 2 * max(0.0, math.sqrt((mueff - 1) / (n + 1)) - 1) + cs
    chin = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    m, sigma, cov = np.asarray(x0, np.float64), float(sigma0), np.asarray(cov0, np.float64).copy()
    pc, ps = np.zeros(n), np.zeros(n)
    path = [(m.astype(np.float32), float(fn(m[None].astype(np.float32))[0]))]
    gen_s = 0.0
    for g in range(max_gens):
        if time.monotonic() + gen_s > deadline:
            break
        t0 = time.monotonic()
        cov = (cov + cov.T) / 2
        d2, b = np.linalg.eigh(cov)
        d = np.sqrt(np.maximum(d2, 1e-20))
        y = (rng.standard_normal((lam, n)) * d) @ b.T
        x = m + sigma * y
        f = fn(x.astype(np.float32))
        order = np.argsort(f)
        if f[order[0]] < path[-1][1]:
            path.append((x[order[0]].astype(np.float32), float(f[order[0]])))
        old = m
        m = w @ x[order[:mu]]
        step = (m - old) / sigma
        inv_sqrt = b @ np.diag(1 / d) @ b.T
        ps = (1 - cs) * ps + math.sqrt(cs * (2 - cs) * mueff) * (inv_sqrt @ step)
        hsig = float(np.linalg.norm(ps) / math.sqrt(1 - (1 - cs) ** (2 * (g + 1))) / chin < 1.4 + 2 / (n + 1))
        pc = (1 - cc) * pc + hsig * math.sqrt(cc * (2 - cc) * mueff) * step
        art = (x[order[:mu]] - old) / sigma
        cov = ((1 - c1 - cmu) * cov + c1 * (np.outer(pc, pc) + (1 - hsig) * cc * (2 - cc) * cov)
               + cmu * (art.T * w) @ art)
        sigma *= math.exp((cs / damps) * (np.linalg.norm(ps) / chin - 1))
        gen_s = time.monotonic() - t0
    return path


@dataclass
class Fit:
    z: np.ndarray
    nearest: str
    nearest_z: np.ndarray
    log_mel: float             # the fitted z on every given note
    log_mel_nearest: float     # the nearest timbre on every given note
    log_mel_check: float | None
    log_mel_check_nearest: float | None
    steps: int
    evaluations: int
    check_labels: list[str]
    z_search: np.ndarray       # the search's best on its own notes (`z` may be an earlier one, by the check)


def split_check(notes: list[Note], check: int) -> tuple[list[int], list[int]]:
    """(search indices, check indices): `check` notes spread over pitch, never the lowest or highest."""
    if check <= 0:
        return list(range(len(notes))), []
    order = sorted(range(len(notes)), key=lambda i: (notes[i].pitch, notes[i].velocity))
    picks = {order[int(round(p))] for p in np.linspace(1, len(order) - 2, check + 2)[1:-1]}
    return [i for i in range(len(notes)) if i not in picks], sorted(picks)


def fit(preset, session, notes: list[Note], *, steps: int, deadline: float, check: int, seed: int = 0,
        say=lambda msg: None) -> Fit:
    """Search the latent that sounds nearest to `notes` (see the module docstring); the search ends
    before `deadline` (time.monotonic()), leaving the final checks to run after it."""
    t_end = deadline
    vc = preset.velocity_conditioned
    search_i, check_i = split_check(notes, check)
    obj = Objective(session, [notes[i] for i in search_i], preset.sample_rate, vc)
    everything = Objective(session, notes, preset.sample_rate, vc)
    names, starts = start_points(preset)
    scores = everything(starts)
    best = int(np.argmin(scores))
    say(f"nearest start: {names[best]} ({scores[best]:.2f} dB over the {len(notes)} notes)")
    cands = [starts[best]]
    for j in [int(i) for i in np.argsort(scores)[1:3]]:
        cands.append((starts[best] + starts[j]) / 2)
    cand_scores = obj(np.asarray(cands, np.float32))
    z0 = cands[int(np.argmin(cand_scores))]
    cov0, sigma0 = initial_shape(preset, starts)
    rng = np.random.default_rng(seed)
    gens = [0]

    def counted(zs):
        gens[0] += 1
        return obj(zs)

    path = cma_es(counted, z0.astype(np.float64), cov0, sigma0, steps, t_end, rng)
    check_fig = check_near = None
    chosen = path[-1][0]
    if check_i:
        chk = Objective(session, [notes[i] for i in check_i], preset.sample_rate, vc)
        cand = np.asarray([p[0] for p in path] + [starts[best]], np.float32)
        c = chk(cand)
        k = int(np.argmin(c[:-1]))
        chosen, check_fig, check_near = cand[k], float(c[k]), float(c[-1])
        say(f"check notes: {check_fig:.2f} dB at improvement {k} of {len(path) - 1} (nearest timbre {check_near:.2f})")
    final = float(everything(chosen[None])[0])
    if final > scores[best]:   # never worse than where it started, on every given note
        chosen, final = starts[best].copy(), float(scores[best])
    return Fit(z=np.asarray(chosen, np.float32), nearest=names[best], nearest_z=starts[best], log_mel=final,
               log_mel_nearest=float(scores[best]), log_mel_check=check_fig, log_mel_check_nearest=check_near,
               steps=gens[0] - 1, evaluations=obj.calls + everything.calls,
               check_labels=[notes[i].label for i in check_i], z_search=path[-1][0])


# --------------------------------------------------------------------------------------------------
# the preset

def rel_path(p: str | os.PathLike) -> str:
    """`p` relative to the working folder when it lies inside it, else its name alone (no machine paths)."""
    p = Path(p)
    try:
        return Path(os.path.relpath(p.resolve(), Path.cwd().resolve())).as_posix() \
            if p.resolve().is_relative_to(Path.cwd().resolve()) else p.name
    except (OSError, ValueError):
        return p.name


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def range_pitch_accuracy(preset, session, z: np.ndarray, n_keys: int = 12) -> tuple[float, list[int]]:
    """(`trainer eval`'s pitch accuracy of z at `n_keys` keys spread over the range, the keys)."""
    from trainer.evaluate import pitch_accuracy

    lo, hi = preset.pitch_range
    keys = np.unique(np.linspace(lo, hi, n_keys).round().astype(np.int64))
    layers = preset.velocity_layers
    v = layers[len(layers) // 2] / 127.0 if preset.velocity_conditioned else 1.0
    audio = session.generate(np.repeat(np.asarray(z, np.float32)[None], len(keys), 0), keys,
                             np.full(len(keys), v, np.float32))
    return pitch_accuracy(audio, keys, preset.sample_rate)[0], keys.tolist()


_DEFAULT_NOTE = re.compile(r";\s*CC \d+ the default (timbre|sound)\s*$")


def shifted_knobs(base) -> list[dict[str, Any]]:
    """The base's knobs with each latent knob's range shifted so its default CC adds nothing: the
    synth's single-instrument mapping (latent = default + Σ offset_k(cc_k)·direction_k) then plays
    the fitted z at the knobs' defaults, and the knobs move away from it along the base's axes."""
    from synth.preset import _knob_dict

    out = []
    for k in base.knobs:
        d = _knob_dict(k)
        if k.kind == "latent":
            o = k.offset(k.default)
            d["range"] = [k.range[0] - o, k.range[1] - o]
            d["description"] = _DEFAULT_NOTE.sub("", k.description) + f"; CC {k.default} the captured sound"
        out.append(d)
    return out


def capture_manifest(base, name: str, z: np.ndarray, capture: dict[str, Any], source_text: str) -> dict[str, Any]:
    """The new preset's manifest: the base's sound facts and generator, the fitted z, shifted knobs."""
    from synth.preset import manifest_dict

    m = manifest_dict(base)
    m.pop("timbres", None)
    m["name"] = name
    how = "a copy of the {} generator fine-tuned around a fitted latent" if capture.get("finetune") else \
        "the {} generator at a fitted latent"
    m["description"] = f"Captured instrument: {source_text}, played by {how.format(base.name)}"
    m["latent"] = {"size": base.latent_size, "default": [float(x) for x in z]}
    m["knobs"] = shifted_knobs(base)
    tr = base.training
    keep = {k: tr[k] for k in ("arch", "params", "onnx_opset", "generator_config") if k in tr}
    notes = capture["notes"]
    m["training"] = {
        **keep,
        "data": {"captured from": source_text, "notes": len(notes),
                 "pitches": sorted({n["pitch"] for n in notes}),
                 "base preset": f"{capture['base']} (generator sha256 {capture['base_generator_sha256'][:16]}…)",
                 "log-mel distance on the given notes (dB)":
                     f"{capture['log_mel_distance']:.2f} (nearest timbre {capture['nearest_timbre']}: "
                     f"{capture['log_mel_distance_nearest']:.2f})"},
        "commands": [capture["command"]],
        "default_latent": (f"fitted by `trainer capture` to {len(notes)} given notes ({capture['steps']} CMA-ES "
                           f"generations from the nearest timbre, {capture['nearest_timbre']})"),
        "knob_method": (f"the knobs of {capture['base']}, their ranges shifted so that each default CC plays the "
                        "fitted latent"),
        "capture": capture,
    }
    m["metrics"] = {}
    return m


def write_preset(base, dest: Path, manifest: dict[str, Any], force: bool, graph: Path | None = None) -> None:
    """preset.json, the generator (`graph`, else the base's: hard link, else copy) and card.md, as one
    atomic folder."""
    from synth.fsutil import atomic_dir
    from synth.preset import validate_manifest
    from trainer import card

    with atomic_dir(dest, replace=force) as tmp:
        gen = tmp / manifest["generator"]
        try:
            os.link(graph or base.generator_path, gen)
        except OSError:
            shutil.copy2(graph or base.generator_path, gen)
        validate_manifest(json.loads(json.dumps(manifest)), tmp)
        (tmp / "preset.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        card.write_card(tmp)


# --------------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m trainer capture", description=__doc__.split("\n\n")[0],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-folder", metavar="DIR", help="folder of notes (pitch from the file name: C4.wav, "
                     "60.wav, name_060_100.wav; else estimated)")
    src.add_argument("--soundfont", metavar="SF", help="render the notes from this SoundFont with FluidSynth")
    ap.add_argument("--program", type=int, help="GM program of --soundfont (0-127)")
    ap.add_argument("--bank", type=int, default=0, help="bank of --soundfont (default 0)")
    ap.add_argument("--pitches", default=",".join(map(str, DEFAULT_PITCHES)),
                    help="keys to render from --soundfont (default %(default)s)")
    ap.add_argument("--velocity", type=int, default=DEFAULT_VELOCITY,
                    help="velocity of rendered notes, and of folder notes whose names hold none (default 100)")
    ap.add_argument("--base", required=True, help="the preset whose generator plays the capture (a name)")
    ap.add_argument("--preset-dir", action="append", default=[], metavar="DIR", help="extra folder to find --base in")
    ap.add_argument("--preset", required=True, metavar="NAME", help="name of the new preset")
    ap.add_argument("--out", default="presets", metavar="DIR",
                    help="folder the preset folder NAME/ is written into (default presets)")
    ap.add_argument("--force", action="store_true", help="replace an existing preset of that name")
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                    help="CMA-ES generations at most (default %(default)s; --seconds usually ends it first)")
    ap.add_argument("--seconds", type=float, default=DEFAULT_SECONDS,
                    help="time for the whole capture, notes to preset (default %(default)g; the search stops early "
                         "enough to keep to it)")
    ap.add_argument("--finetune-seconds", type=float, default=None,
                    help=f"of --seconds, the time for fine-tuning the generator around the fitted latent "
                         f"(default {FINETUNE_SHARE:g} of --seconds; 0: the search alone)")
    ap.add_argument("--finetune-steps", type=int, default=DEFAULT_FINETUNE_STEPS,
                    help="fine-tune steps at most (default %(default)s)")
    ap.add_argument("--check", type=int, default=0,
                    help="given notes left out of the search to pick its stopping point (default 0: all fit)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quiet", action="store_true")
    return ap


def _parse_pitches(text: str) -> list[int]:
    try:
        keys = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"--pitches {text!r}: expected MIDI keys like 36,43,50") from None
    if not keys or not all(0 <= k <= 127 for k in keys) or len(set(keys)) != len(keys):
        raise UserError(f"--pitches {text!r}: expected distinct MIDI keys 0..127, like 36,43,50")
    return keys


def _check_args(args) -> None:
    from synth.preset import NAME_RE

    if not NAME_RE.match(args.preset):
        raise UserError(f"--preset {args.preset!r}: a preset name is letters, digits, '_', '.', '-' (at most 64)")
    if args.soundfont is not None and args.program is None:
        raise UserError("--soundfont needs --program P (the GM program to capture)")
    if args.soundfont is None and args.program is not None:
        raise UserError("--program belongs with --soundfont; a folder's notes need none")
    if args.program is not None and not 0 <= args.program <= 127 or not 0 <= args.bank <= 127:
        raise UserError("--program and --bank must be 0..127")
    if not 1 <= args.velocity <= 127:
        raise UserError(f"--velocity {args.velocity}: must be 1..127")
    if args.steps < 0 or not 0 < args.seconds <= 3600:
        raise UserError("--steps must be >= 0 and --seconds in (0, 3600]")
    if args.finetune_seconds is None:
        args.finetune_seconds = round(FINETUNE_SHARE * args.seconds, 1)
    if args.finetune_steps < 0 or not 0 <= args.finetune_seconds < args.seconds - FINISH_SECONDS:
        raise UserError(f"--finetune-seconds {args.finetune_seconds:g}: must be >= 0 and leave time for the search "
                        f"(under --seconds - {FINISH_SECONDS:g}); --finetune-steps must be >= 0")


def _command(args) -> str:
    """The capture command as it can be rerun from the working folder: relative paths only."""
    parts = ["python -m trainer capture"]
    if args.from_folder:
        parts.append(f"--from-folder {rel_path(args.from_folder)}")
    else:
        parts.append(f"--soundfont {rel_path(args.soundfont)} --program {args.program} --bank {args.bank} "
                     f"--pitches {args.pitches}")
    parts.append(f"--velocity {args.velocity} --base {args.base}")
    parts += [f"--preset-dir {rel_path(d)}" for d in args.preset_dir]
    parts.append(f"--preset {args.preset} --out {rel_path(args.out)} --steps {args.steps} "
                 f"--seconds {args.seconds:g} --finetune-seconds {args.finetune_seconds:g} "
                 f"--finetune-steps {args.finetune_steps} --seed {args.seed}")
    if args.check:
        parts.append(f"--check {args.check}")
    return " ".join(parts)


def _tune(base, session, notes: list[Note], res: Fit, deadline: float, args, tmp: Path, say):
    """Fine-tune the base's generator at the fitted z (`trainer.finetune`) and write the graph to
    tmp/generator.onnx. (the figures, a session on the new graph) when it comes out nearer on the given
    notes (with --check, on the held-back ones), else (None, the base's session)."""
    import dataclasses

    from synth.inference import GeneratorSession
    from trainer import finetune as ft

    G = ft.torch_generator(base)
    check = [i for i, n in enumerate(notes) if n.label in res.check_labels]
    t = ft.finetune(G, res.z, notes, base.sample_rate, base.velocity_conditioned, deadline, args.finetune_steps,
                    check=check, say=say)
    ft.write_graph(base.generator_path, t.G, tmp / "generator.onnx", {"name": args.preset, "finetuned_from": base.name})
    tuned = GeneratorSession(dataclasses.replace(base, path=tmp), providers="cpu", threads=os.cpu_count() or 1,
                             warmup=False)
    vc = base.velocity_conditioned
    after = float(Objective(tuned, notes, base.sample_rate, vc)(res.z[None])[0])
    # res.log_mel is the base's distance at res.z on every note; the held-back notes are measured here
    held = [notes[i] for i in check]
    judged = float(Objective(tuned, held, base.sample_rate, vc)(res.z[None])[0]) if check else after
    before = float(Objective(session, held, base.sample_rate, vc)(res.z[None])[0]) if check else res.log_mel
    if not judged < before:
        say("fine-tune not kept: the " + ("held-back" if check else "given") + " notes came out no nearer")
        return None, session
    return {"steps": t.steps, "kept_step": t.kept_step, "seconds": t.seconds, "lr": ft.LR,
            "log_mel_distance": after, "log_mel_distance_before": res.log_mel,
            "log_mel_distance_check_before": t.check_before, "log_mel_distance_check_after": t.check_after}, tuned


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _check_args(args)
    t0 = time.monotonic()
    say = (lambda msg: None) if args.quiet else (lambda msg: print(f"capture: {msg}", file=sys.stderr))
    from synth.preset import find_preset

    base = find_preset(args.base, args.preset_dir)
    if base.is_drums:
        raise UserError(f"--base {args.base}: a drum kit; capture fits a pitched instrument, pass a pitched preset")
    dest = Path(args.out) / args.preset
    if os.path.lexists(dest) and not args.force:
        raise UserError(f"{dest}: already exists; pass --force to replace it")
    if args.from_folder:
        root = Path(args.from_folder)
        notes = notes_from_folder(root, base, args.velocity)
        where, source = str(root), {"type": "folder", "folder": rel_path(root)}
        source_text = f"{len(notes)} notes of folder {root.name}"
    else:
        sfp = Path(args.soundfont)
        notes = notes_from_soundfont(sfp, args.program, args.bank, _parse_pitches(args.pitches), args.velocity, base)
        where = str(sfp)
        source = {"type": "soundfont", "soundfont": sfp.name, "bank": args.bank, "program": args.program}
        source_text = f"{sfp.name} bank {args.bank} program {args.program}"
    check_notes(notes, base, where)
    check = args.check
    if not 0 <= check <= len(notes) - MIN_NOTES:
        raise UserError(f"--check {check}: must leave at least {MIN_NOTES} of the {len(notes)} notes to fit")
    from synth.inference import GeneratorSession

    session = GeneratorSession(base, providers="cpu", threads=os.cpu_count() or 1, warmup=False)
    say(f"{len(notes)} notes, base {base.name}; capturing in at most {args.seconds:g} s")
    tune_s = args.finetune_seconds if args.finetune_seconds > 0 and args.finetune_steps > 0 else 0.0
    if tune_s and not isinstance(base.training.get("generator_config"), dict):
        say(f"no fine-tune: {base.name} was exported before its preset recorded generator_config (re-export it)")
        tune_s = 0.0
    search_end = t0 + args.seconds - FINISH_SECONDS - (tune_s + FINETUNE_SETUP_SECONDS if tune_s else 0.0)
    res = fit(base, session, notes, steps=args.steps, deadline=search_end, check=check, seed=args.seed, say=say)
    with tempfile.TemporaryDirectory(prefix="capture-") as td:
        tuned, session = _tune(base, session, notes, res, t0 + args.seconds - FINISH_SECONDS, args, Path(td), say) \
            if tune_s else (None, session)
        acc, acc_keys = range_pitch_accuracy(base, session, res.z)
        seconds = time.monotonic() - t0
        capture = {
            "base": base.name, "base_generator_sha256": sha256_file(base.generator_path), "source": source,
            "notes": [{"note": n.label, "pitch": n.pitch, "velocity": n.velocity, "pitch_from": n.pitch_from,
                       "role": "check" if n.label in res.check_labels else "fit"} for n in notes],
            "command": _command(args), "steps": res.steps, "evaluations": res.evaluations,
            "seconds": round(seconds, 1), "nearest_timbre": res.nearest,
            "log_mel_distance": round(tuned["log_mel_distance"] if tuned else res.log_mel, 4),
            "log_mel_distance_search": round(res.log_mel, 4),
            "log_mel_distance_nearest": round(res.log_mel_nearest, 4),
            "pitch_accuracy": round(acc, 4), "pitch_accuracy_keys": acc_keys,
            "method": "CMA-ES on the latent through the ONNX generator, log-mel distance of trainer eval"
                      + (", then a fine-tune of the generator's weights at that latent" if tuned else "")
                      + " (trainer/capture.py, trainer/finetune.py)",
            "finetune": tuned,
        }
        if res.log_mel_check is not None:
            capture.update({"log_mel_distance_check": round(res.log_mel_check, 4),
                            "log_mel_distance_check_nearest": round(res.log_mel_check_nearest, 4)})
        manifest = capture_manifest(base, args.preset, res.z, capture, source_text)
        try:
            write_preset(base, dest, manifest, args.force, Path(td) / "generator.onnx" if tuned else None)
        except OSError as e:
            if isinstance(e, UserError):
                raise
            raise UserError(f"{dest}: cannot write the preset ({e.strerror or e}); nothing was written") from None
    final = tuned["log_mel_distance"] if tuned else res.log_mel
    say(f"wrote {dest}: {final:.2f} dB on the given notes (nearest timbre {res.nearest}: "
        f"{res.log_mel_nearest:.2f} dB), pitch accuracy {acc:.2f}, {res.steps} generations, {seconds:.0f} s")
    return 0
