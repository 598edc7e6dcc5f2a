"""Run every benchmark and regenerate the table: `python scripts/bench.py --out bench-out --table docs/benchmarks.md`.

Each `scripts/bench_<area>.py` exposes `run(quick: bool = False) -> list[dict]`, each dict
{"name", "value", "unit", "bar", "pass" (bool or None), "notes"}. Every area runs in its own
Python process (a crash, a hang or a heavy import in one cannot disturb the others' timings);
a failing area becomes a row saying so. Results go to OUT/results.json (an area's full measurement,
when it returns one, to OUT/<area>.json), and the Markdown table,
with the machine and the date, to --table. `--only render,engine` re-runs some areas and keeps the
others' last results from OUT/results.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FIELDS = ("name", "value", "unit", "bar", "pass", "notes")


def areas() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def _load(area: str):
    path = HERE / f"bench_{area}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{area}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(HERE))
    spec.loader.exec_module(mod)
    return mod


def _clean_row(r, area: str) -> dict:
    """Coerce one row to the schema; a malformed row becomes a failed row that says why."""
    if not isinstance(r, dict) or "name" not in r:
        return {"name": f"{area}: malformed row", "value": None, "unit": "", "bar": "", "pass": False,
                "notes": repr(r)[:200]}
    out = {k: r.get(k) for k in FIELDS}
    v = out["value"]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        out["value"] = None if v is None or isinstance(v, (int, float)) else str(v)
    for k in ("unit", "bar", "notes"):
        out[k] = "" if out[k] is None else str(out[k])
    if out["pass"] not in (True, False, None):
        out["pass"] = bool(out["pass"])
    return out


def run_one(area: str, quick: bool) -> dict:
    """In the child process: import the module, call run(quick), return clean rows.

    run() returns a list of row dicts, or {"rows": [...], "markdown": "..."} when the area also has a
    summary table (the arch side-by-side) to print above its rows, and optionally "result": the
    area's full measurement (JSON-ready), which goes to OUT/<area>.json (the level area's sweep)."""
    got = _load(area).run(quick=quick)
    rows, md = (got.get("rows"), got.get("markdown", "")) if isinstance(got, dict) else (got, "")
    if not isinstance(rows, list):
        raise TypeError(f"run() returned {type(got).__name__}, expected a list of dicts")
    extra = {"result": got["result"]} if isinstance(got, dict) and got.get("result") is not None else {}
    return {"rows": [_clean_row(r, area) for r in rows], "markdown": str(md or ""), **extra}


def run_area(area: str, quick: bool, timeout: float) -> dict:
    """Run one area in a child process; never raises."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"bench-{area}-") as td:
        res = Path(td) / "rows.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", area, "--_result", str(res)]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ, PYO_GUI_WX="0")
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            err = None if p.returncode == 0 else _last_line(p.stderr) or f"exit status {p.returncode}"
            log = p.stderr
        except subprocess.TimeoutExpired as e:
            err, log = f"timed out after {timeout:.0f} s", (e.stderr or b"").decode(errors="replace") \
                if isinstance(e.stderr, bytes) else (e.stderr or "")
        rows, md, full = [], "", None
        if res.exists():
            try:
                got = json.loads(res.read_text())
                rows, md, full = got["rows"], got.get("markdown", ""), got.get("result")
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                err = err or f"unreadable result file ({e})"
    secs = time.perf_counter() - t0
    if err is not None or not rows:
        rows = rows + [{"name": f"{area}: benchmark failed", "value": None, "unit": "", "bar": "", "pass": False,
                        "notes": err or "no rows returned"}]
    out = {"rows": rows, "markdown": md, "seconds": round(secs, 2), "error": err, "log_tail": (log or "")[-4000:]}
    return out if full is None else {**out, "result": full}


def _last_line(text: str) -> str:
    lines = [ln for ln in (text or "").strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            kb = int(next(ln for ln in f if ln.startswith("MemTotal")).split()[1])
        info["memory_gb"] = round(kb / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        pass
    try:
        load = os.getloadavg()
        info["loadavg_1m"] = round(load[0], 2)
    except OSError:
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = "; ".join(ln.strip() for ln in out.stdout.strip().splitlines())
    except (OSError, subprocess.TimeoutExpired):
        pass
    info.setdefault("gpu", "none")
    for mod in ("numpy", "onnxruntime", "torch"):
        try:
            out = subprocess.run([sys.executable, "-c", f"import {mod}; print({mod}.__version__)"],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                info[mod] = out.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    try:
        out = subprocess.run(["fluidsynth", "--version"], capture_output=True, text=True, timeout=20)
        info["fluidsynth"] = out.stdout.split("\n", 1)[0].replace("FluidSynth runtime version", "").strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def _fmt_value(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e12):
        return str(int(v))
    a = abs(v)
    return f"{v:.3g}" if a < 1e-3 or a >= 1e5 else (f"{v:.3f}" if a < 10 else f"{v:.1f}")


def _cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def render_table(results: dict) -> str:
    m = results["machine"]
    lines = ["# Benchmarks", "",
             f"Generated by `{results['command']}` on {results['date']} "
             f"({'quick' if results.get('quick') else 'full'} run). Do not edit by hand: re-run the command.", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in m.items()), ""]
    n_pass = n_fail = 0
    for area, res in sorted(results["areas"].items()):
        lines += [f"## {area}", "", f"`scripts/bench_{area}.py`, {res['seconds']} s"
                  + (f", run {res['date']}" if res.get("date") else "") + ".", ""]
        if res.get("markdown"):
            lines += [res["markdown"].rstrip(), ""]
        lines += ["| name | value | unit | bar | pass | notes |", "| --- | ---: | --- | --- | :---: | --- |"]
        for r in res["rows"]:
            ok = {True: "yes", False: "**NO**", None: ""}[r.get("pass")]
            n_pass += r.get("pass") is True
            n_fail += r.get("pass") is False
            lines.append("| " + " | ".join(_cell(x) for x in (r["name"], _fmt_value(r.get("value")), r.get("unit", ""),
                                                               r.get("bar", ""), ok, r.get("notes", ""))) + " |")
        lines.append("")
    lines.insert(6, f"Bars met: {n_pass}; missed: {n_fail}.")
    lines.insert(7, "")
    return "\n".join(lines).rstrip() + "\n"


def splice_table(old: str, results: dict) -> str:
    """`old` (a table `render_table` wrote) with the sections of the areas in `results` replaced or added,
    in area order, and the bars counted again over every section: for runs of a few areas (`--only`)."""
    def sections(text: str) -> tuple[list[str], dict[str, str]]:
        parts = text.split("\n## ")
        return parts[0].splitlines(), {p.split("\n", 1)[0].strip(): "## " + p.rstrip() + "\n" for p in parts[1:]}

    new_head, new = sections(render_table(results))
    old_head, have = sections(old)
    have.update(new)
    body = "\n".join(have[a] for a in sorted(have))
    cells = [ln.split(" | ")[4] for ln in body.splitlines() if ln.startswith("| ") and ln.count(" | ") >= 5]
    head = [ln for ln in new_head if not ln.startswith("Bars met:")]
    head[2] = head[2].replace("Do not edit by hand", "Other sections kept from earlier runs; do not edit by hand")
    head.insert(6, f"Bars met: {cells.count('yes')}; missed: {cells.count('**NO**')}.")
    return "\n".join(head).rstrip() + "\n\n" + body


def _atomic_write(path: Path, text: str) -> None:
    sys.path.insert(0, str(ROOT))
    from synth.fsutil import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Run scripts/bench_*.py and write results + a Markdown table.")
    ap.add_argument("--out", default="bench-out", help="folder for results.json (default bench-out)")
    ap.add_argument("--table", default=None, help="Markdown file to regenerate, e.g. docs/benchmarks.md")
    ap.add_argument("--quick", action="store_true", help="smaller inputs, fewer repeats (a smoke run)")
    ap.add_argument("--only", default=None, help=f"comma list of areas (available: {', '.join(areas())})")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per area before it counts as failed")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._child:
        got = run_one(args._child, args.quick)
        Path(args._result).write_text(json.dumps(got, indent=1))
        return 0

    # Byte-code for the package, as an installed one has (pip compiles on install): start-up rows
    # would otherwise count compiling the sources, every run, where PYTHONDONTWRITEBYTECODE is set.
    import compileall
    compileall.compile_dir(str(ROOT / "synth"), quiet=1)
    todo = areas()
    if args.only:
        want = [a.strip() for a in args.only.split(",") if a.strip()]
        unknown = [a for a in want if a not in todo]
        if unknown:
            print(f"bench: unknown area(s) {', '.join(unknown)}; available: {', '.join(todo)}", file=sys.stderr)
            return 2
        todo = want
    out = Path(args.out)
    prev = {}
    if args.only and (out / "results.json").exists():
        try:
            prev = json.loads((out / "results.json").read_text()).get("areas", {})
        except (json.JSONDecodeError, OSError):
            prev = {}
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    results = {"date": now, "quick": args.quick,
               "command": "python scripts/bench.py" + (" --quick" if args.quick else "")
               + (f" --only {args.only}" if args.only else ""),
               "machine": machine_info(), "areas": dict(prev)}
    for area in todo:
        print(f"bench: {area} ...", file=sys.stderr, flush=True)
        res = run_area(area, args.quick, args.timeout)
        res["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        full = res.pop("result", None)
        if full is not None:
            _atomic_write(out / f"{area}.json", json.dumps(full, indent=1) + "\n")
        results["areas"][area] = res
        for r in res["rows"]:
            mark = {True: "ok  ", False: "FAIL", None: "    "}[r.get("pass")]
            print(f"  {mark} {r['name']}: {_fmt_value(r.get('value'))} {r.get('unit', '')} "
                  f"{('(bar ' + r['bar'] + ')') if r.get('bar') else ''}", file=sys.stderr, flush=True)
    _atomic_write(out / "results.json", json.dumps(results, indent=1) + "\n")
    if args.table:
        table = Path(args.table)
        keep = args.only and table.exists()
        _atomic_write(table, splice_table(table.read_text(), results) if keep else render_table(results))
    print(f"bench: wrote {out / 'results.json'}" + (f" and {args.table}" if args.table else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
