"""Knobs → latent (the formula in docs/architecture.md), knob-map overrides, knob state as cache key."""

from __future__ import annotations

import numpy as np
import pytest

from synth.engine import Engine
from synth.errors import UserError
from synth.latent import LatentMapper
from synth.testing.tinymodel import make_tiny_preset


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return make_tiny_preset(tmp_path_factory.mktemp("p"))


def test_latent_formula(preset):
    m = LatentMapper(preset)
    key = m.with_cc(m.with_cc(m.default_key, 74, 127), 70, 0)
    want = np.asarray(preset.default_latent, np.float64)
    for k, v in zip(preset.knobs, key, strict=True):
        lo, hi = k.range
        want = want + (lo + (hi - lo) * v / 127) * np.asarray(k.direction)
    np.testing.assert_allclose(m.latent(key), want, rtol=1e-6, atol=1e-6)
    assert m.latent(key).dtype == np.float32 and m.latent(key).shape == (preset.latent_size,)
    assert key == (127, 0)            # knob order: brightness (CC 74), colour (CC 1)
    assert m.with_cc(key, 7, 99) is key   # CC 7 is no knob


def test_knob_map_overrides(preset):
    m = LatentMapper(preset, knob_map={71: "brightness", 20: 1})
    assert m.knob_for_cc(71) == 0 and m.knob_for_cc(20) == 1
    assert m.knob_for_cc(74) is None and m.knob_for_cc(1) is None
    assert m.with_cc(m.default_key, 71, 5) == (5, 64)
    # Names a preset lacks are skipped, unless strict.
    assert LatentMapper(preset, knob_map={76: "warmth"}).knob_for_cc(76) is None
    with pytest.raises(UserError, match="no knob 'warmth'"):
        LatentMapper(preset, knob_map={76: "warmth"}, strict=True)
    with pytest.raises(UserError, match="CC"):
        LatentMapper(preset, knob_map={300: 0})


def test_engine_knob_map_and_set_knob(preset):
    e = Engine(presets=[preset], knob_map={71: "brightness"})
    e.control_change(0, 74, 3)
    e.render(8)
    assert e.knobs["piano"] == (64, 64)
    e.control_change(0, 71, 3)
    e.render(8)
    assert e.knobs["piano"] == (3, 64)
    e.set_knob(71, 100)
    assert e.knobs["piano"] == (100, 64)
    with pytest.raises(UserError, match="no loaded preset has that knob"):
        Engine(presets=[preset], knob_map={71: "warmth"})


def test_realtime_knob_move_prefills_the_new_state(preset):
    e = Engine(presets=[preset], realtime=True)
    try:
        assert e.wait_ready(60)
        before = len(e.cache)
        e.control_change(0, 74, 10)
        e.render(128)
        assert e.wait_ready(60)
        assert len(e.cache) == before + 88 * 4
        assert all(e.cache.peek(("piano", (10, 64), p, 96)) is not None for p in range(21, 109))
        # Moving back is instant: the old keyboard is still cached.
        e.control_change(0, 74, 64)
        e.note_on(0, 60, 96, frame=1)
        e.render(128)
        assert e.fallbacks == 0 and e.stats()["cache_hits"] == 1
    finally:
        e.close()


ENGINE_KNOBS = ({"cc": 76, "name": "tune", "kind": "tune", "range": [-12.0, 12.0 * 63 / 64], "default": 64},
                {"cc": 71, "name": "decay", "kind": "decay", "range": [0.05, 1.0], "default": 127})


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return make_tiny_preset(tmp_path_factory.mktemp("k"), name="drums", kind="drums", extra_knobs=ENGINE_KNOBS)


def _hit(eng, note=38, frames=16000):
    eng.note_on(9, note, 100)
    x = eng.render(frames)[:, 0].astype(np.float64)
    eng.render(16000)                      # let the hit end before the next one
    return x


def test_engine_knobs_parse_and_leave_the_latent_alone(kit):
    m = LatentMapper(kit)
    assert [k.kind for k in kit.knobs] == ["latent", "latent", "tune", "decay"]
    assert kit.knobs[2].direction == () and m.tune_index == 2 and m.decay_index == 3
    base = m.default_key
    assert base == (64, 64, 64, 127)
    moved = m.with_cc(m.with_cc(base, 76, 0), 71, 3)
    np.testing.assert_array_equal(m.latent(moved), m.latent(base))       # engine knobs are not timbre
    key, rate = m.split(moved)
    assert key == (64, 64, 64, 3) and rate == pytest.approx(0.5)          # tune leaves the cache key
    assert m.split(base) == (base, 1.0)                                    # CC 64: exactly as trained
    assert m.decay_seconds(base) is None and m.decay_seconds(moved) == pytest.approx(0.05 * 20 ** (3 / 126))


def test_tune_knob_transposes_the_kit_without_generating(kit):
    sr = 16000
    eng = Engine(sample_rate=sr, presets=[kit], realtime=False)
    x0 = _hit(eng)
    made = eng.worker.generated
    eng.control_change(9, 76, 127)                                        # an octave up
    x1 = _hit(eng)
    assert eng.worker.generated == made                                   # the cached hit, played faster
    rate = 2.0 ** ((-12.0 + (12.0 * 63 / 64 + 12.0) * 127 / 127) / 12.0)   # CC 127: +11.8 semitones
    k = np.arange(int(len(x0) / rate) - 2)
    np.testing.assert_allclose(x1[k], np.interp(k * rate, np.arange(len(x0)), x0), atol=1e-5)   # resampled
    e0, e1 = np.flatnonzero(np.abs(x0) > 1e-4), np.flatnonzero(np.abs(x1) > 1e-4)
    assert (e1[-1] - e1[0]) / (e0[-1] - e0[0]) == pytest.approx(1 / rate, rel=0.01)   # and shorter
    eng.control_change(9, 76, 64)
    np.testing.assert_array_equal(_hit(eng), x0)                          # back to the note as trained


def test_decay_knob_shortens_every_hit_and_127_leaves_it(kit):
    sr = 16000
    eng = Engine(sample_rate=sr, presets=[kit], realtime=False)
    x0 = _hit(eng)
    eng.control_change(9, 71, 0)                                          # T60 = 50 ms
    x1 = _hit(eng)
    peak = np.abs(x0).max()
    np.testing.assert_allclose(x1[:60], x0[:60], atol=1e-6)              # the first 5 ms stay whole
    late = slice(int(0.12 * sr), None)
    assert np.abs(x1[late]).max() < 1e-3 * peak < np.abs(x0[late]).max()   # -60 dB by 55 ms, and more
    eng.control_change(9, 71, 127)
    np.testing.assert_array_equal(_hit(eng), x0)


def test_live_tune_moves_prefill_nothing_and_decay_moves_refill_the_kit(kit):
    eng = Engine(sample_rate=16000, presets=[kit], realtime=True)
    try:
        assert eng.wait_ready(60)
        calls = []
        real = eng.worker.prefill
        eng.worker.prefill = lambda name, key, settle=False: (calls.append((name, key, settle)), real(name, key, settle))
        eng.control_change(9, 76, 100)
        eng.render(256)
        assert calls == []
        eng.control_change(9, 71, 20)
        eng.render(256)
        assert calls == [("drums", (64, 64, 64, 20), True)]
    finally:
        eng.close()


def test_knob_move_prefill_completes_when_the_cache_is_full(preset):
    """Once the note cache is full, a knob move still fills the whole keyboard of the new state,
    evicting older states' notes. (The worker used to judge "nothing fitted" by the entry count, which
    stays the same when each new note evicts an old one: after the first few knob states a prefill
    stopped after one chunk, and the player got stand-ins for most keys.)"""
    probe = Engine(presets=[preset], realtime=False, cache_mb=16)
    slot_bytes = probe.cache.slot_len * 4
    probe.close()
    keyboard = 88 * 4
    e = Engine(presets=[preset], realtime=True, cache_mb=(keyboard * 3 // 2) * slot_bytes / 2**20)
    try:
        assert e.wait_ready(60)
        assert e.cache.n_slots < 2 * keyboard
        for value in (10, 100, 40):
            e.control_change(0, 74, value)
            e.render(128)
            assert e.wait_ready(60)
            missing = [(p, v) for p in range(21, 109) for v in (32, 64, 96, 127)
                       if e.cache.peek(("piano", (value, 64), p, v)) is None]
            assert not missing, (value, len(missing), e.cache.stats())
    finally:
        e.close()
