"""Output level at the default master gain, against FluidSynth: `python scripts/bench_level.py [--out F]`.

The set: the General MIDI files of `make_gm_midi.py` (four solo piano pieces, two ensembles with
drums on channel 10), the shipped `presets/piano/demo.mid`, a fifth solo piano piece, and a
sequenced one from outside the project where installed: pyo's `mapleleafrag.mid` (Joplin's rag,
one piano track, 197 s; pyo is a dependency and ships it in its examples). Each is rendered
  - by us: `render_file(..., fmt="float")`, GM routing, no effects, 48 kHz, at the default level;
  - by FluidSynth at its defaults (gain 0.2, reverb and chorus on): `fluidsynth -ni -F out.wav
    -r 48000 FluidR3_GM.sf2 in.mid`, written as float.
Reported per file: integrated loudness (ITU-R BS.1770, pyloudnorm), sample peak, ours minus
FluidSynth, and the share of samples (each channel's) where our soft limiter cuts more than 0.1 dB.

The limiter share is exact: the file is rendered again at `gain_db=-40`, where nothing reaches the
limiter's knee, and scaled back by +40 dB in float64. With effects off the chain is linear before
the limiter, so that is the signal the limiter sees at the default level; `soft_limit` is applied
to it and a sample counts when output/input < 10^(-0.1/20). The same signal gives every other
master gain's pre-limiter loudness and limiter share (the sweep the default was chosen from).
Bars (issue 19 item 5): solo piano -20..-14 LUFS; limiter > 0.1 dB on <= 0.1 % of samples.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SF2 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RATE = 48000
PIANO_BAR = (-20.0, -14.0)          # LUFS, solo piano at the default level
LIMIT_DB = 0.1                      # a sample is "limited" when the limiter cuts more than this
LIMIT_SHARE = 0.001                 # ... on at most this share of samples
TARGET_LUFS = -16.5                 # where the sweep's suggestion puts the median solo piano piece
PROBE_DB = -40.0                    # the render the limiter share is measured from
SWEEP_DB = np.arange(-12.0, 24.01, 0.5)   # master gain changes (dB re the default) in the sweep


def midi_set(tmp: Path) -> list[tuple[str, Path, bool]]:
    """(name, path, solo piano?) for every file of the set; generated files go to `tmp`."""
    sys.path.insert(0, str(HERE))
    import make_gm_midi

    files = [(p.stem, p, p.stem.startswith("piano-")) for p in make_gm_midi.write_all(tmp)]
    demo = ROOT / "presets" / "piano" / "demo.mid"
    if demo.exists():
        files.insert(2, ("piano-preset-demo", demo, True))
    rag = _pyo_example("mapleleafrag.mid")
    if rag is not None:
        files.insert(files.index(next(f for f in files if not f[2])), ("piano-mapleleafrag", rag, True))
    return files


def _pyo_example(name: str) -> Path | None:
    """A MIDI file from pyo's examples (a real, sequenced piece), or None where pyo is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("pyo")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "examples" / "snds" / name
    return path if path.is_file() else None


def loudness(x: np.ndarray) -> float:
    """Integrated loudness in LUFS (-inf for silence), float64 stereo at RATE."""
    import pyloudnorm

    return float(pyloudnorm.Meter(RATE).integrated_loudness(np.asarray(x, np.float64)))


def db(v: float) -> float:
    return 20 * math.log10(v) if v > 0 else -math.inf


def limited_share(pre: np.ndarray, scale: float = 1.0) -> float:
    """Share of samples of `pre * scale` (the limiter's input) that `soft_limit` cuts by > LIMIT_DB."""
    from synth.engine import LIMIT_KNEE, soft_limit

    y = (pre * scale).astype(np.float32)
    big = np.abs(y) > LIMIT_KNEE                   # below the knee the limiter is the identity
    if not big.any():
        return 0.0
    yb = np.ascontiguousarray(y[big])
    out = yb.copy()
    soft_limit(out)
    ratio = out.astype(np.float64) / yb.astype(np.float64)
    return float(np.count_nonzero(ratio < 10 ** (-LIMIT_DB / 20))) / y.size


def ours(mid: Path, tmp: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(default-level render, limiter input at the default level in float64, frames the probe rendered).

    The probe's release tail stops sooner (its -80 dBFS silence is 40 dB lower): it is padded with
    zeros to the default render's length, where the signal is below -40 dBFS and never limited."""
    import soundfile as sf

    from synth.render import render_file

    out = []
    for tag, gain in (("default", None), ("probe", PROBE_DB)):
        wav = tmp / f"{mid.stem}.{tag}.wav"
        render_file(mid, wav, fmt="float", sample_rate=RATE, progress=False, gain_db=gain)
        x, sr = sf.read(str(wav), dtype="float64", always_2d=True)
        assert sr == RATE
        out.append(x)
        wav.unlink()
    x, y = out
    n = min(len(x), len(y))
    pad = np.zeros_like(x)
    pad[:n] = y[:n] * 10 ** (-PROBE_DB / 20)
    return x, pad, n


def fluidsynth(mid: Path, tmp: Path) -> np.ndarray:
    """FluidSynth's render at its defaults (gain 0.2, reverb and chorus on), float64 [frames, 2]."""
    import soundfile as sf

    wav = tmp / f"{mid.stem}.fs.wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-o", "audio.file.format=float", "-F", str(wav), "-r", str(RATE),
                    str(SF2), str(mid)], check=True, capture_output=True, timeout=600)
    x, _ = sf.read(str(wav), dtype="float64", always_2d=True)
    wav.unlink()
    return x


def measure(quick: bool = False) -> dict:
    """Render and measure the whole set; returns the JSON-ready result (files, sweep, gain)."""
    sys.path.insert(0, str(ROOT))
    from synth.engine import DEFAULT_MASTER_GAIN, soft_limit

    files, pre = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-level-") as td:
        tmp = Path(td)
        for name, mid, piano in midi_set(tmp):
            x, y, n = ours(mid, tmp)
            lim = np.ascontiguousarray(y[:n].astype(np.float32))
            soft_limit(lim)
            fs = fluidsynth(mid, tmp)
            ours_lufs, fs_lufs = loudness(x), loudness(fs)
            files.append({"name": name, "solo_piano": piano, "seconds": round(len(x) / RATE, 1),
                          "lufs": round(ours_lufs, 2), "peak_dbfs": round(db(np.abs(x).max()), 2),
                          "pre_limiter_peak_dbfs": round(db(np.abs(y).max()), 2),
                          "limited_share": limited_share(y),
                          "fluidsynth_lufs": round(fs_lufs, 2), "fluidsynth_peak_dbfs": round(db(np.abs(fs).max()), 2),
                          "ours_minus_fluidsynth_db": round(ours_lufs - fs_lufs, 2),
                          "linearity_error": float(np.abs(x[:n] - lim).max())})
            pre[name] = (y, loudness(y))
    sweep = []
    for g in SWEEP_DB:
        s = 10 ** (g / 20)
        sweep.append({"gain_db": float(g), "master_gain": round(DEFAULT_MASTER_GAIN * s, 4),
                      "lufs": {n: round(lu + g, 2) for n, (_, lu) in pre.items()},
                      "limited_share": {n: limited_share(y, s) for n, (y, _) in pre.items()}})
    return {"master_gain": DEFAULT_MASTER_GAIN, "sample_rate": RATE, "files": files, "sweep": sweep}


def verdict(res: dict) -> dict:
    """Pass/fail of the two bars at the measured level, and what the sweep says about other levels.

    `suggested_gain_db` (re the measured level) is the rule the default was chosen by: among sweep
    gains whose limiter share is at most half the bar on every file (room for louder files than
    these), the one with the most solo piano pieces inside PIANO_BAR, then the one whose median solo
    piano piece is nearest TARGET_LUFS."""
    piano = [f["name"] for f in res["files"] if f["solo_piano"]]
    lo, hi = PIANO_BAR

    def inside(s):
        return sum(lo <= s["lufs"][n] <= hi for n in piano)

    both = [s["gain_db"] for s in res["sweep"]
            if inside(s) == len(piano) and max(s["limited_share"].values()) <= LIMIT_SHARE]
    safe = [s for s in res["sweep"] if max(s["limited_share"].values()) <= LIMIT_SHARE / 2]
    best = max(safe, key=lambda s: (inside(s), -abs(np.median([s["lufs"][n] for n in piano]) - TARGET_LUFS)),
               default=None)
    files = {f["name"]: f for f in res["files"]}
    return {"piano_ok": all(lo <= files[n]["lufs"] <= hi for n in piano),
            "limiter_ok": max(f["limited_share"] for f in res["files"]) <= LIMIT_SHARE,
            "piano_median_lufs": float(np.median([files[n]["lufs"] for n in piano])),
            "gain_db_meeting_both": [min(both), max(both)] if both else None,
            "suggested_gain_db": None if best is None else best["gain_db"],
            "suggested_master_gain": None if best is None else best["master_gain"],
            "suggested_piano_inside": None if best is None else f"{inside(best)}/{len(piano)}"}


def table(res: dict) -> str:
    """The per-file Markdown table."""
    lines = [f"Master gain {res['master_gain']:g} (the default), 48 kHz, effects off; FluidSynth at its defaults.", "",
             "| file | s | LUFS | peak dBFS | pre-limiter peak | limited > 0.1 dB | FluidSynth LUFS | FS peak | ours − FS |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for f in res["files"]:
        lines.append(f"| {f['name']} | {f['seconds']:g} | {f['lufs']:.1f} | {f['peak_dbfs']:.2f} | "
                     f"{f['pre_limiter_peak_dbfs']:+.1f} | {100 * f['limited_share']:.4f} % | {f['fluidsynth_lufs']:.1f} | "
                     f"{f['fluidsynth_peak_dbfs']:.1f} | {f['ours_minus_fluidsynth_db']:+.1f} dB |")
    v = res["verdict"]
    rng = v["gain_db_meeting_both"]
    lines += ["", "Sweep (pre-limiter loudness, exact limiter share): master gain changes meeting both bars: "
              + (f"{rng[0]:+g} to {rng[1]:+g} dB re {res['master_gain']:g}" if rng else "none")
              + (f"; suggested (most piano pieces inside, limiter share <= half the bar, median piano nearest "
                 f"{TARGET_LUFS:g} LUFS): {v['suggested_gain_db']:+g} dB = master gain {v['suggested_master_gain']:g} "
                 f"({v['suggested_piano_inside']} piano pieces inside)" if v["suggested_gain_db"] is not None else "")
              + "."]
    return "\n".join(lines)


def run(quick: bool = False) -> dict:
    """bench.py's entry: rows for the two bars, and the per-file table as the area's Markdown."""
    if shutil.which("fluidsynth") is None or not SF2.exists():
        return [{"name": "level: FluidSynth comparison", "value": None, "unit": "", "bar": "", "pass": None,
                 "notes": "fluidsynth or FluidR3_GM.sf2 is missing (apt-get install fluidsynth fluid-soundfont-gm)"}]
    res = measure(quick)
    res["verdict"] = v = verdict(res)
    piano = [f for f in res["files"] if f["solo_piano"]]
    worst = max(res["files"], key=lambda f: f["limited_share"])
    diffs = [f["ours_minus_fluidsynth_db"] for f in res["files"]]
    rows = [{"name": f"level: {f['name']} loudness", "value": f["lufs"], "unit": "LUFS",
             "bar": "-20..-14" if f["solo_piano"] else "",
             "pass": (PIANO_BAR[0] <= f["lufs"] <= PIANO_BAR[1]) if f["solo_piano"] else None,
             "notes": f"peak {f['peak_dbfs']:.2f} dBFS; FluidSynth {f['fluidsynth_lufs']:.1f} LUFS "
                      f"({f['ours_minus_fluidsynth_db']:+.1f} dB)"} for f in res["files"]]
    rows += [{"name": "level: solo piano median loudness", "value": v["piano_median_lufs"], "unit": "LUFS",
              "bar": "", "pass": None, "notes": f"{len(piano)} solo piano pieces"},
             {"name": "level: limiter > 0.1 dB, worst file", "value": 100 * worst["limited_share"], "unit": "%",
              "bar": "<= 0.1 %", "pass": v["limiter_ok"],
              "notes": f"{worst['name']}; share of samples (each channel's), from the -40 dB render scaled back "
                       f"(which, through soft_limit, matches the default render within "
                       f"{max(f['linearity_error'] for f in res['files']):.1e})"},
             {"name": "level: ours minus FluidSynth", "value": float(np.median(diffs)), "unit": "dB", "bar": "",
              "pass": None, "notes": f"median over {len(diffs)} files (range {min(diffs):+.1f} to {max(diffs):+.1f})"}]
    return {"rows": rows, "markdown": table(res), "result": res}


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path("bench-out") / "level.json"), help="JSON results (default bench-out/level.json)")
    args = ap.parse_args(argv)
    got = run()
    if isinstance(got, list):
        print(got[0]["notes"], file=sys.stderr)
        return 1
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(got["result"], indent=1) + "\n")
    print(got["markdown"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
