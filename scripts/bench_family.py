"""Family preset bars (issue 20): `python scripts/bench_family.py [--preset keys] [--data data/keys] [--quick]`.

Measures a family preset (manifest `timbres`) with `trainer.family_eval.family_report`, the figures
`python -m trainer eval PRESET --data DIR --timbres` prints (definitions: that module's docstring):
each timbre against its own instrument's test notes (median <= 7 dB, max <= 9 dB) and nearer its own
instrument than any instrument of another kind; each knob's CC 0-127 distance at C4 (>= 6 dB),
smoothness, pitch accuracy and level on the grid CC 0/32/64/96/127; the morphs program 0 -> 4 and
4 -> 6; diversity across random latents beside the spread between the timbres; generator size and
speed. `run(quick)` returns the rows for `scripts/bench.py` and the full reports as "result"
(bench-out/family.json). By default every shipped family preset (`keys`, `ensemble`) is measured
on its recipe's dataset and pitches; `--preset`/`--data` (or $BENCH_FAMILY_PRESET /
$BENCH_FAMILY_DATA) pick one. A preset or dataset that is not there gives one row saying so. `--quick` compares fewer notes per timbre
with the other instruments and measures the knobs at fewer velocities and pitches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PRESET = "keys"
DATA = "data/keys"
PITCHES = (28, 96)        # the keys recipe's eval range (trainer/recipes/keys.json)


def _skip(name: str, why: str) -> dict:
    return {"rows": [{"name": f"family {name}: measured", "value": None, "unit": "", "bar": "", "pass": None,
                      "notes": why}]}


def families() -> list[tuple[str, str, tuple[int, int]]]:
    """(preset, dataset, eval pitches) of every shipped family preset with a recipe: `keys` first."""
    import json

    from trainer.config import recipe_section

    out = []
    for d in sorted((ROOT / "presets").iterdir(), key=lambda d: (d.name != PRESET, d.name)):
        m = d / "preset.json"
        if not m.is_file() or not json.loads(m.read_text()).get("timbres"):
            continue
        try:
            ev, ds = recipe_section(d.name, "eval"), recipe_section(d.name, "dataset")
        except Exception:      # a family preset without a recipe of its name: not benched
            continue
        lo, hi = (int(x) for x in str(ev.get("pitches", f"{PITCHES[0]}-{PITCHES[1]}")).split("-"))
        out.append((d.name, str(ds.get("out", f"data/{d.name}")), (lo, hi)))
    return out


def run(quick: bool = False, preset: str | None = None, data: str | None = None,
        pitches: tuple[int, int] | None = None) -> dict:
    """{"rows", "result"}: `preset` on `data` (or $BENCH_FAMILY_PRESET / $BENCH_FAMILY_DATA), else
    every shipped family preset on its recipe's dataset, each row naming its preset."""
    preset = preset or os.environ.get("BENCH_FAMILY_PRESET")
    if preset:
        return run_one(quick, preset, data or os.environ.get("BENCH_FAMILY_DATA") or DATA, pitches or PITCHES)
    rows, results = [], {}
    for name, ds, pr in families() or [(PRESET, DATA, PITCHES)]:
        got = run_one(quick, name, ds, pitches or pr)
        rows += [r if r["name"].startswith(f"family {name}") else {**r, "name": f"family {name}: {r['name']}"}
                 for r in got["rows"]]
        results[name] = got.get("result")
    return {"rows": rows, "result": results}


def run_one(quick: bool, preset: str, data: str, pitches: tuple[int, int]) -> dict:
    """{"rows": bar rows, "result": the report} for the family preset `preset` on dataset `data`."""
    from synth.errors import UserError
    from trainer.evaluate import resolve_preset
    from trainer.family_eval import family_report

    data = Path(data)
    if not data.is_absolute():
        data = ROOT / data
    try:
        p = resolve_preset(preset)
    except UserError as e:
        return _skip(Path(preset).name, f"not measured: {e}")
    if not p.timbres:
        return _skip(p.name, "not measured: not a family preset (no timbres)")
    if not (data / "manifest.json").is_file():
        return _skip(p.name, f"not measured: no dataset at {os.path.relpath(data, ROOT)} (build it with the "
                             f"commands in the preset's card)")
    rep, _ = family_report(p, data, pitches=pitches, cross_notes=4 if quick else 8, n_random=4 if quick else 8,
                           quick=quick)
    rep["data"] = os.path.relpath(data, ROOT)
    return {"rows": rep["bars"], "result": rep}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, help=f"preset name or folder (default {PRESET})")
    ap.add_argument("--data", default=None, help=f"its dataset folder (default {DATA})")
    ap.add_argument("--pitches", default=None, help="MIDI range LO-HI of the test notes (default: the recipe's)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the full report here")
    a = ap.parse_args(argv)
    got = run(a.quick, a.preset, a.data, tuple(int(x) for x in a.pitches.split("-")) if a.pitches else None)
    for r in got["rows"]:
        ok = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        v = "" if r["value"] is None else f"{r['value']:.4g}"
        print(f"{r['name']:<100} {v:>8} {r['unit']:<7} {r['bar']:<20} {ok:<4} {r['notes']}")
    if a.json:
        Path(a.json).write_text(json.dumps(got.get("result", got["rows"]), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
