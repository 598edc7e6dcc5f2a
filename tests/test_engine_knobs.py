"""Knobs → latent (the formula in docs/architecture.md), knob-map overrides, knob state as cache key."""

from __future__ import annotations

import numpy as np
import pytest
from tinymodel import make_tiny_preset

from synth.engine import Engine
from synth.errors import UserError
from synth.latent import LatentMapper


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    return make_tiny_preset(tmp_path_factory.mktemp("p"))


def test_latent_formula(preset):
    m = LatentMapper(preset)
    key = m.with_cc(m.with_cc(m.default_key, 74, 127), 1, 0)
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
