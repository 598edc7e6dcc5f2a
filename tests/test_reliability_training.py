"""Training and file faults, with real subprocesses and a real SIGKILL (no mocks).

- `synth.fsutil.atomic_dir`: a writer killed at every stage of a folder replacement (both the
  renameat2 swap and the two-rename fallback) leaves the previous folder reachable; the next write
  restores and cleans up.
- `trainer fit`: killed while writing its second checkpoint, it loses one checkpoint interval and
  `--resume` continues; a checkpoint write over the file size limit (RLIMIT_FSIZE, EFBIG) is a one-line
  error with exit status 2, the last good checkpoint survives and `--resume` from it works.
- `trainer export --force` and `trainer dataset --force` killed over an existing preset / dataset
  leave the previous one intact and loadable.

The kill points come from `SYNTH_FSUTIL_TEST_HOOK` (see `synth.fsutil`): the writer creates a marker
file at the named stage and sleeps, and the test kills it there with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from synth import fsutil
from synth.preset import load_preset_dir
from synth.testing.tinymodel import make_tiny_preset
from trainer.data import OneShotDataset
from trainer.fit import load_checkpoint
from trainer.testing.fitdata import make_dataset

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "model": {"ddsp": {"n_harmonics": 8, "n_noise_bands": 4, "hop": 64, "hidden": 32, "ctrl_frames": 8,
                       "ctrl_bands": 4, "noise_seconds": 0.064}},
    "disc": {"ddsp": {"channels": 16, "n_mels": 16, "layers": 2, "resolutions": [[256, 64], [128, 32]]}},
    "train": {"batch": 4, "log_every": 1, "sample_every": 100000, "threads": 1},
}


def _env(hook: dict | None = None) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), PYO_GUI_WX="0")
    env.pop("SYNTH_FSUTIL_TEST_HOOK", None)
    if hook is not None:
        env["SYNTH_FSUTIL_TEST_HOOK"] = json.dumps(hook)
    return env


def _spawn(args: list[str], tmp: Path, hook: dict | None = None, **kw) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"stderr-{time.monotonic_ns()}.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=_env(hook), stdout=subprocess.DEVNULL,
                                stderr=err, **kw)
    return proc, log


def _kill_at_marker(proc: subprocess.Popen, marker: Path, log: Path, timeout: float = 120.0) -> None:
    """Wait until the writer reached its hook (marker file), then SIGKILL it."""
    t0 = time.monotonic()
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"writer exited ({proc.returncode}) before the kill point:\n{log.read_text()[-2000:]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail(f"writer never reached the kill point in {timeout} s")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(10) == -signal.SIGKILL


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


# ------------------------------------------------------------------------------- atomic_dir
WRITER = """
import sys
from pathlib import Path
from synth.fsutil import atomic_dir
dest, tag = Path(sys.argv[1]), sys.argv[2]
with atomic_dir(dest, replace=True) as tmp:
    for i in range(20):
        (tmp / f"f{i}.txt").write_text(tag * 1000)
"""


def test_renameat2_exchange_is_used_here(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("a")
    assert fsutil._exchange(a, b), "renameat2(RENAME_EXCHANGE) unavailable on this file system"
    assert (b / "x").read_text() == "a" and not (a / "x").exists()


@pytest.mark.parametrize("no_exchange,stage", [(False, "before-swap"), (False, "after-swap"),
                                               (True, "before-swap"), (True, "after-aside"), (True, "after-swap")])
def test_atomic_dir_killed_at_each_stage_keeps_a_whole_folder(no_exchange, stage, tmp_path):
    dest = tmp_path / "set"
    subprocess.run([sys.executable, "-c", WRITER, str(dest), "o"], cwd=ROOT, env=_env(), check=True)
    marker = tmp_path / "marker"
    proc, log = _spawn(["-c", WRITER, str(dest), "n"], tmp_path,
                       {"stage": stage, "name": "set", "marker": str(marker), "no_exchange": no_exchange})
    _kill_at_marker(proc, marker, log)
    expect = "n" if stage == "after-swap" else "o"
    if stage == "after-aside":
        # The one window of the two-rename fallback: the old folder is aside under the dead pid...
        assert not dest.exists() and (tmp_path / f".set.old-{proc.pid}").is_dir()
        assert fsutil.recover_dir(dest)          # ...and the next writer's first step puts it back
        assert _leftovers(tmp_path, "set") == []  # (and deletes the dead writer's temporary folder)
    else:
        assert _leftovers(tmp_path, "set")       # the dead writer left its temporaries...
    files = sorted(dest.iterdir())
    assert len(files) == 20 and {f.read_text() for f in files} == {expect * 1000}
    subprocess.run([sys.executable, "-c", WRITER, str(dest), "m"], cwd=ROOT, env=_env(), check=True)
    assert {f.read_text() for f in dest.iterdir()} == {"m" * 1000}
    assert _leftovers(tmp_path, "set") == []     # ...and the next write removed them


def test_atomic_dir_refuses_an_existing_folder_in_one_line(tmp_path):
    dest = tmp_path / "p"
    dest.mkdir()
    with pytest.raises(fsutil.DestinationExists, match="already exists; pass --force"):
        with fsutil.atomic_dir(dest) as tmp:
            (tmp / "x").write_text("x")
    assert list(dest.iterdir()) == [] and _leftovers(tmp_path, "p") == []


# --------------------------------------------------------------------------------------- fit
@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(dataset, overlay, run folder) after a fit killed at its 2nd checkpoint and resumed."""
    tmp = tmp_path_factory.mktemp("fit")
    data = make_dataset(tmp / "set", note_samples=2048)
    overlay = tmp / "tiny.json"
    overlay.write_text(json.dumps(TINY))
    return data, overlay, tmp / "run", tmp


def _fit_args(data: Path, overlay: Path, run: Path, steps: int) -> list[str]:
    return ["-m", "trainer", "fit", "--data", str(data), "--config", str(overlay), "--steps", str(steps),
            "--ckpt-every", "2", "--out", str(run), "--quiet", "--device", "cpu"]


def test_fit_killed_while_checkpointing_resumes_from_the_last_good_one(fitted):
    data, overlay, run, tmp = fitted
    marker = tmp / "fit-marker"
    # Pause while writing last.pt the 2nd time (step 4): its temp file is complete, not yet renamed.
    proc, log = _spawn(_fit_args(data, overlay, run, 1000), tmp,
                       {"stage": "file-written", "name": "last.pt", "after": 1, "marker": str(marker)})
    _kill_at_marker(proc, marker, log)
    ckdir = run / "checkpoints"
    assert load_checkpoint(ckdir / "last.pt")["step"] == 2            # one interval (steps 3-4) lost
    assert load_checkpoint(ckdir / "step-0000004.pt")["step"] == 4    # the step file before it is whole
    assert any(p.name.startswith(".last.pt.") for p in ckdir.iterdir())   # the killed temp file
    r = subprocess.run([sys.executable, "-m", "trainer", "fit", "--resume", str(run), "--steps", "6", "--quiet"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "stopped at step 6" in r.stderr
    assert load_checkpoint(ckdir / "last.pt")["step"] == 6
    assert not [p.name for p in ckdir.iterdir() if p.name.startswith(".")]   # stale temp removed


def _limit_fsize(limit: int):
    def pre() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # write() then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_checkpoint_over_the_size_limit_is_one_line_and_keeps_the_last_good_one(fitted):
    data, overlay, run, tmp = fitted
    last = run / "checkpoints" / "last.pt"
    if not last.exists():
        pytest.skip("needs the run of the kill test")
    before = last.read_bytes()
    step0 = load_checkpoint(last)["step"]
    limit = len(before) // 2
    r = subprocess.run([sys.executable, "-m", "trainer", "fit", "--resume", str(run), "--steps", str(step0 + 2),
                        "--quiet"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300,
                       preexec_fn=_limit_fsize(limit))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("trainer fit: error: ") and "EFBIG" in lines[0] and "is intact" in lines[0], lines
    assert last.read_bytes() == before                        # the last good checkpoint, byte for byte
    assert not [p.name for p in last.parent.iterdir() if p.name.startswith(".")]   # no temp file left
    r = subprocess.run([sys.executable, "-m", "trainer", "fit", "--resume", str(run), "--steps", str(step0 + 2),
                        "--quiet"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(last)["step"] == step0 + 2


# ------------------------------------------------------------------------------------ export
def test_export_killed_over_an_existing_preset_leaves_it_intact(fitted, tmp_path):
    _, _, run, _ = fitted
    if not (run / "checkpoints" / "last.pt").exists():
        pytest.skip("needs the run of the kill test")
    presets = tmp_path / "presets"
    make_tiny_preset(presets, "tone", pitch_range=(48, 72))
    dest = presets / "tone"
    before = _tree_digest(dest)
    marker = tmp_path / "export-marker"
    # Killed at the worst moment: the new preset is complete in its temporary folder, the swap is next.
    proc, log = _spawn(["-m", "trainer", "export", str(run), "--preset", str(dest), "--force"], tmp_path,
                       {"stage": "before-swap", "name": "tone", "marker": str(marker)})
    _kill_at_marker(proc, marker, log, timeout=240)
    assert _tree_digest(dest) == before
    part = [p for p in presets.iterdir() if p.name.startswith(f".tone.{proc.pid}-")]
    assert len(part) == 1 and (part[0] / "generator.onnx").is_file()   # it was killed with a new preset ready
    p = load_preset_dir(dest)
    assert p.name == "tone" and p.pitch_range == (48, 72)
    assert len(_leftovers(presets, "tone")) == 1   # the dead export's temporary folder, cleaned by the next write


# ----------------------------------------------------------------------------------- dataset
def _sample_folder(folder: Path, sr: int = 8000) -> Path:
    folder.mkdir()
    t = np.arange(int(0.4 * sr)) / sr
    for name, key in (("C4", 60), ("E4", 64), ("G4", 67)):
        f0 = 440.0 * 2 ** ((key - 69) / 12)
        sf.write(folder / f"tone_{name}.wav", (0.5 * np.sin(2 * np.pi * f0 * t) * np.exp(-3 * t)).astype(np.float32),
                 sr, subtype="FLOAT")
    return folder


@pytest.mark.parametrize("no_exchange,stage", [(False, "before-swap"), (True, "after-aside")])
def test_dataset_killed_over_an_existing_set_leaves_it_intact(no_exchange, stage, tmp_path):
    src = _sample_folder(tmp_path / "samples")
    out = tmp_path / "sets" / "tones"
    args = ["-m", "trainer", "dataset", "--from-folder", str(src), "--out", str(out), "--seconds", "0.5",
            "--sample-rate", "8000", "--jobs", "1", "--quiet"]
    subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(), check=True, capture_output=True, timeout=120)
    before = _tree_digest(out)
    marker = tmp_path / "ds-marker"
    proc, log = _spawn([*args, "--force", "--normalize", "set"], tmp_path,
                       {"stage": stage, "name": "tones", "marker": str(marker), "no_exchange": no_exchange})
    _kill_at_marker(proc, marker, log)
    if stage == "after-aside":
        assert not out.exists()
        # The fallback's one window: the previous set is aside under the dead pid, whole; the next
        # atomic_dir on this name (any `trainer dataset --out` run) first puts it back.
        assert (out.parent / f".tones.old-{proc.pid}" / "manifest.json").is_file()
        assert fsutil.recover_dir(out)
    assert _tree_digest(out) == before
    ds = OneShotDataset(out, "train")
    assert len(ds) >= 1 and ds.info["n_notes"] == 3
    assert np.isfinite(ds.audio_batch(np.arange(len(ds)))).all()
    assert torch.is_tensor(torch.from_numpy(ds.pitches))
