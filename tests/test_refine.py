"""`python -m trainer refine`: a tiny exported preset refined on its own dataset plays its default latent
nearer to the real notes, keeps torch/ONNX parity, records what was done and how to redo it, and refuses
bad input in one line with nothing written."""

from __future__ import annotations

import json
import shlex
import shutil

import numpy as np
import pytest
import torch

from synth.preset import load_preset_dir
from trainer import commands as CM
from trainer import config as C
from trainer import finetune as ft
from trainer import refine as rf
from trainer.cli import main as trainer_main
from trainer.data.loader import OneShotDataset
from trainer.testing.fitdata import make_dataset, tiny_exported_preset


@pytest.fixture(scope="module")
def tone(tmp_path_factory):
    """A tiny ddsp preset with one knob, exported by `trainer export` from a one-step run, and its data."""
    d = tmp_path_factory.mktemp("refine")
    preset, data = tiny_exported_preset(d)
    return d, data, load_preset_dir(preset)


def _valid_loss(preset, data, level_weight=1.0) -> float:
    """The refine loss on the valid split, through ONNX Runtime (what the engine plays)."""
    from synth.inference import GeneratorSession

    ds = OneShotDataset(data, "valid")
    z = np.repeat(np.asarray(preset.default_latent, np.float32)[None], len(ds), 0)
    y = GeneratorSession(preset, providers="cpu", threads=1, warmup=False).generate(z, ds.pitches, ds.velocities)
    loss = rf._Loss(preset.sample_rate, level_weight)
    return float(loss(torch.from_numpy(y), torch.from_numpy(ds.audio_batch(np.arange(len(ds))))).mean())


def test_refine_brings_the_default_latent_nearer_and_records_itself(tone, capsys):
    d, data, base = tone
    out = d / "presets" / "tone-refined"
    before = _valid_loss(base, data)
    assert trainer_main(["refine", str(base.path), "--data", str(data), "--steps", "40", "--out", str(out),
                         "--quiet"]) == 0
    assert "refined" in capsys.readouterr().out
    p = load_preset_dir(out)
    r = p.training["refine"]
    after = _valid_loss(p, data)
    assert after < before - 0.5, (before, after)
    assert abs(after - r["valid dB after"]) < 0.05 and abs(before - r["valid dB before"]) < 0.05
    assert r["steps"] == 40 and 0 < r["kept step"] <= 40 and r["level_weight"] == 1.0
    # the graph still plays as torch does, and the weights did change
    G = ft.torch_generator(p)
    assert ft._parity(G, p) <= ft.PARITY_TOL
    old = ft.torch_generator(base).state_dict()
    assert any(not torch.equal(v, old[k]) for k, v in G.state_dict().items())
    # what it recorded: the command (appended to the export's), metrics cleared, knobs re-measured
    cmd = shlex.split(p.training["commands"][-1])
    assert cmd[:4] == ["python", "-m", "trainer", "refine"] and "--out" in cmd and "--steps" in cmd
    assert p.training["commands"][:-1] == base.training["commands"]
    assert p.metrics == {} and not (out / "spectrograms.png").exists()
    assert [k.cc for k in p.knobs] == [k.cc for k in base.knobs]
    card = (out / "card.md").read_text()
    assert "refined at the default latent" in card and cmd[-1] in card
    # the source preset is untouched
    assert load_preset_dir(base.path).training == base.training


def test_the_level_term_keeps_each_note_at_its_recorded_level(tone):
    """Without the level term the log-mel term (loudness-normalised) leaves levels free; with it, the
    mean |level error| on the valid notes does not grow."""
    d, data, base = tone
    train, valid = rf._datasets(base, data)
    z = np.asarray(base.default_latent, np.float32)

    def level_error(G) -> float:
        with torch.no_grad():
            y = G(torch.from_numpy(z)[None].expand(len(valid), -1), torch.from_numpy(valid.pitches),
                  torch.from_numpy(valid.velocities)).numpy()
        x = valid.audio_batch(np.arange(len(valid)))
        return float(np.mean(np.abs(10 * np.log10((y ** 2).mean(1) / (x ** 2).mean(1)))))

    G = ft.torch_generator(base)
    r = rf.refine(G, z, train, valid, 40, 1e-3, 8, 1.0, 10, 0)
    assert r.valid_after < r.valid_before
    assert level_error(r.G) <= level_error(G) + 0.1


def _one_line(capsys, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_bad_input_is_one_line_and_writes_nothing(tone, tmp_path, capsys):
    d, data, base = tone
    out = tmp_path / "out"
    other = make_dataset(tmp_path / "other", sample_rate=16000)
    _one_line(capsys, trainer_main(["refine", str(base.path), "--data", str(other), "--out", str(out)]),
              str(other), "16000 Hz", "8000 Hz")
    _one_line(capsys, trainer_main(["refine", str(base.path), "--data", str(data), "--steps", "0", "--out", str(out)]),
              "--steps")
    _one_line(capsys, trainer_main(["refine", str(base.path), "--data", str(data), "--lr", "-1", "--out", str(out)]),
              "--lr")
    _one_line(capsys, trainer_main(["refine", str(tmp_path), "--data", str(data)]), str(tmp_path), "preset.json")
    _one_line(capsys, trainer_main(["refine", str(base.path)]), "--data")
    _one_line(capsys, trainer_main(["refine", str(base.path), "--data", str(data), "--steps", "x"]), "--steps")
    _one_line(capsys, trainer_main(["refine", str(base.path), "--data", str(data), "--recipe", "nosuch"]), "nosuch")
    bare = tmp_path / "bare"
    shutil.copytree(base.path, bare)
    m = json.loads((bare / "preset.json").read_text())
    del m["training"]["generator_config"]
    (bare / "preset.json").write_text(json.dumps(m))
    _one_line(capsys, trainer_main(["refine", str(bare), "--data", str(data), "--out", str(out)]), "generator_config")
    assert not out.exists()
    assert json.loads((bare / "preset.json").read_text()) == m


def test_a_recipe_with_a_refine_section_refines_in_its_commands():
    piano = C.recipe_section("piano", "refine")
    assert piano and set(piano) <= set(rf.DEFAULTS)
    cmds = CM.recipe_commands("piano")
    assert cmds[3] == "python -m trainer refine presets/piano --data data/piano --recipe piano"
    assert cmds[4].startswith("python -m trainer eval presets/piano")
    assert not C.recipe_section("drums", "refine") and "refine" not in " ".join(CM.recipe_commands("drums"))
