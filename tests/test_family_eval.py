"""A family preset's bars (`trainer eval --timbres`, trainer/family_eval.py): the kind-confusion and
knob-grid logic on constructed figures, and the whole report on a tiny family preset whose dataset
is the preset's own notes (so each timbre must measure ~0 dB to its instrument and be nearer its
own than any other kind), with --update-preset storing the figures and drawing the pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synth.errors import UserError
from synth.latent import LatentMapper
from synth.preset import load_preset_dir
from synth.testing.tinymodel import make_tiny_preset
from trainer import evaluate, family_eval
from trainer.data.format import DatasetWriter
from trainer.family_eval import instrument_kind, kind_confusion, smoothness

TIMBRES = tuple({"name": n, "source": "tiny.sf2", "bank": 0, "program": p}
                for n, p in (("grand", 0), ("rhodes", 4), ("harpsichord", 6), ("clavinet", 7)))


def test_instrument_kinds():
    assert [instrument_kind(p) for p in range(8)] == ["acoustic piano"] * 4 + ["electric piano"] * 2 + [
        "harpsichord", "clavinet"]
    assert instrument_kind(40) == "Strings" and instrument_kind(None, "piano") == "piano"


def test_smoothness_of_a_grid():
    pos = np.array([0.0, 2.0, 4.0, 6.0, 8.0])
    even = smoothness(np.abs(pos[:, None] - pos[None]))
    assert even["span_db"] == 8.0 and even["monotonic"] and even["max_step_share"] == 0.25 and even["smooth"]
    jump = np.array([0.0, 0.5, 1.0, 6.0, 8.0])          # one step is 5/8 of the whole
    j = smoothness(np.abs(jump[:, None] - jump[None]))
    assert j["monotonic"] and j["max_step_share"] == 0.625 and not j["smooth"]
    d = np.abs(pos[:, None] - pos[None])
    d[0, 3] = d[3, 0] = 1.0                                # the distance from CC 0 falls at CC 96
    back = smoothness(d)
    assert not back["monotonic"] and not back["smooth"] and back["from_first_db"] == [0, 2, 4, 1, 8]


def test_kind_confusion_compares_own_with_other_kinds_only():
    kinds = ["acoustic piano", "acoustic piano", "electric piano", "harpsichord"]
    names = ["grand", "bright", "rhodes", "harpsichord"]
    dist = np.array([[5.0, 3.0, 9.0, 8.0],     # nearer its twin (same kind: exempt) -> ok
                     [4.0, 5.0, 7.0, 6.0],
                     [6.0, 5.5, 6.5, 9.0],     # a grand is nearer than its own instrument -> confused
                     [9.0, 9.0, 9.0, np.nan]])  # own not measured -> no verdict
    rows = kind_confusion(dist, [0, 1, 2, 3], kinds, kinds, names)
    assert [r["ok"] for r in rows] == [True, True, False, None]
    assert rows[0]["nearest_other_kind"] == "harpsichord" and rows[0]["nearest_instrument"] == "bright"
    assert rows[2]["nearest_other_kind"] == "bright" and rows[2]["nearest_other_kind_db"] == 5.5


def test_morph_pairs_of_a_family_without_the_keyboards(tmp_path):
    """A family lacking programs 0, 4 and 6 (here strings and choir) still gets two morphs: its lowest
    program to its middle one, and the middle one to its highest; the keyboards keep 0->4 and 4->6."""
    ens = tuple({"name": n, "source": "tiny.sf2", "bank": 0, "program": p}
                for n, p in (("violin", 40), ("cello", 42), ("strings", 48), ("choir", 52)))
    p = make_tiny_preset(tmp_path / "a", name="ensemble", sample_rate=8000, note_seconds=0.5, timbres=ens)
    assert [(p.timbres[a].program, p.timbres[b].program) for a, b in family_eval.morph_pairs(p)] == [(40, 48), (48, 52)]
    k = make_tiny_preset(tmp_path / "b", name="keys", sample_rate=8000, note_seconds=0.5, timbres=TIMBRES)
    assert [(k.timbres[a].program, k.timbres[b].program) for a, b in family_eval.morph_pairs(k)] == [(0, 4), (4, 6)]


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """A tiny family preset and a dataset of its own notes: one instrument per timbre, 9 pitches x 2 velocities."""
    root = tmp_path_factory.mktemp("fam")
    preset = make_tiny_preset(root / "presets", name="keys", sample_rate=8000, note_seconds=0.5, timbres=TIMBRES)
    from synth.inference import GeneratorSession

    sess = GeneratorSession(preset, providers="cpu", threads=1, warmup=False)
    data = root / "data"
    data.mkdir()
    w = DatasetWriter(data, preset.sample_rate, preset.note_samples, "pitched")
    insts = []
    for i, t in enumerate(preset.timbres):
        insts.append({"id": f"tiny:0:{t.program}", "name": t.name, "source": t.source, "bank": 0,
                      "program": t.program, "gm_kind": "piano", "held_out": False})
        keys = np.repeat(np.arange(36, 85, 6), 2)
        vels = np.tile([64, 127], len(keys) // 2)
        audio = sess.generate(np.repeat(np.asarray([t.latent], np.float32), len(keys), 0), keys,
                              (vels / 127).astype(np.float32))
        for a, k, v in zip(audio, keys, vels, strict=True):
            w.add(a, pitch=int(k), velocity=int(v), source=f"{t.name}:{k}:{v}", duration=0.5, instrument_index=i,
                  soundfont=t.source, bank=0, program=t.program, preset=t.name)
    w.finalize(source={"type": "soundfonts", "seconds": 0.5, "release": 0.1}, instruments=insts)
    return preset, data


def test_family_report_on_its_own_notes(family):
    preset, data = family
    rep, strip = family_eval.family_report(preset, data, cross_notes=3, n_random=3, speed=False, quick=True)
    assert [r["name"] for r in rep["timbres"]] == [t["name"] for t in TIMBRES]
    assert rep["own_max_db"] < 0.5                              # each timbre is exactly its instrument
    assert all(r["ok"] for r in rep["timbres"]) and rep["confused"] == []
    dist = np.asarray(rep["distance_matrix_db"])
    assert dist.shape == (4, 4) and np.all(np.diag(dist) < np.delete(dist, [0, 5, 10, 15]).reshape(4, 3).min(axis=1))
    assert [k["cc"] for k in rep["knobs"]] == [74, 70]
    for s in rep["knobs"] + rep["morphs"]:
        assert len(s["from_first_db"]) == 5 and s["from_first_db"][0] == 0.0
        assert all(0.0 <= a <= 1.0 for a in s["pitch_acc"]) and len(s["level_delta_db"]) == 5
    assert [m["timbres"] for m in rep["morphs"]] == [[0, 1], [1, 2]]
    assert rep["morphs"][0]["level_delta_db"][0] == 0.0 and rep["morphs"][0]["level_delta_db"][-1] == 0.0
    assert rep["knobs"][0]["span_db"] > 0.5                      # the tiny brightness knob is heard
    assert rep["diversity_random_db"] > 0 and rep["timbre_spread_db"] > 0
    names = [r["name"] for r in rep["bars"]]
    assert "family keys: timbre to own instrument, median" in names and all(r["pass"] in (True, False, None)
                                                                             for r in rep["bars"])
    assert len(strip) == 8 and strip[0][1].shape == (preset.note_samples,)
    # amount 0 is the first timbre's point exactly, amount 127 the target's
    m = LatentMapper(preset)
    assert np.allclose(m.latent(m.with_timbre(m.default_key, 1, 2, 127)), preset.timbres[2].latent, atol=1e-6)


def test_eval_timbres_update_preset_writes_figures_and_pictures(family, tmp_path, capsys):
    preset, data = family
    out = tmp_path / "rep.json"
    assert evaluate.main([str(preset.path), "--data", str(data), "--timbres", "--no-speed", "--latents", "1",
                          "--timbre-notes", "2", "--update-preset", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    fam = load_preset_dir(preset.path).metrics["family"]
    assert fam["own_median_db"] == rep["own_median_db"] and "distance_matrix_db" not in fam
    assert fam["command"].startswith("python -m trainer eval keys --data ")   # by name, no machine path
    for f in ("timbres.png", "morph.png"):
        assert (preset.path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (preset.path / "card.md").read_text()
    assert "![timbres](timbres.png)" in card and "![morph](morph.png)" in card and "### Family figures" in card
    assert "| 0 | grand | tiny.sf2 | 0:0 | acoustic piano |" in card


def test_timbres_refuses_a_single_instrument_preset(tmp_path, family):
    _, data = family
    p = make_tiny_preset(tmp_path / "presets", sample_rate=8000, note_seconds=0.5)
    with pytest.raises(UserError, match="no timbres"):
        family_eval.family_report(p, data, speed=False, quick=True)
