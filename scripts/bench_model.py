"""Model benchmarks for every shipped preset in presets/: generation speed, file size, eval figures.

    python scripts/bench_model.py [--quick] [--preset-dir DIR] [--json OUT.json]

Per preset, measured here with `trainer.evaluate.measure_speed` (ONNX Runtime on the CPU, one
intra-op thread and no spinning, as the live synth's worker runs it; median of repeated runs after
a warm-up): ms per note (bar <= 20 ms), ms per 88-key batch (bar <= 1 s), and the size of
generator.onnx (bar <= 10 MB). Then the `trainer eval` figures stored in each manifest's metrics
(written by `python -m trainer eval ... --update-preset`), with the issue-7 bars where one applies:
pitch accuracy >= 0.95 (pitched), log-mel distance <= 6.5 dB (piano), drum class accuracy >= 0.9.
Without --quick it also measures a scale for the log-mel distance between real pianos (`lmd_scale`).
`run(quick)` returns rows for `scripts/bench.py`; `--quick` repeats fewer times.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHIPPED_PRESETS = 4   # issue 7: piano and three more


def _row(name, value, unit, bar, ok, notes=""):
    return {"name": name, "value": float(value), "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def _stored(p) -> list[dict]:
    m = p.metrics or {}
    ev = m.get("eval") or {}
    src = f"stored by `trainer eval` on {ev.get('date', '?')} (split {ev.get('split', '?')}, MIDI {ev.get('pitches', '?')})"
    rows = []

    def num(key):
        v = m.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    if not p.is_drums:
        v = num("pitch_accuracy")
        rows.append(_row(f"model {p.name}: pitch accuracy", v if v is not None else float("nan"), "share",
                         ">= 0.95", None if v is None else v >= 0.95, src if v is not None else "not measured yet"))
    v = num("log_mel_distance")
    is_piano = p.name == "piano"
    rows.append(_row(f"model {p.name}: log-mel distance to real test notes", v if v is not None else float("nan"), "dB",
                     "<= 6.5 dB" if is_piano else "(piano bar <= 6.5 dB)",
                     (v <= 6.5 if v is not None else None) if is_piano else None,
                     src if v is not None else "not measured yet"))
    if p.is_drums:
        v = num("class_accuracy")
        rows.append(_row(f"model {p.name}: drum class accuracy", v if v is not None else float("nan"), "share",
                         ">= 0.9", None if v is None else v >= 0.9, src if v is not None else "not measured yet"))
    v = num("diversity")
    if v is not None:
        rows.append(_row(f"model {p.name}: diversity across latents", v, "dB", "", None, src))
    return rows


SCALE_KEYS = list(range(28, 97, 6))
SCALE_VELS = [25, 50, 75, 100, 127]


def lmd_scale() -> list[dict]:
    """Log-mel distances between real pianos, to give `trainer eval`'s figure a scale.

    Renders FluidR3_GM programs 0 (acoustic grand), 1 (bright acoustic) and 2 (electric grand) at
    MIDI 28-96 in steps of 6 and five velocities with `python -m trainer dataset` (24 kHz, 4 s), and
    measures program 0 against: itself at the adjacent velocity layer, program 1, program 2.
    """
    import contextlib
    import io
    import shutil
    import tempfile

    import numpy as np

    from trainer.data import OneShotDataset
    from trainer.data.cli import main as dataset_main
    from trainer.data.soundfont import DEFAULT_SOUNDFONT
    from trainer.evaluate import log_mel_distance

    if shutil.which("fluidsynth") is None or not Path(DEFAULT_SOUNDFONT).exists():
        return [_row("model: log-mel distance scale", float("nan"), "dB", "", None,
                     "skipped: fluidsynth or fluid-soundfont-gm missing")]
    with tempfile.TemporaryDirectory(prefix="bench-lmd-") as tmp:
        sets = {}
        for prog in (0, 1, 2):
            out = Path(tmp) / f"p{prog}"
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                dataset_main(["--program", str(prog), "--out", str(out), "--pitches", ",".join(map(str, SCALE_KEYS)),
                              "--velocities", ",".join(map(str, SCALE_VELS)), "--quiet"])
            ds = OneShotDataset(out)
            sets[prog] = (ds, {(int(p), round(float(v) * 127)): i
                               for i, (p, v) in enumerate(zip(ds.pitches, ds.velocities, strict=True))})
        ds0, idx0 = sets[0]
        pairs = sorted(set(idx0) & set(sets[1][1]) & set(sets[2][1]))
        a = ds0.audio_batch(np.array([idx0[k] for k in pairs]))
        sr = ds0.info["sample_rate"]
        adj = []
        for p, v in pairs:
            j = SCALE_VELS.index(v)
            adj.append(idx0[(p, SCALE_VELS[j + 1] if j + 1 < len(SCALE_VELS) else SCALE_VELS[j - 1])])
        rows = []
        note = f"FluidR3_GM program 0 vs ..., {len(pairs)} notes (MIDI 28-96 step 6 x 5 velocities), mean"
        for label, b in (("adjacent velocity layer", ds0.audio_batch(np.array(adj))),
                         ("program 1 bright acoustic (same samples)",
                          sets[1][0].audio_batch(np.array([sets[1][1][k] for k in pairs]))),
                         ("program 2 electric grand",
                          sets[2][0].audio_batch(np.array([sets[2][1][k] for k in pairs])))):
            d = log_mel_distance(a, b, sr)
            rows.append(_row(f"model: log-mel distance scale, piano vs {label}", float(d.mean()), "dB", "", None,
                             note))
    return rows


def run(quick: bool = False, preset_dirs: list[str] | None = None) -> list[dict]:
    from synth.errors import UserError
    from synth.preset import REPO_PRESETS, load_preset_dir
    from trainer.evaluate import measure_speed

    dirs = [Path(d) for d in preset_dirs] if preset_dirs else [REPO_PRESETS]
    folders = sorted(f for d in dirs if d.is_dir() for f in d.iterdir() if (f / "preset.json").is_file())
    rows = []
    if not preset_dirs:
        rows.append(_row("model: shipped presets", len(folders), "presets", f">= {SHIPPED_PRESETS}",
                         len(folders) >= SHIPPED_PRESETS, ", ".join(f.name for f in folders) or "presets/ is empty"))
    for f in folders:
        try:
            p = load_preset_dir(f)
        except UserError as e:
            rows.append(_row(f"model {f.name}: loads", 0, "ok", "loads", False, str(e)))
            continue
        sp = measure_speed(p, "cpu", threads=1, repeats=3 if quick else 10)
        mb = p.generator_path.stat().st_size / 1e6
        note = f"ONNX Runtime CPU, 1 intra-op thread, median ({p.sample_rate} Hz, {p.note_samples} samples/note)"
        rows.append(_row(f"model {p.name}: ms per note", sp["ms_per_note"], "ms", "<= 20 ms",
                         sp["ms_per_note"] <= 20, note))
        rows.append(_row(f"model {p.name}: ms per 88-key batch", sp["ms_per_88"], "ms", "<= 1000 ms",
                         sp["ms_per_88"] <= 1000, note))
        rows.append(_row(f"model {p.name}: generator.onnx size", mb, "MB", "<= 10 MB", mb <= 10.0,
                         f"arch {p.training.get('arch', '?')}, {p.training.get('params', '?')} parameters"))
        rows.extend(_stored(p))
    if not quick and not preset_dirs:
        rows.extend(lmd_scale())
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--preset-dir", action="append", default=None, help="measure these folders instead of presets/")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    rows = run(a.quick, a.preset_dir)
    for r in rows:
        ok = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        print(f"{r['name']:<52} {r['value']:>10.4g} {r['unit']:<7} {r['bar']:<22} {ok:<4} {r['notes']}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
