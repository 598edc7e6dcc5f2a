"""Measure the effects bus: stereo width, level and cost of the reverb and chorus; prints JSON.

The test signal is a centred note as a voice would make it: a decaying 8-harmonic tone, identical
in left and right, held 2 s, then 2 s of silence for the tail. "Wet" is the bus's output with the
dry input silent and only the send carrying the note, i.e. the effect return alone; its width is
the Pearson correlation of its left and right channels over the whole 4 s.

    .venv/bin/python scripts/bench_fx.py [--pitches 55,110,220,440,880]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from synth.fx import GM_REVERB_SEND, EffectsBus, parse_fx  # noqa: E402

SR = 48000


def note(f0: float = 220.0, held: float = 2.0, tail: float = 2.0, peak: float = 0.3) -> np.ndarray:
    """A centred decaying harmonic tone (float32[frames, 2], L == R), then silence."""
    t = np.arange(int((held + tail) * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 9))
    env = np.exp(-t / 0.8) * np.minimum(1.0, t / 0.005) * np.clip((held - t) / 0.05, 0.0, 1.0)
    x = peak * x * env / np.abs(x * env).max()
    return np.repeat(x[:, None], 2, axis=1).astype(np.float32)


def run(bus: EffectsBus, dry: np.ndarray, sends: np.ndarray | None = None, block: int = 256) -> np.ndarray:
    """Feed `dry` (and `sends`) through `bus` in blocks; return the output realigned by the latency."""
    lat = bus.latency_samples
    dry = np.concatenate([dry, np.zeros((lat, 2), np.float32)])
    if sends is not None:
        sends = np.concatenate([sends, np.zeros((lat, sends.shape[1]), np.float32)])
    out = dry.copy()
    for i in range(0, len(out), block):
        bus.process(out[i:i + block], None if sends is None else sends[i:i + block])
    bus.close()
    return out[lat:]


def corr(y: np.ndarray) -> float:
    """Pearson correlation of the left and right channels."""
    a, b = y[:, 0].astype(np.float64), y[:, 1].astype(np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / np.sqrt((a @ a) * (b @ b)))


def rms(y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def db(a: float, b: float) -> float:
    return float(20 * np.log10(a / b))


def wet(spec: str, x: np.ndarray, reverb_send: float = GM_REVERB_SEND, chorus_send: float = 0.0) -> np.ndarray:
    """The effect return alone: dry input silent, the sends carrying the note."""
    sends = np.concatenate([reverb_send * x, chorus_send * x], axis=1).astype(np.float32)
    return run(parse_fx(spec, SR), np.zeros_like(x), sends)


def cost(spec: str, chunk: int = 64, seconds: float = 4.0) -> float:
    """CPU seconds per second of audio at `chunk`, on the test note."""
    x = note()[: int(seconds * SR)]
    bus = parse_fx(spec, SR, chunk=chunk)
    t0 = time.process_time()
    run(bus, x, block=chunk)
    return (time.process_time() - t0) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pitches", default="55,110,220,440,880")
    pitches = [float(p) for p in ap.parse_args().pitches.split(",")]
    res: dict = {"reverb_wet_lr_corr": {}, "chorus_wet_lr_corr": {}}
    for f0 in pitches:
        x = note(f0)
        res["reverb_wet_lr_corr"][f"{f0:g}"] = round(corr(wet("reverb", x)), 3)
        res["chorus_wet_lr_corr"][f"{f0:g}"] = round(corr(wet("chorus", x, 0.0, 1.0)), 3)
        res.setdefault("level_db_no_sends_by_pitch[reverb]", {})[f"{f0:g}"] = round(
            db(rms(run(parse_fx("reverb", SR), x)), rms(x)), 2)
    x = note()
    for spec in ("reverb", "chorus", "reverb,chorus"):
        y = run(parse_fx(spec, SR), x)  # sends=None: GM default sends
        res[f"level_db_no_sends[{spec}]"] = round(db(rms(y), rms(x)), 2)
        res[f"wet_to_dry_db_no_sends[{spec}]"] = round(db(rms(y - x), rms(x)), 2)
    res["reverb_wet_db_by_send"] = {str(v): round(db(max(rms(wet("reverb", x, v / 127)), 1e-12), rms(x)), 1)
                                    for v in (0, 20, 40, 64, 100, 127)}
    res["cpu_per_audio_s_chunk64"] = {s: round(cost(s), 4) for s in ("filter", "reverb", "chorus", "reverb,chorus")}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
