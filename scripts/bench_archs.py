"""Architecture side-by-side rows for `docs/benchmarks.md`, read from `docs/arch_comparison.json`.

    python scripts/bench_archs.py

The figures come from `scripts/compare_archs.py` (each arch trained for the same number of minutes
on the GM piano, exported and measured with `trainer eval`); retraining takes far longer than a
benchmark run, so this area reports the stored result with the date and command it came from, and
says so when there is none. `run(quick)` returns rows for `scripts/bench.py`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "docs" / "arch_comparison.json"


def _row(name, value, unit, bar="", ok=None, notes=""):
    return {"name": name, "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def run(quick: bool = False) -> list[dict]:
    if not SRC.exists():
        return [_row("archs: side-by-side", None, "", "", False,
                     f"no {SRC.relative_to(ROOT)}: run `python scripts/compare_archs.py --minutes 15`")]
    d = json.loads(SRC.read_text())
    m = d["minutes_per_arch"]
    where = (f"{d['run']}, {d['machine']['cpu_count']} cores, `{d['command']}`, split test, "
             f"MIDI {d['pitches']}")
    rows = []
    best = min(d["results"], key=lambda r: r["eval"].get("log_mel_distance", float("inf")))

    def ev(r, k):
        return r["eval"].get(k)

    # Metric by metric, every arch next to the others.
    for r in d["results"]:
        rows.append(_row(f"archs {r['arch']}: steps in {m:g} min", r["steps"], "steps", notes=where))
    for r in d["results"]:
        pa = ev(r, "pitch_accuracy")
        rows.append(_row(f"archs {r['arch']}: pitch accuracy", pa, "share", ">= 0.95 (piano, 60 min)",
                         None, f"after {m:g} min"))
    for r in d["results"]:
        n = r["eval"].get("log_mel_distance_notes", "?")
        rows.append(_row(f"archs {r['arch']}: log-mel distance to real test notes", ev(r, "log_mel_distance"), "dB",
                         "<= 6.5 dB (piano, 60 min)", None,
                         f"after {m:g} min, {n} test notes" + ("; lowest of the archs" if r is best else "")))
    for r in d["results"]:
        rows.append(_row(f"archs {r['arch']}: diversity across latents", ev(r, "diversity"), "dB"))
    for r in d["results"]:
        v = ev(r, "ms_per_note")
        rows.append(_row(f"archs {r['arch']}: ms per note (CPU, 1 thread)", v, "ms", "<= 20 ms",
                         None if v is None else v <= 20))
    for r in d["results"]:
        v = ev(r, "ms_per_88")
        rows.append(_row(f"archs {r['arch']}: ms per 88-key batch (CPU, 1 thread)", v, "ms", "<= 1000 ms",
                         None if v is None else v <= 1000))
    for r in d["results"]:
        rows.append(_row(f"archs {r['arch']}: generator.onnx size", r["onnx_mb"], "MB", "<= 10 MB",
                         r["onnx_mb"] <= 10))
    return rows


if __name__ == "__main__":
    for r in run():
        print(json.dumps(r))
    sys.exit(0)
