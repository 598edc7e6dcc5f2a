"""Capture's fine-tune (`trainer.finetune`): the torch generator rebuilt from a preset alone, its loss
equal to `trainer eval`'s measure, the tuned weights written back into the base's graph, and a capture
whose tuned generator is nearer to an instrument the base never heard on keys it was not given."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf
import torch

from synth.inference import GeneratorSession
from synth.preset import load_preset_dir
from trainer import finetune as ft
from trainer.cli import main as trainer_main
from trainer.evaluate import log_mel_distance
from trainer.testing.fitdata import tiny_exported_preset

GIVEN = (48, 54, 60, 66, 72)
OTHER = (51, 57, 63, 69)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny ddsp preset, exported by `trainer export` from a one-step run."""
    return load_preset_dir(tiny_exported_preset(tmp_path_factory.mktemp("ft"), "--knobs", "0")[0])


def _play(preset, z, keys, vel=100):
    s = GeneratorSession(preset, providers="cpu", threads=1, warmup=False)
    k = np.asarray(keys, np.int64)
    v = vel / 127 if preset.velocity_conditioned else 1.0
    return s.generate(np.repeat(np.asarray(z, np.float32)[None], len(k), 0), k, np.full(len(k), v, np.float32))


def _organ(pitch: int, sr: int, n: int) -> np.ndarray:
    """An instrument the base never heard: odd partials only, no decay."""
    t = np.arange(n) / sr
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    y = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in (1, 3, 5, 7) if k * f0 < 0.45 * sr)
    return (0.2 * y * np.minimum(1.0, t / 0.01)).astype(np.float32)


def test_the_generator_is_rebuilt_from_the_preset_alone(base):
    assert base.training["generator_config"]["arch"] == "ddsp"
    G = ft.torch_generator(base)
    assert ft._parity(G, base) <= ft.PARITY_TOL
    # A preset that cannot say how to build its generator is not fine-tuned.
    assert ft.torch_generator(type(base)(**{**base.__dict__, "training": {}})) is None


def test_the_loss_is_trainer_evals_measure(base):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4000)).astype(np.float32) * np.linspace(1, 0.01, 4000, dtype=np.float32)
    b = rng.standard_normal((3, 4000)).astype(np.float32) * 0.3
    loss = ft.LogMelL1(base.sample_rate)
    got = loss(torch.from_numpy(a), loss.log_mel(torch.from_numpy(b))).numpy()
    np.testing.assert_allclose(got, log_mel_distance(a, b, base.sample_rate), atol=2e-3)


def test_tuned_weights_go_back_into_the_graph(base, tmp_path):
    G = ft.torch_generator(base)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "p"
    out.mkdir()
    for f in os.listdir(base.path):
        if f != "generator.onnx":
            os.link(base.path / f, out / f)
    ft.write_graph(base.generator_path, G, out / "generator.onnx", {"name": "p"})
    tuned = load_preset_dir(out)
    z = np.zeros(base.latent_size, np.float32)
    v = 100 / 127 if base.velocity_conditioned else 1.0
    with torch.no_grad():
        ref = G(torch.zeros(2, base.latent_size), torch.tensor([54, 66]), torch.full((2,), v)).numpy()
    got = _play(tuned, z, [54, 66])
    assert np.abs(got - ref).max() < 1e-4
    assert np.abs(got - _play(base, z, [54, 66])).max() > 1e-3


def test_capture_fine_tunes_towards_the_new_instrument(base, tmp_path, monkeypatch):
    monkeypatch.setattr(ft, "LR", 3e-3)      # the tiny one-step model moves slowly at the real rate
    notes = tmp_path / "notes"
    notes.mkdir()
    sr, n = base.sample_rate, base.note_samples
    for k in GIVEN:
        sf.write(notes / f"{k}.wav", _organ(k, sr, n), sr, subtype="FLOAT")
    rc = trainer_main(["capture", "--from-folder", str(notes), "--base", "tone", "--preset-dir", str(base.path.parent),
                       "--preset", "organ", "--out", str(tmp_path / "out"), "--seconds", "60", "--steps", "5",
                       "--finetune-seconds", "30", "--finetune-steps", "40", "--quiet"])
    assert rc == 0
    p = load_preset_dir(tmp_path / "out" / "organ")
    cap = p.training["capture"]
    assert cap["finetune"]["steps"] == 40 and p.training["generator_config"] == base.training["generator_config"]
    assert cap["log_mel_distance"] < cap["log_mel_distance_search"]
    assert p.generator_path.read_bytes() != base.generator_path.read_bytes()
    real = np.stack([_organ(k, sr, n) for k in OTHER])
    d_tuned = float(log_mel_distance(_play(p, p.default_latent, OTHER), real, sr).mean())
    d_search = float(log_mel_distance(_play(base, p.default_latent, OTHER), real, sr).mean())
    print(f"keys not given: tuned {d_tuned:.2f} dB, search alone {d_search:.2f} dB")
    assert d_tuned < d_search - 1.0, (d_tuned, d_search)
    # --finetune-seconds 0: the search alone, the base's graph
    rc = trainer_main(["capture", "--from-folder", str(notes), "--base", "tone", "--preset-dir", str(base.path.parent),
                       "--preset", "organ0", "--out", str(tmp_path / "out"), "--seconds", "20", "--steps", "3",
                       "--finetune-seconds", "0", "--quiet"])
    p0 = load_preset_dir(tmp_path / "out" / "organ0")
    assert rc == 0 and p0.training["capture"]["finetune"] is None
    assert p0.generator_path.read_bytes() == base.generator_path.read_bytes()
