"""Capture bar (issue 20): `python scripts/bench_capture.py [--programs 0,4] [--seconds N] [--quick] [--json OUT]`.

Reproduces the TimGM6mb table of docs/decisions-trainer.md ("Measured on TimGM6mb"): for each
TimGM6mb program 0-7 (held out of every family), `python -m trainer capture --soundfont SF --program P
--base keys` fits a latent from 8 given notes (keys 36, 43, 50, 57, 64, 71, 78, 85, velocity 100) and
fine-tunes the generator there, in a 150-s budget, timed as a whole subprocess. Then on 12 other keys (33, 40, 46, 53, 55, 60, 62, 67, 69, 74,
81, 90, velocity 100), against the real TimGM6mb notes rendered with FluidSynth as capture renders them:
`trainer eval`'s log-mel distance of the captured preset's notes and of the family's nearest timbre
(the one capture records, nearest on the given notes). Bars: gain = nearest - captured >= 1 dB; pitch
accuracy (+-50 cents) of the captured latent at the 12 keys >= 0.95; seconds for the capture <= 180.
One row per program (value: the gain) and a summary row (mean gain, how many clear 1 dB, every pitch
accuracy and the slowest capture). `--quick`: programs 0 and 4 with a 60-s budget. A missing
fluidsynth, SoundFont or base preset gives one row saying so. `run(quick)` returns {"rows", "result"}
for `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SF2 = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
BASE = "keys"
PROGRAMS = tuple(range(8))
QUICK_PROGRAMS = (0, 4)
GIVEN = (36, 43, 50, 57, 64, 71, 78, 85)
OTHER = (33, 40, 46, 53, 55, 60, 62, 67, 69, 74, 81, 90)
VELOCITY = 100
SECONDS, QUICK_SECONDS = 150.0, 60.0
BARS = {"gain_db": 1.0, "pitch_acc": 0.95, "seconds": 180.0}


def _row(name, value, unit="", bar="", ok=None, notes=""):
    return {"name": f"capture: {name}", "value": value, "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def skip_reason(sf2: Path, base: str) -> str | None:
    """Why the bench cannot run here (no SoundFont, no fluidsynth, no base preset), else None."""
    from synth.errors import UserError
    from trainer.evaluate import resolve_preset

    if not Path(sf2).is_file():
        return f"not measured: no SoundFont at {sf2} (Debian/Ubuntu: apt-get install timgm6mb-soundfont)"
    if shutil.which("fluidsynth") is None:
        return "not measured: fluidsynth not found on PATH (apt-get install fluidsynth)"
    try:
        p = resolve_preset(base)
    except UserError as e:
        return f"not measured: base preset {base!r}: {e}"
    if not p.timbres:
        return f"not measured: base preset {base!r} has no timbres (not a family preset)"
    return None


def skip_rows(why: str) -> dict:
    return {"rows": [_row("measured", None, notes=why)], "result": None}


def capture_command(sf2: Path, program: int, out: Path, seconds: float, base: str = BASE) -> list[str]:
    """The `trainer capture` command line for one program, writing the preset `capP` under `out`."""
    return [sys.executable, "-m", "trainer", "capture", "--soundfont", str(sf2), "--program", str(program),
            "--pitches", ",".join(map(str, GIVEN)), "--velocity", str(VELOCITY), "--base", base,
            "--preset", f"cap{program}", "--out", str(out), "--seconds", f"{seconds:g}", "--force", "--quiet"]


def run_capture(sf2: Path, program: int, out: Path, seconds: float, base: str) -> tuple[float, Path, dict]:
    """Run one capture as a subprocess; (wall seconds, preset folder, its `training.capture`)."""
    t0 = time.monotonic()
    p = subprocess.run(capture_command(sf2, program, out, seconds, base), cwd=ROOT, capture_output=True,
                       text=True, timeout=seconds + 300)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"capture exited {p.returncode}: {(p.stderr or p.stdout).strip()[-400:]}")
    dest = out / f"cap{program}"
    cap = json.loads((dest / "preset.json").read_text())["training"]["capture"]
    return wall, dest, cap


def evaluate_other(base, session, z_cap: np.ndarray, z_near: np.ndarray, sf2: Path, program: int,
                   captured_session=None) -> dict:
    """Log-mel distance on the other keys (the captured preset, through its own generator when it has a
    fine-tuned one, and the base's nearest timbre) and the captured preset's pitch accuracy."""
    from trainer.capture import notes_from_soundfont
    from trainer.evaluate import log_mel_distance, pitch_accuracy

    real = notes_from_soundfont(sf2, program, 0, list(OTHER), VELOCITY, base)
    target = np.stack([n.audio for n in real])
    keys = np.asarray(OTHER, np.int64)
    v = VELOCITY / 127.0 if base.velocity_conditioned else 1.0
    vels = np.full(len(keys), v, np.float32)

    def gen(z, s=session):
        return s.generate(np.repeat(np.asarray(z, np.float32)[None], len(keys), 0), keys, vels)

    cap_audio = gen(z_cap, captured_session or session)
    sr = base.sample_rate
    return {"other_captured": float(np.mean(log_mel_distance(cap_audio, target, sr))),
            "other_nearest": float(np.mean(log_mel_distance(gen(z_near), target, sr))),
            "pitch_acc": float(pitch_accuracy(cap_audio, keys, sr)[0])}


def measure_program(sf2: Path, program: int, seconds: float, base, session, out: Path) -> dict:
    """One program's figures: capture it, then score captured and nearest latents on the other keys."""
    from synth.inference import GeneratorSession
    from synth.preset import load_preset_dir
    from trainer.data.soundfont import find_preset

    name = find_preset(sf2, program, 0).name
    wall, dest, cap = run_capture(sf2, program, out, seconds, base.name)
    captured = load_preset_dir(dest)
    z_cap = np.asarray(captured.default_latent, np.float32)
    own = GeneratorSession(captured, providers="cpu", threads=os.cpu_count() or 1, warmup=False)
    near = [t for t in base.timbres if t.name == cap["nearest_timbre"]]
    if not near:
        raise RuntimeError(f"nearest timbre {cap['nearest_timbre']!r} is not a timbre of {base.name}")
    fig = evaluate_other(base, session, z_cap, np.asarray(near[0].latent, np.float32), sf2, program, own)
    fig.update(program=program, program_name=name, nearest=cap["nearest_timbre"], seconds=round(wall, 1),
               capture_seconds=cap["seconds"], steps=cap["steps"], given_nearest=cap["log_mel_distance_nearest"],
               given_captured=cap["log_mel_distance"], finetune_steps=(cap.get("finetune") or {}).get("steps", 0))
    fig["gain"] = fig["other_nearest"] - fig["other_captured"]
    return fig


def program_row(fig: dict) -> dict:
    """A program's row: value the gain on the other keys; the other figures in the notes."""
    notes = (f"nearest {fig['nearest']}; given notes {fig['given_nearest']:.2f} -> {fig['given_captured']:.2f} dB; "
             f"other keys nearest {fig['other_nearest']:.2f} | captured {fig['other_captured']:.2f} dB; "
             f"pitch acc. {fig['pitch_acc']:.2f}; {fig['seconds']:.0f} s, {fig['steps']} generations, "
             f"{fig.get('finetune_steps', 0)} fine-tune steps")
    return _row(f"program {fig['program']} {fig['program_name']}: gain over nearest timbre, 12 other keys",
                round(fig["gain"], 3), "dB", f">= {BARS['gain_db']:g} dB", fig["gain"] >= BARS["gain_db"], notes)


def summary_row(figs: list[dict]) -> dict:
    """Mean gain, how many clear the gain bar, every pitch accuracy and the slowest capture.

    Passes when the mean gain clears the bar, every pitch accuracy does and no capture is too slow
    (not every program has to clear 1 dB: a nearest timbre that is already close leaves little to gain)."""
    if not figs:
        return _row("summary: mean gain", None, "dB", "", None, "no program measured")
    gains = [f["gain"] for f in figs]
    clear = sum(g >= BARS["gain_db"] for g in gains)
    pitch_ok = all(f["pitch_acc"] >= BARS["pitch_acc"] for f in figs)
    slowest = max(f["seconds"] for f in figs)
    mean = float(np.mean(gains))
    ok = mean >= BARS["gain_db"] and pitch_ok and slowest <= BARS["seconds"]
    notes = (f"{clear} of {len(figs)} clear {BARS['gain_db']:g} dB; mean other keys nearest "
             f"{np.mean([f['other_nearest'] for f in figs]):.2f} | captured "
             f"{np.mean([f['other_captured'] for f in figs]):.2f} dB; pitch acc. min "
             f"{min(f['pitch_acc'] for f in figs):.2f} (bar >= {BARS['pitch_acc']:g}: "
             f"{'all' if pitch_ok else 'not all'}); slowest {slowest:.0f} s (bar <= {BARS['seconds']:g} s)")
    return _row(f"summary: mean gain over {len(figs)} programs", round(mean, 3), "dB",
                f"mean >= {BARS['gain_db']:g} dB, pitch >= {BARS['pitch_acc']:g}, <= {BARS['seconds']:g} s", ok, notes)


def run(quick: bool = False, programs: list[int] | None = None, seconds: float | None = None,
        sf2: str | Path | None = None, base: str = BASE) -> dict:
    """{"rows": one per program and a summary, "result": every program's figures}."""
    sf2 = Path(sf2) if sf2 else SF2
    why = skip_reason(sf2, base)
    if why:
        return skip_rows(why)
    from synth.inference import GeneratorSession
    from trainer.evaluate import resolve_preset

    programs = list(programs if programs is not None else (QUICK_PROGRAMS if quick else PROGRAMS))
    seconds = float(seconds or (QUICK_SECONDS if quick else SECONDS))
    p = resolve_preset(base)
    session = GeneratorSession(p, providers="cpu", warmup=False)
    figs, rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench-capture-") as td:
        for prog in programs:
            try:
                fig = measure_program(sf2, prog, seconds, p, session, Path(td))
            except Exception as e:  # one program failing is a failed row, the others still run
                rows.append(_row(f"program {prog}: measured", None, "", "", False, f"{type(e).__name__}: {e}"))
                continue
            figs.append(fig)
            rows.append(program_row(fig))
    rows.append(summary_row(figs))
    return {"rows": rows, "result": {"soundfont": sf2.name, "base": base, "seconds_budget": seconds,
                                     "given_keys": list(GIVEN), "other_keys": list(OTHER), "programs": figs}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", default=None, help="TimGM6mb programs, e.g. 0,4 (default 0-7; --quick 0,4)")
    ap.add_argument("--seconds", type=float, default=None, help="capture budget (default 150; --quick 60)")
    ap.add_argument("--soundfont", default=None, help=f"default {SF2}")
    ap.add_argument("--base", default=BASE, help="family preset the capture plays (default keys)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="write the rows and every program's figures here")
    a = ap.parse_args(argv)
    progs = [int(x) for x in a.programs.split(",") if x.strip()] if a.programs else None
    got = run(a.quick, progs, a.seconds, a.soundfont, a.base)
    for r in got["rows"]:
        ok = {True: "pass", False: "FAIL", None: ""}[r["pass"]]
        v = "" if r["value"] is None else f"{r['value']:.4g}"
        print(f"{r['name']:<80} {v:>8} {r['unit']:<3} {r['bar']:<20} {ok:<4} {r['notes']}")
    if a.json:
        Path(a.json).write_text(json.dumps(got, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
