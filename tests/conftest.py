"""Shared fixtures. The helpers tests and scripts share live in packages: `synth.testing` (JACK server
and probe, tiny ONNX presets, engine driver) and `trainer.testing` (synthetic data sets, a tiny torch
generator)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("PYO_GUI_WX", "0")
# The synth's note disk cache (on by default in the CLIs) goes to $XDG_CACHE_HOME: a folder of this
# session's, never the user's home; subprocesses inherit it.
_CACHE_HOME = tempfile.mkdtemp(prefix="synth-tests-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)

from synth.testing.tinymodel import make_tiny_preset  # noqa: E402


@pytest.fixture
def tiny_preset(tmp_path):
    """A tiny pitched preset named "piano" in tmp_path/presets (pass that folder as --preset-dir)."""
    return make_tiny_preset(tmp_path / "presets")


@pytest.fixture(scope="module")
def piano_and_pad(tmp_path_factory):
    """A resampled one-shot piano (16 kHz model, 48 kHz out) and a loop-mode pad: two presets for
    offline renders that switch program between notes."""
    d = tmp_path_factory.mktemp("presets")
    piano = make_tiny_preset(d, "piano", note_seconds=0.3, pitch_range=(48, 72), layers=(64, 127))
    pad = make_tiny_preset(d, "pad", sample_rate=48000, note_seconds=0.5, sustain_mode="loop", pitch_range=(48, 72),
                           layers=(127,), velocity_conditioned=False)
    return [piano, pad]


@pytest.fixture
def repo_root() -> Path:
    return ROOT
