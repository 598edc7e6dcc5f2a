"""Effects bus (pyo manual server): block-size independence, latency, reverb tail, CC filter, and the
stereo reverb/chorus returns fed by per-channel sends (width, level, sends, back-compat)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

from synth.errors import UserError
from synth.fx import GM_REVERB_SEND, NOSEND_CHORUS_SEND, EffectsBus, cutoff_hz, parse_fx

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


def _note(f0=220.0, held=2.0, tail=2.0) -> np.ndarray:
    """A centred note as a voice makes it: decaying 8-harmonic tone, L == R, then silence for the tail."""
    t = np.arange(int((held + tail) * SR)) / SR
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 9))
    env = np.exp(-t / 0.8) * np.minimum(1.0, t / 0.005) * np.clip((held - t) / 0.05, 0.0, 1.0)
    x = 0.3 * x * env / np.abs(x * env).max()
    return np.repeat(x[:, None], 2, axis=1).astype(np.float32)


def _through(bus: EffectsBus, dry: np.ndarray, sends: np.ndarray | None = None, bs: int = 256) -> np.ndarray:
    """Run dry (+ sends) through `bus`, padded by its latency, and return the output realigned."""
    lat = bus.latency_samples
    out = np.concatenate([dry, np.zeros((lat, 2), np.float32)])
    if sends is not None:
        sends = np.concatenate([sends, np.zeros((lat, sends.shape[1]), np.float32)])
    for i in range(0, len(out), bs):
        bus.process(out[i:i + bs], None if sends is None else sends[i:i + bs])
    bus.close()
    return out[lat:]


def _sends(x: np.ndarray, reverb: float, chorus: float) -> np.ndarray:
    return np.concatenate([reverb * x, chorus * x], axis=1).astype(np.float32)


def _wet(spec: str, x: np.ndarray, reverb: float, chorus: float) -> np.ndarray:
    """The effect return alone: the dry input silent, the sends carrying the note."""
    return _through(parse_fx(spec, SR), np.zeros_like(x), _sends(x, reverb, chorus))


def _corr(y: np.ndarray) -> float:
    a, b = (y[:, 0] - y[:, 0].mean()).astype(np.float64), (y[:, 1] - y[:, 1].mean()).astype(np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _db(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(a, dtype=np.float64)) / np.mean(np.square(b, dtype=np.float64))))


def test_send_channels_and_shape_check():
    assert EffectsBus(SR).send_channels == 0
    bus = EffectsBus(SR, filter=True)
    assert bus.send_channels == 0
    bus.close()
    for kw in ({"reverb": 0.3}, {"chorus": 0.5}):
        bus = EffectsBus(SR, **kw)
        assert bus.send_channels == 4
        with pytest.raises(ValueError, match="sends has shape"):
            bus.process(np.zeros((64, 2), np.float32), np.zeros((64, 2), np.float32))
        bus.close()


@pytest.mark.parametrize("spec,reverb,chorus", [("reverb", GM_REVERB_SEND, 0.0), ("chorus", 0.0, 1.0)])
def test_wet_return_is_stereo_on_a_centred_note(spec, reverb, chorus):
    # Wet = output with the dry input silent; L/R Pearson correlation over the note and its tail.
    # (Measured 2026-12-05 at 220 Hz: reverb 0.05, chorus 0.36; before, both were mono: 1.000.)
    wet = _wet(spec, _note(), reverb, chorus)
    assert np.sqrt(np.mean(wet ** 2)) > 1e-3
    assert -0.5 <= _corr(wet) <= 0.5


def test_level_at_gm_default_sends_stays_within_1_5_db_and_the_reverb_is_audible():
    x = _note()
    y = _through(parse_fx("reverb", SR), x)
    assert abs(_db(y, x)) <= 1.5  # measured +0.8 dB
    assert _db(y - x, x) > -12.0  # the reverb return itself: measured -9.1 dB under the dry note


def test_reverb_follows_the_send_level():
    x = _note(held=1.0, tail=1.0)
    energy = [float(np.sum(_wet("reverb", x, v / 127, 0.0).astype(np.float64) ** 2)) for v in (0, 40, 127)]
    assert energy[0] < 1e-12
    assert 0 < energy[1] < energy[2]
    # Chorus sends reach only the chorus, reverb sends only the reverb.
    assert np.abs(_wet("reverb", x, 0.0, 1.0)).max() < 1e-6
    assert np.abs(_wet("chorus", x, 1.0, 0.0)).max() < 1e-6


def test_no_sends_means_gm_defaults():
    # Old callers pass no sends: reverb send 40/127 and, with the chorus on, a chorus send of 48/127.
    x = _note(held=0.5, tail=0.5)
    spec = "reverb,chorus,filter"
    ref = _through(parse_fx(spec, SR), x, _sends(x, GM_REVERB_SEND, NOSEND_CHORUS_SEND))
    y = _through(parse_fx(spec, SR), x)
    assert np.abs(y - ref).max() < 1e-6
    assert _db(y - x, x) > -20.0  # the effects are on, not just the dry signal


def test_block_size_independent_with_sends():
    x = _signal()
    rng = np.random.default_rng(3)
    sends = np.concatenate([x * rng.uniform(0.0, 1.0, (1, 2)), np.roll(x, 300, axis=0)], axis=1).astype(np.float32)

    def run(bs):
        return _through(EffectsBus(SR, reverb=0.4, chorus=0.6, filter=True), x, sends, bs)

    ref = run(64)
    assert np.abs(ref - x).max() > 0.01
    for bs in (1, 100, 4096):
        assert np.array_equal(run(bs), ref), f"block size {bs} changed the output"
