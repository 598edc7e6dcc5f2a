"""Tiny synthetic one-shot datasets for the trainer tests (decaying harmonic tones, no SoundFont)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.format import DatasetWriter


def tone(pitch: int, velocity: int, sample_rate: int, note_samples: int, hold: float) -> np.ndarray:
    """float32[note_samples]: a struck-string-like tone (1/k partials, faster decay up high, release)."""
    t = np.arange(note_samples) / sample_rate
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    y = np.zeros(note_samples)
    for k in range(1, 9):
        if k * f0 < 0.45 * sample_rate:
            y += np.sin(2 * np.pi * k * f0 * t) / k * np.exp(-t * (3.0 + k))
    y *= np.minimum(1.0, t / 0.003) * np.exp(-40.0 * np.maximum(0.0, t - hold))
    return (0.3 * velocity / 127 * y / np.abs(y).max()).astype(np.float32)


def make_dataset(folder: Path, sample_rate: int = 8000, note_samples: int = 4096,
                 pitches=range(48, 73, 3), velocities=(64, 127), kind: str = "pitched") -> Path:
    """Write a dataset folder with one note per (pitch, velocity); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = note_samples / sample_rate
    w = DatasetWriter(folder, sample_rate, note_samples, kind)
    for p in pitches:
        for v in velocities:
            w.add(tone(p, v, sample_rate, note_samples, 0.75 * seconds), pitch=p, velocity=v,
                  source=f"synthetic:{p}:{v}", duration=seconds,
                  cls=f"drum{p}" if kind == "drums" else None)
    drum = {str(p): f"drum{p}" for p in pitches} if kind == "drums" else None
    w.finalize(source={"type": "synthetic", "seconds": seconds, "release": 0.25 * seconds}, drum_classes=drum)
    return folder


# A config overlay that makes every arch tiny (seconds per step on a CPU), for tests of the trainer.
TINY_MODELS = {
    "model": {"ddsp": {"n_harmonics": 8, "n_noise_bands": 4, "hop": 64, "hidden": 32, "ctrl_frames": 8,
                       "ctrl_bands": 4, "noise_seconds": 0.064},
              "spectral": {"n_fft": 256, "hop": 64, "n_mels": 32, "channels": 8, "blocks": 3, "latent_size": 8},
              "wavegan": {"model_size": 4, "latent_size": 8}},
    "disc": {"ddsp": {"channels": 16, "n_mels": 16, "layers": 2, "resolutions": [[256, 64], [128, 32]]},
             "spectral": {"channels": 4, "blocks": 2}, "wavegan": {"model_size": 4}},
}


TINY_DDSP = {"model": {"ddsp": {"hidden": 32, "n_harmonics": 16, "layers": 1}},
             "disc": {"ddsp": {"channels": 16, "layers": 2}}, "train": {"batch": 4}}


def tiny_exported_preset(folder: Path, *export_args: str) -> tuple[Path, Path]:
    """A tiny ddsp preset `folder/presets/tone`, exported by `trainer export` (with `export_args`) from a
    one-step run on `make_dataset(folder/data)`; returns (the preset folder, the dataset folder)."""
    import json

    from trainer.cli import main

    folder = Path(folder)
    data = make_dataset(folder / "data")
    (folder / "tiny.json").write_text(json.dumps(TINY_DDSP))
    if main(["fit", "--data", str(data), "--steps", "1", "--out", str(folder / "run"), "--config",
             str(folder / "tiny.json"), "--quiet"]) != 0:
        raise RuntimeError("the tiny fit failed")
    preset = folder / "presets" / "tone"
    if main(["export", str(folder / "run"), "--preset", str(preset), *export_args]) != 0:
        raise RuntimeError("the tiny export failed")
    return preset, data
