"""The audio callback's real-time claim, measured: in steady state `Engine.render(frames, out=buf)`
makes no allocation above 1 KB (the limit `Engine.render`, `VoiceBank.mix` and the live callback's
docstrings state), and the engine's memory does not grow.

How: tracemalloc (numpy's array data included) and an opcode tracer that reads the traced peak
before every bytecode of the render path and charges the rise to the bytecode before, so a
temporary is charged to the line that made it (what one bytecode has alive at once counts
together: stricter than one allocation). Every 8th block is traced; the others are measured whole
(the rise of traced memory inside render). Events are posted outside render, as a host does.
tracemalloc counts every thread's allocations, so each measurement runs in a fresh interpreter:
threads that earlier tests left behind (an engine's worker, a pyo or JACK thread) cannot be charged
to render().
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from synth.engine import Engine
from synth.testing.tinymodel import make_tiny_preset

SR = 48000
LIMIT = 1024            # bytes: the largest single allocation render() may make
PEAK_LIMIT = 16 * 1024  # bytes: the most traced memory may rise inside one render(), or keep rising by
POLYPHONY = 256
BLOCKS = 2000
TRACE_EVERY = 8         # blocks traced opcode by opcode (slow); the others are measured whole


# A C-level trace function (PyEval_SetTrace through ctypes): sys.settrace's trampoline would fill each
# traced frame's f_locals dict on every event, allocations of its own that swamp the ones measured.
_TRACEFUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.py_object, ctypes.c_int, ctypes.c_void_p)
_set_trace = ctypes.pythonapi.PyEval_SetTrace
_set_trace.argtypes = [_TRACEFUNC, ctypes.py_object]
_set_trace.restype = None
_CALL = 0   # PyTrace_CALL


class AllocProbe:
    """Run calls under an opcode tracer and note each bytecode whose allocations exceed `limit`.

    `over()` lists the places that did so in two calls or more: numpy and CPython fill caches of
    their own (a dispatch table, a memo dict) the first time a path runs, once."""

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self.seen: dict[tuple, dict[int, int]] = {}   # (file, line) -> {call: bytes} above the limit
        self._where: tuple = ("<call>", 0)
        self._base = 0
        self._calls = 0
        self._func, self._off = _TRACEFUNC(self._trace), _TRACEFUNC()

    def _trace(self, obj, frame, what, arg) -> int:
        grow = tracemalloc.get_traced_memory()[1] - self._base
        if what == _CALL:
            frame.f_trace_lines = False
            frame.f_trace_opcodes = True
            grow -= sys.getsizeof(frame)   # made for the tracer: CPython 3.11 runs frames without one
        if grow > self.limit:
            calls = self.seen.setdefault(self._where, {})
            calls[self._calls] = max(grow, calls.get(self._calls, 0))
        self._where = (frame.f_code.co_filename, frame.f_lineno)
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        return 0

    def call(self, fn, *args, **kw):
        self._calls += 1
        self._where = ("<call>", 0)
        tracemalloc.reset_peak()
        self._base = tracemalloc.get_traced_memory()[0]
        _set_trace(self._func, self)
        try:
            return fn(*args, **kw)
        finally:
            _set_trace(self._off, None)

    def over(self) -> str:
        """The places that allocated more than the limit in two calls or more, largest first."""
        bad = {w: max(c.values()) for w, c in self.seen.items() if len(c) >= 2}
        return "; ".join(f"{f.rsplit('/', 1)[-1]}:{ln} {n} B" for (f, ln), n in
                         sorted(bad.items(), key=lambda kv: -kv[1]))


def peak_growth(fn, *args, **kw) -> int:
    """Bytes by which traced memory rose, at most, while `fn` ran (no tracer: nothing of its own)."""
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    fn(*args, **kw)
    return tracemalloc.get_traced_memory()[1] - base


def synth_memory() -> int:
    """Traced bytes allocated by code in synth/ and still held."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/synth/*")])
    return sum(stat.size for stat in snap.statistics("filename"))


class Player:
    """Steady playing on 16 channels: note-ons and note-offs in every block, pitch bends and the
    sustain pedal; oneshot notes (voices read straight ahead) and looped ones (interpolated once past
    the loop seam); more notes held than the polyphony, so voices are stolen too. Half the notes go to
    channel 0, so a bend or a pedal-up there moves a hundred voices or more in one step."""

    def __init__(self, engine: Engine, seed: int = 1):
        self.e = engine
        self.rng = np.random.default_rng(seed)
        self.held: list[tuple[int, int]] = []
        for ch in range(8):
            engine.program_change(ch, 1)   # the looped preset

    def _channel(self) -> int:
        return 0 if self.rng.random() < 0.5 else int(self.rng.integers(1, 16))

    def block(self, frames: int) -> None:
        e, rng = self.e, self.rng
        for _ in range(2):
            ch, note = self._channel(), int(rng.integers(36, 97))
            e.note_on(ch, note, int(rng.integers(20, 128)), frame=int(rng.integers(0, frames)))
            self.held.append((ch, note))
        while len(self.held) > 300 or (self.held and rng.random() < 0.3):
            ch, note = self.held.pop(int(rng.integers(0, len(self.held))))
            e.note_off(ch, note, frame=int(rng.integers(0, frames)))
        r = rng.random()
        if r < 0.05:
            e.pitch_bend(self._channel(), int(rng.choice([0, 0, int(rng.integers(-8192, 8192))])),
                         frame=int(rng.integers(0, frames)))
        elif r < 0.07:
            e.control_change(self._channel(), 64, int(rng.choice([0, 127])), frame=int(rng.integers(0, frames)))


def make_presets(d: Path) -> list:
    kw = dict(velocity_conditioned=False, layers=(127,), pitch_range=(36, 96))
    return [make_tiny_preset(d, "piano", note_seconds=1.5, **kw),
            make_tiny_preset(d, "pad", sustain_mode="loop", note_seconds=0.5, release_seconds=0.3, seed=2, **kw)]


@pytest.mark.slow
@pytest.mark.skipif(sys.implementation.name != "cpython", reason="traces through CPython's C API")
@pytest.mark.parametrize("frames", [128, 512])
def test_render_allocates_nothing_large_in_steady_state(frames, tmp_path):
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_realtime_alloc as T; "
            f"T.measure({frames}, {str(tmp_path)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]


def measure(frames: int, folder: str) -> None:
    """The measurement, in this (fresh) interpreter; raises AssertionError when a bar is missed."""
    presets = make_presets(Path(folder))
    e = Engine(sample_rate=SR, blocksize=frames, presets=presets, realtime=True, polyphony=POLYPHONY)
    try:
        assert e.wait_ready(120), "the worker did not fill the cache"
        # tracemalloc counts every thread's allocations: the generator thread, which wakes a few
        # times a second, is stopped (the engine plays the cached notes on without it).
        e.worker.stop()
        player, probe = Player(e), AllocProbe()
        buf = np.zeros((frames, 2), np.float32)
        tracemalloc.start()
        try:
            # Warm-up: memos, free lists, and CPython's per-function line tables, which it makes the
            # first time a function is traced.
            for i in range(400):
                player.block(frames)
                if i < 300:
                    e.render(frames, out=buf)
                else:
                    probe.call(e.render, frames, out=buf)
            probe.seen.clear()
            held, touched = synth_memory(), sys.getsizeof(e.cache._touched)
            voices, peak = [], 0
            for i in range(BLOCKS):
                player.block(frames)
                if i % TRACE_EVERY == 0:
                    probe.call(e.render, frames, out=buf)
                else:
                    peak = max(peak, peak_growth(e.render, frames, out=buf))
                voices.append(e.stats()["voices"])
            # The cache's LRU hints (note-on to worker thread) are a deque with a maxlen: they grow to it.
            kept = synth_memory() - held - (sys.getsizeof(e.cache._touched) - touched)
        finally:
            tracemalloc.stop()
        assert np.median(voices) >= POLYPHONY - 16 and e.stats()["steals"] > 0, voices[-10:]
        assert np.isfinite(buf).all() and e.stats()["cache_misses"] == 0
        assert not probe.over(), f"allocations over {LIMIT} B inside render(): {probe.over()}"
        assert peak <= PEAK_LIMIT, f"traced memory rose by {peak} B inside one render()"
        assert kept <= PEAK_LIMIT, f"the engine holds {kept} B more after {BLOCKS} blocks"
    finally:
        e.close()


@pytest.mark.skipif(sys.implementation.name != "cpython", reason="traces through CPython's C API")
@pytest.mark.parametrize("case", ["release", "bent-loop", "bent-release"])
def test_one_frame_mixes_of_one_voice_allocate_nothing_large(case, tmp_path):
    """Events a frame apart cut one-frame mixes; with one voice every step works on one element,
    where numpy allocates for an operation in place unless the mix avoids it."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_realtime_alloc as T; "
            f"T.measure_one_frame({case!r}, {str(tmp_path)!r})")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]


def measure_one_frame(case: str, folder: str) -> None:
    """One voice (released, a bent loop, or a bent release) rendered a frame at a time."""
    e = Engine(sample_rate=SR, blocksize=128, presets=make_presets(Path(folder)), polyphony=8)
    try:
        ch, note = (1, 62) if case == "bent-loop" else (0, 60)
        e.program_change(1, 1)
        e.prepare([(ch, note, 100)])
        e.worker.stop()
        e.note_on(ch, note, 100)
        e.render(256)
        if case.startswith("bent"):
            e.pitch_bend(ch, 3000)
        if case.endswith("release"):
            e.note_off(ch, note)
        buf, probe = np.zeros((1, 2), np.float32), AllocProbe()
        tracemalloc.start()
        try:
            for i in range(400):
                if i < 100:
                    e.render(1, out=buf)
                else:
                    probe.call(e.render, 1, out=buf)
        finally:
            tracemalloc.stop()
        assert e.stats()["voices"] == 1
        assert not probe.over(), f"allocations over {LIMIT} B inside a one-frame render(): {probe.over()}"
    finally:
        e.close()
