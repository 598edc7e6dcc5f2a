"""Engine faults: a generator that raises at run time or returns NaN/Inf, panic, and an in-process MIDI
flood. The engine must keep playing cached notes, its output must stay finite and within ±1.0, and
panic (CC 120, `panic()`) must silence everything within one block.

The faulty generators are real ONNX graphs (nothing is mocked): `raising_preset` fails inside ONNX
Runtime for pitches >= 80 (a Gather out of bounds), `inf_preset` returns +Inf for chosen pitches.
"""

from __future__ import annotations

import logging
import resource
import time

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from synth.engine import Engine, release_span
from synth.preset import load_preset_dir
from synth.testing.tinymodel import make_tiny_preset

SR, BS = 48000, 512
RAISE_FROM = 80


def raising_preset(parent):
    """A preset whose graph raises in ONNX Runtime for any batch holding a pitch >= RAISE_FROM."""
    p = make_tiny_preset(parent, name="raiser", note_seconds=0.5)
    m = onnx.load(str(p.generator_path))
    g = m.graph
    last = next(n for n in g.node if "audio" in n.output)
    last.output[:] = ["audio_pre"]
    g.node.extend([
        helper.make_node("Constant", [], ["lut"], value=numpy_helper.from_array(np.zeros(RAISE_FROM, np.float32))),
        helper.make_node("Gather", ["lut", "pitch"], ["g"], axis=0),
        helper.make_node("Unsqueeze", ["g", "ax1"], ["g2"]),
        helper.make_node("Add", ["audio_pre", "g2"], ["audio"]),
    ])
    onnx.checker.check_model(m)
    onnx.save(m, str(p.generator_path))
    return load_preset_dir(p.path)


def inf_preset(parent, pitches=(62,)):
    """The tiny preset with +Inf (not NaN) in the notes of `pitches`."""
    p = make_tiny_preset(parent, name="infs", note_seconds=0.5, nan_pitches=pitches)
    m = onnx.load(str(p.generator_path))
    for n in m.graph.node:
        if n.output[0] == "nan":
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(np.array(np.inf, np.float32), "nan_v"))
    onnx.save(m, str(p.generator_path))
    return load_preset_dir(p.path)


def render_blocks(eng, n):
    return np.concatenate([eng.render(BS) for _ in range(n)])


def rms(x):
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_bad_model_output_plays_as_silence(tmp_path, kind, caplog):
    bad = (60, 62)
    p = (make_tiny_preset(tmp_path, name="nans", note_seconds=0.5, nan_pitches=bad) if kind == "nan"
         else inf_preset(tmp_path, bad))
    with Engine(sample_rate=SR, blocksize=BS, presets=[p], providers="cpu") as ref, \
            Engine(sample_rate=SR, blocksize=BS, presets=[p], providers="cpu") as eng, \
            caplog.at_level(logging.WARNING, logger="synth"):
        for e in (ref, eng):
            e.note_on(0, 64, 100)
            e.note_on(0, 67, 100)
        for note in bad:
            eng.note_on(0, note, 127)
        eng.note_on(1, 60, 90, frame=700)      # a bad note again, later, on another channel
        x, y = render_blocks(ref, 40), render_blocks(eng, 40)
        eng.report()                       # render() never logs: the offline generator's warnings
    assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
    # The good notes play exactly as without the bad ones; the bad ones add nothing.
    np.testing.assert_array_equal(x, y)
    assert rms(y[:SR // 4]) > 0.01
    # 60 and 62 at the top velocity layer, and 60 again at velocity 90's layer (96): three bad notes.
    assert eng.stats()["bad_notes"] == 3
    assert any("NaN/Inf" in r.getMessage() for r in caplog.records)


def test_generator_raising_keeps_cached_notes_playing(tmp_path, caplog):
    """A model that raises for some pitches: a failing batch (prefill chunk or misses) is retried note
    by note, so only the failing notes are lost (silent, counted as bad notes); the rest of the
    keyboard is generated, the held note keeps sounding, and the worker keeps serving misses."""
    p = raising_preset(tmp_path)
    with caplog.at_level(logging.WARNING, logger="synth"), \
            Engine(sample_rate=SR, blocksize=BS, presets=[p], realtime=True, providers="cpu", cache_mb=64) as eng:
        assert eng.wait_ready(60)
        err = (eng.worker.last_error or "").lower()
        assert eng.worker.errors >= 1 and ("indices" in err or "gather" in err or "bounds" in err), err
        knob = eng.knobs[p.name]
        layers = eng.worker.layers(p)
        keys = [(p.name, knob, k, v) for v in layers for k in p.playable_keys()]
        bad = [k for k in keys if k[2] >= RAISE_FROM]
        good = [k for k in keys if k[2] < RAISE_FROM]
        assert bad and good
        # Every good note was generated despite sharing prefill chunks with failing ones.
        assert all((e := eng.cache.peek(k)) is not None and e.slot >= 0 for k in good)
        assert all((e := eng.cache.peek(k)) is not None and e.slot < 0 for k in bad)
        assert eng.stats()["bad_notes"] == len(bad)
        eng.note_on(0, 60, 120)          # cached
        x = render_blocks(eng, 4)
        assert rms(x[-BS:]) > 0.01, "the good note never sounded"
        eng.note_on(0, 100, 120)         # a bad note: silent, and the held note plays on unchanged
        # A new knob state (its prefill waits for the knob to settle): two misses, one that raises.
        errors0, bad0, gen0 = eng.worker.errors, eng.worker.bad_notes, eng.worker.generated
        eng.control_change(0, 70, 5)
        eng.render(BS)
        eng.note_on(0, 100, 120)
        eng.note_on(0, 50, 120)
        y = eng.render(BS).copy()
        end = time.monotonic() + 20
        while (eng.worker.bad_notes == bad0 or eng.worker.generated == gen0) and time.monotonic() < end:
            y = np.concatenate([y, eng.render(BS)])
            time.sleep(0.002)
        y = np.concatenate([y, render_blocks(eng, 10)])
        assert eng.worker.errors > errors0, "the failing miss never reached the worker"
        assert eng.worker.bad_notes > bad0 and eng.worker.generated > gen0
        new_knob = eng.knobs[p.name]
        assert new_knob != knob
        assert eng.cache.peek((p.name, new_knob, 50, 127)).slot >= 0
        assert eng.cache.peek((p.name, new_knob, 100, 127)).slot < 0
        assert eng.worker._thread is not None and eng.worker._thread.is_alive()
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
        # The held cached note kept sounding through the failures, in every block.
        assert min(rms(y[i:i + BS]) for i in range(0, len(y) - BS + 1, BS)) > 0.005
    msgs = [r.getMessage() for r in caplog.records]
    assert any("retrying note by note" in m for m in msgs)
    assert any("the model failed for pitch 100" in m for m in msgs)


@pytest.fixture(scope="module")
def piano(tmp_path_factory):
    return make_tiny_preset(tmp_path_factory.mktemp("p"), note_seconds=1.0, release_seconds=0.2)


@pytest.mark.parametrize("how", ["cc120", "panic"])
def test_panic_silences_within_one_block(piano, how):
    with Engine(sample_rate=SR, blocksize=BS, presets=[piano], providers="cpu", polyphony=256) as eng:
        for ch in range(16):
            eng.control_change(ch, 64, 127)           # sustain: note-offs alone would not stop anything
            for k in range(16):
                eng.note_on(ch, 36 + 3 * k + ch % 3, 127, frame=k)
        eng.pitch_bend(3, 8191)
        render_blocks(eng, 4)
        for ch in range(16):
            for k in range(16):
                eng.note_off(ch, 36 + 3 * k + ch % 3)
        x = render_blocks(eng, 2)
        assert rms(x) > 0.05 and eng.stats()["voices"] >= 200
        if how == "cc120":
            for ch in range(16):
                eng.control_change(ch, 120, 0, frame=0)
        else:
            eng.panic()
        first = eng.render(BS).copy()
        after = render_blocks(eng, 4)
    assert np.abs(first[int(0.006 * SR):]).max() == 0.0   # the 5 ms fade ends inside the block
    assert np.abs(after).max() == 0.0
    assert np.isfinite(first).all() and np.abs(first).max() <= 1.0


def test_all_notes_off_releases_held_and_sustained(piano):
    with Engine(sample_rate=SR, blocksize=BS, presets=[piano], providers="cpu") as eng:
        eng.control_change(0, 64, 127)
        for k in range(40):
            eng.note_on(0, 40 + k, 100)
        render_blocks(eng, 3)
        eng.control_change(0, 123, 0)
        eng.control_change(0, 64, 0)
        n = int(np.ceil(release_span(piano.release_seconds) * SR / BS)) + 1
        render_blocks(eng, n)
        assert np.abs(render_blocks(eng, 2)).max() == 0.0
        assert eng.stats()["voices"] == 0


def _flood_block(rng, n_events):
    """One block's worth of hostile events: note-ons without note-offs, CC storms on every CC number
    (knobs included), program changes, bends, out-of-range values, on all channels."""
    ev = []
    for _ in range(n_events):
        r = rng.random()
        ch = int(rng.integers(0, 16))
        f = int(rng.integers(0, BS * 2))        # some beyond this block: they carry over
        if r < 0.5:
            ev.append(("on", ch, int(rng.integers(0, 128)), int(rng.integers(0, 200)), f))
        elif r < 0.85:
            ev.append(("cc", ch, int(rng.integers(0, 128)), int(rng.integers(-5, 300)), f))
        elif r < 0.92:
            ev.append(("bend", ch, int(rng.integers(-20000, 20000)), 0, f))
        elif r < 0.96:
            ev.append(("prog", ch, int(rng.integers(0, 128)), 0, f))
        else:
            ev.append(("off", ch, int(rng.integers(0, 128)), 0, f))
    return ev


def test_in_process_flood_10k_events_per_second(piano):
    """10,000 events/s for 0.6 s of audio straight into a live-mode engine: voices stay at polyphony,
    the queue drains, memory stays within the note cache's cap, output finite and within ±1.0.
    (The JACK version with real MIDI bytes is in test_reliability_live.py.)"""
    rng = np.random.default_rng(7)
    seconds, rate = 0.6, 10_000
    per_block = int(rate * BS / SR)
    cap_mb = 96
    with Engine(sample_rate=SR, blocksize=BS, presets=[piano], realtime=True, providers="cpu", polyphony=128,
                cache_mb=cap_mb) as eng:
        assert eng.wait_ready(60)
        out = np.zeros((BS, 2), np.float32)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = 0.0
        n_blocks = int(seconds * SR) // BS
        times = []
        call = {"on": eng.note_on, "cc": eng.control_change, "bend": eng.pitch_bend, "prog": eng.program_change,
                "off": eng.note_off}
        for b in range(n_blocks):
            for kind, ch, a, v, f in _flood_block(rng, per_block):
                if kind in ("bend", "prog", "off"):
                    call[kind](ch, a, frame=f)
                else:
                    call[kind](ch, a, v, frame=f)
            t0 = time.perf_counter()
            eng.render(BS, out=out)
            times.append(time.perf_counter() - t0)
            assert np.isfinite(out).all()
            peak = max(peak, float(np.abs(out).max()))
            if b == n_blocks // 2:
                eng.panic()
                eng.render(BS, out=out)
                eng.render(BS, out=out)
                assert np.abs(out).max() == 0.0, "panic under flood left sound after one block"
        st = eng.stats()
        assert len(eng._events) == 0 and len(eng._carry) <= 2 * per_block
        assert st["voices"] <= 128 and st["cache_mb"] <= cap_mb + 1
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert peak <= 1.0
    # Not asserted (a shared CI machine): how long a flooded block takes against its 10.7 ms.
    print(f"flood render ms per {BS}-frame block: p50 {1e3 * np.median(times):.1f}, max {1e3 * max(times):.1f}")
    # Memory: bounded by the cache cap plus working arrays, whatever the number of events.
    assert rss1 - rss0 < cap_mb + 150, (rss0, rss1)
