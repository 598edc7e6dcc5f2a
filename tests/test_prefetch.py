"""Offline prepare in the background (`Engine.prepare(background=True)`, `GeneratorWorker.prefetch`):
the render waits for a note still to come and plays exactly what a blocking prepare gives, every
note is generated once, the disk cache gets every note, and an error in the prefetch thread fails
the render without leaving a file."""

from __future__ import annotations

import threading
import time

import mido
import numpy as np
import pytest

import synth.inference as inference
from synth.engine import Engine
from synth.errors import UserError
from synth.render import render_file

SR = 48000
PHRASE = (48, 52, 55, 60, 64, 67, 50, 53, 57, 62, 65, 69)


@pytest.fixture(scope="module")
def presets(piano_and_pad):
    return piano_and_pad


def _events():
    ev = []
    for i, p in enumerate(PHRASE):
        ev += [("program_change", 0, i % 2), ("note_on", 0, p, 40 + 7 * i)]
    return ev


def _render(presets, background: bool, disk=None) -> tuple[np.ndarray, Engine]:
    """The phrase offline, one note every 1/24 s on both presets in turn, after `prepare`."""
    e = Engine(presets=presets, blocksize=512, disk_cache=disk)
    e.prepare(_events(), background=background)
    out = []
    for i, p in enumerate(PHRASE):
        e.program_change(0, i % 2)
        e.note_on(0, p, 40 + 7 * i)
        out.append(e.render(SR // 24).copy())
    out.append(e.render(SR // 2).copy())
    if background:
        e.finish_prepare()
    e.close()
    return np.concatenate(out), e


@pytest.fixture
def slow_model(monkeypatch):
    """Each batch the prefetch thread runs takes 50 ms longer, so the render catches up with it."""
    real = inference.GeneratorSession.generate

    def slow(self, *a, **k):
        if threading.current_thread().name == "synth-prefetch":
            time.sleep(0.05)
        return real(self, *a, **k)

    monkeypatch.setattr(inference.GeneratorSession, "generate", slow)


def test_a_background_prepare_plays_what_a_blocking_one_does(presets, slow_model):
    ref, e0 = _render(presets, background=False)
    bg, e1 = _render(presets, background=True)
    assert np.abs(ref).max() > 0.01
    assert np.array_equal(ref, bg)
    assert e1.prepare_wait_s > 0.0                 # the render did wait for notes still to come
    assert e1.worker.generated == e0.worker.generated == len(PHRASE)   # none generated twice


def test_a_background_prepare_fills_the_disk_cache_and_reads_it_back(presets, tmp_path, slow_model):
    ref, _ = _render(presets, background=False)
    cold, e1 = _render(presets, background=True, disk=tmp_path / "dc")
    warm, e2 = _render(presets, background=True, disk=tmp_path / "dc")
    assert e1.worker.generated == len(PHRASE) and len(list((tmp_path / "dc").glob("v*/*/*.note"))) == len(PHRASE)
    assert e2.worker.generated == 0 and e2.worker.disk_hits == len(PHRASE)
    assert np.array_equal(ref, cold) and np.array_equal(ref, warm)


def test_an_error_in_the_prefetch_fails_the_render_and_leaves_no_file(presets, tmp_path, monkeypatch):
    """The render thread generates what the failed prefetch left (the same notes), and the error is
    raised before the file is kept."""
    real = inference.GeneratorSession.generate

    def broken(self, *a, **k):
        if threading.current_thread().name == "synth-prefetch":
            raise UserError("boom: the prefetch failed")
        return real(self, *a, **k)

    monkeypatch.setattr(inference.GeneratorSession, "generate", broken)
    with pytest.raises(UserError, match="boom"):
        _render(presets, background=True)
    mid = mido.MidiFile()
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    for p in PHRASE[:4]:
        tr += [mido.Message("note_on", note=p, velocity=90, time=0), mido.Message("note_off", note=p, time=240)]
    mid.save(tmp_path / "in.mid")
    out = tmp_path / "out.wav"
    with pytest.raises(UserError, match="boom"):
        render_file(tmp_path / "in.mid", out, preset=presets[0].name, preset_dirs=[presets[0].path.parent],
                    progress=False)
    assert not out.exists() and not list(tmp_path.glob("*.wav*"))


def test_the_offline_mix_lets_the_gil_go_and_the_live_mix_keeps_it(presets):
    """Offline the compiled mix runs without the GIL (the prefetch's Python runs beside it); live the
    audio callback keeps it through the call, so it never waits to take it back from a worker."""
    off = Engine(presets=presets)
    live = Engine(presets=presets, realtime=True)
    try:
        assert off.voices.release_gil and not live.voices.release_gil
    finally:
        off.close()
        live.close()


def test_deferring_warnings_is_per_thread(presets):
    """The render thread's `defer_warnings` (no log, no disk inside render()) never leaks into the
    prefetch thread, which reads and writes the disk cache."""
    e = Engine(presets=presets)
    seen = []
    e.worker.defer_warnings = True
    t = threading.Thread(target=lambda: seen.append(e.worker.defer_warnings))
    t.start()
    t.join()
    assert e.worker.defer_warnings and seen == [False]
    e.close()


def test_the_prefetch_publishes_a_batch_while_the_model_makes_the_next(presets, monkeypatch):
    """The model's batch k + 1 starts before batch k is laid out and published, and that is done by
    the prefetch's second thread; the render plays the same samples."""
    import synth.worker as worker

    real_infer, real_publish = worker.GeneratorWorker._infer, worker.GeneratorWorker._publish_batch
    infers, seen = [], {}
    second = threading.Event()

    def infer(self, name, keys):
        infers.append(threading.current_thread().name)
        if len(infers) == 2:
            second.set()
        return real_infer(self, name, keys)

    def publish(self, name, keys, *a):
        if "overlap" not in seen and threading.current_thread().name.startswith("synth-publish"):
            seen["overlap"] = second.wait(10.0)        # a serial prefetch would never get there
            seen["thread"] = threading.current_thread().name
        return real_publish(self, name, keys, *a)

    ref, _ = _render(presets, background=False)
    monkeypatch.setattr(worker.GeneratorWorker, "_infer", infer)
    monkeypatch.setattr(worker.GeneratorWorker, "_publish_batch", publish)
    bg, e = _render(presets, background=True)
    assert len(infers) >= 2 and set(infers) == {"synth-prefetch"}
    assert seen == {"overlap": True, "thread": seen["thread"]} and seen["thread"].startswith("synth-publish")
    assert np.array_equal(ref, bg) and e.worker.generated == len(PHRASE)


def test_an_error_while_publishing_fails_the_render(presets, monkeypatch):
    import synth.worker as worker

    real = worker.GeneratorWorker._publish_batch

    def broken(self, *a, **k):
        if threading.current_thread().name.startswith("synth-publish"):
            raise UserError("boom: publishing failed")
        return real(self, *a, **k)

    monkeypatch.setattr(worker.GeneratorWorker, "_publish_batch", broken)
    with pytest.raises(UserError, match="publishing failed"):
        _render(presets, background=True)


def test_an_offline_engine_skips_the_models_warm_up(presets):
    """The warm-up times the live worker's chunks; offline it would generate nine notes a preset."""
    off, live = Engine(presets=presets), Engine(presets=presets, realtime=True)
    try:
        assert all(s.seconds_per_note is None for s in off.worker.sessions.values())
        assert all(s.seconds_per_note is not None for s in live.worker.sessions.values())
    finally:
        off.close()
        live.close()
