"""Dataset benchmarks: full GM piano render time and size, pYIN speed and label agreement, loader reads,
and with --family the `keys` family set (FluidR3 + MuseScore General, programs 0-7).

    python scripts/bench_dataset.py [--quick] [--family] [--json OUT.json]

The piano set is the issue-3 bar: FluidR3_GM program 0, 88 pitches x 5 velocities, 4 s at 24 kHz,
rendered through the same code path as `python -m trainer dataset` (in-process `main`), timed wall
clock, bar < 30 s on the 2-core machine. `--quick` checks pYIN on 88 notes instead of 440 and skips
the one-process comparison. `--family` adds the issue-20 bar: the keys family (16 instruments x 88
keys x 5 velocities, 4 s at 24 kHz, 16-bit) within 2 GB on disk; it takes about 5 minutes here.
`run(quick)` returns rows for `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SR = 24000


def _row(name, value, unit, bar, ok, notes):
    return {"name": name, "value": float(value), "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def _du(folder: Path) -> int:
    return sum(os.stat(p).st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def _render_piano(out: Path, jobs: int) -> float:
    from trainer.data.cli import main

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # keep the table clean: no summary lines
            rc = main(["--soundfont", "/usr/share/sounds/sf2/FluidR3_GM.sf2", "--program", "0", "--out", str(out),
                   "--pitches", "21-108", "--velocities", "25,50,75,100,127", "--seconds", "4",
                   "--sample-rate", str(SR), "--jobs", str(jobs), "--force", "--quiet"])
    elapsed = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"piano render failed with exit {rc}")
    return elapsed


KEYS_FAMILY = ["--soundfont", "/usr/share/sounds/sf2/FluidR3_GM.sf2", "--soundfont",
               "/usr/share/sounds/sf3/MuseScore_General.sf3", "--programs", "0-7"]


def _family_rows(tmp: Path) -> list[dict]:
    """Render the keys family with the defaults of `python -m trainer dataset`; its time and size."""
    from trainer.data import OneShotDataset
    from trainer.data.cli import main

    if not Path(KEYS_FAMILY[3]).exists():
        return [_row("dataset: keys family render", float("nan"), "s", "", None,
                     "skipped: musescore-general-soundfont missing (scripts/system_deps.sh)")]
    out = tmp / "keys"
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = main([*KEYS_FAMILY, "--out", str(out), "--quiet"])
    secs = time.perf_counter() - t
    if rc != 0:
        raise RuntimeError(f"keys family render failed with exit {rc}")
    ds = OneShotDataset(out)
    size = _du(out)
    counts = np.bincount(ds.instruments).tolist()
    return [_row("dataset: keys family render (2 SoundFonts x programs 0-7, 88x5, 4 s, 24 kHz)", secs, "s", "", None,
                 f"{len(ds)} notes, {len(counts)} instruments ({min(counts)}-{max(counts)} notes each)"),
            _row("dataset: keys family size on disk (16-bit bank)", size / 1e6, "MB", "< 2000 MB", size < 2e9,
                 f"notes.i16 {(out / 'notes.i16').stat().st_size / 1e6:.0f} MB + manifest "
                 f"{(out / 'manifest.json').stat().st_size / 1e6:.1f} MB")]


def run(quick: bool = False, family: bool = False) -> list[dict]:
    from trainer.data import OneShotDataset
    from trainer.data.pitch import estimate_f0, hz_to_midi
    from trainer.data.soundfont import DEFAULT_SOUNDFONT

    if shutil.which("fluidsynth") is None or not Path(DEFAULT_SOUNDFONT).exists():
        return [_row("dataset: full GM piano render", float("nan"), "s", "< 30 s", None,
                     "skipped: fluidsynth or fluid-soundfont-gm missing (scripts/system_deps.sh)")]
    rows = []
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-dataset-") as tmp:
        out = Path(tmp) / "piano"
        secs = _render_piano(out, jobs=min(2, cores))
        ds = OneShotDataset(out)
        rows.append(_row("dataset: full GM piano render (88x5, 4 s, 24 kHz)", secs, "s", "< 30 s", secs < 30,
                         f"{len(ds)} notes, {min(2, cores)} FluidSynth processes, {cores} cores; "
                         "`python -m trainer dataset --soundfont FluidR3_GM.sf2 --program 0`"))
        size = _du(out)
        rows.append(_row("dataset: full GM piano size on disk", size / 1e6, "MB", "", None,
                         f"notes.f32 {(out / 'notes.f32').stat().st_size / 1e6:.1f} MB + manifest "
                         f"{(out / 'manifest.json').stat().st_size / 1e3:.0f} kB (float32, {len(ds)} x {4 * SR})"))
        if not quick:
            secs1 = _render_piano(Path(tmp) / "piano1", jobs=1)
            rows.append(_row("dataset: full GM piano render, 1 FluidSynth process", secs1, "s", "", None,
                             f"ratio 1 process / {min(2, cores)} processes = {secs1 / secs:.2f}"))
            shutil.rmtree(Path(tmp) / "piano1")

        # pYIN: speed on 1-s excerpts, and agreement with the rendered labels.
        idx = np.arange(len(ds)) if not quick else np.arange(4, len(ds), 5)  # quick: velocity 127 only
        times, cents = [], []
        for i in idx:
            item = ds[int(i)]
            x = item["audio"][:SR]
            t = time.perf_counter()
            f0, _ = estimate_f0(x, SR)
            times.append(time.perf_counter() - t)
            cents.append(abs(hz_to_midi(f0) - item["pitch"]) * 100 if np.isfinite(f0) else np.inf)
        ms = float(np.median(times) * 1e3)
        rows.append(_row("dataset: pYIN estimate_f0 per 1-s excerpt (24 kHz)", ms, "ms", "< 50 ms", ms < 50,
                         f"median of {len(times)} piano notes, max {max(times) * 1e3:.0f} ms"))
        cents = np.array(cents)
        agree = float(np.mean(cents < 50))
        rows.append(_row("dataset: rendered piano notes whose pYIN pitch is within 50 cents of the label", agree * 100,
                         "%", "= 100 %", agree == 1.0,
                         f"{len(cents)} notes; median {np.median(cents):.0f}, max {cents.max():.0f} cents "
                         "(FluidR3's piano samples are themselves up to ~27 cents sharp)"))

        # Loader: random single-note reads from the memory map, and batched gathers.
        rng = np.random.default_rng(0)
        order = rng.integers(0, len(ds), 2000)
        fresh = OneShotDataset(out)
        t = time.perf_counter()
        for i in order:
            fresh[int(i)]
        per_note = (time.perf_counter() - t) / len(order) * 1e6
        rows.append(_row("dataset: loader random read, one 4-s note", per_note, "us", "", None,
                         "OneShotDataset[i] from the memory-mapped bank (page cache warm after the render)"))
        t = time.perf_counter()
        for k in range(0, 1600, 16):
            fresh.audio_batch(order[k:k + 16])
        per_batch = (time.perf_counter() - t) / 100 * 1e3
        rows.append(_row("dataset: loader batch of 16 notes (audio_batch)", per_batch, "ms", "", None,
                         "one fancy-index gather from the memory map"))
        if family:
            shutil.rmtree(out)
            rows += _family_rows(Path(tmp))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--family", action="store_true", help="also render the keys family set (about 5 minutes)")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args()
    rows = run(args.quick, args.family)
    for r in rows:
        ok = {True: "PASS", False: "FAIL", None: ""}[r["pass"]]
        print(f"{r['name']:<84} {r['value']:>10.2f} {r['unit']:<3} {r['bar']:<9} {ok:<4}  {r['notes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(r["pass"] is not False for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
