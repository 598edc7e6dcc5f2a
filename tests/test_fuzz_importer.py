"""Hostile sample folders for `trainer dataset --from-folder`: mutated and truncated WAV/FLAC/AIFF/OGG
files, headers that lie about sizes, rates and channel counts, NaN/Inf float samples, silence, odd
names, symlinks, FIFOs and folders named like audio. Each file must end as a note or as a skip with a
reason (`process_file`), never an exception; through the real CLI a folder of nothing usable is a
one-line error with exit 2, no traceback and no output folder.

Hypothesis runs derandomized with bounded counts, so CI time is fixed; a SIGALRM watchdog turns a
hang into a failure.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainer.data.folder import process_file

SR = 16000
CFG = {"sample_rate": SR, "note_samples": SR // 2, "min_seconds": 0.02, "normalize": "note", "drums": False}
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "aiff": ("AIFF", "PCM_16"), "ogg": ("OGG", "VORBIS")}


@contextlib.contextmanager
def watchdog(seconds: int = 20):
    def boom(*_):
        raise TimeoutError(f"importer hung for {seconds} s")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _valid(ext: str, seconds: float = 0.25) -> bytes:
    t = np.arange(int(seconds * SR)) / SR
    x = (0.5 * np.sin(2 * np.pi * 220.0 * t) * np.exp(-3 * t)).astype(np.float32)
    buf = io.BytesIO()
    fmt, sub = FORMATS[ext]
    sf.write(buf, x, SR, format=fmt, subtype=sub)
    return buf.getvalue()


SEEDS = {ext: _valid(ext) for ext in FORMATS}


def _check(folder, name: str, data: bytes) -> dict:
    path = folder / name
    path.write_bytes(data)
    with watchdog():
        out = process_file(path, folder, CFG)
    assert isinstance(out, dict) and out["file"] == name
    if "skip" in out:
        assert isinstance(out["skip"], str) and out["skip"] and "\n" not in out["skip"], out
    else:
        a = out["audio"]
        assert a.dtype == np.float32 and a.shape == (CFG["note_samples"],) and np.isfinite(a).all(), out["file"]
        assert 0 <= out["pitch"] <= 127
    path.unlink()
    return out


def test_seeds_import(tmp_path):
    for ext in FORMATS:
        out = _check(tmp_path, f"tone_A3.{ext}", SEEDS[ext])
        assert "skip" not in out and out["pitch"] == 57, out


@FUZZ
@given(ext=st.sampled_from(sorted(FORMATS)), data=st.data())
def test_mutated_files(tmp_path_factory, ext, data):
    folder = tmp_path_factory.mktemp("mut")
    b = bytearray(SEEDS[ext])
    for _ in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        b = b[:data.draw(st.integers(0, len(b)))]
    _check(folder, f"x_C4.{ext}", bytes(b))


@FUZZ
@given(data=st.binary(max_size=2048), ext=st.sampled_from(sorted(FORMATS)))
def test_random_bytes(tmp_path_factory, data, ext):
    _check(tmp_path_factory.mktemp("rnd"), f"r_C4.{ext}", data)


def _wav_header(rate: int, channels: int, bits: int, fmt: int, data_len: int, riff_len: int | None = None) -> bytes:
    block = channels * bits // 8
    fmt_chunk = struct.pack("<HHIIHH", fmt, channels, rate, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_chunk + b"data" + struct.pack("<I", data_len)
    return b"RIFF" + struct.pack("<I", (riff_len if riff_len is not None else len(body) + data_len) & 0xFFFFFFFF) + body


@pytest.mark.parametrize("rate, channels, bits, fmt, data_len, payload", [
    (SR, 1, 16, 1, 0xFFFFFFF0, 64),                  # declares 4 GB, holds 64 bytes
    (SR, 1, 16, 1, 1000, 0),                          # data chunk with nothing in it
    (0, 1, 16, 1, 64, 64),                            # zero sample rate
    (4_000_000_000, 1, 16, 1, 64, 64),                # absurd sample rate
    (SR, 0, 16, 1, 64, 64),                           # zero channels
    (SR, 1000, 16, 1, 2000, 2000),                    # a thousand channels
    (SR, 1, 7, 1, 64, 64),                            # 7-bit samples
    (SR, 1, 16, 0x55, 64, 64),                        # MP3-in-WAV format tag
    (1, 1, 16, 1, 64, 64),                            # 1 Hz
    (SR, 1, 32, 3, 4 * SR, 4 * SR),                   # float, filled with NaN below
])
def test_lying_wav_headers(tmp_path, rate, channels, bits, fmt, data_len, payload):
    body = np.full(payload // 4, np.nan, np.float32).tobytes() if fmt == 3 else os.urandom(payload)
    _check(tmp_path, "lie_C4.wav", _wav_header(rate, channels, bits, fmt, data_len) + body)


@pytest.mark.parametrize("samples", ["nan", "inf", "huge", "silent", "denormal", "one_sample", "dc"])
def test_hostile_float_samples(tmp_path, samples):
    n = SR // 4
    x = {"nan": np.full(n, np.nan), "inf": np.full(n, np.inf), "huge": np.full(n, 3e38),
         "silent": np.zeros(n), "denormal": np.full(n, 1e-42), "one_sample": np.ones(1),
         "dc": np.full(n, 0.5)}[samples].astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="WAV", subtype="FLOAT")
    out = _check(tmp_path, "f_C4.wav", buf.getvalue())
    if samples in ("nan", "inf", "silent", "one_sample"):   # huge, denormal, dc: scaled like any note
        assert "skip" in out, out


def test_special_entries_are_skipped_without_hanging(tmp_path):
    (tmp_path / "dir_C4.wav").mkdir()
    os.mkfifo(tmp_path / "fifo_C4.wav")
    (tmp_path / "dangling_C4.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "dev_C4.wav").symlink_to("/dev/zero")
    for name in ("dir_C4.wav", "fifo_C4.wav", "dangling_C4.wav", "dev_C4.wav"):
        with watchdog(10):
            out = process_file(tmp_path / name, tmp_path, CFG)
        assert "skip" in out and "\n" not in out["skip"], (name, out)


def test_cli_refuses_a_folder_of_hostile_files(tmp_path):
    src = tmp_path / "samples"
    src.mkdir()
    (src / "empty_C4.wav").write_bytes(b"")
    (src / "text_C4.flac").write_text("not audio")
    (src / "trunc_C4.aiff").write_bytes(SEEDS["aiff"][:40])
    (src / "lie_C4.wav").write_bytes(_wav_header(SR, 1, 16, 1, 0xFFFFFFF0) + b"\x00" * 64)
    (src / "weird name ü ☃ C4.ogg").write_bytes(os.urandom(300))
    os.mkfifo(src / "fifo_C4.wav")
    out = tmp_path / "set"
    env = dict(os.environ, PYO_GUI_WX="0", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "trainer", "dataset", "--from-folder", str(src), "--out", str(out),
                        "--sample-rate", str(SR), "--seconds", "0.5"], capture_output=True, text=True, env=env,
                       timeout=120)
    err = r.stderr.strip()
    assert r.returncode == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1 and str(src) in err, err
    assert not out.exists() and not any(p.name.startswith(".set") for p in tmp_path.iterdir())


def test_cli_keeps_the_good_files_among_hostile_ones(tmp_path):
    src = tmp_path / "samples"
    src.mkdir()
    (src / "good_A3.wav").write_bytes(SEEDS["wav"])
    (src / "good_A3.flac").write_bytes(SEEDS["flac"])
    (src / "bad_C4.wav").write_bytes(SEEDS["wav"][:30])
    (src / "nan_C4.wav").write_bytes(_wav_header(SR, 1, 32, 3, 4000) + np.full(1000, np.nan, np.float32).tobytes())
    out = tmp_path / "set"
    env = dict(os.environ, PYO_GUI_WX="0", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "trainer", "dataset", "--from-folder", str(src), "--out", str(out),
                        "--sample-rate", str(SR), "--seconds", "0.5"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    import json

    report = json.loads((out / "report.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["notes"]) == 2
    assert len(json.dumps(report)) > 0 and "bad_C4.wav" in json.dumps(report) and "nan_C4.wav" in json.dumps(report)
