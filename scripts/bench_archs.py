"""Architecture side-by-side for `docs/benchmarks.md`, read from `docs/arch_comparison-<M>min.json`.

    python scripts/bench_archs.py

The figures come from `scripts/compare_archs.py` (each arch trained for the same number of minutes
on the GM piano with its default recipe, exported and measured with `trainer eval`), one file per
training budget. Retraining takes far longer than a benchmark run, so this area reports the stored
results with the date and command each came from, and says so when there are none. Issue 21's long
runs (`docs/long_runs.json`, written by `scripts/record_run.py`) add one row per task and budget. `run(quick)`
returns the rows for `scripts/bench.py` and a Markdown table with one column per arch and one row
per metric and budget: issue #4's side-by-side.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PATTERN = re.compile(r"arch_comparison-(\d+(?:\.\d+)?)min\.json$")
QUALITY = (  # (eval key, label, unit, bar for the default arch's piano)
    ("pitch_accuracy", "pitch accuracy", "share", ">= 0.95"),
    ("log_mel_distance", "log-mel distance to real test notes", "dB", "<= 6.5 dB"),
    ("diversity", "diversity across latents", "dB", ""),
)


def _row(name, value, unit, bar="", ok=None, notes=""):
    return {"name": name, "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def sources(docs: Path = DOCS) -> list[tuple[float, dict]]:
    """Every stored budget, shortest first: [(minutes, comparison dict)]."""
    out = []
    for p in docs.glob("arch_comparison-*min.json"):
        m = PATTERN.search(p.name)
        if m:
            out.append((float(m.group(1)), json.loads(p.read_text())))
    return sorted(out, key=lambda t: t[0])


def _fmt(v, digits=2):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown(budgets: list[tuple[float, dict]]) -> str:
    archs: list[str] = []
    for _, d in budgets:
        for r in d["results"]:
            if r["arch"] not in archs:
                archs.append(r["arch"])
    head = "| budget | metric | " + " | ".join(archs) + " |"
    lines = ["Side by side: each arch trained on the GM piano (`data/piano`) with its default recipe, exported "
             "and measured with `trainer eval --pitches 28-96` on the test split. A dash: that arch was not "
             "run at that budget.", "", head, "|" + " --- |" * (2 + len(archs))]
    for minutes, d in budgets:
        by = {r["arch"]: r for r in d["results"]}
        best = min(d["results"], key=lambda r: r["eval"].get("log_mel_distance", float("inf")))["arch"]
        lines.append(f"| {minutes:g} min | training steps | "
                     + " | ".join(_fmt(by[a]["steps"]) if a in by else "–" for a in archs) + " |")
        lines.append(f"| {minutes:g} min | adversarial weight of the recipe | "
                     + " | ".join(_fmt((by[a].get("recipe") or {}).get("adv_weight"), 1) if a in by else "–"
                                  for a in archs) + " |")
        for key, label, unit, _ in QUALITY:
            cells = []
            for a in archs:
                v = by[a]["eval"].get(key) if a in by else None
                s = _fmt(v, 3 if key == "pitch_accuracy" else 2)
                cells.append(f"**{s}**" if key == "log_mel_distance" and a == best else s)
            lines.append(f"| {minutes:g} min | {label} ({unit}) | " + " | ".join(cells) + " |")
    last = {}
    for _, d in budgets:
        for r in d["results"]:
            last[r["arch"]] = r
    for key, label in (("ms_per_note", "ms per note (CPU, 1 thread)"), ("ms_per_88", "ms per 88 keys (CPU, 1 thread)")):
        lines.append(f"| any | {label} | " + " | ".join(_fmt(last[a]["eval"].get(key), 1) for a in archs) + " |")
    lines.append("| any | generator.onnx (MB) | " + " | ".join(_fmt(last[a]["onnx_mb"], 1) for a in archs) + " |")
    lines += ["", "Where each budget came from: " + "; ".join(
        f"{m:g} min: {d['run']}, `{d['command']}`" + (f" ({d['notes']})" if d.get("notes") else "")
        for m, d in budgets) + ". Lowest log-mel distance per budget "
        "in bold."]
    return "\n".join(lines)


def long_run_rows(path: Path = DOCS / "long_runs.json") -> tuple[list[dict], str]:
    """Rows and a Markdown table for every recorded point of issue 21's long runs."""
    if not path.exists():
        return [], ""
    tasks = json.loads(path.read_text())["tasks"]
    rows, lines = [], ["| task | steps | minutes | test log-mel, default latent (dB) | over random latents (dB) "
                       "| pitch / class accuracy | best valid log-mel (dB) | bar |", "|" + " --- |" * 8]
    for name, t in tasks.items():
        for p in t["points"]:
            e = p["eval"]
            acc = e.get("pitch_accuracy", e.get("class_accuracy"))
            best = min((c[1] for c in p["curve"]), default=None)
            where = (f"{p['date']}, {p['cpu_count']} cores, {p.get('source')}, exported step {p['exported_step']}; "
                     f"eval: `{p['eval_command']}`; train: " + "; ".join(f"`{c}`" for c in t.get("commands", [])))
            rnd = e.get("log_mel_distance_random")
            rows.append(_row(f"long runs {name} @ {p['at_steps']} steps: test log-mel distance",
                             round(e["log_mel_distance"], 2), "dB", t.get("bar", ""), None,
                             f"random latents {rnd:.2f} ± {e.get('log_mel_distance_random_std', 0):.2f} dB; "
                             f"accuracy {acc:.3f}; {where}" if rnd is not None else where))
            lines.append(f"| {t.get('label', name)} | {p['at_steps']} | {_fmt(p.get('train_minutes'), 1)} | "
                         f"{e['log_mel_distance']:.2f} | {_fmt(rnd)} ± {_fmt(e.get('log_mel_distance_random_std'))} "
                         f"| {_fmt(acc, 3)} | {_fmt(best)} | {t.get('bar', '')} |")
    speed_rows, speed_lines = _speed_rows(tasks)
    return rows + speed_rows, "\n".join(["Issue 21's long runs (`docs/long_runs.json`, `scripts/record_run.py`):", "",
                                         *lines, *speed_lines])


SPEED_BARS = (("ms_per_note", "ms per note (CPU, 1 thread)", "ms", 20.0),
              ("ms_per_88", "ms per 88 keys (CPU, 1 thread)", "ms", 1000.0),
              ("onnx_mb", "generator.onnx", "MB", 10.0))


def _speed_rows(tasks: dict) -> tuple[list[dict], list[str]]:
    """Speed and size of each task's latest point that has them (`record_run.py --speed`), against the
    issue's bars; a miss says by how much."""
    rows, lines = [], ["", "Speed and size of the exported generators (each task's latest point; measured on a "
                       "quiet CPU by `scripts/record_run.py TASK RUN --data DATA --speed`):", "",
                       "| task | exported step | ms per note | ms per 88 keys | generator.onnx (MB) | measured |",
                       "|" + " --- |" * 6]
    for name, t in tasks.items():
        p = next((p for p in reversed(t["points"]) if "ms_per_note" in p["eval"] and "onnx_mb" in p), None)
        if p is None:
            continue
        vals = {**p["eval"], "onnx_mb": p["onnx_mb"]}
        for key, label, unit, bar in SPEED_BARS:
            v = vals[key]
            miss = "" if v <= bar else f"misses by {v - bar:.3g} {unit} ({v / bar:.2f}x the bar); "
            rows.append(_row(f"long runs {name}: {label}", round(v, 2), unit, f"<= {bar:g} {unit}", v <= bar,
                             f"{miss}exported step {p['exported_step']}, {p['eval'].get('speed_date', '?')}, "
                             f"{p['cpu_count']} cores; all cores, 88 keys: "
                             f"{_fmt(p['eval'].get('ms_per_88_all_cores'), 0)} ms"))
        lines.append(f"| {t.get('label', name)} | {p['exported_step']} | {vals['ms_per_note']:.1f} | "
                     f"{vals['ms_per_88']:.0f} | {vals['onnx_mb']:.1f} | {p['eval'].get('speed_date', '?')} |")
    return rows, (lines if rows else [])


def run(quick: bool = False) -> dict:
    budgets = sources()
    if not budgets:
        return {"rows": [_row("archs: side-by-side", None, "", "", False,
                              "no docs/arch_comparison-<M>min.json: run `python scripts/compare_archs.py --minutes 24`")]}
    rows = []
    for minutes, d in budgets:
        where = (f"{d['run']}, {d['machine']['cpu_count']} cores, `{d['command']}`, split test, "
                 f"MIDI {d['pitches']}")
        best = min(d["results"], key=lambda r: r["eval"].get("log_mel_distance", float("inf")))
        for r in d["results"]:
            rows.append(_row(f"archs {r['arch']} @ {minutes:g} min: training steps", r["steps"], "steps", notes=where))
        for key, label, unit, bar in QUALITY:
            for r in d["results"]:
                v = r["eval"].get(key)
                note = f"{r['eval'].get('log_mel_distance_notes', '?')} test notes" if key == "log_mel_distance" else ""
                if key == "log_mel_distance" and r is best:
                    note += "; lowest of the archs at this budget"
                rows.append(_row(f"archs {r['arch']} @ {minutes:g} min: {label}", v, unit,
                                 f"{bar} (default arch, piano, <= 60 min)" if bar else "", None, note))
    # Speed and size do not depend on the budget: one row per arch, from its longest run.
    last = {}
    for _, d in budgets:
        for r in d["results"]:
            last[r["arch"]] = r
    for key, label, unit, bar in SPEED_BARS:
        for a, r in last.items():
            v = r["onnx_mb"] if key == "onnx_mb" else r["eval"].get(key)
            ok = None if v is None else v <= bar
            rows.append(_row(f"archs {a}: {label}", v, unit, f"<= {bar:g} {unit}", ok,
                             f"misses by {v - bar:.3g} {unit} ({v / bar:.2f}x the bar); the 24-kHz piano's "
                             f"settings" if ok is False else ""))
    extra, table = long_run_rows()
    return {"rows": rows + extra, "markdown": markdown(budgets) + ("\n\n" + table if table else "")}


if __name__ == "__main__":
    got = run()
    print(got.get("markdown", ""))
    for r in got["rows"]:
        print(json.dumps(r))
    sys.exit(0)
