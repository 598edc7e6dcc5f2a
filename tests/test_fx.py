"""Effects bus (pyo manual server): block-size independence, latency, reverb tail, CC filter."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from synth.errors import UserError
from synth.fx import EffectsBus, cutoff_hz, parse_fx

SR = 48000


def _signal(n=24000) -> np.ndarray:
    """A faded sine burst plus a click, then silence: float32[n, 2]."""
    t = np.arange(n) / SR
    x = np.zeros((n, 2), np.float32)
    burst = slice(1000, 7000)
    env = np.sin(np.linspace(0, np.pi, 6000)) ** 2
    x[burst, 0] = 0.5 * env * np.sin(2 * np.pi * 440 * t[burst])
    x[burst, 1] = 0.5 * env * np.sin(2 * np.pi * 660 * t[burst])
    x[8000] = 0.8
    return x


def _run(bus: EffectsBus, x: np.ndarray, bs: int, cc_at: int | None = None, cc_value: int = 10) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(0, len(x), bs):
        blk = x[i:i + bs].copy()
        if cc_at is not None and i <= cc_at < i + bs:
            bus.control_change(74, cc_value, frame=cc_at - i)
        out[i:i + bs] = bus.process(blk)
    bus.close()
    return out


def test_off_by_default_is_identity_with_no_latency():
    bus = EffectsBus(SR)
    x = _signal()
    y = bus.process(x.copy())
    assert not bus.enabled and bus.latency_samples == 0
    assert np.array_equal(x, y)


def test_block_size_independent_with_cc_moves():
    x = _signal()
    ref = _run(EffectsBus(SR, reverb=0.4, chorus=0.6, filter=True), x, 64, cc_at=5000)
    assert np.abs(ref).max() > 0.05
    for bs in (1, 65, 128, 8193):
        y = _run(EffectsBus(SR, reverb=0.4, chorus=0.6, filter=True), x, bs, cc_at=5000)
        assert np.array_equal(y, ref), f"block size {bs} changed the output"


@pytest.mark.parametrize("chunk", [64, 256])
def test_latency_is_exactly_the_chunk(chunk):
    bus = EffectsBus(SR, filter=True, chunk=chunk)  # open low-pass: an impulse answers at once
    assert bus.latency_samples == chunk
    x = np.zeros((4 * chunk, 2), np.float32)
    x[10] = 1.0
    y = _run(bus, x, 100)
    first = int(np.flatnonzero(np.abs(y[:, 0]) > 1e-6)[0])
    assert first == 10 + chunk


def test_reverb_adds_a_tail():
    x = _signal()
    dry = _run(EffectsBus(SR, chorus=0.01), x, 512)
    wet = _run(EffectsBus(SR, reverb=0.5), x, 512)
    # After the click (input silent from frame 8001 on) plus latency, only the reverb rings.
    tail = slice(8000 + 64 + 2000, 8000 + 64 + 12000)
    assert np.sqrt(np.mean(wet[tail] ** 2)) > 100 * max(1e-7, np.sqrt(np.mean(dry[tail] ** 2)))
    assert np.abs(wet[tail]).max() > 1e-3


def test_filter_cutoff_follows_cc():
    rng = np.random.default_rng(1)
    noise = (0.3 * rng.standard_normal((SR // 2, 2))).astype(np.float32)

    def hf_energy(value):
        bus = EffectsBus(SR, filter=True)
        bus.control_change(74, value)
        y = _run(bus, noise, 1024)[SR // 8:]
        spec = np.abs(np.fft.rfft(y[:, 0]))
        f = np.fft.rfftfreq(len(y), 1 / SR)
        return float(np.sum(spec[f > 4000] ** 2))

    assert hf_energy(10) < 0.01 * hf_energy(127)
    assert cutoff_hz(0, SR) == pytest.approx(80.0)
    assert cutoff_hz(127, 16000) == pytest.approx(0.45 * 16000)


def test_parse_fx_spec_and_errors():
    assert parse_fx(None, SR) is None and parse_fx("none", SR) is None
    bus = parse_fx("reverb=0.2, chorus", SR)
    assert bus.reverb == pytest.approx(0.2) and bus.chorus > 0 and not bus.filter
    bus.close()
    for bad, msg in [("flanger", "unknown effect"), ("reverb=lots", "needs a number"), ("reverb=2", "outside 0..1"),
                     ("chorus=nan", "finite")]:
        with pytest.raises(UserError, match=msg):
            parse_fx(bad, SR)


def test_many_buses_in_one_process_and_quiet_stdout():
    # pyo allows several manual servers per process (256 at once); each bus must stay independent,
    # the 257th is refused clearly, and nothing may be printed on stdout (pyo prints notices there
    # unless told not to).
    code = (
        "import numpy as np\n"
        "from synth.fx import EffectsBus\n"
        "a = EffectsBus(48000, reverb=0.5); b = EffectsBus(48000, filter=True)\n"
        "x = np.zeros((4096, 2), np.float32); x[0] = 1\n"
        "ya = a.process(x.copy()); yb = b.process(x.copy())\n"
        "assert not np.array_equal(ya, yb)\n"
        "for i in range(40):\n"
        "    c = EffectsBus(48000, chorus=1.0); c.process(x.copy()); c.close()\n"
        "a.close(); b.close()\n"
        "from synth.errors import UserError\n"
        "from synth.fx import MAX_SERVERS\n"
        "keep = [EffectsBus(48000, reverb=0.1) for _ in range(MAX_SERVERS)]\n"
        "try:\n"
        "    EffectsBus(48000, reverb=0.1)\n"
        "    raise SystemExit('a bus beyond the limit was accepted')\n"
        "except UserError as e:\n"
        "    assert 'pyo allows 256 per process' in str(e), e\n"
        "keep.pop().close()\n"
        "EffectsBus(48000, reverb=0.1).close()  # a freed slot can be reused\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == ""
