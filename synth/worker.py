"""Generator worker: owns the ONNX sessions, batches requests, resamples, publishes into the cache.

Live, it runs as a thread: single-note misses first, then the whole keyboard of the current knob
state of each preset (at the preset's velocity layers), in chunks of about 20 ms so a miss never
waits long behind a prefill. After a knob move only the newest state is prefilled (a sweep of CC 74
does not queue 128 keyboards), and only once the knob has been still for `SETTLE_SECONDS` (or has
kept moving for `MAX_DEFER_SECONDS`): a sweep abandons each state within one step, so prefilling
them would only burn CPU beside the audio thread. Notes played during a sweep are single-note
misses, with the same pitch of a recent state as stand-in.
Offline, the engine calls `generate_now` in its own thread, or `prefetch` generates a file's notes in
a thread beside the render, which waits (`wait_for`) for a note still to come; a second thread
publishes each batch while the model makes the next.

Each note is resampled once to the output rate with soxr (HQ). Model output with NaN/Inf becomes
a silent entry and a warning; it is never cached as audio. A batch that raises is retried note by
note: a note that fails alone becomes a silent entry (a bad note) and the others are generated. Any
other exception in the worker is logged and the engine keeps playing what is cached: it drops the
queued misses, or, while a keyboard was being filled, that prefill is tried again (given up after
PREFILL_TRIES failures in a row). At most MAX_MISSES single-note requests wait; a flood drops the
oldest.

With a `disk_cache` (`synth.diskcache`), a note missing from memory is looked up on disk before the
model runs, and a generated note is written there: offline (`generate_now` from `prepare`) by a
writer thread while the file renders, started once `prepare` or the prefetch is done (`stop` waits
for it); live by the worker thread once it is idle (a request cuts the writing short). The offline engine's own misses inside `render()` never
touch the disk.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from synth import ring
from synth.cache import GUARD, NoteCache
from synth.diskcache import open_disk_cache
from synth.inference import GeneratorSession
from synth.latent import LatentMapper, level_gain
from synth.preset import Preset

log = logging.getLogger("synth")

CHUNK_SECONDS = 0.02
SETTLE_SECONDS = 0.15     # a moved knob's keyboard is prefilled once the knob is this still ...
MAX_DEFER_SECONDS = 1.0   # ... or has kept moving this long (one prefill start per second at most)
LOOP_XFADE_SECONDS = 0.05
MAX_MISSES = 256          # queued single-note requests; a flood drops the oldest (they keep their stand-in)
WRITE_QUEUE_BYTES = 256 * 2**20   # offline: generated audio waiting for the disk writer, at most
PREFILL_TRIES = 3         # failed steps in a row after which a keyboard prefill is given up
MAX_PLANS = 512           # ringing notes' partial tables kept (<= 20 KB each; remade from the cached head)
MAX_TAIL_REQUESTS = 1024  # queued continuation-segment requests; a flood drops the oldest
PREFETCH_FIRST = 8        # offline prefetch: keys in its first wave (the next ones double) ...
PREFETCH_MAX = 64         # ... up to this many


def midi_hz(pitch: float) -> float:
    return 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)


def make_loop(x: np.ndarray, sample_rate: int, pitch: int, end_seconds: float | None = None
              ) -> tuple[float, float] | None:
    """Bake a seamless loop into the sustain portion of note `x` (float32[M], modified in place).

    The loop spans about a whole number of pitch periods (chosen so it is nearly an integer number
    of samples) ending at `end_seconds` (default 85% of the note; the preset sets it just before
    the training data's note-off, so the loop never takes in the release); its exact length is then the one within half a period
    whose crossfade segments correlate best, since a generated note is not exactly in tune. The
    last `LOOP_XFADE_SECONDS` before the loop end are crossfaded with the samples one loop length
    earlier, so jumping from `end` back to `start` continues the waveform. Returns (start, end) in
    samples, or None if the note is too short.
    """
    n = len(x)
    b = int(0.85 * n) if end_seconds is None else min(n, int(end_seconds * sample_rate))
    a = min(int(0.3 * n), b // 2)
    period = sample_rate / midi_hz(pitch)
    if b - a < 4 * period or b - a < 256:
        return None
    span = b - a
    ks = np.arange(max(1, int(0.5 * span / period)), max(2, int(0.95 * span / period)) + 1)
    err = np.abs(ks * period - np.round(ks * period))
    k = int(ks[np.flatnonzero(err <= err.min() + 1e-3)[-1]])
    length = int(round(k * period))
    end = b
    xf = min(length // 2, end - length, int(LOOP_XFADE_SECONDS * sample_rate))
    if xf >= 8:
        h = max(1, int(round(period / 2)))
        lo_len, hi_len = max(2 * xf, length - h), min(end - xf - 1, length + h)
        if hi_len > lo_len:
            seg = x[end - xf:end].astype(np.float64)
            base = x[end - hi_len - xf:end - lo_len].astype(np.float64)
            win = np.lib.stride_tricks.sliding_window_view(base, xf)      # row r: loop length hi_len - r
            energy = np.convolve(base * base, np.ones(xf), mode="valid")
            score = (win @ seg) / np.sqrt(np.maximum(energy, 1e-20))
            length = int(hi_len - np.argmax(score))
            xf = min(xf, length // 2)
    start = end - length
    if xf >= 8:
        t = (np.arange(xf, dtype=np.float32) + 0.5) / xf
        seg = slice(end - xf, end)
        x[seg] = x[seg] * (1.0 - t) + x[end - xf - length:end - length] * t
    return float(start), float(end)


class GeneratorWorker:
    """Generates notes for `presets` into `cache` at `out_rate` Hz.

    Keys are `(preset name, knob key, model pitch, velocity layer)`; the model gets
    `z = mapper.latent(knob key)`, `pitch`, `velocity = layer / 127`.
    """

    def __init__(self, presets: list[Preset], mappers: dict[str, LatentMapper], cache: NoteCache, out_rate: int,
                 providers="auto", threads: int = 1, sessions: dict[str, GeneratorSession] | None = None,
                 disk_cache=None, offline: bool = False):
        self.presets = {p.name: p for p in presets}
        self.mappers = mappers
        self.cache = cache
        self.out_rate = int(out_rate)
        self.disk = open_disk_cache(disk_cache)   # None, or a synth.diskcache.DiskCache
        self.offline = bool(offline)
        # A graph loads on first use when notes may come from disk. The warm-up only times live
        # chunks (`_chunk`): offline it would cost nine notes a preset.
        self.sessions = sessions if sessions is not None else {
            p.name: GeneratorSession(p, providers=providers, threads=threads,
                                     warmup=self.disk is None and not offline, lazy=self.disk is not None)
            for p in presets}
        self._misses: deque = deque(maxlen=MAX_MISSES)
        self.misses_dropped = 0
        self.misses_stale = 0
        self._targets: dict[str, tuple] = {}   # written by the engine only
        self._done: dict[str, tuple] = {}      # written by the worker only
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._gen_lock = threading.Lock()
        self._disk_scratch = bytearray()
        self._thread: threading.Thread | None = None
        self._warned: set = set()
        self._tl = threading.local()            # per thread: `defer_warnings`, `_log_later`
        self.deferred: list[tuple] = []         # (message, args) kept by `_warn`
        # Offline prefetch (`prefetch`): its thread, the keys it will publish, and a condition that
        # wakes the engine's thread as each wave is published or the prefetch ends.
        self._pf_thread: threading.Thread | None = None
        self._pf_planned: frozenset = frozenset()
        self._pf_cond = threading.Condition()
        self._pf_done = True
        self._pf_error: BaseException | None = None
        self.prefetch_wait_s = 0.0              # time the engine's thread waited for planned notes
        self.errors = 0
        self.last_error: str | None = None
        self.generated = 0
        self._level_gains: dict[tuple, float] = {}
        self.bad_notes = 0
        self.disk_hits = 0
        self.last_miss_ms: float | None = None
        self.last_prefill_s: float | None = None
        self._prefill_t0: dict[str, float] = {}
        # Knob-move debounce: preset -> (knob key, due time, first unsettled move), written by prefill();
        # preset -> the knob key whose prefill has begun, written by the worker only.
        self._settle: dict[str, tuple] = {}
        self._begun: dict[str, tuple] = {}
        self._kb = None
        self._job: tuple | None = None          # (preset, knob key) of the prefill step running, if any
        self._fails: dict[tuple, int] = {}     # its failed steps in a row
        self._kbs: dict[tuple, str | None] = {}   # (preset, knob key) -> its disk keyboard (None: not cacheable)
        self._unstored: deque = deque()           # live: keys generated and not yet on disk
        self._writes: queue.SimpleQueue | None = None   # offline: (key, audio, loop) for the writer thread
        self._writer: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._write_bytes = 0                     # audio queued for the writer and not yet written,
        self._write_count = 0                     # and its notes
        # Ringing notes (synth.ring): where each preset's data let the key go (None: it does not ring),
        # each note's plan (written by the generating thread only), live segment requests from the
        # engine and how many voices still want each segment.
        self.ring_off = {p.name: ring.ring_off(p) for p in presets}
        self.plans: dict[tuple, ring.RingPlan] = {}
        self._plans_lock = threading.Lock()
        self._tails: deque = deque(maxlen=MAX_TAIL_REQUESTS)
        self._wants: dict[tuple, int] = {}
        self.tails_made = 0
        if self.disk is not None and sessions is None:
            self._warm_up_unless_on_disk()

    # ---- control (any thread; the audio thread only appends and sets an Event) -------------------
    def request(self, key: tuple) -> None:
        """Ask for one missing note, ahead of any prefill. Never blocks."""
        if len(self._misses) >= MAX_MISSES:
            self.misses_dropped += 1   # the deque drops its oldest request: that voice keeps its stand-in
        self._misses.append(key)
        # Event.clear/set take a lock each; a burst of misses (a chord) checks the flags instead.
        # The worker re-reads `pending` before it declares itself idle, so no request is lost.
        if self._idle.is_set():
            self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def request_tail(self, key: tuple, k: int | None, entered: int | None = None) -> None:
        """Live: a voice of note `key` will need continuation segment `k` (None: none), having
        `entered` segment `entered` now (None: it started the head). Never blocks."""
        self._tails.append((key, k, entered))
        if self._idle.is_set():
            self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def prefill(self, preset: str, knobkey: tuple, settle: bool = False) -> None:
        """Fill the whole keyboard of `preset` at `knobkey` (replacing an unfinished older prefill).

        `settle` (a knob move): begin only after the knob has been still for SETTLE_SECONDS, or once
        MAX_DEFER_SECONDS have passed since the first move that has not been prefilled yet."""
        now = time.perf_counter()
        if settle:
            prev = self._settle.get(preset)
            first = prev[2] if prev is not None and self._begun.get(preset) != prev[0] else now
            self._settle[preset] = (knobkey, min(now + SETTLE_SECONDS, first + MAX_DEFER_SECONDS), first)
        else:
            self._settle.pop(preset, None)
        self._targets[preset] = knobkey
        self._prefill_t0[preset] = now
        # Called by the audio thread for every knob CC: check the flags first, as request() does, so it
        # takes an Event's lock only when the worker sleeps.
        if self._idle.is_set():
            self._idle.clear()
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="synth-generator", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end after its current batch, without waiting."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, and finish the offline disk writes (each given `timeout` seconds)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._pf_thread is not None:
            self._pf_thread.join(timeout)
            self._pf_thread = None
        self._start_writer()
        if self._writer is not None:
            self._writes.put(None)
            self._writer.join(timeout)
            self._writer = None
            self._writes = None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no miss or prefill is pending (for start-up and tests); True if idle."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._idle.wait(left):
                return False
            if not self.pending:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    @property
    def pending(self) -> int:
        return len(self._misses) + len(self._tails) + sum(1 for n, k in list(self._targets.items())
                                                          if self._done.get(n) != k)

    # ---- generation -------------------------------------------------------------------------------
    def keyboard(self, preset: str, knobkey: tuple) -> list[tuple]:
        """Every key of a prefill, most useful first: the loudest-used layer, pitches from middle C out."""
        if self._kb is not None and self._kb[0] == (preset, knobkey):
            return self._kb[1]
        p = self.presets[preset]
        layers = sorted(self.layers(p), key=lambda v: abs(v - 100))
        pitches = sorted(p.playable_keys(), key=lambda k: (abs(k - 60), k))
        keys = [(preset, knobkey, k, v) for v in layers for k in pitches]
        self._kb = ((preset, knobkey), keys)   # the prefill loop asks again every chunk
        return keys

    @staticmethod
    def layers(p: Preset) -> tuple[int, ...]:
        """Velocity layers that are generated: all for conditioned presets, the top one otherwise."""
        return p.velocity_layers if p.velocity_conditioned else (p.velocity_layers[-1],)

    @property
    def defer_warnings(self) -> bool:
        """Set while the offline engine generates inside render(), in that thread only: warnings are
        kept for `Engine.report`, and the disk cache is not touched."""
        return getattr(self._tl, "defer", False)

    @defer_warnings.setter
    def defer_warnings(self, value: bool) -> None:
        self._tl.defer = bool(value)

    def generate_now(self, keys: Iterable[tuple], protect: tuple | None = None, start_writer: bool = True) -> int:
        """Generate and publish every key not yet cached, in batches per preset; returns how many were
        cached (a full cache stops a batch). A key a running `prefetch` will publish is waited for,
        not generated twice (the note is the same either way: its batch is the prefetch's)."""
        keys = list(keys)
        self.wait_for(keys)
        todo = self._uncached(keys)
        n = 0
        if not todo:
            # Nothing left to make: never queue behind the prefetch's next wave for the lock.
            if start_writer:
                self._start_writer()
            return n
        with self._gen_lock:
            for name, ks in todo.items():
                if self.disk is not None and not self.defer_warnings:
                    # `defer_warnings` is set while the offline engine generates inside render(), which
                    # must not touch the disk.
                    ks, hits = self._from_disk(name, ks, protect)
                    n += hits
                step = self.sessions[name].chunk   # bounds the model output held at once (~64 MB)
                for s in range(0, len(ks), step):
                    n += self._generate(name, ks[s:s + step], protect)
        if start_writer:
            self._start_writer()
        return n

    def _uncached(self, keys: list[tuple]) -> dict[str, list[tuple]]:
        """The keys not in the note cache, once each, by preset, in their order."""
        todo: dict[str, list[tuple]] = {}
        for k in dict.fromkeys(keys):
            if self.cache.peek(k) is None:
                todo.setdefault(k[0], []).append(k)
        return todo

    # ---- offline prefetch -------------------------------------------------------------------------
    def prefetch(self, keys: Iterable[tuple]) -> int:
        """Offline: generate `keys` (a file's notes, in order of first use) in a thread while the engine
        renders. Waves double from PREFETCH_FIRST keys, so the first blocks wait only for the first
        wave, and the model (which releases the GIL) runs on the core the mix leaves free. The waves
        follow from the key order alone, so every note comes out of the same batch in every run.
        Notes on disk: when all of them are there, the thread reads them, in the same order, beside the
        mix (the reads, checksums and page faults let the GIL go); else they are read here and now, so
        that the model starts on the rest at once (docs/decisions-engine.md, stops 38 and 44). Returns the number of keys not in memory;
        `finish_prefetch` joins the thread."""
        order = [k for k in dict.fromkeys(keys) if self.cache.peek(k) is None]
        total = len(order)
        from_disk = self.disk is not None and bool(order) and all(self._on_disk(k) for k in order)
        if self.disk is not None and order and not from_disk:
            with self._gen_lock:
                for name, ks in self._by_preset(order).items():
                    self._from_disk(name, ks, None)
            order = [k for k in order if self.cache.peek(k) is None]
        if not order:
            return total
        self._pf_planned = frozenset(order)
        self._pf_done, self._pf_error = False, None
        self._pf_thread = threading.Thread(target=self._prefetch_run, args=(order, from_disk), name="synth-prefetch",
                                           daemon=True)
        self._pf_thread.start()
        return total

    @staticmethod
    def _by_preset(keys: list[tuple]) -> dict[str, list[tuple]]:
        by: dict[str, list[tuple]] = {}
        for k in keys:
            by.setdefault(k[0], []).append(k)
        return by

    def _on_disk(self, k: tuple) -> bool:
        kb = self._keyboard(k[0], k[1])
        return kb is not None and self.disk.has(kb, k[2], k[3])

    def _prefetch_run(self, order: list[tuple], from_disk: bool = False) -> None:
        """The prefetch thread: with `from_disk`, the notes read from the disk cache first, in waves of
        PREFETCH_FIRST keys (the engine's thread woken after each). Then each wave's batches of what is
        still missing through the model here, while a second thread resamples, lays out and publishes
        the batch before (the model lets the GIL go; the ring analysis and resampling would otherwise
        wait for it, and it for them)."""
        self._tl.log_later = True               # warnings wait for `Engine.report`, after the render
        pool = ThreadPoolExecutor(1, thread_name_prefix="synth-publish", initializer=self._log_later)
        pending = None
        try:
            if from_disk:
                order = self._read_ahead(order)
            s, size = 0, PREFETCH_FIRST
            while s < len(order) and not self._stop.is_set():
                for name, ks in self._uncached(order[s:s + size]).items():
                    step = self.sessions[name].chunk
                    for a in range(0, len(ks), step):
                        with self._gen_lock:
                            audio, gains = self._infer(name, ks[a:a + step])
                        if pending is not None:
                            pending.result()
                        pending = pool.submit(self._publish_planned, name, ks[a:a + step], audio, gains)
                s, size = s + size, min(2 * size, PREFETCH_MAX)
            if pending is not None:
                pending.result()
        except BaseException as e:  # noqa: BLE001 - re-raised in the engine's thread by finish_prefetch
            self._pf_error = e
        finally:
            pool.shutdown(wait=True)
            with self._pf_cond:
                self._pf_done = True
                self._pf_cond.notify_all()

    def _read_ahead(self, order: list[tuple]) -> list[tuple]:
        """The prefetch thread's disk reads: `order` in waves, each published and announced; returns
        the keys the disk no longer had (evicted or damaged since `prefetch` looked)."""
        rest: list[tuple] = []
        for s in range(0, len(order), PREFETCH_FIRST):
            if self._stop.is_set():
                break
            with self._gen_lock:
                for name, ks in self._by_preset(order[s:s + PREFETCH_FIRST]).items():
                    rest += self._from_disk(name, ks, None)[0]
            with self._pf_cond:
                self._pf_cond.notify_all()
        return rest

    def _log_later(self) -> None:
        self._tl.log_later = True

    def _publish_planned(self, name: str, keys: list[tuple], audio: np.ndarray, gains: dict) -> None:
        """The prefetch's publishing thread: publish one batch, then wake the engine's thread."""
        self._publish_batch(name, keys, audio, gains, None)
        with self._pf_cond:
            self._pf_cond.notify_all()

    def wait_for(self, keys: list[tuple]) -> None:
        """Block until a running prefetch has published each of `keys` it plans, or has ended (then the
        caller generates what is still missing itself). Returns at once in the prefetch's own thread."""
        if self._pf_done or threading.current_thread() is self._pf_thread:
            return
        t0 = time.perf_counter()
        with self._pf_cond:
            while not self._pf_done and any(k in self._pf_planned and self.cache.peek(k) is None for k in keys):
                self._pf_cond.wait()
        self.prefetch_wait_s += time.perf_counter() - t0

    def finish_prefetch(self, timeout: float | None = None) -> None:
        """Join the prefetch thread, start the disk writer on what it generated, and raise its error."""
        t = self._pf_thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                return
            self._pf_thread = None
        self._start_writer()
        err, self._pf_error = self._pf_error, None
        if err is not None:
            raise err

    def _warn(self, msg: str, *args) -> None:
        """log.warning, or kept in `deferred` while `defer_warnings` is set (the offline engine
        generates inside render(), which never logs: `Engine.report` logs them)."""
        if self.defer_warnings or getattr(self._tl, "log_later", False):
            self.deferred.append((msg, args))
        else:
            log.warning(msg, *args)

    def _generate(self, name: str, keys: list[tuple], protect) -> int:
        """Generate `keys` (one preset) in one batch and publish them; returns how many were cached."""
        return self._publish_batch(name, keys, *self._infer(name, keys), protect)

    def _infer(self, name: str, keys: list[tuple]) -> tuple[np.ndarray, dict]:
        """The model's notes for `keys` (one preset, one batch; float32[B, N] at the preset's rate),
        and the level gain of each knob state among them."""
        sess = self.sessions[name]
        mapper = self.mappers[name]
        latents, gains = {}, {}
        for k in keys:
            if k[1] not in latents:
                latents[k[1]] = mapper.latent(k[1])
                gains[k[1]] = self._level_gain(name, k[1])
        z = np.stack([latents[k[1]] for k in keys])
        pitch = np.array([k[2] for k in keys], np.int64)
        vel = np.array([k[3] / 127.0 for k in keys], np.float32)
        if self.disk is not None and not self.offline and getattr(sess, "seconds_per_note", 0) is None:
            sess.warmup()
        return sess.generate(z, pitch, vel), gains

    def _publish_batch(self, name: str, keys: list[tuple], audio: np.ndarray, gains: dict, protect) -> int:
        """Resample, level and ring-lay out each of `_infer`'s notes and publish it; returns how many
        were cached (a full cache stops the batch)."""
        p = self.presets[name]
        mapper = self.mappers[name]
        resample = None
        if p.sample_rate != self.out_rate:
            import soxr

            def resample(x):
                # One note per call: soxr is faster on a mono signal than on notes as channels.
                return soxr.resample(x, p.sample_rate, self.out_rate, quality="HQ")
        cached = 0
        for i, k in enumerate(keys):
            # Checked note by note: numpy holds the GIL through a reduction, and one over a whole
            # batch (64 notes) would hold it for milliseconds beside the audio thread.
            if not np.isfinite(audio[i]).all():
                self.bad_notes += 1
                if (name, k[2]) not in self._warned:
                    self._warned.add((name, k[2]))
                    self._warn("preset %s: the model produced NaN/Inf for pitch %d velocity %d; it plays as silence",
                               name, k[2], k[3])
                self.cache.publish(k, None)
                cached += 1
                continue
            x = resample(audio[i]) if resample is not None else audio[i].copy()
            if gains[k[1]] != 1.0:
                x *= np.float32(gains[k[1]])
            env = mapper.decay_envelope(k[1], len(x), self.out_rate)
            if env is not None:
                x *= env
            x = self._ring_head(k, x)
            loop = make_loop(x, self.out_rate, k[2], p.loop_end_seconds) if p.sustain_mode == "loop" and not p.is_drums else None
            if self.cache.publish(k, x, loop, protect) is None:
                if "full" not in self._warned:
                    self._warned.add("full")
                    self._warn("note cache is full (%.0f MB of notes are playing or protected); raise cache_mb",
                               self.cache.cap_bytes / 2**20)
                break
            cached += 1
            if self.disk is not None and not self.defer_warnings:
                if threading.current_thread() is self._thread:
                    self._unstored.append(k)        # written once the worker is idle (`_store_idle`)
                else:
                    self._store_later(k, x, loop)
        with self._write_lock:                  # the prefetch publishes beside the engine's thread
            self.generated += cached
        return cached

    def _level_gain(self, name: str, knobkey: tuple) -> float:
        """`synth.latent.level_gain` of a knob state, remembered (each state measures its level once)."""
        memo = self._level_gains
        g = memo.get((name, knobkey))
        if g is None:
            if len(memo) >= 4096:
                memo.clear()
            g = memo[(name, knobkey)] = level_gain(self.mappers[name], knobkey, self.sessions[name].generate)
        return g

    # ---- ringing notes (synth.ring) ---------------------------------------------------------------
    def _ring_head(self, k: tuple, x: np.ndarray, partials: tuple | None = None) -> np.ndarray:
        """A ringing preset's note → its head (crossfaded into the continuation, ending at the seam),
        its plan kept; other notes come back as they are. `partials`: the note's table as the disk
        cache keeps it (`_partials`), laid out without analysing the note again."""
        off = self.ring_off.get(k[0])
        if off is None:
            return x
        if partials is not None:
            s0, tail, peak, omega, alpha, amp, phase = partials
            table = ring.PartialTable(omega, alpha, amp, phase, self.out_rate, int(s0), float(peak))
            p = ring.layout(table, self.cache.slot_len - GUARD, int(tail))
        else:
            try:
                p = ring.plan(x, self.out_rate, off, self.cache.slot_len - GUARD)
            except ValueError:
                return x                # too short to analyse: it plays as generated
        self._keep_plan(k, p)
        return ring.head(x, p)

    def _partials(self, k: tuple) -> tuple | None:
        """Note `k`'s ringing plan as the disk cache stores it beside the note, or None."""
        p = self.plans.get(k)
        if p is None:
            return None
        t = p.table
        return (t.s0, p.tail, t.peak, t.omega, t.alpha, t.amp, t.phase)

    def _keep_plan(self, k: tuple, p: ring.RingPlan) -> None:
        # Offline, the prefetch thread and the render's ring chaining both keep plans: writers take
        # the lock, readers (`plans.get`, the audio callback's too) need none.
        with self._plans_lock:
            if len(self.plans) >= MAX_PLANS:
                self.plans.pop(next(iter(self.plans)))
            self.plans[k] = p

    def plan_for(self, key: tuple) -> ring.RingPlan | None:
        """The ringing plan of note `key`, remade from its cached head when it was dropped (the
        analysis reads the note before the seam only: the same plan)."""
        p = self.plans.get(key)
        if p is None and self.ring_off.get(key[0]) is not None:
            e = self.cache.peek(key)
            if e is None or e.slot < 0:
                return None
            try:
                p = ring.plan(self.cache.bank[e.offset:e.offset + e.length], self.out_rate,
                              self.ring_off[key[0]], self.cache.slot_len - GUARD)
            except ValueError:
                return None
            if p.seam != e.length:
                return None             # not a head (a note too short to ring)
            self._keep_plan(key, p)
        return p

    def tail_now(self, key: tuple, k: int):
        """Continuation segment `k` of note `key`, published into the cache if it is not there:
        its entry, or None (no such segment, the head gone, or the cache full)."""
        tk = (key, k)
        e = self.cache.peek(tk)
        if e is not None:
            return e
        p = self.plan_for(key)
        if p is None or not 0 <= k < p.n_segs:
            return None
        e = self.cache.publish(tk, ring.segment(p, k))
        if e is not None:
            self.tails_made += 1
        return e

    def tail_done(self, key: tuple, k: int) -> None:
        """Segment `k` of `key` has been left by the voice that played it: drop it unless another voice
        is still to play it (live: a request for it is counted in `_wants`); voices on it play on."""
        tk = (key, k)
        if k >= 0 and not self._wants.get(tk):
            self._wants.pop(tk, None)
            self.cache.discard(tk)

    def _serve_tails(self) -> None:
        """Live: the engine's segment requests, in order (cheap: a few ms a segment)."""
        while self._tails:
            key, k, entered = self._tails.popleft()
            if entered is not None:
                te = (key, entered)
                if self._wants.get(te, 0) > 0:
                    self._wants[te] -= 1
                self.tail_done(key, entered - 1)
            if k is not None:
                tk = (key, k)
                self._wants[tk] = self._wants.get(tk, 0) + 1
                if len(self._wants) > 1 << 16:
                    self._wants.clear()     # counts only spare segments from discarding: a bound
                with self._gen_lock:
                    self.tail_now(key, k)

    # ---- disk cache -------------------------------------------------------------------------------
    def _warm_up_unless_on_disk(self) -> None:
        """Warm up the sessions whose default keyboard the disk cache lacks, as without one; the others
        warm up before their first batch (`_generate`), so a start whose notes are all on disk never runs
        the model (the warm-up cost 25-90 ms a preset here)."""
        for name, sess in self.sessions.items():
            kb = self._keyboard(name, self.mappers[name].split(self.mappers[name].default_key)[0])
            if kb is None or not self.disk.has_keyboard(kb):
                sess.warmup()

    def _keyboard(self, name: str, knobkey: tuple) -> str | None:
        """The disk cache's keyboard id of (preset, knob key), once per process; None if it has none."""
        kb = self._kbs.get((name, knobkey), False)
        if kb is False:
            try:
                kb = self.disk.keyboard(self.presets[name], knobkey, self.out_rate,
                                        getattr(self.sessions[name], "provider", "?"))
            except OSError as e:     # the generator file went away: this preset is not cached on disk
                log.warning("note disk cache: preset %s is not cached (%s)", name, e.strerror or e)
                kb = None
            self._kbs[(name, knobkey)] = kb
        return kb

    def _from_disk(self, name: str, keys: list[tuple], protect) -> tuple[list[tuple], int]:
        """Publish the `keys` (one preset) the disk cache holds; returns (the keys it lacks, how many published)."""
        rest, n = [], 0
        limit = self.cache.slot_len
        need = self.disk.scratch_size(limit)
        if len(self._disk_scratch) < need:      # one read buffer, reused under `_gen_lock`
            self._disk_scratch = bytearray(need)
        for i, k in enumerate(keys):
            kb = self._keyboard(name, k[1])
            got = (self.disk.load(kb, k[2], k[3], limit, ring=True, scratch=self._disk_scratch)
                   if kb is not None else None)
            if got is None:
                rest.append(k)
                continue
            if self.ring_off.get(name) is not None:
                got = (self._ring_head(k, got[0], got[2]), got[1])
            if self.cache.publish(k, got[0], got[1], protect) is None:
                rest += keys[i:]                # memory is full: `_generate` stops and warns as usual
                break
            n += 1
        self.disk_hits += n
        return rest, n

    def _store(self, k: tuple, x: np.ndarray, loop, partials: tuple | None = None) -> None:
        kb = self._keyboard(k[0], k[1])
        if kb is None:
            return
        try:
            self.disk.store(kb, k[2], k[3], x, loop, partials)   # I/O errors: one warning inside, writing stops
        except Exception:  # noqa: BLE001 - the disk cache is best effort: never fail a note for it
            self.disk.writable = False
            log.exception("note disk cache: writing failed; notes are no longer kept on disk")

    def _store_later(self, k: tuple, x: np.ndarray, loop) -> None:
        """Offline: hand a generated note to the writer thread (started on first use), so the writes
        overlap the render instead of adding to it; `stop` (the engine's `close`) waits for them.
        Past WRITE_QUEUE_BYTES of queued audio the note is written here and now (memory stays bounded)."""
        with self._write_lock:
            queued = self._write_bytes + x.nbytes <= WRITE_QUEUE_BYTES
            if queued:
                self._write_bytes += x.nbytes
                self._write_count += 1
        partials = self._partials(k)
        if not queued:
            self._store(k, x, loop, partials)
            return
        with self._write_lock:                 # the prefetch's publishing thread stores too
            if self._writes is None:
                self._writes = queue.SimpleQueue()
        self._writes.put((k, x, loop, partials))

    def _start_writer(self) -> None:
        """Offline, after a `generate_now`: start the writer thread on what it queued. Not sooner: beside
        the model, which runs on every core, the writes would slow the batch down."""
        if self._writer is None and self._writes is not None and not self._writes.empty():
            self._writer = threading.Thread(target=self._write_loop, args=(self._writes,), name="synth-disk-writer",
                                            daemon=True)
            self._writer.start()

    def _write_loop(self, writes: queue.SimpleQueue) -> None:
        while (item := writes.get()) is not None:
            self._store(*item)
            with self._write_lock:
                self._write_bytes -= item[1].nbytes
                self._write_count -= 1

    @property
    def disk_pending(self) -> int:
        """Generated notes not yet written to the disk cache (live: written while the worker is idle)."""
        return len(self._unstored) + self._write_count

    def _store_idle(self) -> None:
        """Live, idle: write the notes generated since the last call to disk, from the note cache (the
        worker is its only writer, so a slot cannot change under the copy); a request stops it."""
        while self._unstored and not self._wake.is_set() and not self._stop.is_set():
            k = self._unstored[0]
            e = self.cache.peek(k)
            if e is not None and e.slot >= 0:       # else evicted meanwhile, or silent
                loop = (e.loop_start, e.loop_end) if math.isfinite(e.loop_end) else None
                self._store(k, self.cache.bank[e.offset:e.offset + e.length], loop, self._partials(k))
            self._unstored.popleft()

    def _chunk(self, name: str) -> int:
        spn = self.sessions[name].seconds_per_note or 0.01
        return int(min(64, max(1, CHUNK_SECONDS / max(spn, 1e-5))))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._nap())
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    if not self._step():
                        break
                except Exception as e:  # noqa: BLE001 - the worker must survive anything and keep the audio going
                    self._failed(e)
                    log.exception("generator worker failed; cached notes keep playing")
                    self._recover()
            if not self.pending:
                self._idle.set()
                if self._unstored:
                    try:
                        self._store_idle()
                    except Exception:  # noqa: BLE001 - the disk cache is best effort
                        log.exception("note disk cache: writing failed")

    def _recover(self) -> None:
        """After a step raised (outside the model, whose failures `_generate_each` handles): drop the
        queued misses if it served them; if it filled a keyboard, try again, and give that keyboard
        up only after PREFILL_TRIES failures in a row (a fault that persists must not spin)."""
        job, self._job = self._job, None
        if job is None:
            self._misses.clear()
            return
        tries = self._fails.get(job, 0) + 1
        self._fails[job] = tries
        if tries >= PREFILL_TRIES:
            self._done[job[0]] = job[1]
            log.warning("preset %s: the keyboard prefill failed %d times; misses are still generated", job[0], tries)

    def _generate_each(self, keys: list[tuple], protect: tuple | None = None) -> None:
        """`generate_now(keys)`; when the batch raises, each note alone, so a bad note costs only
        itself: a note that raises on its own is published as silent (a bad note, never retried) and
        the rest of the batch is generated."""
        if len(keys) > 1:
            try:
                self.generate_now(keys, protect)
                return
            except Exception as e:  # noqa: BLE001 - a model failure must not stop the worker
                self._failed(e)
                log.exception("generator worker failed on a batch of %d notes; retrying note by note "
                              "(cached notes keep playing)", len(keys))
        for k in keys:
            if self._stop.is_set():
                return
            try:
                self.generate_now([k], protect)
            except Exception as e:  # noqa: BLE001
                self._failed(e)
                if len(keys) == 1:
                    log.exception("generator worker failed (cached notes keep playing)")
                self.bad_notes += 1
                if (k[0], k[2]) not in self._warned:
                    self._warned.add((k[0], k[2]))
                    log.warning("preset %s: the model failed for pitch %d velocity %d (%s); it plays as silence",
                                k[0], k[2], k[3], self.last_error)
                self.cache.publish(k, None)

    def _failed(self, e: Exception) -> None:
        self.errors += 1
        self.last_error = f"{type(e).__name__}: {e}"

    def _unsettled(self, name: str, knobkey: tuple, now: float) -> float:
        """Seconds until the prefill of `knobkey` may begin (0: now)."""
        s = self._settle.get(name)
        if s is None or s[0] != knobkey or self._begun.get(name) == knobkey:
            return 0.0
        return max(0.0, s[1] - now)

    def _nap(self) -> float:
        """How long the idle worker may sleep: until the next settled knob state, 0.25 s at most."""
        now = time.perf_counter()
        wait = 0.25
        for name, knobkey in list(self._targets.items()):
            if self._done.get(name) != knobkey:
                left = self._unsettled(name, knobkey, now)
                if left > 0.0:
                    wait = min(wait, left + 0.001)
        return wait

    def _step(self) -> bool:
        """One unit of work: queued misses (a prefill chunk's worth, about 20 ms of model time), else
        one prefill chunk. False when nothing is left.

        Misses are taken a chunk at a time, like the prefill: the first note of a burst comes back
        sooner, the worker's bursts beside the audio thread stay short, and ONNX Runtime's memory
        arena, which keeps the largest batch it has seen, stays small (docs/decisions-engine.md)."""
        if self._tails:
            self._serve_tails()
            return True
        if self._misses:
            keys = []
            limit = None
            while self._misses and (limit is None or len(keys) < limit):
                k = self._misses.popleft()
                if k[0] in self._settle and self._targets.get(k[0], k[1]) != k[1]:
                    # Its knob has moved on since (a sweep, a CC storm): the note keeps its stand-in.
                    self.misses_stale += 1
                    continue
                if k not in keys and self.cache.peek(k) is None:
                    keys.append(k)
                    if limit is None:
                        limit = self._chunk(k[0]) if k[0] in self.sessions else 1
            if keys:
                t0 = time.perf_counter()
                self._generate_each(keys)
                self.last_miss_ms = (time.perf_counter() - t0) * 1e3
            return True
        for name, knobkey in list(self._targets.items()):
            if self._done.get(name) == knobkey:
                continue
            if self._unsettled(name, knobkey, time.perf_counter()) > 0.0:
                continue   # the knob is still moving: misses are served meanwhile
            self._begun[name] = knobkey
            self._job = (name, knobkey)
            todo = [k for k in self.keyboard(name, knobkey) if self.cache.peek(k) is None]
            if not todo:
                self._job = None
                self._done[name] = knobkey
                t0 = self._prefill_t0.get(name)
                if t0 is not None:
                    self.last_prefill_s = time.perf_counter() - t0
                continue
            chunk = todo[:self._chunk(name)]
            self._generate_each(chunk, protect=(name, knobkey))
            self._job = None
            self._fails.pop((name, knobkey), None)
            if all(self.cache.peek(k) is None for k in chunk):
                # Nothing fitted: the cache is full of this very keyboard or of playing notes. (Not the
                # entry count: once the cache is full, each note published evicts one, and the count
                # stays the same while the keyboard fills.)
                self._done[name] = knobkey
            return True
        return False


def ceil_resampled(n: int, in_rate: int, out_rate: int) -> int:
    """Upper bound on soxr's output length for `n` input samples."""
    return int(math.ceil(n * out_rate / in_rate)) + 2
