"""Interleaved A/B of synth variants under issue 8's MIDI flood, on a private JACK dummy server.

    python scripts/ab_flood.py --variant head=. --variant chunk=/tmp/wt-chunk [--reps 2] [--seconds 30]

Each variant is a checkout (a `git worktree` of the commit to try); its `synth` package is imported
from there while the measurement (synth.testing.jack.run_flood, 10,000 events/s at 512 frames, then CC
120 + 123) stays this checkout's. Runs alternate variant by variant, rep by rep, so slow drift in the
machine's load falls on all of them. Prints one JSON line per run and writes them all to --json.
This machine's xrun counts vary several-fold between identical runs: compare several reps, and read
memory and callback load beside the xruns.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import latency_probe  # noqa: E402

from synth.testing.jack import knob_ccs, run_flood  # noqa: E402

KEYS = ("xruns_synth_after_1s", "xruns_jack_after_1s", "load_p99", "load_max", "rss_growth_pct",
        "rss_growth_excl_cache_pct", "silence_ms", "events", "dropped", "alive", "exit_code")


def variant_cmd(checkout: Path, preset_dir: Path, preset: str) -> list[str]:
    """`python -m synth` for the flood, importing `synth` from `checkout`."""
    base = latency_probe._cmd(preset_dir, preset, "--midi-port", "^probe:", "--cache-mb", "128")   # as soak's flood
    code = (f"import sys, runpy; sys.path.insert(0, {str(checkout)!r}); "
            "runpy.run_module('synth', run_name='__main__', alter_sys=True)")
    return [base[0], "-c", code, *base[3:]]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=CHECKOUT")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--preset", default="piano")
    ap.add_argument("--preset-dir", default=str(ROOT / "presets"))
    ap.add_argument("--json", default=None, help="write every run's figures here")
    a = ap.parse_args(argv)
    variants = []
    for v in a.variant:
        name, sep, path = v.partition("=")
        if not sep or not (Path(path) / "synth" / "__init__.py").is_file():
            print(f"ab_flood: --variant {v!r}: expected NAME=CHECKOUT with a synth/ package", file=sys.stderr)
            return 2
        variants.append((name, Path(path).resolve()))
    preset_dir = Path(a.preset_dir)
    knobs = knob_ccs(preset_dir / a.preset)
    rows = []
    for rep in range(a.reps):
        for name, checkout in variants:
            with tempfile.TemporaryDirectory() as d:
                fl = run_flood(variant_cmd(checkout, preset_dir, a.preset), Path(d), a.seconds, knobs=knobs,
                               rate=10_000, period=512)
            row = {"variant": name, "rep": rep, **{k: fl.get(k) for k in KEYS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
