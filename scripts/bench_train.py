"""Training benchmarks: steps/s of each arch at its default config, and the default generator's
ONNX cost (file size, ms per note, ms per 88-key batch on the CPU).

    python scripts/bench_train.py [--quick]

Steps/s are measured in-process with the real loop (`trainer.fit.main`, default config, batch 8)
on data/piano when it exists, else on a synthetic set of the same shape (24 kHz, 4 s). The ONNX
figures use an untrained default generator: its cost does not depend on the weights.
Quality (pitch accuracy, log-mel distance) is measured on trained presets by `trainer eval`.
`run(quick)` returns rows for `scripts/bench.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _row(name, value, unit, bar, ok, notes):
    return {"name": name, "value": float(value), "unit": unit, "bar": bar, "pass": ok, "notes": notes}


def _steps_per_s(data: Path, arch: str, steps: int, tmp: Path) -> float:
    """Rate of the last `steps` steps of a run of 1 + steps steps (the first one warms up).

    The loop logs `perf/steps_per_s` at its last step, timed from the start of its step loop, so
    start-up (imports, model build, resume) is not counted.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainer.fit import main

    out = tmp / f"run-{arch}"
    with contextlib.redirect_stderr(io.StringIO()):
        rc = main(["--data", str(data), "--arch", arch, "--steps", "1", "--out", str(out), "--quiet",
                   "--device", "cpu"])
        rc |= main(["--resume", str(out), "--steps", str(1 + steps), "--quiet", "--device", "cpu"])
    if rc:
        raise RuntimeError(f"trainer fit --arch {arch} failed ({rc})")
    ea = EventAccumulator(str(out / "tb"))
    ea.Reload()
    return float(ea.Scalars("perf/steps_per_s")[-1].value)


def _onnx_cost(tmp: Path) -> tuple[float, float, float]:
    import onnxruntime as ort
    import torch

    from trainer import config as C
    from trainer.models import build_generator

    cfg = C.resolve([], {"sample_rate": 24000, "note_samples": 96000, "kind": "pitched", "hold_seconds": 3.0,
                         "pitch_range": [21, 108]})
    G = build_generator(cfg).eval()
    path = tmp / "g.onnx"
    args = (torch.zeros(1, G.latent_size), torch.tensor([60]), torch.tensor([0.8]))
    dyn = {n: {0: "batch"} for n in ("z", "pitch", "velocity", "audio")}
    with contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(G, args, str(path), input_names=["z", "pitch", "velocity"], output_names=["audio"],
                          opset_version=17, dynamic_axes=dyn, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    def t(B: int, reps: int) -> float:
        feeds = {"z": np.zeros((B, G.latent_size), np.float32), "pitch": np.arange(21, 21 + B, dtype=np.int64),
                 "velocity": np.full(B, 0.8, np.float32)}
        sess.run(None, feeds)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sess.run(None, feeds)
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts) * 1e3)

    return path.stat().st_size / 1e6, t(1, 20), t(88, 5)


def run(quick: bool = False) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        size, one, keys = _onnx_cost(tmp)
        rows.append(_row("train: default ddsp generator ONNX file", size, "MB", "<= 10 MB", size <= 10,
                         "opset 17, untrained weights (size and cost do not depend on them)"))
        rows.append(_row("train: ddsp ONNX one 4-s note, 24 kHz (CPU)", one, "ms", "<= 20 ms", one <= 20,
                         "onnxruntime CPU, 2 intra-op threads, median"))
        rows.append(_row("train: ddsp ONNX 88 keys in one batch (CPU)", keys, "ms", "<= 1000 ms", keys <= 1000,
                         "onnxruntime CPU, 2 intra-op threads, median"))
        data = ROOT / "data" / "piano"
        if not (data / "manifest.json").exists():
            from trainer.testing.fitdata import make_dataset
            data = make_dataset(tmp / "synthetic", sample_rate=24000, note_samples=96000,
                                pitches=range(21, 109, 8), velocities=(64, 127))
        steps = 2 if quick else 6
        rates = {}
        for arch in ("ddsp", "spectral", "wavegan"):
            rates[arch] = _steps_per_s(data, arch, steps, tmp)
            rows.append(_row(f"train: {arch} steps/s at the default config (batch 8, CPU)", rates[arch],
                             "steps/s", "", None, f"{steps} steps on {data.name}; {os.cpu_count()} cores"))
        rows.append(_row("train: steps/s ratio ddsp / wavegan / spectral", rates["ddsp"] / rates["wavegan"], "x",
                         "", None, f"ddsp/spectral = {rates['ddsp'] / rates['spectral']:.2f}"))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(a.quick), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
