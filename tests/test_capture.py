"""`python -m trainer capture`: a tiny family preset as the base, notes it generated itself at a known
latent point; the capture must find a latent that beats the nearest timbre on pitches it was not
given, write a preset the synth loads, and refuse bad input in one line with nothing written."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf

from synth.inference import GeneratorSession
from synth.latent import LatentMapper
from synth.preset import load_preset_dir, manifest_dict
from synth.testing.tinymodel import make_tiny_preset
from trainer.cli import main as trainer_main
from trainer.evaluate import log_mel_distance

SR = 16000
GIVEN = (36, 43, 50, 57, 64, 71, 78, 85)
OTHER = (40, 47, 53, 60, 67, 74, 81)
TIMBRES = tuple({"name": f"t{i}", "source": "tiny.sf2", "bank": 0, "program": i} for i in range(4))
NAMES = {36: "C2.wav", 43: "43.wav", 50: "tiny_050_100.wav", 57: "A3.flac", 64: "kb-064-100.wav",
         71: "B4_v100.wav", 78: "78.wav", 85: "unnamed.wav"}


def _brightness_dir(base) -> np.ndarray:
    return np.asarray(base.knobs[0].direction, np.float32)   # the tiny graph's only audible direction


def _family_base(parent):
    """A tiny family whose 4 timbres sit at -3, -2, 2 and 3 along the audible axis (plus inaudible
    offsets), so a sound at 0 (an even mix of the two partials) is none of them."""
    base = make_tiny_preset(parent, name="fam", timbres=TIMBRES)
    w = _brightness_dir(base)
    rng = np.random.default_rng(5)
    m = manifest_dict(base)
    for t, c in zip(m["timbres"], (-3.0, -2.0, 2.0, 3.0), strict=True):
        off = rng.standard_normal(len(w))
        off -= np.dot(off, w) * w
        t["latent"] = (c * w + off).tolist()
    (base.path / "preset.json").write_text(json.dumps(m, indent=1))
    return load_preset_dir(base.path)


def _generate(base, z, keys, vel=100):
    s = GeneratorSession(base, providers="cpu", threads=1, warmup=False)
    k = np.asarray(keys, np.int64)
    return s.generate(np.repeat(np.asarray(z, np.float32)[None], len(k), 0), k, np.full(len(k), vel / 127, np.float32))


@pytest.fixture
def family(tmp_path):
    base = _family_base(tmp_path / "presets")
    z = np.zeros(base.latent_size, np.float32)
    notes = tmp_path / "notes"
    notes.mkdir()
    for key, audio in zip(GIVEN, _generate(base, z, GIVEN), strict=True):
        sf.write(notes / NAMES[key], audio, SR, subtype="FLOAT" if NAMES[key].endswith(".wav") else "PCM_24")
    return base, z, notes


def _capture(tmp_path, notes, *extra, base="fam"):
    return trainer_main(["capture", "--from-folder", str(notes), "--base", base, "--preset-dir",
                         str(tmp_path / "presets"), "--preset", "mine", "--out", str(tmp_path / "out"),
                         "--seconds", "20", "--steps", "20", "--quiet", *extra])


def test_capture_beats_the_nearest_timbre_on_pitches_it_was_not_given(family, tmp_path, monkeypatch):
    base, z_true, notes = family
    monkeypatch.chdir(tmp_path)
    assert _capture(tmp_path, notes) == 0
    p = load_preset_dir(tmp_path / "out" / "mine")
    cap = p.training["capture"]
    assert p.name == "mine" and not p.timbres and p.pitch_range == base.pitch_range
    assert os.path.samefile(p.generator_path, base.generator_path) or \
        p.generator_path.read_bytes() == base.generator_path.read_bytes()
    assert {n["pitch"] for n in cap["notes"]} == set(GIVEN)
    assert {n["pitch_from"] for n in cap["notes"] if n["note"] == "unnamed.wav"} == {"pYIN"}
    assert cap["base"] == "fam" and len(cap["base_generator_sha256"]) == 64
    assert cap["steps"] > 0 and 0 < cap["seconds"] < 30 and 0 <= cap["pitch_accuracy"] <= 1
    assert "/" + "tmp" not in cap["command"] and str(tmp_path) not in json.dumps(p.training)
    assert cap["command"].startswith("python -m trainer capture --from-folder notes ")
    # the knobs at their default CCs play the fitted latent
    m = LatentMapper(p)
    assert np.allclose(m.latent(m.default_key), p.default_latent, atol=1e-5)
    # held-out pitches: the capture against the nearest timbre, by trainer eval's measure
    real = _generate(base, z_true, OTHER)
    nearest = next(t for t in base.timbres if t.name == cap["nearest_timbre"])
    d_cap = float(log_mel_distance(real, _generate(base, p.default_latent, OTHER), SR).mean())
    d_near = float(log_mel_distance(real, _generate(base, nearest.latent, OTHER), SR).mean())
    print(f"held-out log-mel: capture {d_cap:.2f} dB, nearest timbre {d_near:.2f} dB, {cap['steps']} steps")
    assert d_cap < d_near - 1.0, (d_cap, d_near)
    assert (tmp_path / "out" / "mine" / "card.md").read_text().startswith("# mine")
    # an existing preset stays unless --force
    before = (tmp_path / "out" / "mine" / "preset.json").read_bytes()
    assert _capture(tmp_path, notes) == 2
    assert (tmp_path / "out" / "mine" / "preset.json").read_bytes() == before
    assert _capture(tmp_path, notes, "--force", "--steps", "2") == 0
    assert load_preset_dir(tmp_path / "out" / "mine").training["capture"]["steps"] <= 2


def test_a_single_instrument_base_starts_from_its_default(tmp_path):
    base = make_tiny_preset(tmp_path / "presets", name="solo")
    z = 2.0 * _brightness_dir(base)
    notes = tmp_path / "notes"
    notes.mkdir()
    for key, audio in zip(GIVEN[:4], _generate(base, z, GIVEN[:4]), strict=True):
        sf.write(notes / f"{key}.wav", audio, SR, subtype="FLOAT")
    assert _capture(tmp_path, notes, "--steps", "15", base="solo") == 0
    cap = load_preset_dir(tmp_path / "out" / "mine").training["capture"]
    assert cap["nearest_timbre"] == "solo (default)"
    assert cap["log_mel_distance"] < cap["log_mel_distance_nearest"] - 1.0


def _one_line_error(capsys, rc, *words):
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_bad_input_is_one_line_and_writes_nothing(family, tmp_path, capsys):
    base, z, notes = family
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no audio here")
    _one_line_error(capsys, _capture(tmp_path, empty), "no WAV/FLAC")
    one = tmp_path / "one"
    one.mkdir()
    sf.write(one / "C4.wav", _generate(base, z, [60])[0], SR)
    _one_line_error(capsys, _capture(tmp_path, one), "at least 2")
    noise = tmp_path / "noise"
    noise.mkdir()
    sf.write(noise / "C4.wav", _generate(base, z, [60])[0], SR)
    sf.write(noise / "hiss.wav", (np.random.default_rng(0).standard_normal(SR) * 0.1).astype(np.float32), SR)
    _one_line_error(capsys, _capture(tmp_path, noise), "hiss.wav", "no pitch")
    _one_line_error(capsys, _capture(tmp_path, notes, base="nosuch"), "unknown preset 'nosuch'")
    make_tiny_preset(tmp_path / "presets", name="kit", kind="drums")
    _one_line_error(capsys, _capture(tmp_path, notes, base="kit"), "drum kit")
    _one_line_error(capsys, _capture(tmp_path, tmp_path / "missing"), "folder not found")
    _one_line_error(capsys, _capture(tmp_path, notes, "--program", "3"), "--program belongs with --soundfont")
    _one_line_error(capsys, _capture(tmp_path, notes, "--finetune-seconds", "15"), "--finetune-seconds 15")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failed_write_leaves_no_preset_and_no_temporaries(family, tmp_path, monkeypatch, capsys):
    base, z, notes = family
    from trainer import card

    def broken(folder):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card, "write_card", broken)
    _one_line_error(capsys, _capture(tmp_path, notes, "--steps", "1"), "No space left", "nothing was written")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_the_search_measures_as_trainer_eval_does():
    from trainer import capture, evaluate

    rng = np.random.default_rng(1)
    x = (rng.standard_normal((20, 12000)) * np.exp(-np.arange(12000) / 3000)).astype(np.float32)
    assert np.abs(capture.log_mel(x, SR) - evaluate.log_mel(x, SR)).max() < 1e-3
