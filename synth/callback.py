"""The audio callback (`LiveCore.callback`): MIDI events in, one stereo block out, every period.

Each block it drains the event queue, turns each event's time into a frame offset inside this block,
calls the engine (`note_on`, ..., `render(frames, out=)`), clips and writes `outdata[:]`. It never
runs the model, never waits, takes no lock, imports nothing and allocates nothing large; its counters
are read by the main thread (status line, `--stats-json`).

Event timing: an event stamped at time `t` sounds one block after `t`. The reference is the time of
this block's start on the events' clock: JACK's cycle start for JACK MIDI (frame-exact), else the
block's DAC time (`time_info.outputBufferDacTime`) minus the typical DAC lead, both on the PortAudio
stream clock that rtmidi events are stamped with. The offset `(t - reference) * sr + blocksize` is
clamped at 0 for late events and deferred to the next block when it falls past this one, so timing
is kept inside the block and never jitters by a whole one.
"""

from __future__ import annotations

import collections
import time
import traceback
from collections.abc import Callable

import numpy as np

from synth.io.events import BEND, CC, NOTE_OFF, NOTE_ON, PROGRAM, EventQueue

RING = 8192            # callback timings kept for the load percentiles (about 22 s at 128 frames)
HIST_BINS = 300        # load histogram: 1% bins from 0 to 300% of the block time, cumulative
DEDUP_SECONDS = 0.003  # the same message from two ports this close together is one message twice
LEAD_SAMPLES = 16      # callbacks used to learn the DAC lead (outputBufferDacTime - currentTime)
ENTRY_BASE = 64        # callbacks used to learn the usual entry delay under JACK
WORST = 8              # callbacks kept with what they did, the costliest in CPU time (diagnostics)
WORST_FIELDS = ("callback", "stream_s", "cpu", "wall", "dispatch_cpu", "events", "voices", "sys_cpu", "faults")
# Work per block stays bounded (measurements: docs/decisions-live.md). At most one note-on per 32
# frames starts per block (4 per 128 frames); the rest, and every event after them, wait for the next
# block (`deferred`). MIDI over a DIN cable needs ~1 ms per note-on, so the cap is still three times
# faster than a hardware keyboard.
FRAMES_PER_NOTE_ON = 32
MIN_NOTE_ONS = 4
# Events other than note-ons get a time budget per block: once dispatching has taken this share of the
# block (wall time, so a machine that steals our CPU gets less work), the rest waits for the next block
# like capped note-ons do.
DISPATCH_SHARE = 0.15
# ...but the first MIN_EVENTS events of a block always go through: a chord or a knob move is not split
# across blocks (a few ms late) because the thread was preempted while it started them.
MIN_EVENTS = 8
# A stale backlog is coalesced (see `_dispatch`) and sent at most one event per 4 frames per block
# (128 per 512-frame block, 32 per 128), so a panic reached past a flood does not overrun its block.
FRAMES_PER_HELD = 4
MIN_HELD = 16
# Events beyond this many waiting count as stale too (oldest first), which bounds the walk to a panic.
MAX_BACKLOG = 1024
# A note-on deferred this long is dropped: a flood beyond the cap (1500 note-ons/s) must not build an
# endless backlog. A 256-note cluster starts within 0.17 s, so bursts are never cut.
MAX_DEFER_SECONDS = 0.3
# `panic_request` value for the fade-out of a clean stop: the same silencing as a panic, not counted as one.
FADE_OUT = "fade-out"


try:
    import resource

    _RUSAGE = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)
except ImportError:   # not on Windows: the two diagnostic fields read 0 there
    resource = None


class _NoRusage:
    ru_stime = 0.0
    ru_minflt = 0


_NO_RUSAGE = _NoRusage()


def _rusage_thread():
    """This thread's resource usage (Linux: RUSAGE_THREAD; elsewhere the process's)."""
    return resource.getrusage(_RUSAGE) if resource is not None else _NO_RUSAGE


def _median(xs: list[float]) -> float:
    """Median of a short list, for the audio thread. Not np.median: its first call imports numpy.ma,
    milliseconds of CPU on the audio thread (docs/decisions-live.md, 2026-12-03)."""
    s = sorted(xs)
    n = len(s)
    return float(s[n // 2]) if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


class LiveCore:
    """The audio callback and its counters. In steady state the engine's `render(frames, out=outdata)`
    allocates nothing above 1 KB (views, numpy scalars and small Python objects only;
    tests/test_realtime_alloc.py: 256 voices, 128- and 512-frame blocks) and never logs: what goes
    wrong is counted, and the status loop's `engine.report()` logs it.

    `engine` follows the Engine API in docs/architecture.md (note_on/.../render(frames, out=)).
    `queue` is a `collections.deque` of `synth.io.events` tuples appended by the MIDI input; `t` is on
    the stream clock (the same clock as `time_info.currentTime`), or on `ref_clock`'s when it is set.
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
        self.deferred = 0         # events held for a later block by the note-on cap or the time budget
        self._counted = 0         # how many of the oldest waiting events `deferred` has counted already
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
        # Set by any thread; the audio thread calls engine.panic(). True: a panic (SIGUSR1), counted in
        # `panics`; FADE_OUT: the fade of a clean stop, not counted.
        self.panic_request: bool | str = False
        self.panics = 0

    # -- the audio thread ---------------------------------------------------------------------------
    def callback(self, outdata, frames: int, time_info, status) -> None:
        """sounddevice callback: `outdata` float32[frames, 2]. Runs on the audio thread; the engine's
        render allocates nothing above 1 KB in steady state and logs nothing."""
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
                if self.panic_request is not FADE_OUT:
                    self.panics += 1
                self.panic_request = False
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
        taken = 0   # events off the queues in this block, less those put back (for `deferred`)
        at_cap = False
        while True:
            if pending:
                ev = pending.popleft()
                from_q = False
            elif q:
                ev = q.popleft()
                from_q = True
            else:
                break
            taken += 1
            t, kind, ch, a, b, src = ev
            old = t < stale or excess > 0
            if capped and urgent <= 0 and not old:
                (q if from_q else pending).appendleft(ev)
                # Everything still waiting is deferred; the oldest of it, counted at an earlier block's
                # cap, is not counted again. (The queues are FIFO and `future` goes back in front.)
                waiting = len(future) + len(pending) + len(q)
                self.deferred += max(0, waiting - max(0, self._counted - (taken - 1 - len(future))))
                self._counted = waiting
                at_cap = True
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
                    taken -= 1
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
        if self._counted and not at_cap:
            self._counted = max(0, self._counted - (taken - len(future)))
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
