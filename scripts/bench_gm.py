"""General MIDI behaviour against FluidSynth (issue 19), side by side in one run, no options on either.

    python scripts/bench_gm.py [--quick] [--json OUT.json]
    python scripts/bench_gm.py --held NAME [--preset-dir DIR]   # only 4., for a candidate preset

1. Controller curves: one file per controller, the same piano note struck once per value of CC7
   (volume), CC11 (expression) and CC10 (pan); the level of each strike (first 0.5 s, RMS) relative
   to the value-127 strike (pan: left minus right), ours against FluidSynth with FluidR3.
2. Routing: a GM file with piano, marimba (12), organ (16, no organ preset: a fallback), bass (33),
   strings (48), flute (73) and channel-10 drums, rendered by `synth render in.mid` and by FluidSynth;
   the routing table's fallbacks, and the whole-mix log-mel distance on 1-s frames, each frame
   loudness-normalised (a yardstick: the instruments differ by design).
3. Speed: a 5-minute GM piece with drums (1 minute with --quick), wall time of `synth render`
   against `fluidsynth -ni -R 0 -C 0` on the same file, as a ratio (bar >= 3x).
4. Ringing: an A1 held 10 s, and one struck for 0.5 s under the sustain pedal: level at 8 s re each
   render's own peak, the largest fall in 0.1 s before key-up, and the log-mel distance of the tail
   (3-8 s) and of the head (0-3 s), ours against FluidR3's piano.
`run(quick)` returns rows for `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RATE = 48000
STRIKE_S = 1.0


def _bake_bench():
    spec = importlib.util.spec_from_file_location("bench_bake", HERE / "bench_bake.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BB = _bake_bench()


def _row(name, value, unit, bar="", ok=None, notes=""):
    return {"name": f"gm: {name}", "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def _save(path: Path, events: list[tuple[float, object]]) -> None:
    """Write (seconds, mido message) pairs as a type-0 file at 960 ticks per second."""
    import mido

    mf = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    last = 0
    for t, msg in sorted(events, key=lambda e: e[0]):
        tick = int(round(t * 960))
        tr.append(msg.copy(time=tick - last))
        last = tick
    mf.save(str(path))


def strikes_midi(path: Path, cc: int, values: list[int], note: int = 60) -> None:
    import mido

    ev = []
    for i, v in enumerate(values):
        t = 0.2 + i * STRIKE_S
        ev.append((t - 0.1, mido.Message("control_change", control=cc, value=v)))
        ev.append((t, mido.Message("note_on", note=note, velocity=100)))
        ev.append((t + 0.6, mido.Message("note_off", note=note)))
    _save(path, ev)


def strike_levels(path: Path, n: int, pan: bool) -> np.ndarray:
    """dB per strike, relative to the first (pan: left minus right, in dB)."""
    import soundfile as sf

    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    out = []
    for i in range(n):
        s = int((0.2 + i * STRIKE_S) * sr)
        seg = x[s:s + sr // 2]
        if pan:
            out.append(10 * np.log10((np.mean(seg[:, 0] ** 2) + 1e-20) / (np.mean(seg[:, 1] ** 2) + 1e-20)))
        else:
            out.append(10 * np.log10(np.mean(seg ** 2) + 1e-20))
    out = np.array(out)
    return out if pan else out - out[0]


def gm_piece(path: Path, seconds: float) -> None:
    """Seven GM parts over `seconds`: piano chords, marimba, organ pad, bass, strings, flute, drums."""
    import mido

    rng = np.random.default_rng(19)
    parts = ((0, 0), (1, 12), (2, 16), (3, 33), (4, 48), (5, 73))
    ev = [(0.0, mido.Message("program_change", channel=ch, program=p)) for ch, p in parts]
    ev += [(0.0, mido.Message("control_change", channel=ch, control=7, value=v))
           for ch, v in ((0, 110), (1, 90), (2, 70), (3, 100), (4, 80), (5, 85), (9, 100))]
    beat = 0.5
    for b in range(int(seconds / beat) - 4):
        t = 0.2 + b * beat
        root = 48 + [0, 5, 7, 9][(b // 8) % 4]
        if b % 4 == 0:
            for ch, keys, dur in ((0, (root, root + 4, root + 7), 1.8), (2, (root + 12, root + 16), 1.9),
                                  (4, (root + 19,), 1.9)):
                for k in keys:
                    ev += [(t, mido.Message("note_on", channel=ch, note=k, velocity=int(rng.integers(60, 100)))),
                           (t + dur, mido.Message("note_off", channel=ch, note=k))]
            ev += [(t, mido.Message("note_on", channel=3, note=root - 12, velocity=100)),
                   (t + 0.9, mido.Message("note_off", channel=3, note=root - 12))]
        k = root + 24 + int(rng.choice([0, 4, 7, 12]))
        ch = 1 if b % 2 else 5
        ev += [(t, mido.Message("note_on", channel=ch, note=k, velocity=int(rng.integers(50, 110)))),
               (t + 0.35, mido.Message("note_off", channel=ch, note=k))]
        for drum, vel, on in ((36, 110, b % 2 == 0), (38, 95, b % 2 == 1), (42, 70, True)):
            if on:
                ev += [(t, mido.Message("note_on", channel=9, note=drum, velocity=vel)),
                       (t + 0.1, mido.Message("note_off", channel=9, note=drum))]
    _save(path, ev)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def controller_rows(tmp: Path) -> list[dict]:
    rows = []
    for cc, name, values in ((7, "CC7 volume", [127, 100, 64, 32]), (11, "CC11 expression", [127, 100, 64, 32]),
                             (10, "CC10 pan", [64, 0, 32, 96, 127])):
        mid = tmp / f"cc{cc}.mid"
        strikes_midi(mid, cc, values)
        BB.fluid(SF2, mid, tmp / f"cc{cc}_fs.wav")
        BB.synth_render(mid, tmp / f"cc{cc}_ours.wav", "--preset", "piano")
        a = strike_levels(tmp / f"cc{cc}_fs.wav", len(values), cc == 10)
        b = strike_levels(tmp / f"cc{cc}_ours.wav", len(values), cc == 10)
        pairs = ", ".join(f"{v}: {x:+.1f}/{y:+.1f}" for v, x, y in zip(values, b, a, strict=True))
        if cc == 10:
            rows.append(_row(f"{name}: left minus right at CC 32", round(float(b[2]), 1), "dB", "", None,
                             f"left minus right in dB, ours/FluidSynth per CC value: {pairs}. Ours pans the mono "
                             f"voice constant-power (CC 0 hard left); FluidR3's piano is a stereo sample pair "
                             f"that CC10 shifts, so it moves less"))
            continue
        worst = float(np.max(np.abs(a - b)[1:]))
        rows.append(_row(f"{name}, largest difference from FluidSynth", round(worst, 2), "dB", "<= 0.5 dB",
                         worst <= 0.5, f"level re value 127 in dB, ours/FluidSynth per CC value: {pairs}"))
    return rows


def routing_rows(tmp: Path, quick: bool) -> list[dict]:
    import subprocess

    mid = tmp / "gm.mid"
    gm_piece(mid, 20.0)
    BB.fluid(SF2, mid, tmp / "gm_fs.wav")
    p = subprocess.run([sys.executable, "-m", "synth", "render", str(mid), "-o", str(tmp / "gm_ours.wav"),
                        "--format", "float", "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    table = [ln.split("routing: ", 1)[1] for ln in p.stderr.splitlines() if "routing: " in ln]
    fallbacks = [ln for ln in table if "->" in ln or "fallback" in ln.lower()]
    d, n = BB.mix_distance(BB._read_mono(tmp / "gm_fs.wav"), BB._read_mono(tmp / "gm_ours.wav"), 16000)
    return [_row("GM file with no options: routing table", len(table), "routes", "", p.returncode == 0,
                 "; ".join(table)[:900]),
            _row("GM file with no options: mix log-mel distance to FluidSynth", round(d, 2), "dB", "", None,
                 f"{n} one-second frames, each loudness-normalised, at 16 kHz; {len(fallbacks)} fallback route(s); "
                 f"the instruments are ours, so this is a yardstick of routing, not a bar")]


def speed_rows(tmp: Path, quick: bool) -> list[dict]:
    """The GM piece through FluidSynth, through us with the model making every note (`--disk-cache off`)
    and through us from a warm disk cache, in interleaved rounds: each round's ratios come from runs a
    few seconds apart, so the host's noise hits both sides; the row gives the median round's."""
    seconds = 60.0 if quick else 300.0
    mid = tmp / "long.mid"
    gm_piece(mid, seconds)
    dc = str(tmp / "dc")
    BB.synth_render(mid, tmp / "long_ours.wav", "--disk-cache", dc)      # fills the cache the warm runs read
    runs: dict[str, list[float]] = {"fs": [], "cold": [], "warm": []}
    for _ in range(2 if quick else 4):
        runs["fs"].append(_timed(lambda: BB.fluid(SF2, mid, tmp / "long_fs.wav")))
        runs["cold"].append(_timed(lambda: BB.synth_render(mid, tmp / "long_ours.wav", "--disk-cache", "off")))
        runs["warm"].append(_timed(lambda: BB.synth_render(mid, tmp / "long_ours.wav", "--disk-cache", dc)))
    fs = np.array(runs["fs"])
    cold, warm = fs / np.array(runs["cold"]), fs / np.array(runs["warm"])
    ratio = float(np.median(cold))

    def each(r):
        return ", ".join(f"{v:.2f}" for v in r)

    return [_row(f"{seconds / 60:.0f}-minute GM piece with drums: render speed vs FluidSynth", round(ratio, 2), "x",
                 ">= 3x", ratio >= 3.0 if not quick else None,
                 f"median of {len(fs)} interleaved rounds with --disk-cache off (the model generates every note; "
                 f"rounds {each(cold)}x): ours {np.median(runs['cold']):.2f} s (process start, routing, generation "
                 f"and file writing included), fluidsynth -ni -R 0 -C 0 -O float {np.median(fs):.2f} s; with a "
                 f"warm disk cache {np.median(runs['warm']):.2f} s, {float(np.median(warm)):.2f}x (rounds "
                 f"{each(warm)}x); seven parts incl. drums")]


def held_rows(tmp: Path, preset: str = "piano", preset_dir: str | None = None) -> list[dict]:
    """A1 (velocity 100) held 10 s, and struck for 0.5 s under the sustain pedal (up at 10 s): level
    at 8 s re each render's peak, the largest fall in 0.1 s before key-up (pedal-up), and the log-mel
    distance to FluidR3 (at 24 kHz) of 0-3 s (the generated note) and 3-8 s (the continuation).
    `preset`, `preset_dir`: the preset to play (a candidate from a run, say)."""
    import mido
    import soundfile as sf
    import soxr

    from trainer.evaluate import log_mel_distance

    cases = {
        "held": [(0.0, mido.Message("note_on", note=33, velocity=100)),
                 (10.0, mido.Message("note_off", note=33))],
        "pedalled": [(0.0, mido.Message("control_change", control=64, value=127)),
                     (0.0, mido.Message("note_on", note=33, velocity=100)),
                     (0.5, mido.Message("note_off", note=33)),
                     (10.0, mido.Message("control_change", control=64, value=0))],
    }
    rows = []
    for name, events in cases.items():
        mid = tmp / f"{name}.mid"
        _save(mid, events)
        BB.fluid(SF2, mid, tmp / f"{name}_fs.wav")
        BB.synth_render(mid, tmp / f"{name}_ours.wav", "--preset", preset,
                        *(("--preset-dir", preset_dir, "--disk-cache", "off") if preset_dir else ()))
        out, x24 = {}, {}
        for who in ("fs", "ours"):
            x = sf.read(str(tmp / f"{name}_{who}.wav"), dtype="float64", always_2d=True)[0].mean(axis=1)
            w = RATE // 10
            r = np.sqrt(np.mean(x[:len(x) // w * w].reshape(-1, w) ** 2, axis=1))
            db = 20 * np.log10(r / r.max() + 1e-12)
            out[who] = (float(db[80]) if len(db) > 80 else -240.0, float(np.max(-np.diff(db[:100]))))
            x24[who] = soxr.resample(x, RATE, 24000).astype(np.float32)
        lm = [log_mel_distance(x24["ours"][a:b], x24["fs"][a:b], 24000)
              for a, b in ((0, 72000), (72000, 192000))]
        what = "held A1 for 10 s" if name == "held" else "A1 for 0.5 s under the pedal (up at 10 s)"
        rows.append(_row(f"{what}: level at 8 s re its peak", round(out["ours"][0], 1), "dB",
                         "within 8 dB of FluidR3; fall <= 6 dB; tail log-mel <= head's",
                         out["ours"][0] >= out["fs"][0] - 8 and out["ours"][1] <= 6.0 and lm[1] <= lm[0],
                         f"FluidR3's piano {out['fs'][0]:.1f} dB; largest fall in 0.1 s before key-up: ours "
                         f"{out['ours'][1]:.1f} dB, FluidR3 {out['fs'][1]:.1f} dB; log-mel to FluidR3 0-3 s "
                         f"{lm[0]:.2f} dB, 3-8 s {lm[1]:.2f} dB"))
    return rows


def run(quick: bool = False) -> list[dict]:
    if shutil.which("fluidsynth") is None or not SF2.exists():
        return [_row("FluidSynth", None, "", "", None, "fluidsynth or FluidR3_GM.sf2 is missing")]
    with tempfile.TemporaryDirectory(prefix="bench-gm-") as td:
        tmp = Path(td)
        return controller_rows(tmp) + routing_rows(tmp, quick) + held_rows(tmp) + speed_rows(tmp, quick)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", metavar="OUT.json")
    ap.add_argument("--held", metavar="NAME", help="only the ringing rows, for preset NAME")
    ap.add_argument("--preset-dir", metavar="DIR", help="with --held: where NAME is")
    args = ap.parse_args(argv)
    if args.held:
        with tempfile.TemporaryDirectory(prefix="bench-gm-") as td:
            rows = held_rows(Path(td), args.held, args.preset_dir)
    else:
        rows = run(quick=args.quick)
    for r in rows:
        print(json.dumps(r, default=float))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
