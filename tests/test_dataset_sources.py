"""`python -m trainer dataset` on small data the tests make: SoundFont (real FluidSynth), sample
folder, NSynth layout, and the bad inputs of issue 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from trainer.cli import main as trainer_main
from trainer.data import OneShotDataset
from trainer.data.pitch import estimate_f0, hz_to_midi
from trainer.data.soundfont import DEFAULT_SOUNDFONT, TARGET_PEAK, read_presets

SR = 16000
# fluidsynth and fluid-soundfont-gm are system dependencies (scripts/system_deps.sh): no skip without them.


def run(*argv: str) -> int:
    return trainer_main(["dataset", "--quiet", *argv])


def tone(f0: float, sr: int, seconds: float = 1.0, channels: int = 1, level: float = 0.3) -> np.ndarray:
    """A decaying 5-harmonic tone with a 5 ms attack: float64[frames] or [frames, channels]."""
    t = np.arange(int(sr * seconds)) / sr
    x = sum(level / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 6)) * np.exp(-2 * t) * np.minimum(1, t / 0.005)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


# --- SoundFont ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def piano(tmp_path_factory):
    out = tmp_path_factory.mktemp("sf") / "piano"
    rc = run("--soundfont", DEFAULT_SOUNDFONT, "--program", "0", "--out", str(out), "--pitches", "33,45,60,69,84,96",
             "--velocities", "40,120", "--seconds", "1", "--release", "0.3", "--sample-rate", str(SR))
    assert rc == 0
    return out


def test_soundfont_render(piano, capsys):
    ds = OneShotDataset(piano)
    m = json.loads((piano / "manifest.json").read_text())
    assert len(ds) == 12 and ds.info["kind"] == "pitched" and ds.info["note_samples"] == SR
    assert ds.info["velocities"] == [40, 120] and ds.info["pitch_range"] == [33, 96]
    assert m["source"]["type"] == "soundfont" and m["source"]["preset"] == "Yamaha Grand Piano"
    assert m["source"]["render"]["reverb"] is False and m["source"]["render"]["chorus"] is False
    notes = {(n["pitch"], n["velocity"]): ds[i] for i, n in enumerate(ds.notes)}
    assert set(notes) == {(p, v) for p in (33, 45, 60, 69, 84, 96) for v in (40, 120)}
    peaks = [float(np.abs(it["audio"]).max()) for it in notes.values()]
    assert max(peaks) == pytest.approx(TARGET_PEAK, rel=1e-5)  # one set-wide gain, peak-safe
    for p in (33, 45, 60, 69, 84, 96):
        soft, loud = notes[(p, 40)]["audio"], notes[(p, 120)]["audio"]
        assert np.sqrt(np.mean(loud**2)) > 2 * np.sqrt(np.mean(soft**2))  # velocity survives
        # Leading silence trimmed: the note reaches -40 dB of its peak within the 1 ms pre-roll + 1 ms.
        a = np.abs(loud)
        assert np.argmax(a >= a.max() * 0.01) <= 0.002 * SR
        # Held for seconds - release, then released: the last 50 ms are far quieter than the start.
        assert np.sqrt(np.mean(loud[-800:] ** 2)) < 0.1 * np.sqrt(np.mean(loud[:1600] ** 2))


def test_soundfont_pitch_labels_agree_with_pyin(piano):
    """Acceptance: pYIN on rendered notes agrees with the label within 50 cents."""
    ds = OneShotDataset(piano)
    for i in range(len(ds)):
        item = ds[i]
        f0, conf = estimate_f0(item["audio"], SR)
        assert abs(hz_to_midi(f0) - item["pitch"]) * 100 < 50, (item["pitch"], f0, conf)
        assert conf > 0.5


def test_soundfont_drums(tmp_path):
    out = tmp_path / "kit"
    assert run("--drums", "--out", str(out), "--pitches", "36,38,42", "--velocities", "100", "--seconds", "0.5",
               "--release", "0.1", "--sample-rate", str(SR), "--flac") == 0
    ds = OneShotDataset(out)
    assert ds.info["kind"] == "drums"
    assert ds.info["drum_classes"] == {"36": "kick", "38": "snare", "42": "hat_closed"}
    assert sorted((ds[i]["pitch"], ds[i]["cls"]) for i in range(len(ds))) == [(36, 0), (38, 1), (42, 2)]
    assert all(n["class"] is not None for n in ds.notes)
    for i, n in enumerate(ds.notes):  # --flac: listenable copies, equal to the bank to 24-bit precision
        audio, rate = sf.read(out / n["flac"], dtype="float32")
        assert rate == SR and n["flac"].endswith(f"_{n['class']}_v100.flac")
        np.testing.assert_allclose(audio, ds[i]["audio"], atol=2**-22)


def test_soundfont_errors_write_nothing(tmp_path, capsys):
    out = tmp_path / "x"
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--program", "0", "--bank", "5", "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "no program 0 in bank 5" in err and err.count("\n") == 1
    assert run("--soundfont", str(tmp_path / "nope.sf2"), "--out", str(out)) == 2
    assert "SoundFont not found" in capsys.readouterr().err
    bogus = tmp_path / "bogus.sf2"
    bogus.write_bytes(b"RIFF\x04\x00\x00\x00sfbk" + b"\0" * 64)
    assert run("--soundfont", str(bogus), "--out", str(out)) == 2
    assert "no preset headers" in capsys.readouterr().err
    assert not out.exists() and list(tmp_path.iterdir()) == [bogus]  # no temp folders left either


def test_read_presets_lists_gm():
    presets = {(p.bank, p.program): p.name for p in read_presets(DEFAULT_SOUNDFONT)}
    assert presets[(0, 0)] == "Yamaha Grand Piano" and (128, 0) in presets


def test_existing_out_needs_force(piano, tmp_path, capsys):
    out = tmp_path / "set"
    shutil.copytree(piano, out)
    before = (out / "notes.f32").read_bytes()
    args = ("--out", str(out), "--pitches", "60", "--velocities", "100", "--seconds", "0.5", "--release", "0.1",
            "--sample-rate", str(SR))
    assert run(*args) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "notes.f32").read_bytes() == before
    assert run(*args, "--force") == 0
    assert len(OneShotDataset(out)) == 1
    assert "1 notes" in capsys.readouterr().out


# --- sample folder --------------------------------------------------------------------------------

def _write_samples(d: Path) -> None:
    d.mkdir()
    (d / "keys").mkdir()
    sf.write(d / "keys" / "piano_C4.wav", tone(261.63, 44100, channels=2), 44100)
    sf.write(d / "A#2.flac", tone(116.54, 48000), 48000)
    sf.write(d / "60.aiff", tone(261.63, 22050, level=0.05), 22050)
    sf.write(d / "Rhodes.ff.E3.wav", tone(164.81, 16000, seconds=0.5), 16000, subtype="FLOAT")
    sf.write(d / "mystery.ogg", tone(329.63, 32000), 32000)
    sf.write(d / "long.wav", tone(220.0, 16000, seconds=3.0), 16000)
    (d / "empty.wav").write_bytes(b"")
    (d / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    good = d / "A#2.flac"
    (d / "truncated.flac").write_bytes(good.read_bytes()[:40])
    sf.write(d / "silent.wav", np.zeros(16000), 16000)
    sf.write(d / "clipped.wav", np.clip(tone(200, 16000) * 5, -1, 1), 16000)
    sf.write(d / "short.wav", tone(440, 16000, seconds=0.02), 16000)
    sf.write(d / "noise.wav", np.random.default_rng(1).standard_normal(16000) * 0.1, 16000)
    (d / "readme.txt").write_text("not audio")


def test_from_folder(tmp_path, capsys):
    src, out = tmp_path / "samples", tmp_path / "ds"
    _write_samples(src)
    assert run("--from-folder", str(src), "--out", str(out), "--seconds", "1", "--sample-rate", str(SR)) == 0
    line = capsys.readouterr().out
    assert "6 notes" in line and "7 skipped" in line and "pitch 46-64" in line
    report = json.loads((out / "report.json").read_text())
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"empty.wav", "corrupt.wav", "truncated.flac", "silent.wav", "clipped.wav", "short.wav",
                            "noise.wav"}
    assert reasons["empty.wav"].startswith("empty")
    assert reasons["corrupt.wav"].startswith("unreadable") and reasons["truncated.flac"].startswith("unreadable")
    assert reasons["silent.wav"].startswith("silent") and reasons["clipped.wav"].startswith("clipped")
    assert reasons["short.wav"].startswith("too short") and reasons["noise.wav"].startswith("no pitch")
    ds = OneShotDataset(out)
    by_src = {n["source"]: (n, ds[i]) for i, n in enumerate(ds.notes)}
    assert {k: v[0]["pitch"] for k, v in by_src.items()} == {
        "keys/piano_C4.wav": 60, "A#2.flac": 46, "60.aiff": 60, "Rhodes.ff.E3.wav": 52, "mystery.ogg": 64,
        "long.wav": 57}
    assert by_src["mystery.ogg"][0]["pitch_from"] == "pYIN" and by_src["mystery.ogg"][0]["f0_confidence"] > 0.9
    assert abs(by_src["mystery.ogg"][0]["f0_hz"] - 329.63) < 1.0
    assert by_src["Rhodes.ff.E3.wav"][0]["velocity"] == 112 and by_src["A#2.flac"][1]["velocity"] == 1.0
    for note, item in by_src.values():
        a = item["audio"]
        assert a.shape == (SR,) and np.abs(a).max() <= TARGET_PEAK + 1e-6
        # Loudness-normalised: the quiet 60.aiff is brought up like the others (loudest 400 ms ~ -20 dBFS).
        w = int(0.4 * SR)
        loud = max(np.sqrt(np.mean(a[i:i + w] ** 2)) for i in range(0, SR - w, 160))
        assert -22 < 20 * np.log10(loud) < -18, note["source"]
    long = by_src["long.wav"][1]["audio"]
    assert abs(long[-1]) < 1e-3 < np.abs(long[-200:-100]).max()  # cut to 1 s with a short fade, no click
    assert by_src["long.wav"][0]["duration"] == 1.0
    assert by_src["Rhodes.ff.E3.wav"][0]["duration"] == pytest.approx(0.5, abs=0.01)


def test_from_folder_drums(tmp_path):
    src, out = tmp_path / "kit", tmp_path / "ds"
    for cls, f in (("kick", 60.0), ("snare", 200.0), ("zap", 900.0)):
        (src / cls).mkdir(parents=True)
        for i in range(2):
            sf.write(src / cls / f"{cls}_{i}.wav", tone(f * (1 + i / 10), SR, seconds=0.3), SR)
    assert run("--from-folder", str(src), "--drums", "--out", str(out), "--seconds", "0.5",
               "--sample-rate", str(SR)) == 0
    ds = OneShotDataset(out)
    assert ds.info["drum_classes"] == {"36": "kick", "38": "snare", "82": "zap"}
    assert sorted({(ds[i]["pitch"], ds[i]["cls"]) for i in range(len(ds))}) == [(36, 0), (38, 1), (82, 2)]


def test_folder_errors(tmp_path, capsys):
    empty, out = tmp_path / "empty", tmp_path / "ds"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    assert run("--from-folder", str(empty), "--out", str(out)) == 2
    assert "no WAV/FLAC/AIFF/OGG files found" in capsys.readouterr().err
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.wav").write_bytes(b"")
    sf.write(bad / "b.wav", np.zeros(1000), SR)
    assert run("--from-folder", str(bad), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "no usable notes" in err and "a.wav: empty" in err and "b.wav: silent" in err
    assert run("--from-folder", str(tmp_path / "missing"), "--out", str(out)) == 2
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]


# --- NSynth ---------------------------------------------------------------------------------------

def _nsynth_fixture(root: Path) -> None:
    (root / "audio").mkdir(parents=True)
    examples = {}
    for n, (inst, fam, srcname, fid, sid) in enumerate((("keyboard_acoustic_004", "keyboard", "acoustic", 4, 0),
                                                        ("keyboard_electronic_001", "keyboard", "electronic", 4, 1),
                                                        ("mallet_acoustic_010", "mallet", "acoustic", 6, 0))):
        for pitch in (48, 60):
            for vel in (50, 100):
                key = f"{inst}-{pitch:03d}-{vel:03d}"
                examples[key] = {"note_str": key, "pitch": pitch, "velocity": vel, "sample_rate": 16000,
                                 "instrument_str": inst, "instrument": 100 + n,
                                 "instrument_family_str": fam, "instrument_family": fid,
                                 "instrument_source_str": srcname, "instrument_source": sid,
                                 "qualities_str": ["bright"]}
                if key != "keyboard_acoustic_004-060-050":  # one listed note lacks its audio
                    sf.write(root / "audio" / f"{key}.wav",
                             tone(440 * 2 ** ((pitch - 69) / 12), 16000, level=0.4 * vel / 127, seconds=1 - n / 10),
                             16000,
                             subtype="PCM_16")
    (root / "examples.json").write_text(json.dumps(examples))


def test_nsynth(tmp_path, capsys):
    root, out = tmp_path / "nsynth-valid", tmp_path / "ds"
    _nsynth_fixture(root)
    assert run("--nsynth", str(root), "--family", "keyboard", "--source", "acoustic", "--out", str(out),
               "--seconds", "1", "--sample-rate", str(SR)) == 0
    ds = OneShotDataset(out)
    assert sorted(n["source"] for n in ds.notes) == ["keyboard_acoustic_004-048-050", "keyboard_acoustic_004-048-100",
                                                     "keyboard_acoustic_004-060-100"]
    report = json.loads((out / "report.json").read_text())
    assert report["skipped"] == [{"file": "audio/keyboard_acoustic_004-060-050.wav",
                                  "reason": "missing audio file audio/keyboard_acoustic_004-060-050.wav"}]
    items = {(n["pitch"], n["velocity"]): ds[i] for i, n in enumerate(ds.notes)}
    # Set-wide gain by default: velocity 100 stays louder than velocity 50.
    assert np.abs(items[(48, 100)]["audio"]).max() > 1.8 * np.abs(items[(48, 50)]["audio"]).max()
    assert items[(48, 100)]["velocity"] == pytest.approx(100 / 127)
    assert ds.notes[0]["family"] == "keyboard" and ds.notes[0]["nsynth_source"] == "acoustic"

    out2 = tmp_path / "ds2"
    assert run("--nsynth", str(root), "--instrument", "mallet_acoustic_010,keyboard_electronic_001",
               "--pitches", "60", "--velocities", "100", "--out", str(out2), "--seconds", "1",
               "--sample-rate", str(SR)) == 0
    assert sorted(n["source"] for n in OneShotDataset(out2).notes) == ["keyboard_electronic_001-060-100",
                                                                       "mallet_acoustic_010-060-100"]
    capsys.readouterr()
    assert run("--nsynth", str(root), "--family", "guitar", "--out", str(tmp_path / "ds3")) == 2
    err = capsys.readouterr().err
    assert "--family guitar matches no note" in err and "keyboard, mallet" in err
    (root / "examples.json").write_text("{not json")
    assert run("--nsynth", str(root), "--out", str(tmp_path / "ds3")) == 2
    assert "corrupt JSON" in capsys.readouterr().err
    assert not (tmp_path / "ds3").exists()


def test_from_folder_parallel_matches_serial(tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for k in range(18):
        sf.write(src / f"note_{48 + k}.wav", tone(440 * 2 ** ((48 + k - 69) / 12), SR, seconds=0.3), SR)
    manifests = []
    for jobs in ("1", "2"):
        out = tmp_path / f"ds{jobs}"
        assert run("--from-folder", str(src), "--out", str(out), "--seconds", "0.3", "--sample-rate", str(SR),
                   "--jobs", jobs) == 0
        manifests.append([(n["source"], n["pitch"], n["hash"]) for n in json.loads((out / "manifest.json").read_text())["notes"]])
    assert manifests[0] == manifests[1] and len(manifests[0]) == 18
    assert [p for _, p, _ in manifests[0]] == list(range(48, 66))
