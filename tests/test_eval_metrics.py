"""`trainer.evaluate` metrics on signals with known answers, and `trainer eval` end to end.

The end-to-end tests build a dataset from the tiny ONNX preset's own notes, so the preset must
measure log-mel distance 0 and pitch accuracy 1 against it, and a drum kit's classifier must
recognise every generated hit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from synth.inference import GeneratorSession
from synth.preset import load_preset_dir
from synth.testing.tinymodel import make_tiny_preset
from trainer.data.format import GM_DRUMS, DatasetWriter
from trainer.evaluate import descriptors, log_mel, log_mel_distance, pitch_accuracy

SR = 16000
N = 8000


def _sine(midi: float, seconds: float = 0.5, sr: int = SR, decay: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return (0.5 * np.sin(2 * np.pi * f * t) * np.exp(-decay * t) * np.minimum(1, t / 0.003)).astype(np.float32)


def test_pitch_accuracy_on_sines():
    keys = np.array([33, 45, 57, 69, 81, 93])
    right = np.stack([_sine(k) for k in keys])
    acc, cents = pitch_accuracy(right, keys, SR)
    assert acc == 1.0
    assert np.nanmax(np.abs(cents)) < 5
    for detune in (0.7, -0.7, 12.0):        # 70 cents either way, and an octave
        wrong = np.stack([_sine(k + detune) for k in keys])
        acc, cents = pitch_accuracy(wrong, keys, SR)
        assert acc == 0.0, (detune, cents)
        assert np.allclose(cents, 100 * detune, atol=10)
    silent = np.zeros((2, N), np.float32)
    acc, cents = pitch_accuracy(silent, [60, 61], SR)
    assert acc == 0.0 and np.isnan(cents).all()


def test_log_mel_distance_known_answers():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(2 * SR).astype(np.float32) * 0.1
    tone = _sine(60, 2.0)
    assert log_mel_distance(tone, tone, SR) == 0.0
    # Loudness-normalised: a gain change measures nothing.
    assert log_mel_distance(tone, 0.25 * tone, SR) < 1e-3
    # A 6.02 dB level drop in the second half of white noise: after normalisation the first half is
    # c = 10·log10((1 + g²)/2) below and the second half 20·log10(g) − c away, so the distance is
    # the mean of the two: 3.01 dB (a few frames straddle the step).
    g = 0.5
    step = noise.copy()
    step[SR:] *= g
    c = -10 * np.log10((1 + g * g) / 2)
    want = (abs(c) + abs(20 * np.log10(g) + c)) / 2
    assert log_mel_distance(noise, step, SR) == pytest.approx(want, abs=0.15)
    # More added noise, more distance; symmetric.
    ds = [log_mel_distance(tone, tone + a * noise, SR) for a in (0.01, 0.1, 1.0)]
    assert ds[0] < ds[1] < ds[2]
    assert log_mel_distance(tone + noise, tone, SR) == pytest.approx(log_mel_distance(tone, tone + noise, SR))
    # Matched lengths: the longer note is trimmed.
    assert log_mel_distance(tone, np.concatenate([tone, noise]), SR) == 0.0
    lm = log_mel(np.stack([tone, noise]), SR)
    assert lm.shape[0] == 2 and lm.shape[2] == 80 and lm.min() >= -80.0


def test_descriptors_follow_the_sound():
    dull, bright = _sine(60, 3.0), _sine(60, 3.0) + 0.5 * _sine(96, 3.0)
    short, long = _sine(60, 3.0, decay=8.0), _sine(60, 3.0, decay=1.0)
    d = descriptors(np.stack([dull, bright, short, long]), SR)
    assert d["brightness"][1] > d["brightness"][0] + 3
    assert d["decay"][3] > 3 * d["decay"][2]
    assert d["decay"][2] == pytest.approx(np.log(10) / 8.0, abs=0.02)   # -20 dB at t = ln(10)/decay
    assert d["decay"][3] == pytest.approx(np.log(10) / 1.0, abs=0.02)


def _dataset_from_preset(preset, folder, keys, velocities):
    """A dataset of the preset's own notes at its default latent."""
    folder.mkdir()
    s = GeneratorSession(preset, providers="cpu", threads=1, warmup=False)
    w = DatasetWriter(folder, preset.sample_rate, preset.note_samples, preset.kind)
    for k in keys:
        for v in velocities:
            a = s.generate(np.asarray([preset.default_latent], np.float32), np.array([k]), np.array([v / 127]))[0]
            cls = preset.drum_classes.get(k) if preset.is_drums else None
            w.add(a, pitch=k, velocity=v, source=f"k{k}v{v}", duration=0.5, cls=cls)
    w.finalize(drum_classes={str(k): c for k, c in preset.drum_classes.items()} if preset.is_drums else None)
    return folder


def test_eval_cli_on_own_notes_and_update_preset(tmp_path, capsys):
    from trainer.cli import main

    preset = make_tiny_preset(tmp_path / "presets", name="tone", note_seconds=0.5, pitch_range=(48, 72),
                              layers=(64, 127))
    data = _dataset_from_preset(preset, tmp_path / "data", range(48, 73, 4), (64, 127))
    out, png = tmp_path / "report.json", tmp_path / "grid.png"
    rc = main(["eval", str(preset.path), "--data", str(data), "--split", "all", "--out", str(out),
               "--png", str(png), "--latents", "1", "--update-preset"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep == json.loads(out.read_text())
    assert rep["log_mel_distance"] == pytest.approx(0.0, abs=1e-6)
    assert rep["pitch_accuracy_default"] == 1.0
    assert rep["pitch_notes"] == 2 * 25
    assert rep["diversity"] > 0.1          # the tiny graph's timbre follows z
    # the steady figure: every note with each random latent (their own stream: the figures above keep theirs)
    assert rep["log_mel_distance_latents"] == 1 and len(rep["log_mel_distance_random_per_latent"]) == 1
    assert rep["log_mel_distance_random"] > 0.1 and rep["log_mel_distance_random_std"] == 0.0
    assert 0 < rep["ms_per_note"] < 1000 and rep["ms_per_88"] > 0
    assert png.stat().st_size > 5000
    p = load_preset_dir(preset.path)
    assert p.metrics["log_mel_distance"] == pytest.approx(0.0, abs=1e-4)
    assert p.metrics["eval"]["split"] == "all"
    card = (preset.path / "card.md").read_text()
    assert "| pitch accuracy" in card and "spectrograms.png" in card
    assert (preset.path / "spectrograms.png").is_file()
    # By name, through --preset-dir, against a different (octave-shifted) dataset: pitch is still
    # right but the spectra differ.
    rc = main(["eval", "tone", "--preset-dir", str(tmp_path / "presets"), "--data", str(data), "--split", "all",
               "--pitches", "60-64", "--latents", "0", "--no-speed"])
    assert rc == 0
    rep2 = json.loads(capsys.readouterr().out)
    assert rep2["pitches"] == [60, 64] and rep2["log_mel_distance_notes"] == 4
    assert "ms_per_note" not in rep2 and "log_mel_distance_random" not in rep2


def test_steady_log_mel_over_latents_leaves_the_old_figures_alone(tmp_path):
    """log_mel_distance_random: every note with each of --latents latents, mean and spread; the
    default-latent figure and those drawn before it (random pitch latents, diversity) are what they
    were without it."""
    from trainer.evaluate import evaluate

    preset = make_tiny_preset(tmp_path / "presets", name="tone", note_seconds=0.5, pitch_range=(48, 72),
                              layers=(64, 127))
    data = _dataset_from_preset(preset, tmp_path / "data", range(48, 73, 6), (64, 127))
    rep, _ = evaluate(preset, data, split="all", n_latents=3, speed=False)
    per = rep["log_mel_distance_random_per_latent"]
    assert len(per) == 3 and rep["log_mel_distance_random"] == pytest.approx(np.mean(per), abs=1e-4)
    assert rep["log_mel_distance_random_std"] == pytest.approx(np.std(per), abs=1e-4) and np.std(per) > 0
    assert rep["log_mel_distance"] == pytest.approx(0.0, abs=1e-6) and rep["log_mel_distance_random"] > 0.1
    assert 0.0 <= rep["pitch_accuracy_random_std"] <= 0.5
    import trainer.evaluate as E
    before = E._log_mel_report
    try:                                    # the report as it was: no random latents in the log-mel part
        E._log_mel_report = lambda *a, **k: before(*a[:5])
        old, _ = evaluate(preset, data, split="all", n_latents=3, speed=False)
    finally:
        E._log_mel_report = before
    for k in ("log_mel_distance", "pitch_accuracy", "pitch_accuracy_random", "diversity"):
        assert old[k] == rep[k], k


def test_eval_drums_class_accuracy(tmp_path):
    from trainer.evaluate import evaluate

    preset = make_tiny_preset(tmp_path / "presets", name="kit", kind="drums", note_seconds=0.5, layers=(100,),
                              drum_classes={36: "kick", 38: "snare", 42: "closed-hat", 49: "crash"})
    data = _dataset_from_preset(preset, tmp_path / "data", [36, 38, 42, 49], (100,))
    rep, grid = evaluate(preset, data, split="all", n_latents=1, speed=False)
    assert rep["class_accuracy_real"] == 1.0
    assert rep["class_accuracy"] >= 0.75     # random latents change the timbre; the default one is exact
    assert rep["log_mel_distance"] == pytest.approx(0.0, abs=1e-6)
    assert "pitch_accuracy" not in rep and len(grid) == 4


def test_a_lower_rate_shorter_set_is_compared_at_its_rate_and_length(tmp_path):
    """Data at a lower rate (issue 21's 16-kHz tasks) measures the preset's notes taken down to that
    rate and cut to the data's length: the preset's own notes, so handled, measure 0 and are all
    recognised. (Taking the data up to the preset's rate instead leaves its top band empty.)"""
    import soxr

    from trainer.evaluate import evaluate

    preset = make_tiny_preset(tmp_path / "presets", name="kit", kind="drums", note_seconds=0.5, layers=(100,),
                              drum_classes={36: "kick", 38: "snare", 42: "closed-hat", 49: "crash"})
    sr, low = preset.sample_rate, preset.sample_rate // 2
    n = int(0.3 * low)
    folder = tmp_path / "low"
    folder.mkdir()
    s = GeneratorSession(preset, providers="cpu", threads=1, warmup=False)
    w = DatasetWriter(folder, low, n, "drums")
    for k in (36, 38, 42, 49):
        a = s.generate(np.asarray([preset.default_latent], np.float32), np.array([k]), np.array([100 / 127]))[0]
        w.add(soxr.resample(a, sr, low).astype(np.float32)[:n], pitch=k, velocity=100, source=f"k{k}",
              duration=0.3, cls=preset.drum_classes[k])
    w.finalize(drum_classes={str(k): c for k, c in preset.drum_classes.items()})
    rep, grid = evaluate(preset, folder, split="all", n_latents=1, speed=False)
    assert rep["compared_at_hz"] == low
    assert rep["log_mel_distance"] == pytest.approx(0.0, abs=1e-3)
    assert rep["class_accuracy_default"] == 1.0 and len(grid[0][2]) == n


def test_eval_errors_name_the_problem(tmp_path):
    from synth.errors import UserError
    from trainer.evaluate import main

    preset = make_tiny_preset(tmp_path / "presets", name="tone", note_seconds=0.5, pitch_range=(48, 72))
    kit = make_tiny_preset(tmp_path / "presets", name="kit", kind="drums", note_seconds=0.5,
                           drum_classes={k: GM_DRUMS[k] for k in (36, 38)})
    data = _dataset_from_preset(kit, tmp_path / "data", [36, 38], (127,))
    with pytest.raises(UserError, match="drums dataset cannot measure"):
        main([str(preset.path), "--data", str(data), "--no-speed"])
    with pytest.raises(UserError, match="dataset folder not found"):
        main([str(preset.path), "--data", str(tmp_path / "nope"), "--no-speed"])
    with pytest.raises(UserError, match="--pitches"):
        main([str(preset.path), "--data", str(data), "--pitches", "90-80"])


def test_eval_runs_on_the_runtime_alone_without_scipy(tmp_path):
    """`trainer eval` claims onnxruntime + numpy: the whole measurement (pitch, log-mel, diversity)
    runs with scipy (a [train] extra) and torch unimportable."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    preset = make_tiny_preset(tmp_path / "presets", name="tone", note_seconds=0.5, pitch_range=(48, 72),
                              layers=(64, 127))
    data = _dataset_from_preset(preset, tmp_path / "data", range(48, 73, 8), (64, 127))
    code = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("scipy", "torch"):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from synth.preset import load_preset_dir
from trainer.evaluate import evaluate
rep, _ = evaluate(load_preset_dir({str(preset.path)!r}), {str(data)!r}, split="all", n_latents=1, speed=False)
assert rep["pitch_accuracy_default"] == 1.0 and rep["log_mel_distance"] < 1e-4, rep
print("ok")
"""
    root = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root,
                       env={**os.environ, "PYO_GUI_WX": "0"})
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_one_canonical_stft_periodic_hann_as_torch():
    """trainer.nn.stft is the STFT of eval, the export's parity check and the TensorBoard pictures:
    periodic Hann, centred frames, zero padding: torch.stft(center=True, pad_mode="constant")."""
    import torch

    from trainer import export, fit
    from trainer.nn import stft

    assert np.allclose(stft.hann(8), torch.hann_window(8, dtype=torch.float64).numpy())
    x = np.random.default_rng(0).standard_normal((2, 3000))
    ref = torch.stft(torch.from_numpy(x), 512, 128, window=torch.hann_window(512, dtype=torch.float64), center=True,
                     pad_mode="constant", return_complex=True).transpose(1, 2).numpy()
    assert np.allclose(stft.stft(x, 512, 128), ref, atol=1e-9)
    assert np.array_equal(export._stft_mag(x, 512, 128), stft.magnitude(x, 512, 128))
    assert fit._spectrogram_image(x[0].astype(np.float32)).shape[1] == 513
    from trainer.evaluate import power_spectrogram, stft_params
    n_fft, hop = stft_params(SR)
    p = power_spectrogram(x.astype(np.float32), SR)
    assert p.dtype == np.float32 and np.allclose(p, np.abs(stft.stft(x, n_fft, hop)) ** 2, rtol=1e-4, atol=1e-3)
