"""Generator worker bookkeeping: what it counts as generated, and what a failing step leaves undone."""

from __future__ import annotations

import pytest

from synth.cache import GUARD, NoteCache
from synth.latent import LatentMapper
from synth.testing.tinymodel import make_tiny_preset
from synth.worker import GeneratorWorker, ceil_resampled

SR = 48000


@pytest.fixture(scope="module")
def piano(tmp_path_factory):
    return make_tiny_preset(tmp_path_factory.mktemp("p"), note_seconds=0.25, velocity_conditioned=False,
                            layers=(127,), pitch_range=(48, 60))


def make_worker(preset, slots: int | None = None) -> GeneratorWorker:
    slot_len = ceil_resampled(preset.note_samples, preset.sample_rate, SR) + GUARD
    cache_mb = (slots or 1024) * slot_len * 4 / 2**20
    return GeneratorWorker([preset], {preset.name: LatentMapper(preset)}, NoteCache(cache_mb, slot_len), SR)


def test_generate_counts_only_the_notes_it_cached(piano):
    """A full cache stops a batch: the notes after it were not cached, and are not counted."""
    w = make_worker(piano, slots=2)
    knob = LatentMapper(piano).default_key
    keys = [(piano.name, knob, p, 127) for p in (48, 50, 52, 54)]
    n = w.generate_now(keys, protect=(piano.name, knob))     # the batch's own notes may not be evicted
    assert sum(w.cache.peek(k) is not None for k in keys) == 2
    assert n == 2 and w.generated == 2


def test_a_step_that_raises_leaves_the_keyboard_prefill_to_finish(piano, monkeypatch):
    """An exception while serving misses drops the misses, not the keyboard being prefilled (it was
    marked done, and the keyboard stayed empty); a prefill step that keeps raising is given up."""
    w = make_worker(piano)
    knob = LatentMapper(piano).default_key
    miss = (piano.name, knob, 55, 127)
    real = w._generate_each
    calls = []

    def once(keys, protect=None):
        calls.append(protect)
        if len(calls) == 1:
            raise RuntimeError("a fault outside the model")
        real(keys, protect)

    monkeypatch.setattr(w, "_generate_each", once)
    w.request(miss)
    w.prefill(piano.name, knob)
    w.start()
    try:
        assert w.wait_idle(60)
        assert calls[0] is None and w.errors == 1          # the misses' step raised
        assert all(w.cache.peek(k) is not None for k in w.keyboard(piano.name, knob))
        # A keyboard whose every step raises: given up after PREFILL_TRIES, so the worker goes idle.
        monkeypatch.setattr(w, "_generate_each", lambda keys, protect=None: 1 / 0)
        w.prefill(piano.name, (0, 0))
        assert w.wait_idle(60) and w.errors == 1 + 3
    finally:
        w.stop()
