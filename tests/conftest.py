"""Shared fixtures. The helpers tests and scripts share live in packages: `synth.testing` (JACK server
and probe, tiny ONNX presets, engine driver) and `trainer.testing` (synthetic data sets, a tiny torch
generator)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
os.environ.setdefault("PYO_GUI_WX", "0")

from synth.testing.tinymodel import make_tiny_preset  # noqa: E402


@pytest.fixture
def tiny_preset(tmp_path):
    """A tiny pitched preset named "piano" in tmp_path/presets (pass that folder as --preset-dir)."""
    return make_tiny_preset(tmp_path / "presets")


@pytest.fixture
def repo_root() -> Path:
    return ROOT
