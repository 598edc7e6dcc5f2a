"""`synth bake` against the engine it bakes: FluidSynth playing the baked bank vs `synth render`.

    python scripts/bench_bake.py [--quick] [--json OUT.json]

1. The shipped piano baked to .sf2 (wall time, bar <= 60 s; size at 16 bits, bar <= 150 MB, and at 24).
2. One MIDI file of isolated notes (1 s held, 1 s to ring out) over 11 keys across the piano's range,
   at the velocities of the baked layers and halfway between them, rendered by
   `fluidsynth -ni -R 0 -C 0 -F out.wav -r 48000 piano.sf2 notes.mid` (the file's defaults, effects
   off) and by `python -m synth render notes.mid -o out.wav --preset piano` (effects off by default).
   Per note, 1.6 s from its MIDI onset: log-mel distance (`trainer.evaluate.log_mel_distance`, each
   note loudness-normalised; bar <= 2 dB) and pitch accuracy of the FluidSynth notes
   (`trainer.evaluate.pitch_accuracy`, ±50 cents; bar >= 0.95); also the level of each note against
   the engine's, relative to the loudest velocity (velocity mapping), as a spread in dB.
3. `bake --all` into a GM bank, and a GM file made here (piano program 0, strings 48, marimba 12,
   channel-10 drums, overlapping) played by FluidSynth with it and by `synth render` with no options
   (GM routing picks the same presets): whole-mix log-mel distance on 1-s frames, each
   frame loudness-normalised, mean over frames with sound (bar <= 3 dB).
4. Sizes with `--max-seconds 2 --loop-tail` (the seam for notes that ring longer, issue 19).
`run(quick)` returns rows for `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RATE = 48000
NOTE_ON_S, SLOT_S, WINDOW_S = 1.0, 2.0, 1.6


def _row(name, value, unit, bar="", ok=None, notes=""):
    return {"name": f"bake: {name}", "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def _run(cmd: list[str], timeout: float = 900) -> tuple[float, str]:
    env = dict(os.environ, PYO_GUI_WX="0")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-400:]}")
    return time.perf_counter() - t0, p.stderr


def fluid(sf2: Path, mid: Path, wav: Path) -> str:
    """FluidSynth with the file's defaults, effects off, at RATE, written as float (its 16-bit output is
    dithered: a -88 dBFS noise floor against the engine's digital silence between notes); returns its stderr."""
    return _run(["fluidsynth", "-ni", "-R", "0", "-C", "0", "-O", "float", "-F", str(wav), "-r", str(RATE), str(sf2),
                 str(mid)])[1]


def synth_render(mid: Path, wav: Path, *args: str) -> None:
    _run([sys.executable, "-m", "synth", "render", str(mid), "-o", str(wav), "--sample-rate", str(RATE),
          "--format", "float", "--no-progress", "-q", *args])


def notes_midi(path: Path, keys: list[int], vels: list[int]) -> list[tuple[float, int, int]]:
    """Isolated notes, one per SLOT_S, held NOTE_ON_S; returns (onset s, key, velocity)."""
    import mido

    tpq, tempo = 480, 500_000                  # 960 ticks per second
    mf = mido.MidiFile(type=0, ticks_per_beat=tpq)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    notes, last = [], 0
    for i, (k, v) in enumerate((k, v) for v in vels for k in keys):
        on = int((0.5 + i * SLOT_S) * 960)
        tr.append(mido.Message("note_on", note=k, velocity=v, time=on - last))
        tr.append(mido.Message("note_off", note=k, velocity=0, time=int(NOTE_ON_S * 960)))
        last = on + int(NOTE_ON_S * 960)
        notes.append((on / 960, k, v))
    mf.save(str(path))
    return notes


def gm_midi(path: Path, seconds: float = 24.0) -> None:
    """A GM file: piano chords (ch 1, program 0), a string line (ch 2, 48), marimba arpeggios (ch 3, 12)
    and a drum beat (ch 10), overlapping, at varied velocities."""
    import mido

    rng = np.random.default_rng(22)
    ev = []                                   # (seconds, order, message)
    for ch, prog in ((0, 0), (1, 48), (2, 12)):
        ev.append((0.0, 0, mido.Message("program_change", channel=ch, program=prog)))
    beat = 0.5
    for b in range(int(seconds / beat)):
        t = 0.2 + b * beat
        if b % 4 == 0:
            root = int(rng.choice([48, 53, 55, 57]))
            for k in (root, root + 4, root + 7, root + 12):
                ev.append((t, 1, mido.Message("note_on", channel=0, note=k, velocity=int(rng.integers(50, 110)))))
                ev.append((t + 1.8, 0, mido.Message("note_off", channel=0, note=k)))
            ev.append((t, 1, mido.Message("note_on", channel=1, note=root + 12, velocity=80)))
            ev.append((t + 1.9, 0, mido.Message("note_off", channel=1, note=root + 12)))
        k = 60 + int(rng.choice([0, 4, 7, 12, 16, 19]))
        ev.append((t, 1, mido.Message("note_on", channel=2, note=k, velocity=int(rng.integers(40, 120)))))
        ev.append((t + 0.3, 0, mido.Message("note_off", channel=2, note=k)))
        for drum, vel, when in ((36, 110, b % 2 == 0), (38, 95, b % 2 == 1), (42, 70, True)):
            if when:
                ev.append((t, 1, mido.Message("note_on", channel=9, note=drum, velocity=vel)))
                ev.append((t + 0.1, 0, mido.Message("note_off", channel=9, note=drum)))
    ev.sort(key=lambda e: (e[0], e[1]))
    mf = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    last = 0
    for t, _, msg in ev:
        tick = int(round(t * 960))
        tr.append(msg.copy(time=tick - last))
        last = tick
    mf.save(str(path))


def _read_mono(path: Path) -> np.ndarray:
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == RATE
    return x.sum(axis=1)


MAX_LAG = 256


def lag(late: np.ndarray, early: np.ndarray) -> int:
    """Frames (0..MAX_LAG) by which `late` trails `early`: the best correlation of `early` against
    `late` shifted (FluidSynth starts notes on 64-frame period boundaries, one period late)."""
    n = len(early)
    if len(late) < n + MAX_LAG or not np.any(early):
        return 0
    return int(np.argmax([np.dot(late[d:d + n], early) for d in range(MAX_LAG + 1)]))


def note_figures(fs: np.ndarray, ours: np.ndarray, notes, sr: int) -> dict:
    """Per-note log-mel distances at `sr` (the preset's rate: see `run`), held part and with the release,
    the same at RATE, FluidSynth pitch accuracy and level differences (see the module docstring)."""
    import soxr

    from trainer.evaluate import log_mel_distance, pitch_accuracy

    w = int(WINDOW_S * RATE)
    a, b = [], []
    for on, _, _ in notes:
        s = int(round(on * RATE))
        y = np.pad(ours[s:s + w], (0, max(0, s + w - len(ours))))
        s += lag(fs[s:s + RATE // 10 + MAX_LAG], y[:RATE // 10])
        a.append(np.pad(fs[s:s + w], (0, max(0, s + w - len(fs)))))
        b.append(y)
    a, b = np.stack(a), np.stack(b)
    lmd_full = log_mel_distance(a, b, RATE)
    lmd_full_held = log_mel_distance(a[:, :int(NOTE_ON_S * RATE)], b[:, :int(NOTE_ON_S * RATE)], RATE)
    a_sr = np.stack([soxr.resample(x, RATE, sr) for x in a])
    b_sr = np.stack([soxr.resample(x, RATE, sr) for x in b])
    lmd = log_mel_distance(a_sr, b_sr, sr)
    held = int(NOTE_ON_S * sr)
    lmd_held = log_mel_distance(a_sr[:, :held], b_sr[:, :held], sr)
    half = RATE // 2
    target = np.array([k for _, k, _ in notes])
    acc, cents = pitch_accuracy(a_sr[:, :sr], target, sr)   # the held second
    acc_engine = pitch_accuracy(b_sr[:, :sr], target, sr)[0]
    lev = lambda x: 10 * np.log10(np.mean(x[:, :half] ** 2, axis=1) + 1e-20)  # noqa: E731
    diff = lev(a) - lev(b)                      # dB, FluidSynth over the engine, per note
    vels = np.array([v for _, _, v in notes])
    diff = diff - np.median(diff[vels == vels.max()])
    return {"lmd": lmd, "lmd_held": lmd_held, "lmd_full": lmd_full, "lmd_full_held": lmd_full_held, "acc": acc, "acc_engine": acc_engine, "cents": cents, "level_diff": diff, "vels": vels}


def mix_distance(fs: np.ndarray, ours: np.ndarray, sr: int) -> tuple[float, int]:
    """Mean log-mel distance at `sr` over 1-s frames that hold sound in both (each frame normalised)."""
    import soxr

    from trainer.evaluate import log_mel_distance

    d = lag(fs[:10 * RATE], ours[:10 * RATE - MAX_LAG])
    fs = fs[d:]
    if sr != RATE:
        fs, ours = soxr.resample(fs, RATE, sr), soxr.resample(ours, RATE, sr)
    n = min(len(fs), len(ours)) // sr
    a = fs[:n * sr].reshape(n, sr)
    b = ours[:n * sr].reshape(n, sr)
    rms = lambda x: np.sqrt(np.mean(x ** 2, axis=1))  # noqa: E731
    keep = (rms(a) > 1e-4) & (rms(b) > 1e-4)
    d = log_mel_distance(a[keep], b[keep], sr)
    return float(np.mean(d)), int(keep.sum())


def _bake(out: Path, *args: str) -> float:
    return _run([sys.executable, "-m", "synth", "bake", "-o", str(out), "-q", *args])[0]


def run(quick: bool = False) -> list[dict]:
    if shutil.which("fluidsynth") is None:
        return [_row("FluidSynth round trip", None, "", "", None, "fluidsynth is not installed (apt-get install fluidsynth)")]
    from synth.preset import REPO_PRESETS, load_preset_dir

    piano = load_preset_dir(REPO_PRESETS / "piano")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-bake-") as td:
        tmp = Path(td)
        t24 = _bake(tmp / "piano.sf2", "--preset", "piano")
        mb24 = (tmp / "piano.sf2").stat().st_size / 1e6
        rows.append(_row("bake the shipped piano, wall time", round(t24, 2), "s", "<= 60 s", t24 <= 60,
                         f"python -m synth bake --preset piano -o piano.sf2 (24 bits, the default; process start "
                         f"included): 88 keys x {len(piano.velocity_layers)} layers at {piano.sample_rate} Hz, "
                         f"{piano.note_samples / piano.sample_rate:.1f} s notes"))
        t16 = _bake(tmp / "piano16.sf2", "--preset", "piano", "--bits", "16")
        mb16 = (tmp / "piano16.sf2").stat().st_size / 1e6
        rows.append(_row("piano.sf2 size, 16 bits", round(mb16, 1), "MB", "<= 150 MB", mb16 <= 150,
                         f"--bits 16; whole notes; took {t16:.1f} s"))
        rows.append(_row("piano.sf2 size, 24 bits", round(mb24, 1), "MB", "", None, "the default: smpl + sm24"))
        _bake(tmp / "piano2.sf2", "--preset", "piano", "--max-seconds", "2", "--loop-tail")
        mb2 = (tmp / "piano2.sf2").stat().st_size / 1e6
        rows.append(_row("piano.sf2 size, --max-seconds 2 --loop-tail", round(mb2, 1), "MB", "", None,
                         "24 bits; samples end in a loop that the volume envelope keeps decaying"))

        keys = [21, 30, 40, 48, 55, 60, 67, 74, 84, 96, 108] if not quick else [33, 48, 60, 72, 96]
        layers = list(piano.velocity_layers)
        between = [(a + b) // 2 for a, b in zip(layers, layers[1:], strict=False)]
        vels = sorted(set(layers + between))
        mid = tmp / "notes.mid"
        notes = notes_midi(mid, keys, vels)
        err = fluid(tmp / "piano.sf2", mid, tmp / "fs.wav")
        synth_render(mid, tmp / "ours.wav", "--preset", "piano")
        sr = piano.sample_rate
        f = note_figures(_read_mono(tmp / "fs.wav"), _read_mono(tmp / "ours.wav"), notes, sr)
        on_layer = np.isin(f["vels"], layers)
        held = float(np.mean(f["lmd_held"]))
        with_rel = float(np.mean(f["lmd"]))
        where = (f"{len(notes)} isolated notes ({len(keys)} keys from {keys[0]} to {keys[-1]} x velocities {vels}: "
                 f"the layers and halfway between), each loudness-normalised, both renders resampled to the "
                 f"preset's {sr} Hz (the band the model has; FluidSynth's interpolation leaves images above it)")
        fluid(tmp / "piano16.sf2", mid, tmp / "fs16.wav")
        f16 = note_figures(_read_mono(tmp / "fs16.wav"), _read_mono(tmp / "ours.wav"), notes, sr)
        top = np.array([k for _, k, _ in notes]) >= 90
        _bake(tmp / "piano48.sf2", "--preset", "piano", "--sample-rate", str(RATE))
        mb48 = (tmp / "piano48.sf2").stat().st_size / 1e6
        fluid(tmp / "piano48.sf2", mid, tmp / "fs48.wav")
        f48 = note_figures(_read_mono(tmp / "fs48.wav"), _read_mono(tmp / "ours.wav"), notes, sr)
        (tmp / "piano48.sf2").unlink()
        rows += [
            _row("FluidSynth vs synth render, log-mel distance per note (held)", round(held, 2), "dB", "<= 2 dB",
                 held <= 2.0, f"{where}; piano.sf2 at 24 bits (the default); the held second from each onset; at layer velocities "
                              f"{np.mean(f['lmd_held'][on_layer]):.2f} dB, between them "
                              f"{np.mean(f['lmd_held'][~on_layer]):.2f} dB, worst note {np.max(f['lmd_held']):.2f} dB"),
            _row("FluidSynth vs synth render, log-mel distance per note (with release)", round(with_rel, 2),
                 "dB", "<= 2 dB", with_rel <= 2.0,
                 f"the same notes, {WINDOW_S} s from each onset (held 1 s, then the release: both fall linearly "
                 f"in dB, releaseVolEnv = the engine's 10/3 x release_seconds); worst note "
                 f"{np.max(f['lmd']):.2f} dB; at 48 kHz (with FluidSynth's images above "
                 f"{sr // 2} Hz) {np.mean(f['lmd_full']):.2f} dB"),
            _row("the same, piano.sf2 at 16 bits (held)", round(float(np.mean(f16["lmd_held"])), 2), "dB", "", None,
                 f"keys below 90: {np.mean(f16['lmd_held'][~top]):.2f} dB; keys 90 and up (their notes are 20-40 dB "
                 f"under full scale, the 16-bit quantisation noise fills their spectrum's floor): "
                 f"{np.mean(f16['lmd_held'][top]):.2f} dB; with release {np.mean(f16['lmd']):.2f} dB"),
            _row("the same at 48 kHz, full band (held)", round(float(np.mean(f["lmd_full_held"])), 2), "dB", "", None,
                 f"piano.sf2 at the preset's {sr} Hz measured at 48 kHz: FluidSynth's 4-point interpolation leaves "
                 f"images 40-70 dB down above {sr // 2} Hz, where the engine's soxr resampling leaves nothing; "
                 f"baked with --sample-rate 48000 ({mb48:.0f} MB): {np.mean(f48['lmd_full_held']):.2f} dB "
                 f"(at {sr} Hz {np.mean(f48['lmd_held']):.2f} dB, with release {np.mean(f48['lmd_full']):.2f} dB)"),
            _row("FluidSynth playing piano.sf2, pitch accuracy", round(f["acc"], 3), "share", ">= 0.95",
                 f["acc"] >= 0.95, f"pYIN f0 within 50 cents of the key, held second of each note; median |error| "
                                   f"{np.nanmedian(np.abs(f['cents'])):.1f} cents; the engine's own render of the "
                                   f"same notes: {f['acc_engine']:.3f}"),
            _row("velocity mapping: level vs the engine, spread", round(float(np.ptp(f["level_diff"])), 2), "dB", "",
                 None, f"FluidSynth minus engine level per note (first 0.5 s), relative to velocity 127; median |diff| "
                       f"{np.median(np.abs(f['level_diff'])):.2f} dB; FluidSynth stderr: "
                       f"{err.strip() or 'empty'}"[:400]),
        ]

        t_all = _bake(tmp / "gm.sf2", "--all")
        mb_all = (tmp / "gm.sf2").stat().st_size / 1e6
        from trainer.data.soundfont import read_presets

        slots = read_presets(tmp / "gm.sf2")
        gmid = tmp / "gm.mid"
        gm_midi(gmid, 12.0 if quick else 24.0)
        err = fluid(tmp / "gm.sf2", gmid, tmp / "gm_fs.wav")
        synth_render(gmid, tmp / "gm_ours.wav")    # no options: GM routing
        a, b = _read_mono(tmp / "gm_fs.wav"), _read_mono(tmp / "gm_ours.wav")
        d, n = mix_distance(a, b, sr)
        d48, _ = mix_distance(a, b, RATE)
        rows += [
            _row("bake --all (GM bank), wall time", round(t_all, 2), "s", "", None,
                 f"{len(slots)} presets in the bank (bank 0 programs "
                 f"{sorted(p.program for p in slots if p.bank == 0)}, bank 128: "
                 f"{sorted(p.program for p in slots if p.bank == 128)}), {mb_all:.1f} MB"),
            _row("GM file, FluidSynth + gm.sf2 vs synth render, mix log-mel distance", round(d, 2), "dB", "<= 3 dB",
                 d <= 3.0, f"{n} one-second frames, each loudness-normalised, at the presets' {sr} Hz (at 48 kHz: "
                           f"{d48:.2f} dB); piano, strings, marimba and channel-10 drums; FluidSynth stderr: "
                           f"{err.strip() or 'empty'}"[:400]),
        ]
    return rows


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args(argv)
    rows = run(quick=args.quick)
    for r in rows:
        print(json.dumps(r, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
