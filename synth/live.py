"""`python -m synth [play] --preset NAME`: play live, MIDI in (rtmidi), audio out (sounddevice).

Threads (see docs/architecture.md and docs/live.md):
- MIDI: rtmidi's thread (ALSA), or the process thread of our JACK MIDI client: stamp each message and
  append it to a deque (`synth.midi_in`); nothing else;
- the audio callback (`LiveCore.callback`): drain the deque, turn each event's time into a frame
  offset inside this block, call the engine, `engine.render(frames, out=...)`, write `outdata[:]`;
- this module's main thread: status line, GC gen-0 collections, port hot-plug is on its own thread;
- the engine's generator worker (owned by the engine).

Event timing: an event stamped at time `t` sounds one block after `t`. The reference is the time of
this block's start on the events' clock: JACK's cycle start for JACK MIDI (frame-exact), else the
block's DAC time (`time_info.outputBufferDacTime`) minus the typical DAC lead, both on the PortAudio
stream clock that rtmidi events are stamped with. The offset `(t - reference) * sr + blocksize` is
clamped at 0 for late events and deferred to the next block when it falls past this one, so timing
is kept inside the block and never jitters by a whole one.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable

import numpy as np

from synth.errors import UserError
from synth.midi_in import BEND, CC, NOTE_OFF, NOTE_ON, PROGRAM

RING = 8192            # callback timings kept for the load percentiles (about 22 s at 128 frames)
HIST_BINS = 300        # load histogram: 1% bins from 0 to 300% of the block time, cumulative
DEDUP_SECONDS = 0.003  # the same message from two ports this close together is one message twice
LEAD_SAMPLES = 16      # callbacks used to learn the DAC lead (outputBufferDacTime - currentTime)
ENTRY_BASE = 64        # callbacks used to learn the usual entry delay under JACK
WORST = 8              # callbacks kept with what they did, the costliest in CPU time (diagnostics)
WORST_FIELDS = ("callback", "stream_s", "cpu", "wall", "dispatch_cpu", "events", "voices", "sys_cpu", "faults")
GC_TICK = 0.25         # seconds between gen-0 collections on the main thread (GC is off elsewhere)
GC_GEN1_EVERY = 8      # ticks between gen-1 collections (2 s: each one stays small)
# Work per callback must stay bounded. Starting a voice costs the engine ~15 us with 256 voices
# playing (6 us cached and idle, up to ~20 us when it steals or plays a stand-in; bench_engine), but
# raising the cap made the 512-frame JACK session test worse on a loaded 2-core machine (longest
# callback 1.3-3x the period against 0.4-0.6x), so it stays conservative.
# At most one note-on per 32 frames (4 per 128-frame block) starts per block; the rest, and every
# event after them, wait for the next block (counted in `deferred`). MIDI over a DIN cable needs
# ~1 ms per note-on, so even the cap is three times faster than a hardware keyboard.
FRAMES_PER_NOTE_ON = 32
MIN_NOTE_ONS = 4
# Events other than note-ons get a time budget per block: once dispatching has taken this share of the
# block (wall time, so a machine that steals our CPU gets less work), the rest waits for the next block
# like capped note-ons do. A CC storm at 10,000 events/s fits well inside it on the 2-core machine.
DISPATCH_SHARE = 0.15
# ...but the first MIN_EVENTS events of a block always go through: a chord or a knob move is not split
# across blocks (a few ms late) because the thread was preempted while it started them.
MIN_EVENTS = 8
# Coalesced events of a stale backlog (see `_dispatch`) are sent at most one per 4 frames per block
# (128 per 512-frame block, 32 per 128): a panic reached past 0.3 s of a 10,000 events/s flood
# coalesces to some 350 events, and sent in one block they cost 0.3-0.4 of it (measured offline).
FRAMES_PER_HELD = 4
MIN_HELD = 16
# ...and so is any event beyond this many waiting (a flood's backlog at 10,000 events/s reaches 3,000).
MAX_BACKLOG = 1024
# A note-on deferred this long is dropped: a flood beyond the cap (1500 note-ons/s) must not build an
# endless backlog. A 256-note cluster starts within 0.17 s, so bursts are never cut.
MAX_DEFER_SECONDS = 0.3


try:
    import resource

    _RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
except ImportError:   # not on Windows: the two diagnostic fields read 0 there
    resource = None


class EventQueue(collections.deque):
    """The MIDI -> audio deque. `append` (the MIDI thread) also counts panic messages (CC 120
    all-sound-off, CC 123 all-notes-off), so the callback reaches them past a flood's backlog."""

    panics = 0

    def append(self, ev) -> None:
        super().append(ev)
        if ev[1] == CC and (ev[3] == 120 or ev[3] == 123):
            self.panics += 1


class _NoRusage:
    ru_stime = 0.0
    ru_minflt = 0


_NO_RUSAGE = _NoRusage()


def _rusage_thread():
    """This thread's resource usage (Linux: RUSAGE_THREAD; elsewhere the process's)."""
    return resource.getrusage(_RUSAGE) if resource is not None else _NO_RUSAGE


def _median(xs: list[float]) -> float:
    """Median of a short list, for the audio thread. Not np.median: its first call imports numpy.ma,
    14 ms of CPU on the audio thread once per run (a startup xrun at any period up to 512 frames)."""
    s = sorted(xs)
    n = len(s)
    return float(s[n // 2]) if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class LiveCore:
    """The audio callback and its counters. Allocation-free in steady state.

    `engine` follows the Engine API in docs/architecture.md (note_on/.../render(frames, out=)).
    `queue` is a `collections.deque` of `(t_seconds, kind, channel, a, b, source)` tuples appended by
    `synth.midi_in`; `t` is on the stream clock (the same clock as `time_info.currentTime`).
    """

    def __init__(self, engine, sample_rate: int, blocksize: int, queue: collections.deque | None = None):
        self.engine = engine
        self.sr = float(sample_rate)
        self.blocksize = blocksize
        self.queue = queue if queue is not None else EventQueue()
        # Room for the largest block PortAudio may hand over (variable-size hosts give up to 4x).
        self._buf = np.zeros((max(blocksize, 1) * 4, 2), np.float32)
        self._block = self._buf[:blocksize]
        self._pending: collections.deque = collections.deque()   # events held for a later block
        # A stale backlog (or the events before a panic), coalesced: (kind, channel, cc or note) -> the
        # latest such event, oldest first. Bounded by the number of keys, drained `max_held` per block.
        self._held: collections.OrderedDict = collections.OrderedDict()
        self._held_budget = 0
        self._panics_seen = 0
        self._durations = np.zeros(RING, np.float64)   # seconds per callback
        self._cpu = np.zeros(RING, np.float64)         # CPU seconds of this thread per callback
        self._periods = np.zeros(RING, np.float64)     # seconds of audio per callback
        # Cumulative, so a benchmark can subtract two snapshots and get exact window percentiles.
        self.load_hist = np.zeros(HIST_BINS, np.int64)
        # The same for the callback's own CPU time (time.thread_time): what the synth costs, whatever
        # else the machine runs. Wall time minus CPU time is time spent waiting (preempted, GIL, steal).
        self.cpu_hist = np.zeros(HIST_BINS, np.int64)
        # The WORST costliest callbacks by CPU time, one row each (WORST_FIELDS): when it ran, its CPU
        # and wall share of the block, the CPU share spent on events, the events it took and the voices
        # sounding after it. A spike in a soak's figures can then be matched to what the synth did.
        self.worst = np.zeros((WORST, len(WORST_FIELDS)), np.float64)
        self._worst_min = 0.0
        self.callbacks = 0
        self.underflows = 0
        self.overruns = 0         # callbacks that took longer than their block lasts
        self.events = 0
        self.late_events = 0      # events that arrived after their block had started to play
        self.deduped = 0
        self.deferred = 0         # events held for the next block by the note-on cap
        self.dropped = 0          # note-ons dropped after waiting MAX_DEFER_SECONDS (a flood) or before a panic
        self.max_note_ons = max(MIN_NOTE_ONS, blocksize // FRAMES_PER_NOTE_ON)
        self.max_held = max(MIN_HELD, blocksize // FRAMES_PER_HELD)
        self.errors = 0
        self.first_error: str | None = None
        self._leads: list[float] = []
        self._lead: float | None = None
        # (status byte, data1) -> time and source of the last such message, for de-duplication.
        self._seen_t = [[-1.0] * 128 for _ in range(8 * 16)]
        self._seen_src = [[-1] * 128 for _ in range(8 * 16)]
        self._seen_b = [[-1] * 128 for _ in range(8 * 16)]
        # Optional: a callable giving the reference time of this block on the events' clock, for
        # inputs stamped on a clock other than PortAudio's (JACK MIDI: JACK's frame clock).
        self.ref_clock: Callable[[], float] | None = None
        # With a reference clock (JACK): how late in the cycle this callback started, in 1% of a block,
        # cumulative. The callback's own duration misses the wait for the GIL before it starts; this
        # catches it. PortAudio's JACK `currentTime` is JACK's current frame at entry minus a constant,
        # so `currentTime - cycle start` is the delay plus that constant. The median over the first
        # ENTRY_BASE callbacks stands for the usual delay; the histogram counts the delay beyond it.
        # Costs no extra call into JACK (each such call releases the GIL: another chance to lose it).
        self.entry_hist = np.zeros(HIST_BINS, np.int64)
        self._entry_raw: list[float] = []
        self._entry_base: float | None = None
        self.panic_request = False   # set by any thread; the audio thread calls engine.panic()
        self.panics = 0

    # -- the audio thread ---------------------------------------------------------------------------
    def callback(self, outdata, frames: int, time_info, status) -> None:
        """sounddevice callback: `outdata` float32[frames, 2]. Runs on the audio thread."""
        t0 = time.perf_counter()
        c0 = time.thread_time()
        ru0 = _rusage_thread()
        c1, ev0 = c0, self.events
        ref = None
        if self.ref_clock is not None:
            # Read JACK's cycle clock every block (its 32-bit unwrap must not miss a wrap).
            ref = self.ref_clock()
            raw = time_info.currentTime - ref
            if self._entry_base is None:
                self._entry_raw.append(raw)
                if len(self._entry_raw) >= ENTRY_BASE:
                    self._entry_base = _median(self._entry_raw)
            else:
                share = (raw - self._entry_base) * self.sr / frames
                self.entry_hist[min(max(int(share * 100.0), 0), HIST_BINS - 1)] += 1
        if status.output_underflow:
            self.underflows += 1
        try:
            if frames == self.blocksize:
                buf = self._block
            else:
                if frames > len(self._buf):   # a host that changed its block size: grow once
                    self._buf = np.zeros((frames, 2), np.float32)
                buf = self._buf[:frames]
            if self.panic_request:
                # engine.panic() touches the voices, so it must run here, between renders.
                self.panic_request = False
                self.panics += 1
                self.engine.panic()
            if self._lead is None and self.ref_clock is None:
                self._reference(time_info)   # learn the DAC lead before the first note arrives
            self._dispatch(frames, time_info, ref, t0)
            c1 = time.thread_time()
            self.engine.render(frames, out=buf)
            np.clip(buf, -1.0, 1.0, out=buf)
            outdata[:] = buf
        except Exception:
            outdata.fill(0)
            self.errors += 1
            if self.first_error is None:
                self.first_error = traceback.format_exc()
        dc = time.thread_time() - c0
        dt = time.perf_counter() - t0
        i = self.callbacks % RING
        self._durations[i] = dt
        self._cpu[i] = dc
        self._periods[i] = frames / self.sr
        cshare = dc * self.sr / frames
        self.cpu_hist[min(max(int(cshare * 100.0), 0), HIST_BINS - 1)] += 1
        share = dt * self.sr / frames
        if cshare > self._worst_min:
            # Its kernel time and minor page faults: where a costly callback's CPU went. (The second
            # reading only for the rare callback kept here.)
            ru = _rusage_thread()
            self._note_worst(frames, cshare, share, (c1 - c0) * self.sr / frames, self.events - ev0,
                             (ru.ru_stime - ru0.ru_stime) * self.sr / frames, ru.ru_minflt - ru0.ru_minflt)
        self.load_hist[min(int(share * 100.0), HIST_BINS - 1)] += 1
        if share > 1.0:
            self.overruns += 1
        self.callbacks += 1

    def _note_worst(self, frames: int, cpu: float, wall: float, dispatch: float, events: int,
                    sys_cpu: float = 0.0, faults: int = 0) -> None:
        """Replace the cheapest of the kept worst callbacks (rare: only when this one costs more)."""
        voices = getattr(self.engine, "voices", None)
        n = int(np.count_nonzero(voices.active)) if voices is not None and hasattr(voices, "active") else -1
        w = self.worst
        j = int(np.argmin(w[:, 2]))
        w[j] = (self.callbacks, self.callbacks * frames / self.sr, cpu, wall, dispatch, events, n, sys_cpu, faults)
        self._worst_min = float(w[:, 2].min())

    def worst_callbacks(self) -> list[dict]:
        """The kept costliest callbacks, costliest first (read from another thread: a snapshot)."""
        w = self.worst.copy()
        rows = [dict(zip(WORST_FIELDS, r, strict=True)) for r in w[np.argsort(-w[:, 2])] if r[2] > 0]
        for r in rows:
            for k in ("callback", "events", "voices", "faults"):
                r[k] = int(r[k])
            for k in ("stream_s", "cpu", "wall", "dispatch_cpu", "sys_cpu"):
                r[k] = round(float(r[k]), 4)
        return rows

    def _reference(self, time_info) -> float:
        """Stream time that corresponds to "one block before this block reaches the DAC"."""
        now = time_info.currentTime
        dac = time_info.outputBufferDacTime
        if dac <= 0.0 or now <= 0.0:
            return now
        if self._lead is None:
            # DAC time is hardware-paced and does not move with our scheduling jitter, so learn the
            # typical lead once and reference every block to DAC time minus that fixed lead.
            self._leads.append(dac - now)
            if len(self._leads) >= LEAD_SAMPLES:
                self._lead = _median(self._leads)
            return now
        return dac - self._lead

    def _dispatch(self, frames: int, time_info, ref: float | None, t_start: float) -> None:
        q = self.queue
        pending = self._pending
        held = self._held
        if not q and not pending and not held:
            return
        if ref is None:
            ref = self._reference(time_info)
        sr = self.sr
        last = 0
        eng = self.engine
        budget = self.max_note_ons * frames // self.blocksize if frames != self.blocksize else self.max_note_ons
        budget = max(budget, 1)
        self._held_budget = max(1, self.max_held * frames // self.blocksize)
        deadline = t_start + DISPATCH_SHARE * frames / sr
        perf = time.perf_counter
        capped = False
        n_sent = 0
        # A flood (more note-ons than the cap lets through): the backlog waits in the deques and costs
        # nothing per block; a note-on that has waited MAX_DEFER_SECONDS is dropped (bounded backlog and
        # delay), and a panic message (CC 120/123, counted by EventQueue on arrival) is reached past the
        # backlog in this block, dropping the note-ons before it.
        urgent = getattr(q, "panics", 0) - self._panics_seen
        stale = ref - MAX_DEFER_SECONDS
        # Events beyond MAX_BACKLOG waiting are treated as stale as well (oldest first): the walk to a
        # panic past the backlog then costs at most MAX_BACKLOG steps (~1 ms) in one block.
        excess = len(q) + len(pending) - MAX_BACKLOG
        future = []
        while True:
            if pending:
                ev = pending.popleft()
                from_q = False
            elif q:
                ev = q.popleft()
                from_q = True
            else:
                break
            t, kind, ch, a, b, src = ev
            old = t < stale or excess > 0
            if capped and urgent <= 0 and not old:
                (q if from_q else pending).appendleft(ev)
                self.deferred += len(pending) + len(q)
                break
            excess -= 1
            panic = kind == CC and (a == 120 or a == 123)
            if from_q and panic:
                self._panics_seen += 1
                urgent -= 1
            if kind == NOTE_ON and (capped or old):
                self.dropped += 1
                continue
            if not panic and (old or (capped and urgent > 0)):
                # On the way to a panic, or through a backlog that has waited MAX_DEFER_SECONDS: keep
                # only the final controller state and the note-offs (`_held`, oldest first), applied
                # before any newer event, at most `max_held` per block (thousands of flood events one
                # by one in one block would overrun it).
                key = (kind, ch, a if kind in (CC, NOTE_OFF) else 0)
                held.pop(key, None)
                held[key] = ev
                continue
            if panic and held:
                # Its channel's note-offs change nothing any more: CC 120/123 stops every voice there.
                # The panic goes ahead of the held state: what remains of it (controllers, bends and
                # programs) leads to the same state applied before or after CC 120/123.
                for k in [k for k in held if k[0] == NOTE_OFF and k[1] == ch]:
                    del held[k]
            off = int((t - ref) * sr + frames + 0.5)
            if off >= frames:
                if off < 3 * frames:
                    future.append(ev)
                    continue
                off = 0   # a clock jump (stream restart): play now rather than never
            if off < 0:
                off = 0
                self.late_events += 1
            if off < last:
                off = last
            if self._duplicate(t, kind, ch, a, b, src):
                continue
            if held and not panic:
                # The held state is older than this event: it goes first. When the block's share of it
                # is spent, this event and the rest wait for the next block (or are coalesced on the
                # way to a panic).
                n_sent += self._send_held(off, deadline if n_sent >= MIN_EVENTS else None)
                if held:
                    (q if from_q else pending).appendleft(ev)
                    capped = True
                    continue
            last = off
            self.events += 1
            n_sent += 1
            if kind == NOTE_ON:
                eng.note_on(ch, a, b, frame=off)
                budget -= 1
                if budget == 0:
                    capped = True
            else:
                self._send(kind, ch, a, b, off)
            if not capped and n_sent >= MIN_EVENTS and perf() > deadline:
                capped = True
        if held and urgent <= 0:
            self._send_held(last, deadline if n_sent >= MIN_EVENTS else None)
        if future:
            pending.extendleft(reversed(future))

    def _send_held(self, off: int, deadline: float | None) -> int:
        """Send the oldest of the held (coalesced) events at frame `off`, until this block's share of
        them (`max_held`) or, past `deadline`, its time budget is spent. Returns how many were sent."""
        held = self._held
        n = 0
        while held and self._held_budget > 0:
            h = held.popitem(last=False)[1]
            self._held_budget -= 1
            self.events += 1
            n += 1
            self._send(h[1], h[2], h[3], h[4], off)
            if deadline is not None and time.perf_counter() > deadline:
                self._held_budget = 0
        return n

    def _send(self, kind: int, ch: int, a: int, b: int, off: int) -> None:
        eng = self.engine
        if kind == NOTE_ON:
            eng.note_on(ch, a, b, frame=off)
        elif kind == NOTE_OFF:
            eng.note_off(ch, a, frame=off)
        elif kind == CC:
            eng.control_change(ch, a, b, frame=off)
        elif kind == PROGRAM:
            eng.program_change(ch, a, frame=off)
        elif kind == BEND:
            eng.pitch_bend(ch, a, frame=off)

    def _duplicate(self, t: float, kind: int, ch: int, a: int, b: int, src: int) -> bool:
        """True for the second copy of a message that reached us through two ports (a source that is
        both auto-opened and connected to the virtual port by hand)."""
        if kind == BEND:
            a = 0
        row = kind * 16 + ch
        a &= 127
        prev_t = self._seen_t[row][a]
        dup = (self._seen_src[row][a] != src and self._seen_b[row][a] == b and t - prev_t < DEDUP_SECONDS)
        if dup:
            self.deduped += 1
            return True
        self._seen_t[row][a] = t
        self._seen_src[row][a] = src
        self._seen_b[row][a] = b
        return False

    # -- other threads -----------------------------------------------------------------------------
    def load(self) -> dict[str, float]:
        """Callback duration as a share of its block: p50, p99, max over the last RING callbacks."""
        n = min(self.callbacks, RING)
        if n == 0:
            return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0, "cpu_p50": 0.0, "cpu_p99": 0.0, "cpu_max": 0.0}
        per = np.maximum(self._periods[:n], 1e-9)
        share = self._durations[:n] / per
        cpu = self._cpu[:n] / per
        p50, p99 = np.percentile(share, [50, 99])
        c50, c99 = np.percentile(cpu, [50, 99])
        return {"p50": float(p50), "p99": float(p99), "max": float(share.max()), "n": n,
                "cpu_p50": float(c50), "cpu_p99": float(c99), "cpu_max": float(cpu.max())}

    def durations_ms(self) -> np.ndarray:
        n = min(self.callbacks, RING)
        return self._durations[:n] * 1e3


def velocity_map(curve: float) -> list[int] | None:
    """128-entry velocity response: out = round(127 * (v / 127) ** curve), kept >= 1 for v >= 1.
    curve < 1 is a light touch (soft keys louder), > 1 a heavy one; 1 is identity (None)."""
    if curve == 1.0:
        return None
    return [0] + [max(1, min(127, int(round(127 * (v / 127) ** curve)))) for v in range(1, 128)]


# -- GC and GIL ------------------------------------------------------------------------------------
class GcTamer:
    """Keep the cyclic GC off the audio thread.

    After loading, `gc.freeze()` moves every live object to a permanent generation so collections never
    scan them again (a full collection of the loaded synth takes 4-30 ms; frozen, 0.001 ms). Automatic
    collection is then disabled, and `tick()`, called from the main thread every GC_TICK seconds, runs
    a gen-0 collection there; frequent ticks keep each pause short. Python's GIL hand-off interval is
    shortened so that a busy Python thread hands the GIL to the audio callback after 0.5 ms instead of
    the default 5 ms (GIL wait p99.9 0.96 ms against 3.7 ms; docs/live.md).
    """

    def __init__(self, mode: str = "tamed", switch_interval: float = 0.0005):
        self.mode = mode
        self.switch_interval = switch_interval
        self.collections = 0
        self.collect_seconds_max = 0.0   # wall time of the longest collection (preemption included)
        self.collect_cpu_max = 0.0       # its CPU time: the collection's own work
        self._old_interval = sys.getswitchinterval()

    def start(self) -> None:
        if self.switch_interval > 0:
            sys.setswitchinterval(self.switch_interval)
        if self.mode == "tamed":
            gc.collect()
            gc.freeze()
            gc.disable()

    def tick(self, core: LiveCore | None = None) -> None:
        """Collect now, or with `core`, just after its next callback ends: a collection holds the GIL
        for its whole length (0.4-1.2 ms of CPU in a MIDI flood, up to 7 ms of wall when the thread is
        preempted meanwhile), and started at a random time it may be under way when the next
        callback, or the JACK MIDI thread, needs the GIL; started as a block ends, it has most of the
        period to itself."""
        if self.mode != "tamed":
            return
        if core is not None:
            n = core.callbacks
            end = time.monotonic() + 2.0 * core.blocksize / core.sr + 0.002
            # 1-ms naps: each wake-up takes the GIL back (and may make the holder hand it over), so
            # the wait stays a few wake-ups long; the collection starts within 1 ms of the end.
            while core.callbacks == n and time.monotonic() < end:
                time.sleep(0.001)
        t0 = time.perf_counter()
        c0 = time.thread_time()
        gc.collect(0)
        # Older generations fill slowly; sweep them now and then, still off the audio thread.
        if self.collections % GC_GEN1_EVERY == GC_GEN1_EVERY - 1:
            gc.collect(1)
        dt = time.perf_counter() - t0
        self.collections += 1
        self.collect_seconds_max = max(self.collect_seconds_max, dt)
        self.collect_cpu_max = max(self.collect_cpu_max, time.thread_time() - c0)

    def stop(self) -> None:
        sys.setswitchinterval(self._old_interval)
        if self.mode == "tamed":
            gc.enable()
            gc.unfreeze()


def raise_priority(nice: int) -> str | None:
    """Ask for a higher scheduling priority (lower nice) for this thread and every thread started later.

    The audio callback runs on a real-time thread (JACK's, or PortAudio's), but it needs the GIL, and
    the thread holding the GIL is an ordinary one. On a busy machine that thread waits for a CPU while
    the callback waits for it: a priority inversion that shows up as xruns. A lower nice value lets
    our threads win the CPU from batch work (measured: docs/live.md). Returns a note when it fails.
    Call it before any thread starts: on Linux the value is per thread and inherited by new threads.
    """
    if nice == 0 or not hasattr(os, "setpriority"):
        return None
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current > nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        return (f"note: could not raise priority to nice {nice} (no CAP_SYS_NICE; see docs/live.md, "
                "'Real-time priority'); playing anyway")
    return None


# -- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m synth [play]", description=(
        "Play live: MIDI from every input port plus a virtual port 'neural-synth', audio through "
        "sounddevice. Ctrl-C stops."))
    p.add_argument("--preset", action="append", required=True, metavar="NAME",
                   help="preset name; repeat for more (program change N selects the N-th)")
    p.add_argument("--preset-dir", action="append", default=[], metavar="DIR", help="extra folder of presets")
    p.add_argument("--device", default=None, help="output device index or name substring (`synth devices`)")
    p.add_argument("--blocksize", type=int, default=128, help="frames per audio block (default 128)")
    p.add_argument("--sample-rate", type=int, default=48000, help="output rate in Hz (default 48000)")
    p.add_argument("--audio-api", default="auto",
                   help="auto, jack, alsa, pulse, ... (PortAudio host APIs), or jack-client: one JACK client of "
                        "our own for MIDI and audio, one callback a cycle (--device then names the ports to "
                        "connect to) (default auto)")
    p.add_argument("--midi-api", default="auto", choices=["auto", "alsa", "jack", "jack-rtmidi", "none"],
                   help="jack: frame-exact JACK MIDI; jack-rtmidi: rtmidi's JACK API (timing quantised "
                        "to the JACK period) (default auto)")
    p.add_argument("--midi-port", action="append", default=[], metavar="PATTERN",
                   help="open only input ports matching this regex (repeatable; default: all)")
    p.add_argument("--no-virtual", action="store_true", help="do not open the virtual port 'neural-synth'")
    p.add_argument("--cache-mb", type=float, default=None, help="note cache size in MB (engine default)")
    p.add_argument("--polyphony", type=int, default=None,
                   help="voices playing at most; beyond it the oldest released voice is stolen (default 256)")
    p.add_argument("--knob", action="append", default=[], metavar="CC=V",
                   help="initial knob position: 74=0.3 (fraction) or 74=38 (CC value); repeatable")
    p.add_argument("--program-map", default=None, metavar="P=NAME,...",
                   help="MIDI program -> preset, e.g. 0=piano,48=strings (default: program N = N-th --preset)")
    p.add_argument("--fx", default=None, metavar="LIST",
                   help="effects, e.g. reverb,chorus or reverb=0.4,filter (default: none)")
    p.add_argument("--velocity-curve", type=float, default=1.0,
                   help="keyboard response exponent: <1 light touch, >1 heavy (default 1)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (tests, soak)")
    p.add_argument("--status-interval", type=float, default=None,
                   help="seconds between status lines (default: 0.25 on a TTY, 10 otherwise)")
    p.add_argument("--stats-json", default=None, metavar="FILE", help="write final counters here on exit")
    p.add_argument("--nice", type=int, default=-10,
                   help="process priority (nice) to ask for; 0 keeps it (default -10; needs CAP_SYS_NICE)")
    p.add_argument("--gc", default="tamed", choices=["tamed", "default"],
                   help="tamed: freeze + gen-0 collections off the audio thread (default)")
    p.add_argument("--switch-interval", type=float, default=0.0005,
                   help="sys.setswitchinterval in seconds; 0 keeps Python's default (default 0.0005)")
    return p


def _default_engine_factory(**kw):
    try:
        from synth.engine import Engine
    except ImportError as e:
        raise UserError(f"the synth engine is not available ({e}); reinstall with `pip install -e .`") from None
    return Engine(**kw)


class StatusLine:
    """One line on stderr: in place on a TTY, a new line every `interval` seconds otherwise."""

    def __init__(self, interval: float | None):
        self.tty = sys.stderr.isatty()
        self.interval = interval if interval is not None else (0.25 if self.tty else 10.0)
        self._last_len = 0

    def show(self, text: str) -> None:
        if self.tty:
            pad = max(0, self._last_len - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._last_len = len(text)
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def log(self, text: str) -> None:
        if self.tty and self._last_len:
            sys.stderr.write("\r" + " " * self._last_len + "\r")
            self._last_len = 0
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _engine_stats(engine) -> dict:
    try:
        return dict(engine.stats()) if hasattr(engine, "stats") else {}
    except Exception:
        return {}


def status_text(preset: str, core: LiveCore, stats: dict, ports: int) -> str:
    load = core.load()
    hit = stats.get("cache_hit_rate", stats.get("hit_rate"))
    hit_s = f"{100 * hit:.0f}%" if isinstance(hit, (int, float)) and math.isfinite(hit) else "-"
    voices = stats.get("voices", stats.get("active_voices", "-"))
    return (f"{preset} | voices {voices} | cache hits {hit_s} | load p99 {100 * load['p99']:.0f}% "
            f"(max {100 * load['max']:.0f}%, cpu p99 {100 * load['cpu_p99']:.0f}%) | xruns {core.underflows + core.overruns} | MIDI ports {ports}")


def main(argv: list[str], engine_factory: Callable | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 16 <= args.blocksize <= 8192:
        raise UserError(f"--blocksize {args.blocksize}: choose 16..8192 frames (128 is the default)")
    if not 8000 <= args.sample_rate <= 192000:
        raise UserError(f"--sample-rate {args.sample_rate}: choose 8000..192000 Hz")
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be > 0 seconds")
    from synth import audio_io
    from synth.preset import find_preset
    from synth.render import parse_knobs, parse_program_map

    knobs = parse_knobs(args.knob)
    nice_note = raise_priority(args.nice)
    from synth.engine import single_thread_blas

    single_thread_blas()   # the mix's matrix product never waits for BLAS helper threads
    program_map = parse_program_map(args.program_map)
    names = list(dict.fromkeys(args.preset + [n for n in program_map.values()]))
    presets = [find_preset(n, args.preset_dir) for n in names]
    status = StatusLine(args.status_interval)
    audio_api, midi_api = audio_io.choose_apis(args.audio_api, args.midi_api)
    own_client = audio_api == audio_io.JACK_CLIENT_API
    device = out_ports = None
    if own_client:
        from synth.midi_in import output_pattern

        out_ports = output_pattern(args.device)   # a bad pattern fails now, before the engine loads
    else:
        sd = audio_io.load_sounddevice()
        device = audio_io.resolve_device(sd, args.device, audio_api)
    if midi_api == "alsa" and not audio_io.has_alsa_seq():
        raise UserError("no MIDI input: /dev/snd/seq is missing and no JACK server runs; load the ALSA "
                        "sequencer (`modprobe snd-seq`), start JACK, or pass --midi-api none")
    sample_rate, blocksize = args.sample_rate, args.blocksize
    if own_client or device.hostapi == audio_io.AUDIO_APIS["jack"]:
        # A JACK client cannot choose the server's rate or period; follow them.
        info = audio_io.jack_server_info()
        if info is not None:
            if info[0] != sample_rate:
                status.log(f"note: the JACK server runs at {info[0]} Hz; using that instead of {sample_rate}")
            if info[1] != blocksize:
                status.log(f"note: the JACK server's period is {info[1]} frames; using that instead of "
                           f"{blocksize}")
            sample_rate, blocksize = info

    kw = dict(sample_rate=sample_rate, blocksize=blocksize, presets=presets, realtime=True)
    if args.cache_mb is not None:
        kw["cache_mb"] = args.cache_mb
    if args.polyphony is not None:
        kw["polyphony"] = args.polyphony
    if args.fx is not None:
        from synth.fx import parse_fx

        # 64-frame chunks: 1.3 ms of added latency at 48 kHz, reported in engine.latency_samples.
        kw["fx"] = parse_fx(args.fx, sample_rate, chunk=64)
    engine = (engine_factory or _default_engine_factory)(**kw)
    if program_map and hasattr(engine, "set_program_map"):
        engine.set_program_map(program_map)
    for cc, v in knobs:
        if hasattr(engine, "set_knob"):
            engine.set_knob(cc, v)
        else:
            for ch in range(16):
                engine.control_change(ch, cc, v)

    queue: collections.deque = EventQueue()
    core = LiveCore(engine, sample_rate, blocksize, queue)
    tamer = GcTamer(args.gc, args.switch_interval)
    stop = threading.Event()
    reason = {"why": "stopped"}

    def on_signal(signum, _frame):
        if signum == signal.SIGUSR1:
            core.panic_request = True
            return
        reason["why"] = signal.Signals(signum).name
        stop.set()

    handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
    old_handlers = {s: signal.signal(s, on_signal) for s in handled}
    audio = midi = None
    rc = 0
    abandoned = False

    def write_stats() -> None:
        if args.stats_json:
            from synth.fsutil import atomic_write_text

            atomic_write_text(args.stats_json, json.dumps(final_summary(core, engine, tamer, reason["why"], midi),
                                                          indent=1))

    try:
        vmap = velocity_map(args.velocity_curve)
        if own_client:
            from synth.midi_in import JackSynthClient

            # One JACK client, one process callback a cycle, for MIDI in and audio out; --device is a
            # pattern for the ports to connect the outputs to.
            audio = midi = JackSynthClient(queue, core.callback, port_patterns=args.midi_port, velocity_map=vmap,
                                           log=status.log, connect_to=out_ports)
            core.ref_clock = midi.cycle_clock
            where = f"JACK client {midi.client.name} (one callback for MIDI and audio)"
        else:
            audio = audio_io.AudioOutput(device, sample_rate, blocksize, core.callback)
            where = f"{device.name} ({device.hostapi})"
            midi = _open_midi(midi_api, args, queue, audio, device, core, vmap, status.log)
        tamer.start()
        audio.start()
        lat_engine = int(getattr(engine, "latency_samples", 0) or 0)
        status.log(f"audio: {where}, {sample_rate} Hz, block {blocksize}, "
                   f"output latency {1e3 * audio.latency_seconds:.1f} ms + engine {lat_engine} samples")
        if nice_note:
            status.log(nice_note)
        if midi is not None:
            midi.start()
            status.log(f"midi ({midi_api}): {', '.join(midi.port_names) or 'no ports'}")
        t_start = time.monotonic()
        next_status = next_gc = t_start
        error_reported = False
        ready = not hasattr(engine, "wait_ready")
        if ready:
            status.log("ready")
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - t_start >= args.duration:
                reason["why"] = "duration"
                break
            stop.wait(0.02 if not ready else 0.05)
            if not audio.stream.active:
                why = getattr(audio, "shutdown_reason", None)
                status.log("error: the audio stream stopped (" + (f"JACK server gone: {why}" if why else
                                                                     "device unplugged or JACK server gone") + ")")
                reason["why"] = "audio stream lost"
                rc = 1
                break
            if core.first_error is not None and not error_reported:
                status.log("error in the audio callback (that block was muted):\n" + core.first_error.rstrip())
                error_reported = True
            if not ready and engine.wait_ready(0) and _engine_stats(engine).get("cache_entries", 1):
                ready = True
                st = _engine_stats(engine)
                status.log(f"ready: {st.get('cache_entries', '?')} notes cached in "
                           f"{time.monotonic() - t_start:.1f} s")
            now = time.monotonic()
            if now >= next_gc:
                tamer.tick(core if audio.stream.active else None)
                next_gc = time.monotonic() + GC_TICK
            if now >= next_status:
                ports = len(midi.port_names) if midi else 0
                status.show(status_text(presets[0].name, core, _engine_stats(engine), ports))
                write_stats()
                next_status = now + status.interval
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if midi is not None and midi is not audio:
            midi.close()
        if audio is not None:
            if audio.stream.active:
                # Fade every voice out inside the stream before closing it: no click at exit.
                core.panic_request = True
                time.sleep(min(0.2, 0.01 + 4 * blocksize / sample_rate))
            abandoned = not audio.close()
        close = getattr(engine, "close", None)
        if callable(close):
            close()
        tamer.stop()
    write_stats()
    summary = final_summary(core, engine, tamer, reason["why"], midi)
    status.log("stopped (" + reason["why"] + "): " + " ".join(f"{k}={v}" for k, v in summary.items()
                                                                 if not isinstance(v, (dict, list))))
    if abandoned:
        # The JACK server died under the stream: PortAudio would hang in its exit handler
        # (Pa_Terminate), so leave now. Everything of ours is already written and flushed.
        status.log("the JACK server is gone; exiting without closing PortAudio")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc or 1)
    return rc


def _open_midi(midi_api: str, args, queue, audio, device, core: LiveCore, vmap, log):
    """The MIDI input beside a PortAudio stream (None for --midi-api none)."""
    if midi_api == "jack":
        from synth.audio_io import AUDIO_APIS
        from synth.midi_in import JackMidiInput

        on_jack = device.hostapi == AUDIO_APIS["jack"]
        midi = JackMidiInput(queue, port_patterns=args.midi_port, velocity_map=vmap, log=log,
                             clock=None if on_jack else audio.time)
        if on_jack:
            core.ref_clock = midi.cycle_clock
        return midi
    if midi_api in ("alsa", "jack-rtmidi"):
        from synth.midi_in import MidiInput

        return MidiInput("jack" if midi_api == "jack-rtmidi" else "alsa", queue, audio.time,
                         port_patterns=args.midi_port, virtual=not args.no_virtual, velocity_map=vmap, log=log)
    return None


def final_summary(core: LiveCore, engine, tamer: GcTamer, why: str, midi=None) -> dict:
    load = core.load()
    d = core.durations_ms()
    out = {
        "reason": why,
        "callbacks": core.callbacks,
        "xruns": core.underflows + core.overruns,
        "underflows": core.underflows,
        "overruns": core.overruns,
        "events": core.events,
        "late_events": core.late_events,
        "deduplicated": core.deduped,
        # JACK MIDI: cycles whose events repeated the last cycle's exactly (a stale buffer), dropped.
        "stale_midi_cycles": getattr(midi, "stale_cycles", 0),
        "deferred": core.deferred,
        "dropped": core.dropped,
        "callback_errors": core.errors,
        "panics": core.panics,
        "load_p50": round(load["p50"], 4),
        "load_p99": round(load["p99"], 4),
        "load_max": round(load["max"], 4),
        "cpu_p50": round(load.get("cpu_p50", 0.0), 4),
        "cpu_p99": round(load.get("cpu_p99", 0.0), 4),
        "cpu_max": round(load.get("cpu_max", 0.0), 4),
        "callback_ms_p99": round(float(np.percentile(d, 99)), 4) if len(d) else 0.0,
        "dac_lead_ms": round(1e3 * core._lead, 3) if core._lead is not None else None,
        "gc_mode": tamer.mode,
        "gc_collections": tamer.collections,
        "gc_collect_ms_max": round(1e3 * tamer.collect_seconds_max, 3),
        "gc_collect_cpu_ms_max": round(1e3 * tamer.collect_cpu_max, 3),
        "latency_samples": int(getattr(engine, "latency_samples", 0) or 0),
        "load_hist_pct": core.load_hist.tolist(),
        "cpu_hist_pct": core.cpu_hist.tolist(),
        "worst_callbacks": core.worst_callbacks(),
        "entry_hist_pct": core.entry_hist.tolist(),
        "engine": _engine_stats(engine),
        "pid": os.getpid(),
    }
    return out
