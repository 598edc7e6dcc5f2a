"""Project-level contracts: no torch in synth, lazy heavy imports, fast --help, packaging."""

from __future__ import annotations

import subprocess
import sys
import time

import tomllib
from conftest import ROOT


def _run_py(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_synth_never_imports_torch():
    # Import every synth module a user can reach (live and render included) and look at sys.modules.
    code = (
        "import importlib, pkgutil, sys, synth\n"
        "for m in pkgutil.iter_modules(synth.__path__):\n"
        "    if m.name != '__main__':  # running the CLI is not importing it\n"
        "        importlib.import_module('synth.' + m.name)\n"
        "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))\n"
    )
    assert _run_py(code).strip() == "[]"


def test_synth_import_is_light():
    # sounddevice needs PortAudio and rtmidi needs ALSA/JACK: neither may load for offline work.
    code = (
        "import sys, synth.cli, synth.preset, synth.render\n"
        "print([m for m in ('sounddevice', 'rtmidi', 'torch', 'pyo') if m in sys.modules])\n"
    )
    assert _run_py(code).strip() == "[]"


def test_help_is_fast():
    for mod in ("synth", "trainer"):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, cwd=ROOT)
        dt = time.perf_counter() - t0
        assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr
        # Generous for a loaded 2-core CI machine; torch would take several seconds.
        assert dt < 3.0, f"python -m {mod} --help took {dt:.2f}s"


def test_unknown_command_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "synth", "frobnicate"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_only_synth_and_trainer_ship():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(include) == ["synth*", "trainer*"]
    assert "torch==2.13.0" in cfg["project"]["optional-dependencies"]["train"]
    assert not any(d.startswith("torch") for d in cfg["project"]["dependencies"])
