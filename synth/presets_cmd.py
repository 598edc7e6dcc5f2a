"""`python -m synth presets [--preset-dir DIR]`: list installed presets, one line each.

Each line: name, kind, pitch range, sample rate, note length, latent size, knobs (CC:name), key
metrics when the manifest has them, and the folder. A preset that fails to load gets a line saying
what is wrong instead of stopping the listing; the exit status is 0 either way (it is a listing).
"""

from __future__ import annotations

import math
from pathlib import Path

from synth.errors import OneLineParser, UserError

# Metrics worth a glance in a listing (names from trainer/evaluate.py METRIC_KEYS), when present.
KEY_METRICS = ("pitch_accuracy", "class_accuracy", "log_mel_distance", "diversity", "ms_per_note", "ms_per_88")



def _fmt_metric(v) -> str | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return f"{v:.3g}"


def describe(name: str, folder: Path) -> str:
    """One line for the preset in `folder` (never raises for a broken preset)."""
    from synth.preset import load_preset_dir

    try:
        p = load_preset_dir(folder)
    except UserError as e:
        return f"{name:<16} BROKEN: {e}"
    except Exception as e:  # noqa: BLE001 - a listing must survive any one bad folder
        return f"{name:<16} BROKEN: {folder}: {type(e).__name__}: {e}"
    lo, hi = p.pitch_range
    rng = f"{len(p.drum_classes)} drums" if p.is_drums else f"MIDI {lo}-{hi}"
    knobs = " ".join(f"{k.cc}:{k.name}" for k in p.knobs) or "-"
    mets = []
    for key in KEY_METRICS:
        s = _fmt_metric(p.metrics.get(key)) if isinstance(p.metrics, dict) else None
        if s is not None:
            mets.append(f"{key}={s}")
    parts = [f"{p.name:<16}", f"{p.kind:<7}", f"{rng:<12}", f"{p.sample_rate} Hz",
             f"{p.note_samples / p.sample_rate:.2f} s", f"z={p.latent_size}", f"knobs {knobs}"]
    if mets:
        parts.append(" ".join(mets))
    if p.name != name:
        parts.append(f"(manifest name {p.name!r} differs from folder name {name!r}; load it as {name!r})")
    parts.append(str(folder))
    return "  ".join(parts)


def main(argv: list[str]) -> int:
    ap = OneLineParser(prog="python -m synth presets", description="List installed presets.")
    ap.add_argument("--preset-dir", action="append", default=[], metavar="DIR",
                    help="extra folder of presets (repeatable; also SYNTH_PRESET_PATH)")
    args = ap.parse_args(argv)
    from synth.preset import available_presets, search_path

    found = available_presets(args.preset_dir)
    dirs = search_path(args.preset_dir)
    if not found:
        print("no presets installed; searched: " + ", ".join(str(d) for d in dirs))
        return 0
    for name, folder in sorted(found.items()):
        print(describe(name, folder))
    return 0
