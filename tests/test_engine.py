"""Engine: block-size independence, sample-accurate events, voices, pedals, limiter, knobs, live fallback."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from synth.engine import Engine, release_span
from synth.errors import UserError
from synth.testing.drive import check_rows, drive
from synth.testing.tinymodel import make_tiny_preset

SR = 48000


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    return {
        "piano": make_tiny_preset(d, "piano"),
        "loop": make_tiny_preset(d, "loop", sustain_mode="loop", note_seconds=0.5, release_seconds=0.02),
        "bad": make_tiny_preset(d, "bad", nan_pitches=(60,)),
        "drums": make_tiny_preset(d, "drums", kind="drums", note_seconds=0.3),
        "flat": make_tiny_preset(d, "flat", velocity_conditioned=False, layers=(127,), seed=3),
    }


def first_nonzero(x: np.ndarray) -> int:
    nz = np.flatnonzero(np.any(x != 0, axis=1))
    return int(nz[0]) if len(nz) else -1


SCRIPT = [
    (0, "note_on", (0, 60, 100)), (37, "note_on", (0, 64, 70)), (1000, "note_on", (1, 48, 127)),
    (2500, "control_change", (0, 64, 127)), (3001, "note_off", (0, 60)), (4100, "pitch_bend", (0, 3000)),
    (5000, "control_change", (0, 74, 10)), (5003, "note_on", (0, 67, 90)), (7000, "note_off", (0, 64)),
    (9001, "control_change", (0, 64, 0)), (11000, "pitch_bend", (0, -8192)), (12345, "note_on", (0, 30, 50)),
    (14000, "note_off", (1, 48)), (15000, "note_on", (0, 100, 127)), (17000, "control_change", (0, 123, 0)),
]


def test_block_size_independence(presets):
    total = 20000
    outs = {}
    for bs in (1, 64, 65, 128, 8193):
        with Engine(sample_rate=SR, presets=[presets["piano"]], polyphony=3) as e:
            outs[bs] = drive(e, SCRIPT, total, bs)
            assert e.steals >= 1   # the script exceeds 3 voices, so stealing is covered too
    ref = outs[128]
    assert np.abs(ref).max() > 0.05
    for bs, o in outs.items():
        assert np.array_equal(o, ref), f"block size {bs} differs by {np.abs(o - ref).max()}"


def test_loop_preset_block_size_independence(presets):
    # The loop seam of the 0.5 s note is at 85% (20400 frames); bent, the voice wraps before 20000.
    script = [(10, "note_on", (0, 57, 100)), (9000, "pitch_bend", (0, 5000)), (20500, "note_off", (0, 57))]
    outs = [drive(Engine(sample_rate=SR, presets=[presets["loop"]]), script, 21500, bs) for bs in (1, 65, 8193)]
    assert np.abs(outs[0][19500:20500]).max() > 0.05
    assert all(np.array_equal(o, outs[0]) for o in outs)


@pytest.mark.parametrize("bs,frame", [(128, 0), (128, 77), (64, 63), (1000, 999)])
def test_sample_accurate_onset(presets, bs, frame):
    e = Engine(sample_rate=SR, blocksize=bs, presets=[presets["piano"]])
    e.render(bs * 2)
    e.note_on(0, 69, 127, frame=frame)
    out = np.concatenate([e.render(bs) for _ in range(3)])
    entry = e.cache.peek(e._note_key(0, e.knobs["piano"], 69, 127)[0])
    note = e.cache.bank[entry.offset:entry.offset + entry.length]
    assert first_nonzero(out) == frame + int(np.flatnonzero(note)[0])
    # The output is the cached note, scaled by the voice's left gain.
    gl = e.voices.gain[0, np.flatnonzero(e.voices.active)[0]]
    n = len(out) - frame
    np.testing.assert_allclose(out[frame:, 0], note[:n] * gl, atol=1e-6)


def test_stealing_takes_released_then_the_quietest(presets):
    """Released voices go first, the quietest of them first; then held ones, again the quietest."""
    e = Engine(sample_rate=SR, presets=[presets["piano"]], polyphony=4)
    for i, (n, vel) in enumerate(((60, 127), (62, 20), (64, 127), (65, 60))):
        e.note_on(0, n, vel, frame=i)
    e.render(64)
    v = e.voices

    def playing():
        return sorted(v.note[v.active & ~v.ghost].tolist())

    e.note_off(0, 60)
    e.note_off(0, 62)
    e.note_on(0, 67, 100)     # released: 60 (loud) and 62 (soft); 62 goes
    e.render(64)
    assert playing() == [60, 64, 65, 67] and e.steals == 1
    e.note_on(0, 69, 100)     # the last released one (60) goes before any held one
    e.render(64)
    assert playing() == [64, 65, 67, 69]
    e.note_on(0, 71, 100)     # nothing released: the quietest held (65, velocity 60) goes, not the oldest (64)
    e.render(64)
    assert playing() == [64, 67, 69, 71]
    check_rows(e)
    e.render(SR // 100)       # the 5 ms steal fades are over
    assert e.stats()["voices"] == 4 and e.stats()["fading"] == 0
    check_rows(e)


def test_stealing_among_equals_takes_the_oldest(presets):
    """Voices of one note, velocity and envelope rank by age: the oldest goes first."""
    e = Engine(sample_rate=SR, presets=[presets["piano"]], polyphony=3)
    e.control_change(0, 64, 127)
    for i in range(3):
        e.note_on(0, 60, 100, frame=i)
        e.note_off(0, 60, frame=i)
    e.render(64)
    v = e.voices
    order = v.order[v.active & ~v.ghost]
    t = e.now
    peeked = v.victim(t, take=False)
    first = v.victim(t)
    assert v.order[first] == order.min() and peeked == first   # looking takes nothing
    assert v.victim(t) != first      # the next steal at the same time takes the next one


def test_sustain_pedal(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    e.note_on(0, 60, 100)
    e.control_change(0, 64, 127, frame=10)
    e.note_off(0, 60, frame=20)
    e.render(SR // 2)
    assert e.stats()["voices"] == 1
    tail = e.render(SR // 10)
    assert np.abs(tail).max() > 1e-3
    e.control_change(0, 64, 0)
    e.render(int(SR * release_span(0.05)) + 1)   # release_seconds = 0.05: 30 dB down then, 100 at the end
    assert e.stats()["voices"] == 0
    assert np.abs(e.render(256)).max() == 0.0


def test_note_off_releases_smoothly(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    e.note_on(0, 60, 127)
    held = e.render(4800)
    e.note_off(0, 60)
    rel = e.render(int(SR * release_span(0.05)) + 4800)
    # No step at the note-off; silence from the release's end (100 dB down) on, and the voice freed.
    assert abs(float(rel[0, 0]) - float(held[-1, 0])) < 0.02
    assert np.abs(rel[int(np.ceil(release_span(0.05) * SR)):]).max() == 0.0 and e.stats()["voices"] == 0


def _levels_db(x: np.ndarray, frame: int) -> np.ndarray:
    n = len(x) // frame
    return 10 * np.log10(np.mean(np.square(x[:n * frame].reshape(n, frame), dtype=np.float64), axis=1) + 1e-30)


def test_release_falls_linearly_in_db_and_frees_the_voice(presets):
    """A released voice falls linearly in dB, RELEASE_DB (30 dB) in the preset's release_seconds (SF2
    releaseVolEnv semantics: 100 dB in release_span), from its level at the note-off, and is freed
    100 dB down, at note-off + release_span."""
    from synth.preset import RELEASE_DB

    p = presets["loop"]                        # a looped note: a steady level under the release
    rel_s, off = p.release_seconds, 12000
    with Engine(sample_rate=SR, presets=[p]) as e:
        out = drive(e, [(0, "note_on", (0, 60, 127)), (off, "note_off", (0, 60))], off + int(0.2 * SR), 64)
        assert e.stats()["voices"] == 0
    frame = 96                                 # 2 ms frames
    lev = _levels_db(out[off - 4800:, 0], frame)
    held = float(np.mean(lev[:4800 // frame]))
    rel = lev[4800 // frame:] - held
    t = (np.arange(len(rel)) + 0.5) * frame / SR
    fit = t < 0.8 * release_span(rel_s)        # to 80 dB down
    slope, at_off = np.polyfit(t[fit], rel[fit], 1)
    assert abs(slope / (-RELEASE_DB / rel_s) - 1) < 0.02 and abs(at_off) < 0.5, (slope, at_off)
    end = off + int(np.ceil(release_span(rel_s) * SR))
    assert np.abs(out[end:]).max() == 0.0 and np.abs(out[end - 48:end]).max() > 0.0


@pytest.mark.parametrize("name", ["piano", "loop"])
def test_releases_are_block_size_independent(presets, name):
    """Releases (note-off ahead of the mix, pedal up, all-notes-off, a released voice stolen) give the
    same samples at any block size: the release is a function of absolute time."""
    script = [(0, "note_on", (0, 60, 100)), (5, "note_on", (0, 64, 90)), (700, "note_on", (1, 57, 127)),
              (1500, "note_off", (0, 60)), (1510, "control_change", (1, 64, 127)), (1600, "note_off", (1, 57)),
              (2100, "note_on", (0, 67, 80)), (2200, "note_on", (0, 71, 80)), (2333, "note_off", (0, 64)),
              (3000, "control_change", (1, 64, 0)), (3200, "note_on", (1, 45, 70)),
              (4000, "control_change", (0, 123, 0)), (4500, "note_off", (1, 45)),
              (9000, "note_on", (1, 50, 100)), (9001, "note_off", (1, 50))]
    outs = {}
    for bs in (1, 64, 1000):
        with Engine(sample_rate=SR, presets=[presets[name]], polyphony=3) as e:
            outs[bs] = drive(e, script, 20000, bs)
            assert e.steals >= 1 and e.stats()["voices"] == 0
    assert np.abs(outs[64]).max() > 0.05
    for bs, o in outs.items():
        assert np.array_equal(o, outs[64]), f"block size {bs} differs by {np.abs(o - outs[64]).max()}"


def test_panic_and_all_sound_off(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    for n in range(40, 80, 3):
        e.note_on(n % 3, n, 100)
    e.control_change(0, 64, 127)
    e.render(1024)
    e.panic()
    out = e.render(SR // 100)
    assert np.abs(out[int(0.005 * SR) + 1:]).max() == 0.0 and e.stats()["voices"] == 0
    e.note_on(2, 60, 100)
    e.note_on(3, 62, 100)
    e.render(128)
    e.control_change(2, 120, 0)
    e.render(SR // 100)
    assert e.voices.note[e.voices.active].tolist() == [62]
    check_rows(e)


def test_limiter_bound_with_256_loud_voices(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]], polyphony=256, master_gain=4.0)
    for i in range(256):
        e.note_on(i % 16, 21 + i % 88, 127, frame=i % 128)
    out = np.concatenate([e.render(128) for _ in range(40)])
    assert e.stats()["voices"] == 256
    check_rows(e)
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.0 and np.abs(out).max() > 0.9


@pytest.mark.parametrize("scale", [0.5, 0.95, 1.5, 4.0])
def test_soft_limit_gives_each_sample_the_same_curve_however_many_cross_the_knee(scale):
    """A block with few samples above the knee bends them alone (gathered and put back), one with many
    bends them all: either way each sample gets the curve of the whole-block formula, bit for bit."""
    from synth.engine import LIMIT_KNEE, soft_limit

    x = (np.random.default_rng(7).standard_normal((4096, 2)) * scale).astype(np.float32)
    a = np.abs(x)
    room = np.float32(1.0 - LIMIT_KNEE)
    curve = np.float32(LIMIT_KNEE) + room * np.tanh((a - np.float32(LIMIT_KNEE)) / room)
    want = np.clip(np.where(a > LIMIT_KNEE, np.copysign(curve, x), x), -1.0, 1.0)
    for gather in (None, 64, 0):              # offline, live, never gathered
        got = x.copy()
        soft_limit(got, work=np.empty(x.size, np.float32), over=np.empty(x.size, bool), gather=gather)
        assert got.dtype == np.float32 and np.array_equal(got, want), gather
    share = np.mean(a > LIMIT_KNEE)         # 0.07 and 0.34 take the gathered path, 0.55 and 0.82 the whole
    assert np.abs(got).max() <= 1.0 and 0.05 < share < 0.9


def test_nan_model_output_is_silence(presets, caplog):
    e = Engine(sample_rate=SR, presets=[presets["bad"]])
    with caplog.at_level(logging.WARNING, logger="synth"):
        e.note_on(0, 60, 100)
        out = e.render(4800)
        e.report()
    assert np.all(out == 0.0)
    assert any("NaN" in r.getMessage() for r in caplog.records)
    gen = e.worker.generated
    e.note_on(0, 60, 100)
    e.note_on(0, 61, 100, frame=100)   # a good pitch still plays
    out = e.render(4800)
    assert e.worker.generated == gen + 1 and e.stats()["bad_notes"] == 1
    assert np.isfinite(out).all() and first_nonzero(out) >= 100


class _NanBus:
    """An effects bus that breaks: NaN into every block it processes."""

    latency_samples = 0

    def process(self, block):
        block[::7] = np.nan
        return block


def test_render_only_counts_and_report_logs(presets, caplog):
    """render() logs nothing, whatever goes wrong inside it (it runs on the audio thread live): the
    NaN/Inf guard, a note the offline engine generates with NaN, an unmapped program change are
    counted, and `report` logs what is new since its last call, from another thread."""
    e = Engine(sample_rate=SR, presets=[presets["bad"]], fx=_NanBus(), program_map={0: "bad"})
    with caplog.at_level(logging.DEBUG, logger="synth"):
        e.note_on(0, 60, 100)                # the model gives NaN for 60: generated inside render
        e.note_on(0, 61, 100, frame=100)
        e.program_change(0, 5)               # no preset mapped
        out = e.render(4800)
        assert caplog.records == [] and np.isfinite(out).all() and e.nan_blocks == 1
        assert e.report() == 3
        msgs = [r.getMessage() for r in caplog.records]
        assert any("produced NaN/Inf for pitch 60" in m for m in msgs)
        assert any("NaN/Inf in the mix: 1 block(s)" in m for m in msgs)
        assert any("program 5 on channel 1" in m for m in msgs)
        caplog.clear()
        assert e.report() == 0 and caplog.records == []    # nothing new
        e.render(128)
        assert e.report() == 1 and "2 so far" in caplog.records[-1].getMessage()


def test_knob_back_and_forth_hits_cache(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    key0 = e.knobs["piano"]
    e.note_on(0, 60, 100)
    e.render(128)
    e.control_change(0, 74, 0)
    e.note_on(0, 60, 100, frame=1)
    e.render(128)
    assert e.knobs["piano"] != key0 and e.worker.generated == 2
    e.control_change(0, 74, 64)      # back to the default position
    e.note_on(0, 60, 100, frame=1)
    e.render(128)
    s = e.stats()
    assert e.knobs["piano"] == key0 and e.worker.generated == 2 and s["cache_hits"] == 1 and s["cache_misses"] == 2
    # The two knob states really are different sounds.
    a = e.cache.peek(("piano", key0, 60, 96))
    b = e.cache.peek(("piano", e.mappers["piano"].with_cc(key0, 74, 0), 60, 96))
    na = e.cache.bank[a.offset:a.offset + a.length]
    nb = e.cache.bank[b.offset:b.offset + b.length]
    assert np.abs(na - nb).max() > 0.05


def test_same_knob_state_same_notes(presets):
    notes = []
    for _ in range(2):
        e = Engine(sample_rate=SR, presets=[presets["piano"]])
        e.control_change(0, 74, 99)
        e.control_change(0, 70, 3)
        e.note_on(0, 72, 64)
        e.render(16)
        ent = e.cache.peek(("piano", e.knobs["piano"], 72, 64))
        notes.append(e.cache.bank[ent.offset:ent.offset + ent.length].copy())
    assert np.array_equal(notes[0], notes[1])


def test_prepare_batches_a_file(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"], presets["flat"]])
    e.control_change(0, 74, 20)      # posted, not yet rendered: prepare must see it
    events = [("note_on", 0, 60, 100), ("note_on", 0, 60, 101), ("program_change", 0, 1),
              ("note_on", 0, 62, 30), ("note_on", 0, 62, 127), ("control_change", 0, 74, 0), (0, 64, 80)]
    assert e.prepare(events) == 3     # piano 60 @96, flat 62 (one layer), flat 64 after a knob move
    e.note_on(0, 60, 100)
    e.render(64)
    assert e.worker.generated == 3 and e.stats()["cache_misses"] == 0


def test_render_into_callers_buffer(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    assert e.latency_samples == 0
    buf = np.full((256, 2), 7.0, np.float32)
    e.note_on(0, 60, 100, frame=10)
    assert np.shares_memory(e.render(128, out=buf[:128]), buf)
    assert np.all(buf[128:] == 7.0) and np.all(buf[:10] == 0.0) and np.abs(buf[:128]).max() > 0
    assert e.render(0).shape == (0, 2)


def test_events_beyond_the_block_carry_over(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    e.note_on(0, 69, 127, frame=300)
    assert np.all(e.render(128) == 0) and np.all(e.render(128) == 0)
    out = e.render(128)
    assert first_nonzero(out) >= 300 - 256


def test_pitch_bend_and_velocity(presets):
    def f0(x):
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 17))
        freqs = np.fft.rfftfreq(1 << 17, 1 / SR)
        band = (freqs > 350) & (freqs < 560)
        return freqs[band][np.argmax(spec[band])]

    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    e.note_on(0, 69, 100)
    plain = e.render(SR // 4)[:, 0]
    e.pitch_bend(0, 8191)
    bent = e.render(SR // 4)[:, 0]
    assert abs(f0(plain) - 440) < 2
    assert abs(f0(bent) - 440 * 2 ** (2 * 8191 / 8192 / 12)) < 3
    loud = Engine(sample_rate=SR, presets=[presets["flat"]])
    soft = Engine(sample_rate=SR, presets=[presets["flat"]])
    loud.note_on(0, 60, 127)
    soft.note_on(0, 60, 32)
    a, b = loud.render(4800), soft.render(4800)
    np.testing.assert_allclose(b, a * (32 / 127), atol=1e-6)


def test_loop_mode_holds_the_note(presets):
    e = Engine(sample_rate=SR, presets=[presets["loop"]])
    e.note_on(0, 57, 100)
    out = e.render(2 * SR)[:, 0]       # four times the 0.5 s note
    rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    assert rms(out[int(1.8 * SR):]) > 0.5 * rms(out[int(0.1 * SR):int(0.2 * SR)])
    # No clicks at the loop seams: sample-to-sample steps stay like those of the plain tone.
    steady = np.abs(np.diff(out[int(0.15 * SR):int(0.2 * SR)])).max()
    assert np.abs(np.diff(out[int(0.3 * SR):])).max() < 1.2 * steady
    e.note_off(0, 57)
    e.render(int(release_span(0.02) * SR) + 1)
    assert e.stats()["voices"] == 0


@pytest.mark.parametrize("detune", [1.0, 1.013])
def test_loop_seam_is_smooth_for_detuned_notes(detune):
    from synth.worker import make_loop

    t = np.arange(SR) / SR
    f = 110.0 * detune                      # MIDI 45, played 22 cents sharp by an imperfect model
    x = (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t + 1)).astype(np.float32)
    y = x.copy()
    start, end = map(int, make_loop(y, SR, 45))
    assert 0.3 * SR <= start < end <= 0.85 * SR
    seam = np.concatenate([y[end - 500:end], y[start:start + 500]])
    assert np.abs(np.diff(seam)).max() <= 1.01 * np.abs(np.diff(x[1000:5000])).max()
    # No dip in the crossfade: the looped level stays that of the tone.
    assert np.abs(y[end - 2400:end]).max() > 0.95 * np.abs(x[end - 2400:end]).max()


def test_loop_stays_before_the_release_when_the_preset_says_where_it_ends():
    from synth.worker import make_loop

    t = np.arange(SR) / SR
    env = np.where(t < 0.6, 1.0, np.exp(-(t - 0.6) * 20.0))     # held to 0.6 s, then released
    y = (np.sin(2 * np.pi * 220.0 * t) * env).astype(np.float32)
    start, end = map(int, make_loop(y.copy(), SR, 57, end_seconds=0.55))
    assert end == int(0.55 * SR) and start >= 0.25 * SR
    assert np.abs(y[start:end]).max() > 0.99 and np.abs(y[end - 200:end]).max() > 0.99   # no release inside
    # Without the hint the loop would end at 85 % of the note, deep in the release.
    _, end85 = make_loop(y.copy(), SR, 57)
    assert env[int(end85) - 1] < 0.01


def test_program_change_and_drum_channel(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"], presets["flat"], presets["drums"]])
    e.note_on(9, 38, 100)              # channel 10: the drum kit
    e.note_on(9, 39, 100)              # not in the kit: silent
    e.program_change(0, 1, frame=5)
    e.note_on(0, 60, 100, frame=6)
    e.note_on(1, 60, 100, frame=6)     # channel 2 keeps the first preset
    e.render(64)
    v = e.voices
    got = sorted(zip(v.chan[v.active].tolist(), v.preset[v.active].tolist(), strict=True))
    assert got == [(0, 1), (1, 0), (9, 2)]
    e.note_off(9, 38)                  # drum hits ignore note-off
    e.render(64)
    assert 2 in v.preset[v.active & ~v.released].tolist()
    e.set_program_map({0: "flat", 5: "piano"})
    e.program_change(1, 0)
    e.program_change(2, 7)             # unmapped: ignored
    e.note_on(1, 50, 90, frame=1)
    e.note_on(2, 50, 90, frame=1)
    e.render(64)
    got = sorted(zip(v.chan[v.active].tolist(), v.preset[v.active].tolist(), strict=True))
    assert got == [(0, 1), (1, 0), (1, 1), (2, 0), (9, 2)]


def test_realtime_miss_falls_back_then_crossfades(presets):
    e = Engine(sample_rate=SR, blocksize=128, presets=[presets["piano"]], realtime=True)
    try:
        assert e.wait_ready(60)
        assert len(e.cache) == 88 * 4
        key, _ = e._note_key(0, e.knobs["piano"], 61, 100)
        assert e.cache.discard(key)
        e.note_on(0, 61, 100, frame=5)
        first = e.render(128)                            # the stand-in sounds in this very block
        assert first_nonzero(first) >= 5 and first_nonzero(first) < 10
        assert e.fallbacks == 1 and e.stats()["voices"] == 1
        v = e.voices
        fb_slot = int(v.slot[v.active][0])
        assert fb_slot >= 0
        deadline = time.monotonic() + 30
        while e.cache.peek(key) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        exact = e.cache.peek(key)
        assert exact is not None and exact.slot != fb_slot
        e.render(128)                                    # crossfade starts: stand-in fades, exact note rises
        assert e.stats()["voices"] == 1 and e.stats()["fading"] == 1
        e.render(int(0.03 * SR))
        assert e.stats()["fading"] == 0
        assert v.slot[v.active & ~v.ghost].tolist() == [exact.slot]
        check_rows(e)
    finally:
        e.close()


def test_realtime_fallback_pitch(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]], realtime=True)
    try:
        assert e.wait_ready(60)
        e.worker.stop()                                 # the exact note never comes: hear the stand-in alone
        key, _ = e._note_key(0, e.knobs["piano"], 69, 100)
        e.cache.discard(key)
        e.note_on(0, 69, 100)
        x = e.render(SR // 4)[:, 0]
        spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 17))
        freqs = np.fft.rfftfreq(1 << 17, 1 / SR)
        band = (freqs > 350) & (freqs < 560)
        assert abs(freqs[band][np.argmax(spec[band])] - 440) < 2   # nearest pitch, resampled to A4
    finally:
        e.close()


def test_worker_error_keeps_the_engine_playing(presets, caplog):
    e = Engine(sample_rate=SR, presets=[presets["piano"]], realtime=True)
    try:
        assert e.wait_ready(60)
        with caplog.at_level(logging.ERROR, logger="synth"):
            e.worker.request(("piano", (1, 2, 3), 60, 96))   # a knob state of the wrong size: latent() raises
            assert e.wait_ready(30)
        assert e.worker.errors == 1 and "knob state" in e.worker.last_error
        assert any("generator worker failed" in r.getMessage() for r in caplog.records)
        e.note_on(0, 60, 100)
        assert np.abs(e.render(1024)).max() > 0.01               # cached notes still play
        key, _ = e._note_key(0, e.knobs["piano"], 62, 100)
        e.cache.discard(key)
        e.worker.request(key)                                    # and the worker still serves misses
        assert e.wait_ready(30) and e.cache.peek(key) is not None
    finally:
        e.close()


def test_effects_bus_hook(presets):
    from synth.fx import EffectsBus

    outs = []
    for bs in (64, 65):
        fx = EffectsBus(SR, reverb=0.3, filter=True)
        try:
            e = Engine(sample_rate=SR, presets=[presets["piano"]], fx=fx)
            assert e.latency_samples == fx.latency_samples > 0
            outs.append(drive(e, [(0, "note_on", (0, 60, 127)), (3000, "control_change", (0, 74, 10))], 9000, bs))
        finally:
            fx.close()
    assert np.array_equal(outs[0], outs[1])
    lat = fx.latency_samples
    assert np.all(outs[0][:lat] == 0) and np.abs(outs[0]).max() <= 1.0 and np.abs(outs[0][lat:]).max() > 0.01


def test_notes_outside_the_range_are_transposed(presets):
    e = Engine(sample_rate=SR, presets=[presets["piano"]])
    e.note_on(0, 110, 100)                    # the tiny piano spans 21..108: 108 plays, shifted up
    x = e.render(SR // 4)[:, 0]
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 17))
    freqs = np.fft.rfftfreq(1 << 17, 1 / SR)
    band = (freqs > 4500) & (freqs < 5500)
    want = 440 * 2 ** ((110 - 69) / 12)
    assert abs(freqs[band][np.argmax(spec[band])] - want) < 5
    assert e.cache.peek(("piano", e.knobs["piano"], 108, 96)) is not None


def test_bad_arguments(presets):
    with pytest.raises(UserError, match="sample rate"):
        Engine(sample_rate=0, presets=[presets["piano"]])
    with pytest.raises(UserError, match="at least one preset"):
        Engine(presets=[])
    with pytest.raises(UserError, match="not loaded"):
        Engine(presets=[presets["piano"]], program_map={0: "strings"})


@pytest.mark.parametrize("seed", [1, 2])
def test_random_event_storms(presets, seed):
    """Random notes, pedals, bends, knob moves, program changes and panics on 3 presets with 6 voices:
    the bookkeeping stays consistent, the output is bounded and independent of the block size."""
    rng = np.random.default_rng(seed)
    total = 24000
    script = []
    for f in np.sort(rng.integers(0, total, 250)).tolist():
        r = rng.random()
        ch = int(rng.choice([0, 1, 9]))
        if r < 0.45:
            script.append((f, "note_on", (ch, int(rng.integers(30, 90)), int(rng.integers(1, 128)))))
        elif r < 0.75:
            script.append((f, "note_off", (ch, int(rng.integers(30, 90)))))
        elif r < 0.82:
            script.append((f, "control_change", (ch, 64, int(rng.choice([0, 127])))))
        elif r < 0.88:
            script.append((f, "pitch_bend", (ch, int(rng.integers(-8192, 8192)))))
        elif r < 0.93:
            script.append((f, "control_change", (ch, int(rng.choice([1, 74])), int(rng.integers(0, 128)))))
        elif r < 0.97:
            script.append((f, "program_change", (ch, int(rng.integers(0, 3)))))
        else:
            script.append((f, "control_change", (ch, int(rng.choice([120, 123])), 0)))
    outs = []
    for bs in (37, 4096):
        e = Engine(sample_rate=SR, presets=[presets["piano"], presets["loop"], presets["drums"]], polyphony=6)
        outs.append(drive(e, script, total, bs))
        check_rows(e)
        assert e.stats()["voices"] <= 6
    assert np.array_equal(outs[0], outs[1])
    assert np.isfinite(outs[0]).all() and np.abs(outs[0]).max() <= 1.0 and np.abs(outs[0]).max() > 0


def test_realtime_knob_sweep_while_playing(presets):
    """Live: CC 74 sweeps every block while notes arrive; every note sounds in its own block (exact
    note or stand-in), nothing waits silently, and the worker catches up afterwards."""
    e = Engine(sample_rate=SR, blocksize=128, presets=[presets["piano"]], realtime=True)
    try:
        assert e.wait_ready(60)
        rng = np.random.default_rng(0)
        played = 0
        for b in range(200):
            e.control_change(0, 74, (b * 3) % 128)
            if b % 2 == 0:
                note = int(rng.integers(21, 109))
                e.note_on(0, note, 100, frame=int(rng.integers(0, 128)))
                e.note_off(0, note, frame=127)
                played += 1
            out = e.render(128)
            assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
            if b % 2 == 0:
                assert np.abs(out).max() > 0       # the note sounds in the block it was played
            assert not e._pending_start
        s = e.stats()
        assert s["cache_hits"] + e.fallbacks == played and e.fallbacks > 0
        assert e.wait_ready(60)
        assert all(e.cache.peek(("piano", e.knobs["piano"], p, 96)) is not None for p in range(21, 109))
    finally:
        e.close()


def test_note_off_bookkeeping_follows_on_off_order_inside_a_block(presets):
    """A note-off for a key no voice holds is skipped cheaply (most of a MIDI flood's); on, off, on of
    one key inside one block leaves the second note held, and the next note-off releases it."""
    with Engine(sample_rate=SR, blocksize=128, presets=[presets["piano"]]) as e:
        e.note_off(0, 61)                              # nothing holds it: no effect, no error
        e.note_on(0, 60, 100, frame=0)
        e.note_off(0, 60, frame=10)
        e.note_on(0, 60, 100, frame=20)
        e.render(128)
        v = e.voices
        held = np.flatnonzero(v.active & v.held & (v.note == 60))
        assert len(held) == 1 and np.count_nonzero(v.active & v.released) == 1
        e.note_off(0, 60)
        e.render(128)
        assert not np.any(v.active & v.held)
        check_rows(e)
