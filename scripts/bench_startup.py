"""Start-up on short files and live, cold and warm: what the note disk cache (`synth.diskcache`) buys.

Render: a one-minute piano chorale (`make_gm_midi.py`'s piano-chorale, 54 s, 128 notes), each run a
fresh process, wall time from process start to the written WAV:
  - FluidSynth: `fluidsynth -ni -q -F out.wav -r 48000 FluidR3_GM.sf2 chorale.mid` (its defaults);
  - `python -m synth render chorale.mid -o out.wav --preset piano --disk-cache DIR`, cold (DIR empty:
    every note generated, then written to DIR) and warm (the same DIR again: every note read back);
  - the same with `--disk-cache off` (what a render cost before the disk cache).
Runs alternate and the best of each is kept; the ratios are FluidSynth's time over ours.

Live: a fresh process builds `Engine(realtime=True, presets=[piano], disk_cache=DIR)` and times
construction → `wait_ready()` (the whole keyboard, every velocity layer, in the note cache), cold
(empty DIR) and warm. The cold process then waits for its idle-time disk writes before it exits.

`python scripts/bench_startup.py [--quick]` prints the rows as JSON; `scripts/bench.py` runs it as
the `startup` area.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_render import RATE, SF2, _preset_dir  # noqa: E402

LIVE_CODE = """
import json, sys, time
t0 = time.perf_counter()
from synth.engine import Engine
from synth.preset import find_preset
p = find_preset("piano", sys.argv[2:] or None)
t1 = time.perf_counter()
e = Engine(presets=[p], realtime=True, disk_cache=sys.argv[1])
t2 = time.perf_counter()
ok = e.wait_ready(600)
t3 = time.perf_counter()
while e.worker.disk_pending:
    time.sleep(0.02)
t4 = time.perf_counter()
print(json.dumps({"ok": ok, "import": t1 - t0, "construct": t2 - t1, "ready": t3 - t1, "stored": t4 - t1,
                  "notes": len(e.cache), "hits": e.worker.disk_hits, "generated": e.worker.generated}))
e.close()
"""


def _ours(mid: Path, wav: Path, pdir: list[str], cache: str) -> list[str]:
    return [sys.executable, "-m", "synth", "render", str(mid), "-o", str(wav), "--preset", "piano",
            "--sample-rate", str(RATE), "--no-progress", "--disk-cache", cache, *pdir]


def _timed(cmd: list[str]) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds (user + sys), stdout) of `cmd` as a fresh process."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({r.returncode}): {r.stderr.strip()[-300:]}")
    return dt, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime), r.stdout


def _live(cache: Path, pdir: list[str]) -> dict:
    r = subprocess.run([sys.executable, "-c", LIVE_CODE, str(cache), *pdir[1:2]], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"live start-up failed: {r.stderr.strip()[-300:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _row(name, value, unit, notes, bar="", ok=None) -> dict:
    return {"name": f"startup: {name}", "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def run(quick: bool = False) -> list[dict]:
    import soundfile as sf

    if shutil.which("fluidsynth") is None or not SF2.exists():
        return [_row("FluidSynth comparison", None, "", "fluidsynth or FluidR3_GM.sf2 is missing")]
    import make_gm_midi

    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as td:
        tmp = Path(td)
        pdir, pdesc = _preset_dir(tmp)
        mid = tmp / "chorale.mid"
        mf = make_gm_midi.chorale()
        mf.save(str(mid))
        n_notes = sum(1 for tr in mf.tracks for m in tr if m.type == "note_on")
        piece = f"make_gm_midi.py piano-chorale: {mf.length:.0f} s, {n_notes} notes"
        times: dict[str, list[float]] = {"fluidsynth": [], "off": [], "cold": [], "warm": []}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        prep: dict[str, list[float]] = {"off": [], "cold": [], "warm": []}
        fs_cmd = ["fluidsynth", "-ni", "-q", "-F", str(tmp / "fs.wav"), "-r", str(RATE), str(SF2), str(mid)]
        for i in range(repeats):
            cache = tmp / f"cache-{i}"
            secs, cpus, _ = _timed(fs_cmd)
            times["fluidsynth"].append(secs)
            cpu["fluidsynth"].append(cpus)
            for kind, where in (("off", "off"), ("cold", str(cache)), ("warm", str(cache))):
                secs, cpus, out = _timed(_ours(mid, tmp / f"{kind}.wav", pdir, where))
                times[kind].append(secs)
                cpu[kind].append(cpus)
                m = re.search(r"waiting for notes ([0-9.]+) s", out)
                prep[kind].append(float(m.group(1)) if m else float("nan"))
            cold_bytes = sum(p.stat().st_size for p in cache.rglob("*.note"))
        same = all(sf.read(str(tmp / f"{k}.wav"), dtype="int16")[0].tobytes()
                   == sf.read(str(tmp / "off.wav"), dtype="int16")[0].tobytes() for k in ("cold", "warm"))
        best = {k: min(v) for k, v in times.items()}
        runs = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
        rows = [
            _row("FluidSynth wall time, one-minute chorale", best["fluidsynth"], "s",
                 f"best of {repeats} ({runs(times['fluidsynth'])}); fluidsynth -ni -F out.wav -r 48000 "
                 f"FluidR3_GM.sf2 (default reverb and chorus); {piece}"),
        ]
        for kind, what in (("off", "--disk-cache off"), ("cold", "disk cache cold (empty folder)"),
                           ("warm", "disk cache warm (second run)")):
            rows.append(_row(f"neural-synth wall time, {what}", best[kind], "s",
                             f"best of {repeats} ({runs(times[kind])}); the render waited for its notes "
                             f"{min(prep[kind]):.3f} s at best; python -m synth render, process start included; "
                             f"{pdesc}"))
        for kind, bar in (("off", ""), ("cold", ""), ("warm", ">= 1x")):
            ratio = best["fluidsynth"] / best[kind]
            rows.append(_row(f"speed vs FluidSynth, {kind}", ratio, "x",
                             "FluidSynth wall time / ours, same file, same run; CPU seconds (user + sys, best): "
                             f"FluidSynth {min(cpu['fluidsynth']):.2f}, ours {min(cpu[kind]):.2f}, ratio "
                             f"{min(cpu['fluidsynth']) / min(cpu[kind]):.2f}x"
                             + ("; WAVs identical to --disk-cache off" if kind == "warm" and same else ""),
                             bar, (ratio >= 1.0) if bar else None))
        rows.append(_row("disk cache written by a cold render", cold_bytes / 2**20, "MB",
                         "the chorale's distinct notes, float32 at 48 kHz"))
        if not same:
            rows.append(_row("warm render identical to cold", None, "", "WAVs differ", "identical", False))

        live = {"cold": [], "warm": []}
        for i in range(1 if quick else 2):
            cache = tmp / f"live-{i}"
            live["cold"].append(_live(cache, pdir))
            live["warm"].append(_live(cache, pdir))
        for kind in ("cold", "warm"):
            r = min(live[kind], key=lambda d: d["ready"])
            rows.append(_row(f"live start-up, {kind}", r["ready"], "s",
                             f"Engine(realtime=True, presets=[piano]) construction to wait_ready(): {r['notes']} "
                             f"notes ({r['generated']} generated, {r['hits']} read from disk); construction "
                             f"{r['construct']:.2f} s; runs {runs([d['ready'] for d in live[kind]])}"
                             + (f"; the disk writes ended {r['stored']:.2f} s in, after ready" if kind == "cold"
                                else "")))
        c = min(d["ready"] for d in live["cold"])
        w = min(d["ready"] for d in live["warm"])
        rows.append(_row("live start-up, cold / warm", c / w, "x", "best of each"))
    return rows


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=1))
