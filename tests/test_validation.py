"""Validation during `trainer fit` and what depends on it: best.pt is written on improvement only,
resume carries the best-so-far exactly, `trainer export` takes best.pt (or last.pt with --last), the
run records what ended it (steps, minutes, signal, patience), and the new train keys leave config hashes alone."""

from __future__ import annotations

import json
import os
import shutil
import signal

import pytest
import torch

from trainer import config as C
from trainer import fit
from trainer.testing.fitdata import make_dataset
from trainer.validation import Tracker

TINY = {
    "model": {"ddsp": {"n_harmonics": 8, "n_noise_bands": 4, "hop": 64, "hidden": 32, "ctrl_frames": 8,
                       "ctrl_bands": 4, "noise_seconds": 0.064}},
    "disc": {"ddsp": {"channels": 16, "n_mels": 16, "layers": 2, "resolutions": [[256, 64], [128, 32]]}},
    "train": {"batch": 4, "log_every": 1, "sample_every": 1000, "threads": 1, "valid_every": 2, "valid_latents": 2},
}
REGS = {"train": {"augment": {"shift_ms": 5.0, "gain_db": 3.0, "time_mask": 0.1, "freq_mask": 0.1},
                  "r1_gamma": 1.0, "r1_every": 2, "fm_weight": 1.0, "d_start": 1}}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = make_dataset(tmp_path_factory.mktemp("vds") / "set", note_samples=2048)
    assert any(n["split"] == "valid" for n in json.loads((d / "manifest.json").read_text())["notes"])
    return d


@pytest.fixture(scope="module")
def overlays(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vcfg")
    (folder / "tiny.json").write_text(json.dumps(TINY))
    (folder / "regs.json").write_text(json.dumps(REGS))
    return [folder / "tiny.json", folder / "regs.json"]


def _fit(*args) -> int:
    return fit.main([*map(str, args), "--quiet", "--device", "cpu"])


def _cfg_args(overlays) -> list:
    return [x for o in overlays for x in ("--config", o)]


def _ck(run, name="last.pt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=True)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _straight_and_resumed(data, tmp_path, args) -> tuple[dict, dict, object]:
    """6 steps straight, and 4 then resumed to 6, with the same flags: (their last.pt, the straight run's folder)."""
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert _fit("--data", data, "--steps", 6, "--ckpt-every", 100, *args, "--out", a) == 0
    assert _fit("--data", data, "--steps", 4, *args, "--out", b) == 0
    assert _fit("--resume", b, "--steps", 6) == 0
    return _ck(a), _ck(b), a


@pytest.fixture
def scripted(monkeypatch):
    """Validator.measure returns the given log-mel figures in turn (a curve with a known best)."""
    from trainer import validation

    def install(values):
        it = iter(values)
        monkeypatch.setattr(validation.Validator, "measure",
                            lambda self, G: {"logmel_db": next(it), "logmel_db_std": 0.1, "pitch_acc": 1.0,
                                             "seconds": 0.0})
    return install


def test_tracker_keeps_the_strictly_better_evaluation_and_counts_since():
    t = Tracker("logmel_db")
    assert t.add(2, {"logmel_db": 5.0, "pitch_acc": 0.9})
    assert not t.add(4, {"logmel_db": 5.0, "pitch_acc": 0.8})          # a tie that is worse on accuracy
    assert t.add(6, {"logmel_db": 5.0, "pitch_acc": 0.95})             # a tie broken by accuracy
    assert not t.add(8, {"logmel_db": 5.5, "pitch_acc": 1.0})
    assert (t.best["step"], t.stale) == (6, 1)
    line = t.summary(8, {"logmel_db": 5.5, "logmel_db_std": 0.1, "pitch_acc": 1.0}, False)
    assert "no better validation for 1 evaluations since step 6" in line
    u = Tracker("logmel_db")
    u.load(json.loads(json.dumps(t.state())))
    assert u.best == t.best and u.history == t.history
    p = Tracker("pitch_acc")
    assert p.add(2, {"logmel_db": 5.0, "pitch_acc": 0.9}) and p.add(4, {"logmel_db": 9.0, "pitch_acc": 0.95})
    with pytest.raises(Exception, match="valid_metric"):
        Tracker("loss")


def test_best_pt_is_written_on_improvement_only_and_export_takes_it(data, overlays, tmp_path, scripted):
    scripted([5.0, 4.0, 4.5, 4.2])                                  # evaluations at steps 2, 4, 6, 7 (the end)
    run = tmp_path / "run"
    assert _fit("--data", data, "--steps", 7, *_cfg_args(overlays), "--out", run) == 0
    best, last = _ck(run, "best.pt"), _ck(run)
    assert best["step"] == 4 and best["valid"]["logmel_db"] == 4.0
    assert _same(best["G_ema"], last["best_G_ema"]) and not _same(best["G_ema"], last["G_ema"])
    doc = json.loads((run / "validation.json").read_text())
    assert [h["step"] for h in doc["history"]] == [2, 4, 6, 7] and doc["best"]["step"] == 4
    # the weights of step 4 are what a 4-step run ends with
    four = tmp_path / "four"
    assert _fit("--data", data, "--steps", 4, "--config", overlays[0], "--config", overlays[1],
                "--config", '{"train": {"valid_every": 0}}', "--out", four) == 0
    assert _same(best["G_ema"], _ck(four)["G_ema"])
    assert not (four / "checkpoints" / "best.pt").exists()
    from trainer.export import load_run
    G, _, facts, _ = load_run(run)
    assert facts["checkpoint"] == "best.pt" and facts["steps"] == 4 and facts["run_steps"] == 7
    assert facts["ended_by"] == "steps" and facts["validation"]["logmel_db"] == 4.0
    assert _same(G.state_dict(), best["G_ema"])
    G, _, facts, _ = load_run(run, "last")
    assert facts["checkpoint"] == "last.pt" and facts["steps"] == 7 and _same(G.state_dict(), last["G_ema"])
    assert load_run(four)[2]["checkpoint"] == "last.pt"               # no validation: last.pt


def test_export_cli_records_the_best_step_and_draws_the_curve(data, overlays, tmp_path, scripted):
    from synth.preset import load_preset_dir
    from trainer.cli import main

    scripted([5.0, 4.0, 4.5])
    run = tmp_path / "run"
    assert _fit("--data", data, "--steps", 5, *_cfg_args(overlays), "--out", run) == 0
    dest = tmp_path / "preset"
    assert main(["export", str(run), "--preset", str(dest), "--knobs", "0"]) == 0
    tr = load_preset_dir(dest).training
    assert (tr["steps"], tr["run_steps"], tr["checkpoint"], tr["ended_by"]) == (4, 5, "best.pt", "steps")
    assert tr["discriminator"]["r1_gamma"] == 1.0 and tr["steps_per_second"] > 0
    card = (dest / "card.md").read_text()
    assert "validation.png" in card and "The preset is step 4 (best.pt)" in card and "ended by" in card
    assert (dest / "validation.png").stat().st_size > 5000
    assert main(["export", str(run), "--preset", str(dest), "--knobs", "0", "--last", "--force"]) == 0
    tr = load_preset_dir(dest).training
    assert (tr["steps"], tr["checkpoint"]) == (5, "last.pt")


def test_resume_carries_the_best_so_far_exactly(data, overlays, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "resumed"
    assert _fit("--data", data, "--steps", 6, "--ckpt-every", 100, *_cfg_args(overlays), "--out", a) == 0
    assert _fit("--data", data, "--steps", 4, *_cfg_args(overlays), "--out", b) == 0
    saved_b4 = _ck(b)
    # a best.pt from steps the resumed run will redo (killed after its last checkpoint) is replaced
    shutil.copy(a / "checkpoints" / "best.pt", b / "checkpoints" / "best.pt")
    assert _fit("--resume", b, "--steps", 4) == 0
    assert _ck(b, "best.pt")["step"] == saved_b4["valid_state"]["best"]["step"]
    assert _same(_ck(b, "best.pt")["G_ema"], saved_b4["best_G_ema"])
    assert _fit("--resume", b, "--steps", 6) == 0
    la, lb = _ck(a), _ck(b)
    assert _same(la["G_ema"], lb["G_ema"]) and _same(la["D"], lb["D"])
    strip = [{k: v for k, v in h.items() if k not in ("seconds", "minutes")} for h in la["valid_state"]["history"]]
    assert strip == [{k: v for k, v in h.items() if k not in ("seconds", "minutes")}
                     for h in lb["valid_state"]["history"]]
    assert [h["step"] for h in la["valid_state"]["history"]] == [2, 4, 6]
    ba, bb = _ck(a, "best.pt"), _ck(b, "best.pt")
    assert ba["step"] == bb["step"] and _same(ba["G_ema"], bb["G_ema"])
    assert json.loads((b / "validation.json").read_text())["history"][-1]["step"] == 6
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(a / "tb"))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {"adv/d", "reg/r1", "fm/loss", "valid/logmel_db", "valid/pitch_acc", "perf/steps_per_s"} <= tags, tags
    assert [e.step for e in ea.Scalars("valid/logmel_db")] == [2, 4, 6]


def test_ended_by_steps_minutes_and_signal(data, overlays, tmp_path, capsys, monkeypatch):
    tiny = ["--config", overlays[0], "--config", '{"train": {"valid_every": 0}}']
    assert _fit("--data", data, "--steps", 2, *tiny, "--out", tmp_path / "s") == 0
    ck = _ck(tmp_path / "s")
    assert ck["ended_by"] == "steps" and ck["steps_per_second"] > 0
    assert "ended_by: steps: the step budget" in capsys.readouterr().err
    assert fit.main(["--data", str(data), "--steps", "1", *map(str, tiny), "--out", str(tmp_path / "v"),
                     "--device", "cpu"]) == 0
    assert "budget 1 steps or 60 minutes, whichever comes first" in capsys.readouterr().err
    assert _fit("--data", data, "--steps", 100000, "--minutes", 0.002, *tiny, "--out", tmp_path / "m") == 0
    ck = _ck(tmp_path / "m")
    assert ck["ended_by"] == "minutes" and ck["step"] < 100000
    assert "ended_by: minutes: the 0.002-minute budget, before the 100000 steps" in capsys.readouterr().err

    step = fit.Trainer.train_step

    def then_sigterm(self):
        logs = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return logs
    monkeypatch.setattr(fit.Trainer, "train_step", then_sigterm)
    assert _fit("--data", data, "--steps", 50, *tiny, "--out", tmp_path / "t") == 0
    ck = _ck(tmp_path / "t")
    assert ck["ended_by"] == "signal" and ck["step"] == 2


def test_patience_stops_at_the_nth_validation_without_a_better_figure(data, overlays, tmp_path, scripted, capsys):
    tiny = ["--config", overlays[0]]
    run = tmp_path / "p"
    scripted([6.0, 5.0, 5.5, 5.2, 4.0, 4.5, 4.6, 4.7])
    assert _fit("--data", data, "--steps", 40, "--patience", 2, *tiny, "--out", run) == 0
    ck = _ck(run)
    assert ck["ended_by"] == "patience" and ck["step"] == 8       # validations at 2, 4 (best), 6, 8
    assert _ck(run, "best.pt")["step"] == 4
    err = capsys.readouterr().err
    assert "stopping: 2 validations in a row without a better figure (train.patience 2)" in err
    assert "ended_by: patience: 2 validations without a better figure" in err
    # resume with more patience: training goes on, a better figure resets the count
    assert _fit("--resume", run, "--patience", 3) == 0
    ck = _ck(run)
    assert ck["ended_by"] == "patience" and ck["step"] == 16 and _ck(run, "best.pt")["step"] == 10
    assert json.loads((run / "config.json").read_text())["train"]["patience"] == 3
    # patience counts validations: without them it is refused, with one line and no run folder
    from synth.errors import UserError
    with pytest.raises(UserError, match="train.patience = 2"):
        _fit("--data", data, "--steps", 4, "--patience", 2, *tiny, "--config", '{"train": {"valid_every": 0}}',
             "--out", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_learning_rate_decay_halves_on_schedule_and_resumes_exactly(data, overlays, tmp_path):
    decay = ["--config", overlays[0], "--config", '{"train": {"lr_decay_start": 2, "lr_half_life": 2, "valid_every": 0}}']
    la, lb, a = _straight_and_resumed(data, tmp_path, decay)
    assert _same(la["G"], lb["G"]) and _same(la["D"], lb["D"])
    cfg = json.loads((a / "config.json").read_text())["train"]
    # the last step (index 5) ran at 0.5 ** ((5 - 2) / 2) of each base rate
    for opt, base in (("opt_G", cfg["lr_g"]), ("opt_D", cfg["lr_d"])):
        assert la[opt]["param_groups"][0]["lr"] == pytest.approx(base * 0.5 ** 1.5)
    t = fit.Trainer.__new__(fit.Trainer)
    t.lr_start, t.lr_half = 2, 2.0
    assert [t.lr_scale(s) for s in (0, 2, 4, 6)] == [1.0, 1.0, 0.5, 0.25]
    from synth.errors import UserError
    with pytest.raises(UserError, match="train.lr_half_life"):
        _fit("--data", data, "--steps", 2, "--config", overlays[0], "--config", '{"train": {"lr_half_life": -1}}',
             "--out", tmp_path / "bad")


def test_new_train_keys_at_their_off_values_keep_the_config_hash():
    facts = {"sample_rate": 24000, "note_samples": 96000, "pitch_range": [21, 108]}   # no kind layer
    base = C.resolve([], facts)
    assert all(base["train"][k] == v for k, v in C.TRAIN_ABSENT.items())      # base.json: all off
    old = {**base, "train": {k: v for k, v in base["train"].items() if k not in C.TRAIN_ABSENT}}
    assert C.config_hash(old) == C.config_hash(base)                      # a run config from before the keys
    assert C.with_absent(old) == base
    for over in ({"augment": {"gain_db": 3.0}}, {"r1_gamma": 1.0}, {"fm_weight": 2.0}, {"d_start": 100},
                 {"valid_every": 500}, {"patience": 10}, {"lr_half_life": 3000}, {"div_weight": 1.0},
                 {"spec_head_ms": 200.0}, {"mel_weight": 1.0}):
        assert C.config_hash(C.resolve([{"train": over}], facts)) != C.config_hash(base), over
    assert C.config_hash(C.resolve([{"train": {"r1_every": 16, "valid_latents": 4}}], facts)) == C.config_hash(base)


def test_a_kit_is_validated_by_class_accuracy(tmp_path):
    """Drum kits: the accuracy figure is the eval's nearest-centroid class accuracy (fitted on the
    train split's hits), and the measure does not move the training RNG."""
    from trainer.data import OneShotDataset
    from trainer.models import build_generator
    from trainer.validation import Validator

    kit = make_dataset(tmp_path / "kit", note_samples=2048, pitches=range(35, 60), kind="drums")
    ds = OneShotDataset(kit, "train")
    cfg = C.resolve([TINY], fit.data_info(ds))
    v = Validator(kit, cfg, torch.device("cpu"))
    assert v.enabled and v.clf is not None and len(v.z) == 2
    G = build_generator(cfg)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    fig = v.measure(G)
    assert torch.equal(state, torch.get_rng_state())
    assert set(fig) == {"logmel_db", "logmel_db_std", "class_acc", "diversity_db", "seconds"}
    assert 0.0 <= fig["class_acc"] <= 1.0 and fig["logmel_db"] > 0 and G.training


def test_logmel_db_is_evals_log_mel_and_the_diversity_floor_pushes_only_under_its_target():
    import numpy as np

    from trainer.evaluate import log_mel
    from trainer.nn.losses import LogMelDB, diversity_floor

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 8000)) * np.linspace(1.0, 0.01, 8000)).astype(np.float32)
    x[2] *= 1e-3                                   # loudness-normalised: the level does not matter
    lm = LogMelDB(16000)
    assert np.abs(lm(torch.from_numpy(x)).numpy() - log_mel(x, 16000)).max() < 1e-4
    a = torch.from_numpy(x[:2]).requires_grad_(True)
    near = x[1] + 1e-3 * rng.standard_normal(8000).astype(np.float32)
    b = torch.from_numpy(np.stack([x[2], near]))   # pair 0: different notes; pair 1: nearly the same
    loss, d = diversity_floor(lm(a), lm(b), target_db=1.0)
    assert d[0] > 1.0 and d[1] < 0.5 and loss.item() == pytest.approx((1.0 - d[1].item()) / 2)   # only pair 1
    loss.backward()
    assert a.grad[0].abs().max() == 0 and a.grad[1].abs().max() > 0


def test_the_diversity_floor_raises_evals_diversity_of_a_generator():
    """Steps on the floor alone move a tiny generator's latents apart, as `trainer eval` measures them."""
    from trainer.evaluate import pairwise_distance
    from trainer.models import build_generator
    from trainer.nn.losses import LogMelDB, diversity_floor

    cfg = C.resolve([TINY], {"sample_rate": 16000, "note_samples": 2048, "kind": "pitched", "pitch_range": [48, 72]})
    torch.manual_seed(0)
    G = build_generator(cfg)
    lm = LogMelDB(16000)
    Z = cfg["model"]["ddsp"]["latent_size"]
    p, v = torch.full((4,), 60), torch.full((4,), 0.6)
    zs = torch.randn(6, Z)

    def diversity() -> float:
        with torch.no_grad():
            return pairwise_distance(G(zs, torch.full((6,), 60), torch.full((6,), 0.6)).numpy(), 16000)

    before = diversity()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    for _ in range(30):
        loss, d = diversity_floor(lm(G(torch.randn(4, Z), p, v)), lm(G(torch.randn(4, Z), p, v)), before + 3.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert diversity() > before + 1.0


def test_diversity_floor_trains_logs_and_resumes_exactly(data, overlays, tmp_path):
    div = ["--config", overlays[0], "--config", '{"train": {"div_weight": 1.0, "div_target_db": 50.0}}']
    la, lb, a = _straight_and_resumed(data, tmp_path, div)
    assert _same(la["G"], lb["G"]) and _same(la["D"], lb["D"])
    assert all(h["diversity_db"] > 0 for h in la["valid_state"]["history"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(a / "tb"))
    ea.Reload()
    assert {"div/db", "div/floor", "valid/diversity_db"} <= set(ea.Tags()["scalars"])
    # an off floor draws nothing: the run is the run without the key
    c, d = tmp_path / "off", tmp_path / "absent"
    assert _fit("--data", data, "--steps", 3, "--config", overlays[0], "--config", '{"train": {"div_target_db": 9.0}}',
                "--out", c) == 0
    assert _fit("--data", data, "--steps", 3, "--config", overlays[0], "--out", d) == 0
    assert _same(_ck(c)["G"], _ck(d)["G"])


def test_the_attack_term_changes_the_gradient_and_refuses_a_negative_length(data, overlays, tmp_path):
    """train.spec_head_ms adds the paired term over the note's first milliseconds: the same steps train
    other weights than without it (and the same as with it at 0, off); train.mel_weight changes them
    again; a negative length or weight is refused."""
    runs = {}
    for name, extra in (("head", '{"train": {"spec_head_ms": 50.0}}'), ("off", '{"train": {"spec_head_ms": 0.0}}')):
        runs[name] = tmp_path / name
        assert _fit("--data", data, "--steps", 3, "--config", overlays[0], "--config", extra, "--out", runs[name]) == 0
    assert _fit("--data", data, "--steps", 3, "--config", overlays[0], "--out", tmp_path / "absent") == 0
    assert not _same(_ck(runs["head"])["G"], _ck(runs["off"])["G"])
    assert _same(_ck(runs["off"])["G"], _ck(tmp_path / "absent")["G"])
    mel = tmp_path / "mel"
    assert _fit("--data", data, "--steps", 3, "--config", overlays[0], "--config",
                '{"train": {"spec_head_ms": 50.0, "mel_weight": 1.0}}', "--out", mel) == 0
    assert not _same(_ck(mel)["G"], _ck(runs["head"])["G"])
    from synth.errors import UserError
    with pytest.raises(UserError, match="train.mel_weight = -1"):
        _fit("--data", data, "--steps", 3, "--config", overlays[0], "--config", '{"train": {"mel_weight": -1}}',
             "--out", tmp_path / "badmel")
    with pytest.raises(UserError, match="train.spec_head_ms = -5"):
        _fit("--data", data, "--steps", 3, "--config", overlays[0], "--config", '{"train": {"spec_head_ms": -5}}',
             "--out", tmp_path / "bad")
