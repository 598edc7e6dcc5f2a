"""Export and measure one training run at one budget, and record it in `docs/long_runs.json`.

    python scripts/record_run.py TASK RUN --data DATA [--at STEPS] [--eval ARGS] [--label TEXT --bar TEXT]
    python scripts/record_run.py TASK --preset DIR --data DATA --at STEPS ...   (an exported preset)
    python scripts/record_run.py TASK RUN --data DATA --at STEPS --speed        (speed and size only)

Issue 21's long runs (the piano recipe at the steps of 24, 60 and 120 idle minutes; WaveGAN's kit;
the spectral model's piano) take hours, in pieces with `--resume`, so `make bench` reads their
figures from this file rather than retraining (`scripts/bench_archs.py`, the archs area). `--at S`
measures the run as it was at step S: the best validation up to S and the checkpoint of step S,
as copied aside while the run went on (`RUN/best-at-S.pt`, `RUN/last-at-S.pt`); without it, the
run's own checkpoints. The preset goes to a scratch folder; the record keeps the eval report, the
validation curve up to that step and the commands. `--speed` adds the CPU speed (`trainer eval`'s
one-thread figures) and the graph's size to a point already recorded, without measuring quality again:
run it on a quiet CPU, since a neighbour's load moves milliseconds but not log-mel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORD = ROOT / "docs" / "long_runs.json"
KEEP = ("log_mel_distance", "log_mel_distance_random", "log_mel_distance_random_std", "log_mel_distance_notes",
        "pitch_accuracy", "pitch_accuracy_random", "class_accuracy", "class_accuracy_real", "diversity",
        "ms_per_note", "ms_per_88", "compared_at_hz", "split")


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        sys.exit(f"{shlex.join(cmd)} failed: {last}")
    return r.stdout


def _snapshot(run: Path, at: int, tmp: Path) -> Path:
    """A run folder holding the run as it was at step `at` (config, validation, the two checkpoints)."""
    snap = tmp / f"{run.name}-at-{at}"
    (snap / "checkpoints").mkdir(parents=True)
    for name in ("config.json", "validation.json"):
        if (run / name).exists():
            shutil.copy(run / name, snap / name)
    for kind in ("best", "last"):
        src = run / f"{kind}-at-{at}.pt"
        if not src.exists():
            sys.exit(f"{src}: missing; copy checkpoints/{kind}.pt aside when the run passes step {at}")
        os.link(src, snap / "checkpoints" / f"{kind}.pt")
    return snap


def _curve(run: Path, upto: int) -> list[list[float]]:
    """[[step, valid log-mel dB, pitch or class accuracy], ...] up to step `upto`."""
    try:
        hist = json.loads((run / "validation.json").read_text())["history"]
    except (OSError, KeyError, json.JSONDecodeError):
        return []
    return [[h["step"], round(h["logmel_db"], 3), round(h.get("pitch_acc", h.get("class_acc")) or 0.0, 3)]
            for h in hist if h["step"] <= upto]


def _export(run: Path | None, at: int | None, shipped: Path | None, tmp: Path) -> Path:
    """The preset to measure: `shipped`, or `run` (as it was at step `at`, if given) exported into `tmp`."""
    if shipped is not None:
        return shipped
    preset = tmp / "preset"
    src = _snapshot(run, at, tmp) if at else run
    _run([sys.executable, "-m", "trainer", "export", str(src), "--preset", str(preset), "--knobs", "0", "--force"])
    return preset


def measure_speed(run: Path | None, at: int | None, shipped: Path | None = None) -> dict:
    """`trainer eval`'s CPU speed figures and the graph's size for the preset `measure` would evaluate."""
    sys.path.insert(0, str(ROOT))
    from synth.preset import load_preset_dir
    from trainer.evaluate import speed_report
    with tempfile.TemporaryDirectory(prefix="record-run-") as td:
        preset = _export(run, at, shipped, Path(td))
        got = speed_report(load_preset_dir(str(preset)), repeats=9)
        got["onnx_mb"] = round((preset / "generator.onnx").stat().st_size / 1e6, 2)
    got["speed_date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return got


def measure(run: Path | None, data: str, at: int | None, eval_args: list[str], shipped: Path | None = None) -> dict:
    """Export `run` (as it was at step `at`, if given) or take the preset `shipped`, and evaluate it."""
    with tempfile.TemporaryDirectory(prefix="record-run-") as td:
        tmp = Path(td)
        preset = _export(run, at, shipped, tmp)
        rep = json.loads(_run([sys.executable, "-m", "trainer", "eval", str(preset), "--data", data, *eval_args]))
        facts = json.loads((preset / "preset.json").read_text()).get("training") or {}
        onnx_mb = round((preset / "generator.onnx").stat().st_size / 1e6, 2)
    steps = int(facts.get("steps") or 0)
    return {"at_steps": at or int(facts.get("run_steps") or steps), "exported_step": steps,
            "train_minutes": facts.get("run_minutes", facts.get("minutes")),
            "ended_by": facts.get("ended_by"), "steps_per_second": facts.get("steps_per_second"),
            "eval": {k: rep[k] for k in KEEP if k in rep}, "onnx_mb": onnx_mb,
            "curve": _curve(run, at or 10 ** 9) if run else []}


def _write(doc: dict, path: Path) -> None:
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def record(task: str, point: dict, meta: dict, path: Path = RECORD) -> None:
    """Add or replace (by at_steps) one measured point of `task` in the record file."""
    doc = json.loads(path.read_text()) if path.exists() else {"about": __doc__.splitlines()[0], "tasks": {}}
    t = doc["tasks"].setdefault(task, {"points": []})
    t.update({k: v for k, v in meta.items() if v})
    t["points"] = sorted([p for p in t["points"] if p["at_steps"] != point["at_steps"]] + [point],
                         key=lambda p: p["at_steps"])
    _write(doc, path)


def add_speed(task: str, at: int | None, got: dict, path: Path = RECORD) -> int:
    """Merge speed figures `got` into the recorded point of `task` at step `at` (None: its latest point)."""
    doc = json.loads(path.read_text())
    points = doc["tasks"].get(task, {}).get("points") or []
    hit = [p for p in points if at is None or p["at_steps"] == at]
    if not hit:
        sys.exit(f"{path}: no point of task {task!r} at step {at}; record it first (without --speed)")
    p = hit[-1]
    p["onnx_mb"] = got.pop("onnx_mb")
    p["eval"].update(got)
    _write(doc, path)
    print(json.dumps(p, indent=1))
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task")
    ap.add_argument("run", type=Path, nargs="?")
    ap.add_argument("--preset", type=Path, help="measure this exported preset instead of a run (needs --at)")
    ap.add_argument("--data", required=True)
    ap.add_argument("--at", type=int, help="measure the run as it was at this step (RUN/best-at-S.pt, last-at-S.pt)")
    ap.add_argument("--eval", default="", help="more `trainer eval` flags, one string")
    ap.add_argument("--label", help="what the task is, for the table")
    ap.add_argument("--bar", help="the issue's bar for it")
    ap.add_argument("--command", action="append", default=[], help="a command that trains the run (repeatable)")
    ap.add_argument("--speed", action="store_true", help="add speed and size to the point recorded at --at")
    a = ap.parse_args(argv)
    eval_args = shlex.split(a.eval)
    if (a.run is None) == (a.preset is None) or (a.preset and not a.at):
        ap.error("give a RUN, or --preset DIR with --at STEPS")
    if a.speed:
        return add_speed(a.task, a.at, measure_speed(a.run, a.at, a.preset))
    point = measure(a.run, a.data, a.at, eval_args, a.preset)
    point["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    point["cpu_count"] = os.cpu_count()
    point["eval_command"] = shlex.join(["python", "-m", "trainer", "eval", "PRESET", "--data", a.data, *eval_args])
    point["source"] = str(a.run or a.preset)
    record(a.task, point, {"label": a.label, "bar": a.bar, "commands": a.command})
    print(json.dumps(point, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
