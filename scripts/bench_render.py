"""Offline render speed and timing accuracy, side by side with FluidSynth in one run.

Speed: the dense ~5-minute, ~6,000-note piece from `make_bench_midi.py`, rendered to a 48 kHz WAV
  - by FluidSynth: `fluidsynth -ni -R 0 -C 0 -F out.wav -r 48000 FluidR3_GM.sf2 piece.mid` (dry), and
  - by `python -m synth render piece.mid -o out.wav --preset piano` (dry),
each as a fresh process, wall time including process start and, for us, all model inference.
Runs alternate (FluidSynth, ours, FluidSynth, ours, ...) and the best of each is compared, so a
busy moment on a shared machine does not decide the ratio. Bar (issue 5): ours >= 2x faster.

The preset is the shipped `presets/piano` when it exists; otherwise a tiny ONNX test generator
with 4-second notes at 16 kHz (`synth/testing/tinymodel.py`), and the notes say so.

Timing: 24 identical staccato notes at frames that are not multiples of 64; onsets are detected in
both renders and compared with the MIDI times. FluidSynth starts notes on 64-frame period
boundaries; the engine starts them at their exact frame. Reported as the spread (max - min) of the
onset errors, which cancels each instrument's constant attack delay.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RATE = 48000


def _preset_dir(tmp: Path) -> tuple[list[str], str]:
    """(--preset-dir args, description) for the piano preset used by the benchmark."""
    sys.path.insert(0, str(ROOT))
    from synth.errors import UserError
    from synth.preset import REPO_PRESETS, load_preset_dir

    try:
        p = load_preset_dir(REPO_PRESETS / "piano")
        return [], (f"shipped presets/piano ({p.sample_rate} Hz, {p.note_samples / p.sample_rate:.1f} s notes, "
                    f"{len(p.velocity_layers) if p.velocity_conditioned else 1} velocity layer(s))")
    except UserError:
        pass
    from synth.testing.tinymodel import make_tiny_preset

    make_tiny_preset(tmp / "presets", "piano", sample_rate=16000, note_seconds=4.0)
    return ["--preset-dir", str(tmp / "presets")], ("presets/piano is not installed: a tiny ONNX test generator "
                                                    "(16 kHz, 4 s notes, 4 velocity layers) stands in")


_CPU: dict[int, float] = {}


def _wall(cmd: list[str]) -> float:
    """Wall seconds of `cmd` as a fresh process; its CPU seconds (user + sys) go to `_CPU[id]`."""
    env = dict(os.environ, PYO_GUI_WX="0")
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    _CPU["last"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-300:]}")
    return dt


def _fluid_cmd(mid: Path, wav: Path, dry: bool = True) -> list[str]:
    # -R 0 -C 0: reverb and chorus off, so both sides render dry.
    fx = ["-R", "0", "-C", "0"] if dry else []
    return ["fluidsynth", "-ni", "-q", *fx, "-F", str(wav), "-r", str(RATE), str(SF2), str(mid)]


def _ours_cmd(mid: Path, wav: Path, pdir: list[str]) -> list[str]:
    return [sys.executable, "-m", "synth", "render", str(mid), "-o", str(wav), "--preset", "piano",
            "--sample-rate", str(RATE), "--no-progress", "-q", "--disk-cache", "off", *pdir]   # cold: the model runs


def _onsets(x: np.ndarray, rel: float = 0.02, gap: int = 4800) -> np.ndarray:
    """First frame of each sound that follows >= `gap` frames below `rel` x peak."""
    env = np.abs(x).max(axis=1) if x.ndim == 2 else np.abs(x)
    loud = np.flatnonzero(env > rel * env.max())
    if len(loud) == 0:
        return np.zeros(0, np.int64)
    keep = np.concatenate([[True], np.diff(loud) > gap])
    return loud[keep]


def _timing_file(path: Path, n: int = 24) -> np.ndarray:
    """Staccato A4s every 0.5 s plus an odd offset; returns their exact frames at RATE."""
    import mido

    rng = np.random.default_rng(64)
    tpq = 960  # 120 BPM: one tick = 1/1920 s = 25 frames at 48 kHz
    mf = mido.MidiFile(type=0, ticks_per_beat=tpq)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    ticks = [tpq + k * tpq + int(rng.integers(0, 8)) for k in range(n)]
    last = 0
    for t in ticks:
        tr.append(mido.Message("note_on", note=69, velocity=100, time=t - last))
        tr.append(mido.Message("note_off", note=69, velocity=0, time=tpq // 8))
        last = t + tpq // 8
    mf.save(str(path))
    return np.array([round(t / (2 * tpq) * RATE) for t in ticks], np.int64)


def _spread(onsets: np.ndarray, want: np.ndarray) -> float | None:
    if len(onsets) != len(want):
        return None
    err = onsets - want
    return float(err.max() - err.min())


def run(quick: bool = False) -> list[dict]:
    import soundfile as sf

    rows: list[dict] = []
    if shutil.which("fluidsynth") is None or not SF2.exists():
        return [{"name": "render: FluidSynth comparison", "value": None, "unit": "", "bar": ">= 2x", "pass": None,
                 "notes": "fluidsynth or FluidR3_GM.sf2 is missing (apt-get install fluidsynth fluid-soundfont-gm)"}]
    sys.path.insert(0, str(HERE))
    import make_bench_midi

    with tempfile.TemporaryDirectory(prefix="bench-render-") as td:
        tmp = Path(td)
        pdir, pdesc = _preset_dir(tmp)
        minutes = 1.0 if quick else 5.0
        mid = tmp / "piece.mid"
        mf = make_bench_midi.build(minutes)
        mf.save(str(mid))
        n_notes = sum(1 for tr in mf.tracks for m in tr if m.type == "note_on")
        piece = f"make_bench_midi.py --minutes {minutes:g}: {mf.length:.0f} s, {n_notes} notes"

        repeats = 1 if quick else 3
        fs_t, our_t, fs_cpu, our_cpu = [], [], [], []
        for _ in range(repeats):
            fs_t.append(_wall(_fluid_cmd(mid, tmp / "fs.wav")))
            fs_cpu.append(_CPU["last"])
            our_t.append(_wall(_ours_cmd(mid, tmp / "ours.wav", pdir)))
            our_cpu.append(_CPU["last"])
        info = sf.info(str(tmp / "ours.wav"))
        fs_best, our_best = min(fs_t), min(our_t)
        ratio = fs_best / our_best
        runs = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
        rows += [
            {"name": "render: FluidSynth wall time", "value": fs_best, "unit": "s", "bar": "", "pass": None,
             "notes": f"best of {repeats} ({runs(fs_t)}); fluidsynth -ni -R 0 -C 0 -r 48000 FluidR3_GM.sf2; {piece}"},
            {"name": "render: neural-synth wall time", "value": our_best, "unit": "s", "bar": "", "pass": None,
             "notes": f"best of {repeats} ({runs(our_t)}); python -m synth render, process start and model "
                      f"inference included; {pdesc}"},
            {"name": "render: speed vs FluidSynth", "value": ratio, "unit": "x", "bar": ">= 2x",
             "pass": ratio >= 2.0, "notes": "FluidSynth time / ours, same file, same machine, same run"},
            {"name": "render: CPU time, FluidSynth / ours", "value": min(fs_cpu) / min(our_cpu), "unit": "x",
             "bar": "", "pass": None,
             "notes": f"user+sys seconds, best of {repeats}: FluidSynth {min(fs_cpu):.2f}, ours {min(our_cpu):.2f} "
                      f"(ours runs ONNX Runtime on all cores and writes the file on a second thread); "
                      f"less sensitive than wall time to other load on a shared machine"},
            {"name": "render: real-time factor", "value": info.frames / info.samplerate / our_best, "unit": "x",
             "bar": "", "pass": None, "notes": f"{info.frames / info.samplerate:.0f} s of 48 kHz stereo audio "
                                                f"(with release tail) per {our_best:.2f} s wall"},
        ]

        if not quick:
            fs_fx = _wall(_fluid_cmd(mid, tmp / "fs_fx.wav", dry=False))
            rows.append({"name": "render: FluidSynth wall time, default reverb + chorus", "value": fs_fx, "unit": "s",
                         "bar": "", "pass": None, "notes": f"one run; the command without -R 0 -C 0 "
                                                          f"(ratio vs ours: {fs_fx / our_best:.2f}x)"})

        tmid = tmp / "timing.mid"
        want = _timing_file(tmid)
        _wall(_fluid_cmd(tmid, tmp / "fs_t.wav"))
        _wall(_ours_cmd(tmid, tmp / "ours_t.wav", pdir))
        fs_x, _ = sf.read(str(tmp / "fs_t.wav"), dtype="float32")
        our_x, _ = sf.read(str(tmp / "ours_t.wav"), dtype="float32")
        fs_sp, our_sp = _spread(_onsets(fs_x), want), _spread(_onsets(our_x), want)
        rows += [
            {"name": "render: onset spread, FluidSynth", "value": fs_sp, "unit": "frames", "bar": "", "pass": None,
             "notes": f"{len(want)} notes at frames that are not multiples of 64; max - min of (onset - MIDI time)"
                      + ("" if fs_sp is not None else "; onset detection failed")},
            {"name": "render: onset spread, neural-synth", "value": our_sp, "unit": "frames", "bar": "<= 2 frames",
             "pass": None if our_sp is None else our_sp <= 2,
             "notes": "same file; sample-accurate events" + ("" if our_sp is not None else "; onset detection failed")},
        ]
    return rows


if __name__ == "__main__":
    for r in run(quick="--quick" in sys.argv):
        print(r)
