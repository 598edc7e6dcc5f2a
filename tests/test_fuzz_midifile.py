"""Hostile MIDI files: random bytes, mutations and truncations of a valid file, lying chunk lengths,
absurd time divisions, and special files (FIFO, /dev/zero). Every case must end in a correct result or
a one-line `MidiFileError` naming the file; never another exception, a hang or a crash.

Hypothesis runs derandomized (the same examples every run) with bounded counts, so CI time is fixed.
A SIGALRM watchdog turns a hang into a failure instead of a stuck CI job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synth.errors import MidiFileError, UserError
from synth.midifile import KIND_NAMES, read_midi

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
WATCHDOG_S = 10   # a single parse of a <= 4 KB file taking this long is a hang


@contextlib.contextmanager
def watchdog(seconds: int = WATCHDOG_S):
    def on_alarm(signum, frame):
        raise TimeoutError(f"hang: no result within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def vlq(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def chunk(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack(">L", len(body)) + body


def seed_file() -> bytes:
    """A valid type-1 file written by hand: a tempo track, then a track with running status, sysex,
    meta events, every channel-event kind and a note-on with velocity 0."""
    t0 = (vlq(0) + b"\xff\x51\x03" + (500_000).to_bytes(3, "big")
          + vlq(0) + b"\xff\x58\x04\x04\x02\x18\x08"
          + vlq(960) + b"\xff\x51\x03" + (250_000).to_bytes(3, "big")
          + vlq(0) + b"\xff\x2f\x00")
    t1 = (vlq(0) + b"\xc0\x05"                       # program change
          + vlq(0) + b"\x90\x3c\x64"                  # note on C4
          + vlq(120) + b"\x40\x50"                    # running status: note on E4
          + vlq(0) + b"\xf0\x05\x7e\x7f\x09\x01\xf7"  # sysex (GM on)
          + vlq(240) + b"\xb0\x40\x7f"                # sustain
          + vlq(0) + b"\x4a\x20"                      # running status CC 74
          + vlq(10) + b"\xe0\x00\x60"                 # pitch bend
          + vlq(480) + b"\x80\x3c\x00"                # note off
          + vlq(0) + b"\x90\x40\x00"                  # note on vel 0 = off
          + vlq(0) + b"\xff\x03\x04name"              # track name
          + vlq(0) + b"\xff\x2f\x00")
    return chunk(b"MThd", struct.pack(">HHH", 1, 2, 480)) + chunk(b"MTrk", t0) + chunk(b"MTrk", t1)


SEED = seed_file()


def check(path) -> str:
    """Parse `path`; return "ok" or "error" after checking the result or the message. Anything else fails."""
    try:
        with watchdog():
            ev = read_midi(path)
    except MidiFileError as e:
        msg = str(e)
        assert "\n" not in msg and str(path) in msg and len(msg) < 400, msg
        return "error"
    n = len(ev)
    for arr in (ev.time, ev.kind, ev.channel, ev.a, ev.b):
        assert arr.shape == (n,)
    assert np.isfinite(ev.time).all() and (ev.time >= 0).all() and np.all(np.diff(ev.time) >= 0)
    assert np.isfinite(ev.end_time) and ev.end_time >= (ev.time[-1] if n else 0.0) - 1e-9
    assert (ev.kind < len(KIND_NAMES)).all() and (ev.channel <= 15).all()
    assert (ev.b >= 0).all() and (ev.b <= 127).all()
    assert ((ev.a >= -8192) & (ev.a <= 16383)).all()
    return "ok"


def test_seed_is_valid(tmp_path):
    p = tmp_path / "seed.mid"
    p.write_bytes(SEED)
    ev = read_midi(p)
    kinds = [k for _, k, *_ in ev.as_tuples()]
    assert kinds.count("note_on") == 2 and kinds.count("note_off") == 2 and "pitchwheel" in kinds
    # 120 ticks at 120 BPM, 480 tpq = 0.125 s: running status kept its note-on.
    assert ev.as_tuples()[2][:4] == (0.125, "note_on", 0, 0x40)


@FUZZ
@given(data=st.binary(max_size=4096), magic=st.booleans())
def test_random_bytes(tmp_path_factory, data, magic):
    p = tmp_path_factory.mktemp("rand") / "x.mid"
    p.write_bytes((b"MThd" if magic else b"") + data)
    check(p)


@st.composite
def mutations(draw):
    b = bytearray(SEED)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["set", "insert", "delete", "u32"]))
        i = draw(st.integers(0, len(b) - 1))
        if op == "set":
            b[i] = draw(st.integers(0, 255))
        elif op == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and len(b) > 1:
            del b[i:i + draw(st.integers(1, 4))]
        elif op == "u32" and i + 4 <= len(b):
            # Big-endian lengths and tempos: the most interesting words to lie in.
            b[i:i + 4] = struct.pack(">L", draw(st.sampled_from([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, len(b), 6])))
    return bytes(b)


@FUZZ
@given(data=mutations())
def test_mutated_valid_file(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("mut") / "m.mid"
    p.write_bytes(data)
    check(p)


def test_every_truncation(tmp_path):
    outcomes = {"ok": 0, "error": 0}
    for n in range(len(SEED)):
        p = tmp_path / f"t{n}.mid"
        p.write_bytes(SEED[:n])
        outcomes[check(p)] += 1
    # Only a cut inside the last track's end-of-track marker can still parse; nearly all are refused.
    assert outcomes["error"] >= len(SEED) - 4, outcomes


def _with_header(fmt=1, ntracks=2, division=480, hlen=6) -> bytes:
    body = SEED[14:]
    return b"MThd" + struct.pack(">L", hlen) + struct.pack(">HHH", fmt, ntracks, division) + \
        b"\0" * (hlen - 6 if 6 <= hlen <= 64 else 0) + body


@pytest.mark.parametrize("data,expect", [
    (_with_header(hlen=0xFFFFFFFF), "header declares"),
    (_with_header(hlen=0), "header declares"),
    (_with_header(hlen=4096), "header declares"),
    (_with_header(division=0), "time division is 0"),
    (_with_header(division=0x8000 | (256 - 23) << 8 | 4), "SMPTE"),   # 23 fps does not exist
    (_with_header(division=0xE700), "SMPTE"),                         # 25 fps, 0 ticks per frame
    (_with_header(ntracks=0), "no tracks"),
    (_with_header(ntracks=65535), "truncated"),
    (_with_header(fmt=2), "type 2"),
    (_with_header(fmt=7), "unknown MIDI file type"),
    (_with_header(fmt=0), "exactly 1 track"),
    (SEED[:18] + struct.pack(">L", 0xFFFFFFF0) + SEED[22:], "truncated"),   # track 1 lies about its length
    (b"RIFF" + SEED, "RIFF"),
    (b"", "empty"),
])
def test_lying_headers(tmp_path, data, expect):
    p = tmp_path / "h.mid"
    p.write_bytes(data)
    with pytest.raises(MidiFileError, match=expect):
        read_midi(p)
    assert check(p) == "error"


def test_huge_delta_times_and_tempo_extremes(tmp_path):
    # Largest VLQ delta, slowest and zero tempo: times stay finite and ordered.
    t = (vlq(0) + b"\xff\x51\x03\xff\xff\xff" + vlq(0) + b"\x90\x3c\x64" + vlq(0x0FFFFFFF) + b"\x80\x3c\x00"
         + vlq(0) + b"\xff\x51\x03\x00\x00\x00" + vlq(0x0FFFFFFF) + b"\x90\x3e\x64" + vlq(0) + b"\xff\x2f\x00")
    p = tmp_path / "slow.mid"
    p.write_bytes(chunk(b"MThd", struct.pack(">HHH", 0, 1, 1)) + chunk(b"MTrk", t))
    assert check(p) == "ok"
    ev = read_midi(p)
    assert ev.time[1] == pytest.approx(0x0FFFFFFF * 16.777215)
    assert ev.time[2] == ev.time[1]   # zero tempo: no time passes


def test_special_files_do_not_hang(tmp_path):
    """A FIFO, a character device and a symlink to one are refused at once instead of blocking
    forever (a FIFO) or reading without end (/dev/zero)."""
    fifo = tmp_path / "pipe.mid"
    os.mkfifo(fifo)
    link = tmp_path / "zero.mid"
    link.symlink_to("/dev/zero")
    for p in (fifo, link, "/dev/zero", "/dev/null"):
        with watchdog(5):
            with pytest.raises(MidiFileError, match="not a regular file|empty"):
                read_midi(p)


@pytest.fixture
def presets(tmp_path):
    from synth.testing.tinymodel import make_tiny_preset

    make_tiny_preset(tmp_path / "presets", sample_rate=8000, note_seconds=0.25)
    return tmp_path / "presets"


CLI_CASES = {
    "random": bytes(range(256)) * 3,
    "truncated": SEED[: len(SEED) // 2],
    "huge-header": _with_header(hlen=0xFFFFFFFF),
    "zero-division": _with_header(division=0),
    "huge-track-length": SEED[:18] + struct.pack(">L", 0xFFFFFFF0) + SEED[22:],
    "no-notes": chunk(b"MThd", struct.pack(">HHH", 0, 1, 96)) + chunk(b"MTrk", vlq(0) + b"\xff\x2f\x00"),
    "hours-long": chunk(b"MThd", struct.pack(">HHH", 0, 1, 1)) + chunk(
        b"MTrk", vlq(0) + b"\xff\x51\x03\xff\xff\xff" + vlq(0) + b"\x90\x3c\x64" + vlq(0x0FFFFFFF) + b"\x80\x3c\x00"
        + vlq(0) + b"\xff\x2f\x00"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES) + ["fifo"])
def test_render_cli_refuses_hostile_files(presets, tmp_path, capfd, case):
    from synth.cli import main

    src = tmp_path / f"{case}.mid"
    if case == "fifo":
        os.mkfifo(src)
    else:
        src.write_bytes(CLI_CASES[case])
    out = tmp_path / "out.wav"
    with watchdog(30):
        rc = main(["render", str(src), "-o", str(out), "--preset", "piano", "--preset-dir", str(presets)])
    cap = capfd.readouterr()
    assert rc == 2, cap.err
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("synth render: error: ") and str(src) in lines[0], cap.err
    assert "Traceback" not in cap.err and cap.out == ""
    assert not out.exists() and not [f for f in os.listdir(tmp_path) if f.startswith(".out.wav")]


def test_render_cli_in_a_real_process(presets, tmp_path):
    src = tmp_path / "bad.mid"
    src.write_bytes(_with_header(division=0))
    out = tmp_path / "o.wav"
    r = subprocess.run([sys.executable, "-m", "synth", "render", str(src), "-o", str(out), "--preset-dir",
                        str(presets)], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYO_GUI_WX="0"))
    assert r.returncode == 2 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "time division is 0" in r.stderr
    assert not out.exists()


def test_user_error_is_the_base(tmp_path):
    # The CLI turns exactly UserError into exit 2, so MidiFileError must stay one.
    assert issubclass(MidiFileError, UserError)
