"""The whole path on CPU: a tiny config trains a step, `python -m trainer export` rebuilds the
generator from the run folder alone, and the preset reloads and plays."""

from __future__ import annotations

import json
import shlex

import numpy as np
import onnx

from synth.inference import GeneratorSession
from synth.preset import load_preset_dir
from trainer.cli import main as trainer_main
from trainer.testing.fitdata import make_dataset

TINY = {"model": {"ddsp": {"hidden": 32, "n_harmonics": 16, "layers": 1}},
        "disc": {"ddsp": {"channels": 16, "layers": 2}}, "train": {"batch": 4}}


def test_fit_export_reload_play(tmp_path):
    data = make_dataset(tmp_path / "data")
    overlay = tmp_path / "tiny.json"
    overlay.write_text(json.dumps(TINY))
    run = tmp_path / "run"
    assert trainer_main(["fit", "--data", str(data), "--steps", "1", "--out", str(run), "--config", str(overlay),
                         "--quiet"]) == 0
    dest = tmp_path / "presets" / "tone"
    assert trainer_main(["export", str(run), "--preset", str(dest), "--description", "one step"]) == 0
    p = load_preset_dir(dest)
    assert p.description == "one step" and p.training["arch"] == "ddsp" and p.training["steps"] == 1
    assert p.training["data"]["root"] == str(data)
    assert any(c.startswith("python -m trainer export") for c in p.training["commands"])
    # The fit command resolves to the same config: non-default settings as flags, the rest in an
    # inline overlay (POSIX quoting, no process substitution), the run folder as --out.
    fit_cmd = next(c for c in p.training["commands"] if c.startswith("python -m trainer fit"))
    assert f"--data {data.resolve()} --arch ddsp" in fit_cmd and "--steps 1" in fit_cmd and "--batch 4" in fit_cmd
    assert "<(" not in fit_cmd and fit_cmd.endswith(f"--out {run}")
    args = shlex.split(fit_cmd)
    overlay = json.loads(args[args.index("--config") + 1])
    assert overlay == {"model": TINY["model"], "disc": TINY["disc"]}
    from trainer import config as C
    from trainer.fit import _cli_overlay, build_parser
    a = build_parser().parse_args(args[4:])
    cfg = json.loads((run / "config.json").read_text())
    assert C.resolve([C.load_overlay(o) for o in a.config] + [_cli_overlay(a)], cfg["data"]) == cfg
    meta = {m.key: m.value for m in onnx.load(str(dest / "generator.onnx")).metadata_props}
    assert meta["arch"] == "ddsp" and int(meta["latent_size"]) == p.latent_size
    audio = GeneratorSession(p, providers="cpu", threads=1).generate(
        np.zeros((3, p.latent_size), np.float32), np.array([48, 60, 72]), np.full(3, 0.8, np.float32))
    assert audio.shape == (3, p.note_samples) and np.isfinite(audio).all() and np.abs(audio).max() <= 1.0
    # A second export without --force is refused and leaves the first in place.
    assert trainer_main(["export", str(run), "--preset", str(dest)]) == 2
    assert load_preset_dir(dest).description == "one step"
