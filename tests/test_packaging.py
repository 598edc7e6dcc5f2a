"""The package metadata the build reads: the files it promises ship, and no deprecated forms."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_package_data_files_exist():
    """Every package-data pattern names files that are there (synth/py.typed tells type checkers that
    synth has inline types)."""
    for package, patterns in _pyproject()["tool"]["setuptools"]["package-data"].items():
        for pattern in patterns:
            assert list((ROOT / package).glob(pattern)), f"{package}/{pattern} is packaged but missing"


def test_license_is_an_spdx_expression_the_build_backend_accepts():
    """`license = { text = ... }` makes setuptools warn (deprecated) on every build; the SPDX string
    form needs setuptools 77 or newer."""
    meta = _pyproject()
    assert isinstance(meta["project"]["license"], str)
    req = next(r for r in meta["build-system"]["requires"] if r.startswith("setuptools"))
    m = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", req.replace(" ", ""))
    assert m and int(m.group(1)) >= 77, req
