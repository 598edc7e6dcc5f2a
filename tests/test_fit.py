"""Training loop: every arch trains a few steps on tiny synthetic data; resume is exact; a 2-process
gloo DDP run keeps both ranks' weights identical; corrupt checkpoints give a clear error."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from synth.errors import UserError
from trainer import fit
from trainer.testing.fitdata import TINY_MODELS, make_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    **TINY_MODELS,
    "train": {"batch": 4, "log_every": 1, "sample_every": 3, "threads": 1},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tds") / "set", note_samples=2048)


@pytest.fixture(scope="module")
def overlay(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "tiny.json"
    p.write_text(json.dumps(TINY))
    return p


def _fit(*args) -> int:
    return fit.main([*map(str, args), "--quiet", "--device", "cpu"])


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


@pytest.mark.parametrize("arch", ["ddsp", "spectral", "wavegan"])
def test_each_arch_trains_and_reloads(arch, data, overlay, tmp_path):
    run = tmp_path / "run"
    loss = "wgan-gp" if arch == "wavegan" else "ns" if arch == "spectral" else "hinge"
    extra = []
    if arch == "ddsp":   # the reconstruction-assisted path: encoder + KL
        enc = tmp_path / "enc.json"
        enc.write_text(json.dumps({"train": {"encoder": True}}))
        extra = ["--config", enc]
    assert _fit("--data", data, "--arch", arch, "--loss", loss, "--steps", 3, "--config", overlay, *extra,
                "--out", run) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["arch"] == arch and cfg["train"]["loss"] == loss
    assert cfg["data"]["sample_rate"] == 8000 and cfg["data"]["note_samples"] == 2048
    ck = _state(run)
    assert ck["step"] == 3
    assert ("E" in ck) == (arch == "ddsp")
    assert (run / "checkpoints" / "step-0000003.pt").exists()
    assert any((run / "tb").iterdir())
    G, cfg2 = fit.load_generator(run)
    assert not G.training and cfg2 == cfg
    with torch.no_grad():
        y = G(torch.zeros(2, G.latent_size), torch.tensor([50, 60]), torch.tensor([0.5, 1.0]))
    assert y.shape == (2, 2048) and torch.isfinite(y).all()
    # the EMA differs from the raw weights after training (it is a real average, not a copy)
    assert any(not torch.equal(ck["G"][k], ck["G_ema"][k]) for k in ck["G"])


def test_drum_kit_trains_with_its_keys_tuning_in_the_config(overlay, tmp_path):
    """A drum set: the resolved config carries each key's measured peak (fitdata's tones: the key's
    note frequency, so the measurement is checked too) and the kit's noise head; the reloaded
    generator (built from the run folder alone) uses them."""
    drums = make_dataset(tmp_path / "kit", note_samples=2048, pitches=(36, 38, 42), kind="drums")
    run = tmp_path / "run"
    assert _fit("--data", drums, "--steps", 2, "--config", overlay, "--out", run) == 0
    cfg = json.loads((run / "config.json").read_text())
    hz = cfg["data"]["key_hz"]
    assert sorted(hz) == ["36", "38", "42"]
    for key, f in hz.items():
        assert abs(1200 * math.log2(f / (440.0 * 2 ** ((int(key) - 69) / 12)))) < 25, (key, f)
    assert cfg["model"]["ddsp"]["noise_decay_stages"] == 2
    G, _ = fit.load_generator(run)
    assert float(G.key_hz[38]) == pytest.approx(hz["38"])
    with torch.no_grad():
        y = G(torch.zeros(3, G.latent_size), torch.tensor([36, 38, 42]), torch.ones(3))
    assert torch.isfinite(y).all()


def test_resume_is_exact(data, overlay, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert _fit("--data", data, "--steps", 4, "--ckpt-every", 100, "--config", overlay, "--out", a) == 0
    assert _fit("--data", data, "--steps", 2, "--config", overlay, "--out", b) == 0
    assert _state(b)["step"] == 2
    with pytest.raises(UserError, match="--resume"):
        _fit("--data", data, "--steps", 4, "--config", overlay, "--out", b)
    assert _fit("--resume", b, "--steps", 4) == 0
    sa, sb = _state(a), _state(b)
    assert sa["step"] == sb["step"] == 4
    for part in ("G", "G_ema", "D"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    assert sa["data_pos"] == sb["data_pos"]
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])
    # checkpoints are pruned to the last `keep`
    assert len(list((b / "checkpoints").glob("step-*.pt"))) <= 3


def test_resume_may_change_the_threads_only(data, overlay, tmp_path):
    """Threads are where a run runs, like --device: a resume may change them, not what is trained."""
    run, before = tmp_path / "run", torch.get_num_threads()
    assert _fit("--data", data, "--steps", 1, "--config", overlay, "--out", run) == 0
    try:
        assert _fit("--resume", run, "--steps", 2, "--threads", 1) == 0
        assert torch.get_num_threads() == 1 and json.loads(_state(run)["config"])["train"]["threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="--threads"):
        _fit("--resume", run, "--steps", 3, "--config", overlay)


def test_corrupt_checkpoint_is_a_clear_error(data, overlay, tmp_path):
    run = tmp_path / "run"
    assert _fit("--data", data, "--steps", 1, "--config", overlay, "--out", run) == 0
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:200])          # truncated
    with pytest.raises(UserError, match="last.pt.*corrupt"):
        fit.load_generator(run)
    last.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="last.pt.*corrupt"):
        _fit("--resume", run, "--steps", 2)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((run / "config.json").read_text())
    with pytest.raises(UserError, match="checkpoint not found"):
        fit.load_generator(bare)
    with pytest.raises(UserError, match="config.json"):
        fit.load_generator(tmp_path / "nowhere")


def test_ddp_two_gloo_processes_keep_identical_weights(data, overlay, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "trainer", "fit", "--data", str(data), "--steps", "3", "--ckpt-every", "2",
           "--config", str(overlay), "--out", str(run), "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = _state(run)
    assert ck["step"] == 3
    prints = ck["rank_fingerprints"]
    assert len(prints) == 2 and prints[0] == prints[1]
    assert len(ck["rng"]) == 2 and len(ck["data_pos"]) == 2
    assert ck["data_pos"][0] != ck["data_pos"][1] or ck["rng"][0]["python"] != ck["rng"][1]["python"]


def test_torchrun_resume_of_a_single_process_checkpoint_gives_each_rank_its_own_stream(data, overlay, tmp_path):
    """A single-process checkpoint holds one RNG state. Resumed under torchrun, rank 0 continues it
    and the other ranks get fresh streams seeded from (seed, rank, step): distinct, and the same on
    every resume. (Every rank used to load the one state, so all drew the same noise.)"""
    run = tmp_path / "run"
    assert _fit("--data", data, "--steps", 2, "--config", overlay, "--out", run) == 0
    single = _state(run)["rng"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "trainer", "fit", "--resume", str(run), "--steps", "3", "--device", "cpu", "--quiet"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    rng = _state(run)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    # the resume itself: rank 0 takes the checkpoint's state, rank 1 a seeded one, deterministically
    assert fit._resume_rng(single, 0) is single and fit._resume_rng(single, 1) is None
    assert fit._resume_rng([single, None], 1) is None and fit._resume_rng([single, single], 1) is single
    states = []
    for rank in (1, 1, 2):
        fit._seed_rank(0, rank, 2)
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[1]) and not torch.equal(states[0], states[2])
