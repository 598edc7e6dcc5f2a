"""Side-by-side of the trainer's architectures at one training budget (issue #4's table).

    python scripts/compare_archs.py --minutes 15 [--archs ddsp,wavegan,spectral] [--data data/piano]

For each arch, one after the other on the same machine, with the default recipe of that arch:
`trainer fit --minutes M` -> `trainer export` -> `trainer eval` (split test, MIDI 28-96 for the
piano), exactly the commands a user types. The figures (steps reached, pitch accuracy, log-mel
distance, diversity, ONNX size and speed) go to `docs/arch_comparison-<M>min.json`, which
`scripts/bench_archs.py` turns into the side-by-side table of `docs/benchmarks.md` without retraining
(training takes M minutes per arch, far longer than `make bench` should). A run folder left in
--work is resumed to the new total, so `--minutes 24` then `--minutes 60` costs 60 minutes per arch,
not 84, and each budget is measured on the same run. The data set is built first when missing
(the GM piano, with the flags of `trainer/recipes/piano.json`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("ddsp", "wavegan", "spectral")
RECIPE_KEYS = ("loss", "adv_weight", "spectral_weight", "lr_g", "lr_d", "batch")   # from the run's resolved config


def _rel(path: Path) -> str:
    """`path` relative to the repository (the commands run there), so reports name no machine folders."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def _run(cmd: list[str], log) -> None:
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    log.write(("+ " + " ".join(cmd) + "\n").encode())
    log.flush()
    p = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                       env=dict(os.environ, PYO_GUI_WX="0"))
    if p.returncode != 0:
        raise SystemExit(f"compare_archs: `{' '.join(cmd)}` failed with exit {p.returncode} (log: {log.name})")


def one(arch: str, data: Path, minutes: float, work: Path, pitches: str, log) -> dict:
    py = sys.executable
    run = work / f"run-{arch}"
    preset = work / f"preset-{arch}"
    report = work / f"eval-{arch}.json"
    t0 = time.monotonic()
    if (run / "checkpoints" / "last.pt").exists():
        _run([py, "-m", "trainer", "fit", "--resume", _rel(run), "--minutes", f"{minutes:g}", "--quiet"], log)
    else:
        _run([py, "-m", "trainer", "fit", "--data", _rel(data), "--arch", arch, "--minutes", f"{minutes:g}",
              "--steps", "1000000", "--out", _rel(run), "--name", f"compare-{arch}", "--quiet"], log)
    fit_s = time.monotonic() - t0
    _run([py, "-m", "trainer", "export", _rel(run), "--preset", _rel(preset), "--force"], log)
    _run([py, "-m", "trainer", "eval", _rel(preset), "--data", _rel(data), "--pitches", pitches,
          "--out", str(report)], log)
    rep = json.loads(report.read_text())
    man = json.loads((preset / "preset.json").read_text())
    training = man.get("training", {})
    tr = json.loads((run / "config.json").read_text()).get("train", {})
    return {
        "arch": arch,
        "steps": training.get("steps"),
        "training_minutes": training.get("minutes"),
        "fit_wall_s": round(fit_s, 1),
        "onnx_mb": round((preset / "generator.onnx").stat().st_size / 1e6, 3),
        "recipe": {k: tr.get(k) for k in RECIPE_KEYS},
        "eval": rep,
    }


def _recipe_dataset_args(out: Path) -> list[str]:
    """The GM piano's dataset flags, from its recipe (trainer/recipes/piano.json), into `out`."""
    from trainer import config as C

    return C.cli_args({**C.recipe_section("piano", "dataset"), "out": _rel(out)})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget per arch (default 15)")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--data", default="data/piano")
    ap.add_argument("--pitches", default="28-96")
    ap.add_argument("--work", default="runs/compare", help="run and preset folders (kept for inspection)")
    ap.add_argument("--json", default=None, help="output (default docs/arch_comparison-<M>min.json, one file per budget)")
    args = ap.parse_args(argv)
    if args.json is None:
        args.json = str(ROOT / "docs" / f"arch_comparison-{args.minutes:g}min.json")
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    bad = [a for a in archs if a not in ARCHS]
    if bad:
        raise SystemExit(f"compare_archs: unknown arch {bad[0]!r} (one of {', '.join(ARCHS)})")
    data = (ROOT / args.data).resolve()
    work = (ROOT / args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "compare.log", "ab") as log:
        if not (data / "manifest.json").exists():
            _run([sys.executable, "-m", "trainer", "dataset", *_recipe_dataset_args(data), "--quiet"], log)
        started = dt.datetime.now(dt.timezone.utc)
        results = [one(a, data, args.minutes, work, args.pitches, log) for a in archs]
    out = {
        "what": "trainer fit -> export -> eval per arch at one budget, default recipe of each arch",
        "run": started.strftime("%Y-%m-%d %H:%M UTC"),
        "minutes_per_arch": args.minutes,
        "data": str(Path(args.data)),
        "pitches": args.pitches,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_1m_at_end": round(os.getloadavg()[0], 2)},
        "command": "python scripts/compare_archs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    from synth.fsutil import atomic_write_text

    atomic_write_text(args.json, json.dumps(out, indent=1) + "\n")
    for r in results:
        e = r["eval"]
        print(f"{r['arch']:9s} steps {r['steps']}  pitch acc {e.get('pitch_accuracy')}  "
              f"log-mel {e.get('log_mel_distance')} dB  diversity {e.get('diversity')}  {r['onnx_mb']} MB")
    print(f"wrote {args.json}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
