"""Shared fixtures. Test helpers (tinymodel, jackutil) live beside this file and import by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("PYO_GUI_WX", "0")

from tinymodel import make_tiny_preset  # noqa: E402


@pytest.fixture
def tiny_preset(tmp_path):
    """A tiny pitched preset named "piano" in tmp_path/presets (pass that folder as --preset-dir)."""
    return make_tiny_preset(tmp_path / "presets")


@pytest.fixture
def repo_root() -> Path:
    return ROOT
