"""The live audio callback, MIDI parsing and the command's error paths, without a sound card.

`LiveCore` is driven the way PortAudio drives it (outdata, frames, time_info, status); the engine here
is a small recorder of the calls it receives, because the subject is the callback's timing logic."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from synth.callback import (
    DISPATCH_SHARE,
    LEAD_SAMPLES,
    MAX_BACKLOG,
    MAX_DEFER_SECONDS,
    MIN_EVENTS,
    LiveCore,
)
from synth.errors import UserError
from synth.io.events import BEND, CC, NOTE_OFF, NOTE_ON, PROGRAM, EventQueue, Parser
from synth.io.ports import MidiSource, PortRefused, is_own, velocity_map

SR, BS = 48000, 128


class CallLog:
    """Engine API surface that records (method, args, frame) and renders a constant."""

    latency_samples = 0

    def __init__(self, fail: bool = False):
        self.calls = []
        self.fail = fail
        self.panicked = 0

    def note_on(self, ch, note, vel, frame=0):
        self.calls.append(("on", ch, note, vel, frame))

    def note_off(self, ch, note, frame=0):
        self.calls.append(("off", ch, note, frame))

    def control_change(self, ch, cc, v, frame=0):
        self.calls.append(("cc", ch, cc, v, frame))

    def program_change(self, ch, p, frame=0):
        self.calls.append(("prog", ch, p, frame))

    def pitch_bend(self, ch, v, frame=0):
        self.calls.append(("bend", ch, v, frame))

    def panic(self):
        self.panicked += 1

    def render(self, frames, out=None):
        if self.fail:
            raise RuntimeError("boom")
        out[:] = 2.0  # beyond full scale: the callback must clip
        return out


def flags(underflow=False):
    return SimpleNamespace(output_underflow=underflow)


def tinfo(t, lead=0.004):
    return SimpleNamespace(currentTime=t, outputBufferDacTime=t + lead)


def run_block(core, t=None, frames=BS, underflow=False):
    out = np.zeros((frames, 2), np.float32)
    core.callback(out, frames, tinfo(t if t is not None else core.callbacks * frames / SR), flags(underflow))
    return out


def test_event_offsets_follow_event_time_inside_the_block():
    """With a reference clock (JACK cycle start), an event stamped k frames into the previous block
    plays at frame k of this one; one stamped inside the current block waits for the next."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    clock = {"t": 1.0}
    core.ref_clock = lambda: clock["t"]
    for k in (0, 5, 77, 127):
        q.append((1.0 - BS / SR + k / SR, NOTE_ON, 0, 60, 100, 0))
    q.append((1.0 + 10 / SR, NOTE_OFF, 0, 60, 0, 0))   # stamped in this cycle: next block, frame 10
    run_block(core)
    assert [c[-1] for c in eng.calls] == [0, 5, 77, 127]
    eng.calls.clear()
    clock["t"] = 1.0 + BS / SR
    run_block(core)
    assert eng.calls == [("off", 0, 60, 10)]


def test_dac_time_reference_and_late_events():
    """Without a reference clock the DAC time minus the learnt lead is the reference; late events play
    at frame 0 and are counted; order is kept even when clock noise would reverse two events."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    for i in range(1, LEAD_SAMPLES + 1):
        run_block(core, t=i * BS / SR)
    assert core._lead == pytest.approx(0.004)
    eng.calls.clear()
    t0 = (LEAD_SAMPLES + 1) * BS / SR
    q.extend([(t0 - BS / SR + 40 / SR, NOTE_ON, 0, 60, 90, 0),
              (t0 - BS / SR + 30 / SR, NOTE_ON, 0, 61, 90, 0),    # arrived later, stamped earlier
              (t0 - 3 * BS / SR, NOTE_ON, 0, 62, 90, 0)])         # two blocks late
    run_block(core, t=t0)
    assert [c[-1] for c in eng.calls] == [40, 40, 40]
    assert core.late_events == 1
    eng.calls.clear()
    q.append((t0 - 2 * BS / SR, NOTE_OFF, 0, 60, 0, 0))
    run_block(core, t=t0 + BS / SR)
    assert eng.calls == [("off", 0, 60, 0)] and core.late_events == 2


def test_duplicates_from_two_ports_play_once():
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 1.0
    t = 1.0 - BS / SR
    q.extend([(t, NOTE_ON, 0, 60, 100, 1), (t + 1e-4, NOTE_ON, 0, 60, 100, 2),   # same message, 2 ports
              (t + 2e-4, NOTE_ON, 0, 62, 100, 1), (t + 2e-4, NOTE_ON, 0, 62, 100, 1),  # re-strike, 1 port
              (t + 3e-4, NOTE_ON, 0, 64, 100, 1), (t + 3e-4, NOTE_ON, 0, 64, 101, 2)])  # different velocity
    run_block(core)
    run_block(core)   # more than 4 note-ons: the rest start one block later
    assert [c[2] for c in eng.calls] == [60, 62, 62, 64, 64]
    assert core.deduped == 1


def test_note_on_burst_is_spread_over_blocks_in_order():
    """A 20-note chord plus its note-offs: 4 note-ons per 128-frame block, nothing reordered, nothing lost."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    clock = {"t": 1.0}
    core.ref_clock = lambda: clock["t"]
    t = 1.0 - BS / SR
    q.extend([(t + i / SR, NOTE_ON, 0, 40 + i, 100, 0) for i in range(20)])
    q.append((t + 30 / SR, NOTE_OFF, 0, 40, 0, 0))
    per_block = []
    for _ in range(6):
        n0 = len(eng.calls)
        run_block(core)
        clock["t"] += BS / SR
        per_block.append(sum(1 for c in eng.calls[n0:] if c[0] == "on"))
    assert per_block == [4, 4, 4, 4, 4, 0]
    assert [c[2] for c in eng.calls if c[0] == "on"] == list(range(40, 60))
    assert eng.calls[-1][:3] == ("off", 0, 40) and core.events == 21 and core.deferred > 0


def test_deferred_counts_events_not_events_times_blocks():
    """`deferred` counts each event the cap holds back once, however many blocks it waits: a 20-note
    chord and its note-off at 4 note-ons a block defer 17 events (16 note-ons and the note-off), and 3
    events that arrive behind them while they wait add 3. (It was the waiting events summed over every
    capped block: 17 + 13 + 9 + 5 + 1 = 45 for the chord alone.) Events stamped for a later block that
    go back to the queue are not counted twice either."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    clock = {"t": 1.0}
    core.ref_clock = lambda: clock["t"]
    t = 1.0 - BS / SR
    q.extend([(t + i / SR, NOTE_ON, 0, 40 + i, 100, 0) for i in range(20)])
    q.append((t + 30 / SR, NOTE_OFF, 0, 40, 0, 0))

    def block():
        run_block(core)
        clock["t"] += BS / SR

    block()
    assert core.deferred == 17
    # Arrivals behind the backlog, two of them stamped inside the next block (they go back to `pending`).
    q.extend([(clock["t"] - 10 / SR, NOTE_ON, 1, 70, 100, 0), (clock["t"] + 5 / SR, CC, 1, 74, 3, 0),
              (clock["t"] + 6 / SR, CC, 1, 74, 4, 0)])
    for _ in range(10):
        block()
    assert core.deferred == 20
    assert len([c for c in eng.calls if c[0] == "on"]) == 21 and not q and not core._pending
    assert core._counted == 0
    block()   # an idle block changes nothing
    assert core.deferred == 20


class SlowCalls(CallLog):
    """A CallLog whose control changes each take `cost` seconds of CPU."""

    def __init__(self, cost):
        super().__init__()
        self.cost = cost

    def control_change(self, ch, cc, v, frame=0):
        end = time.perf_counter() + self.cost
        while time.perf_counter() < end:
            pass
        super().control_change(ch, cc, v, frame)


def test_dispatch_work_per_block_has_a_time_budget():
    """Events that cost more than DISPATCH_SHARE of the block wait for the next block, in order and
    none lost: a CC storm cannot make one callback overrun. The first MIN_EVENTS always go."""
    bs, n, cost = 512, 100, 0.0001   # 0.1 ms per CC; the 512-frame block lasts 10.7 ms, its share 1.6 ms
    eng = SlowCalls(cost)
    q = collections.deque()
    core = LiveCore(eng, SR, bs, q)
    clock = {"t": 1.0}
    core.ref_clock = lambda: clock["t"]
    t = 1.0 - bs / SR
    q.extend([(t + i / SR, CC, 0, 74, i, 0) for i in range(n)])
    per_block = []
    for _ in range(60):
        n0 = len(eng.calls)
        run_block(core, frames=bs)
        clock["t"] += bs / SR
        per_block.append(len(eng.calls) - n0)
        if sum(per_block) == n:
            break
    budget = DISPATCH_SHARE * bs / SR
    assert max(per_block) <= int(budget / cost) + 1, per_block   # the event that crossed it
    assert min(per_block[:-1]) >= MIN_EVENTS, per_block           # preempted or not
    assert [c[3] for c in eng.calls] == list(range(n))            # in order, none lost
    assert core.deferred > 0


def test_a_chord_is_never_split_by_the_time_budget():
    """Under preemption (here: every call seems to take 1 ms of wall time) the first MIN_EVENTS events
    of a block still go in that block: an 8-note chord with its pedal lands together."""
    eng = SlowCalls(0.001)
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 1.0
    t = 1.0 - BS / SR
    q.extend([(t, CC, 0, 64, 127, 0)] + [(t, CC, 0, 74, 60 + k, 0) for k in range(MIN_EVENTS - 1)])
    run_block(core)
    assert len(eng.calls) == MIN_EVENTS and not q


def test_a_stale_backlog_is_coalesced_not_replayed_event_by_event():
    """A flood backlog older than MAX_DEFER_SECONDS: its note-ons are dropped and its controllers and
    note-offs collapse to their final state, applied at once, so the block's work stays bounded."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 2.0
    old = 2.0 - MAX_DEFER_SECONDS - 0.1
    evs = []
    for i in range(3000):
        kind = (NOTE_ON, CC, BEND, NOTE_OFF)[i % 4]
        a = {NOTE_ON: 40 + i % 8, CC: 74, BEND: i - 1500, NOTE_OFF: 40 + i % 8}[kind]
        evs.append((old + i * 1e-6, kind, (i // 4) % 2, a, i % 128, 0))
    q.extend(evs)
    run_block(core)
    assert not [c for c in eng.calls if c[0] == "on"] and core.dropped == 750   # too late to start
    assert len(eng.calls) < 32, len(eng.calls)              # not 2250 calls
    assert not q and not core._pending
    # Final states survive: the last CC 74 and bend of each channel.
    for ch in (0, 1):
        last_cc = [e for e in evs if e[1] == CC and e[2] == ch][-1]
        last_bend = [e for e in evs if e[1] == BEND and e[2] == ch][-1]
        assert [c for c in eng.calls if c[0] == "cc" and c[1] == ch][-1][3] == last_cc[4]
        assert [c for c in eng.calls if c[0] == "bend" and c[1] == ch][-1][2] == last_bend[3]


def test_the_held_backlog_goes_before_newer_events():
    """A stale note-off coalesced from a backlog is older than a fresh note-on of the same key that
    follows it: the note-off reaches the engine first, so it cannot release the new note."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 2.0
    old = 2.0 - MAX_DEFER_SECONDS - 0.05
    q.extend([(old, CC, 0, 74, 5, 0), (old, NOTE_OFF, 0, 60, 0, 0), (2.0 - BS / SR, NOTE_ON, 0, 60, 90, 0)])
    run_block(core)
    assert [c[:3] for c in eng.calls] == [("cc", 0, 74), ("off", 0, 60), ("on", 0, 60)]


def test_held_events_are_sent_a_bounded_number_per_block_and_none_is_lost():
    """A backlog that coalesces to more keys than one block may send (`max_held`): the oldest go first,
    the rest in the next blocks, and newer events wait until the held state is out. Every key's final
    value arrives, in order of their last update."""
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    clock = {"t": 2.0}
    core.ref_clock = lambda: clock["t"]
    old = 2.0 - MAX_DEFER_SECONDS - 0.05
    keys = [(ch, cc) for ch in range(16) for cc in range(20, 30)]          # 160 distinct controllers
    evs = [(old + i * 1e-6, CC, ch, cc, (i * 7) % 128, 0) for i, (ch, cc) in enumerate(keys * 3)]
    fresh = (2.0 - BS / SR, NOTE_ON, 5, 64, 100, 0)
    q.extend(evs + [fresh])
    per_block = []
    for _ in range(20):
        n0 = len(eng.calls)
        run_block(core)
        clock["t"] += BS / SR
        per_block.append(len(eng.calls) - n0)
        if eng.calls and eng.calls[-1][0] == "on":
            break
    assert max(per_block) <= core.max_held + 1, per_block     # the held share, plus the note-on
    assert len(per_block) > 2, per_block                      # 160 keys at max_held (32) per block
    ccs = [c for c in eng.calls if c[0] == "cc"]
    assert [(c[1], c[2]) for c in ccs] == keys                # each key once, oldest update first
    final = {(e[2], e[3]): e[4] for e in evs}
    assert all(c[3] == final[(c[1], c[2])] for c in ccs)
    assert eng.calls[-1][:3] == ("on", 5, 64) and not core._held


def test_a_panic_goes_ahead_of_the_held_backlog_within_its_block():
    """CC 123 behind a stale backlog that coalesces to more than a block's share: it reaches the engine
    in this block; its channel's older note-offs are dropped (it releases them all), and the held
    controllers follow in later blocks."""
    eng = CallLog()
    q = EventQueue()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 2.0
    old = 2.0 - MAX_DEFER_SECONDS - 0.05
    for i in range(400):
        q.append((old + i * 1e-6, NOTE_OFF if i % 2 else CC, i % 16, (i // 2) % 128, 1, 0))
    q.append((2.0 - BS / SR, CC, 3, 123, 0, 0))
    run_block(core)
    assert ("cc", 3, 123, 0) in [c[:4] for c in eng.calls]
    assert not [c for c in eng.calls if c[0] == "off" and c[1] == 3]
    assert core._held                                          # the rest waits for the next blocks
    for _ in range(20):
        run_block(core)
    assert not core._held and not q


def test_the_walk_through_a_backlog_is_bounded():
    """A flood beyond the note-on cap builds a backlog; beyond MAX_BACKLOG waiting events the oldest are
    treated as stale (note-ons dropped, the rest coalesced), so the queue at a block's start stays
    within MAX_BACKLOG plus one block's arrivals and a panic behind it is reached in bounded work."""
    eng = CallLog()
    eng.calls = collections.deque(maxlen=64)
    q = EventQueue()
    core = LiveCore(eng, SR, BS, q)
    clock = {"t": 1.0}
    core.ref_clock = lambda: clock["t"]
    per_block = 200                                       # 75,000 note-ons/s: 50x the cap
    depth = []
    for _ in range(60):
        t = clock["t"] - BS / SR
        q.extend((t + k * 1e-6, NOTE_ON, k % 16, 40 + k % 40, 100, 0) for k in range(per_block))
        depth.append(len(q) + len(core._pending))
        run_block(core)
        clock["t"] += BS / SR
    assert max(depth) <= MAX_BACKLOG + per_block, max(depth)
    assert core.dropped > 0
    q.append((clock["t"] - BS / SR, CC, 0, 120, 0, 0))
    eng.calls.clear()
    run_block(core)
    assert ("cc", 0, 120, 0) in [c[:4] for c in eng.calls]


def test_callback_cpu_time_is_measured_apart_from_wall_time():
    """The load figures count the callback's own CPU time separately (thread time): a callback that
    sleeps (as one preempted or waiting for the GIL does) has a long wall time and a short CPU time."""

    class Sleepy(CallLog):
        def render(self, frames, out=None):
            time.sleep(0.004)
            return super().render(frames, out)

    core = LiveCore(Sleepy(), SR, BS)
    for _ in range(5):
        run_block(core)
    load = core.load()
    assert load["p50"] > 1.2 and load["cpu_p50"] < 0.5, load
    assert core.cpu_hist.sum() == 5 and core.cpu_hist[100:].sum() == 0


def test_every_event_kind_reaches_the_engine():
    eng = CallLog()
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    core.ref_clock = lambda: 1.0
    t = 1.0 - BS / SR
    q.extend([(t, CC, 3, 74, 99, 0), (t, PROGRAM, 3, 1, 0, 0), (t, BEND, 3, -8192, 0, 0),
              (t, NOTE_ON, 3, 60, 1, 0), (t, NOTE_OFF, 3, 60, 0, 0)])
    run_block(core)
    assert eng.calls == [("cc", 3, 74, 99, 0), ("prog", 3, 1, 0), ("bend", 3, -8192, 0), ("on", 3, 60, 1, 0),
                         ("off", 3, 60, 0)]


def test_callback_clips_counts_and_survives_errors():
    core = LiveCore(CallLog(), SR, BS)
    out = run_block(core, underflow=True)
    assert np.all(out == 1.0) and core.underflows == 1
    core.panic_request = True
    run_block(core)
    assert core.engine.panicked == 1 and core.panics == 1
    bad = LiveCore(CallLog(fail=True), SR, BS)
    out = run_block(bad)
    assert np.all(out == 0) and bad.errors == 1 and "boom" in bad.first_error
    load = core.load()
    assert load["n"] == 2 and 0 <= load["p50"] <= load["p99"] <= load["max"]


def test_callback_allocates_nothing_large_in_steady_state():
    """1000 blocks with a note every block: traced allocations stay under 64 KiB at peak, far below
    one block buffer per call (which would be 1 KiB x 1000)."""
    eng = CallLog()
    eng.calls = collections.deque(maxlen=4)
    q = collections.deque()
    core = LiveCore(eng, SR, BS, q)
    tref = {"t": 1.0}
    core.ref_clock = lambda: tref["t"]
    out = np.zeros((BS, 2), np.float32)
    ti, st = tinfo(0.0), flags()
    for _ in range(50):
        core.callback(out, BS, ti, st)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(1000):
        q.append((tref["t"] - BS / SR, NOTE_ON, 0, 60 + i % 12, 100, 0))
        core.callback(out, BS, ti, st)
        tref["t"] += BS / SR
    cur, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak - base < 64 * 1024, (cur - base, peak - base)


def test_the_callback_imports_nothing():
    """No module is first imported on the audio thread: a lazy import costs milliseconds of CPU there
    (np.median's first call imports numpy.ma: 14 ms, once per run, when the DAC lead or JACK's entry
    delay is learned). Fresh interpreter; both clock paths; past the callbacks that learn them."""
    code = f"""
import sys, collections
sys.path.insert(0, {str(ROOT / "tests")!r})
from test_live_core import CallLog, run_block, tinfo, flags, SR, BS
from synth.callback import LiveCore, ENTRY_BASE, LEAD_SAMPLES
import numpy as np
cores = [LiveCore(CallLog(), SR, BS), LiveCore(CallLog(), SR, BS, collections.deque())]
cores[1].ref_clock = lambda: 1.0
before = set(sys.modules)
out = np.zeros((BS, 2), np.float32)
for core in cores:
    for i in range(ENTRY_BASE + LEAD_SAMPLES + 10):
        core.callback(out, BS, tinfo(i * BS / SR), flags())
    assert core._lead is not None or core.ref_clock is not None
assert cores[1]._entry_base is not None and cores[0]._lead is not None
core.worst_callbacks()
print(sorted(set(sys.modules) - before))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]", f"imported on the audio thread: {r.stdout.strip()}"


def test_worst_callbacks_are_kept_with_what_they_did():
    class Costly(CallLog):
        spun = False

        def render(self, frames, out=None):
            if len(self.calls) == 3 and not self.spun:   # one block does far more work than the others
                self.spun = True
                t = time.thread_time()
                while time.thread_time() - t < 0.01:
                    pass
            return super().render(frames, out)

    q = collections.deque()
    core = LiveCore(Costly(), SR, BS, q)
    for i in range(40):
        if i == 20:
            q.extend([(0.0, NOTE_ON, 0, 60 + k, 100, 0) for k in range(3)])
        run_block(core)
    worst = core.worst_callbacks()
    assert 1 <= len(worst) <= 8 and worst == sorted(worst, key=lambda r: -r["cpu"])
    top = worst[0]
    assert top["callback"] == 20 and top["events"] == 3 and top["cpu"] > 2.0, worst
    assert top["dispatch_cpu"] < top["cpu"] and top["wall"] >= top["cpu"] * 0.9
    assert abs(top["stream_s"] - 20 * BS / SR) < 1e-4


def _parse(chunks):
    out = []
    p = Parser()
    for c in chunks:
        p.feed(c, 0.5, 7, out.append)
    return [e[1:5] for e in out]


def test_parser_running_status_sysex_and_realtime():
    msgs = _parse([[0x90, 60, 100, 62, 90],          # running status: two note-ons
                   [64, 0],                          # running status across buffers; velocity 0 = off
                   [0xF8],                           # clock: skipped, running status kept
                   [65, 10],
                   [0xF0, 1, 2, 3, 0xF7],            # sysex: dropped, ends running status
                   [70, 70],                         # orphan data bytes: ignored
                   [0xB2, 74, 127, 0xC2, 5, 0xE2, 0, 64, 0xE2, 127, 127, 0xD2, 9, 0x82, 60, 64]])
    assert msgs == [(NOTE_ON, 0, 60, 100), (NOTE_ON, 0, 62, 90), (NOTE_OFF, 0, 64, 0), (NOTE_ON, 0, 65, 10),
                    (CC, 2, 74, 127), (PROGRAM, 2, 5, 0), (BEND, 2, 0, 0), (BEND, 2, 8191, 0),
                    (NOTE_OFF, 2, 60, 64)]


def test_velocity_map():
    assert velocity_map(1.0) is None
    heavy, light = velocity_map(2.0), velocity_map(0.5)
    assert heavy[0] == 0 and heavy[127] == 127 and light[127] == 127
    assert all(1 <= heavy[v] <= v <= light[v] for v in range(1, 128))
    assert heavy == sorted(heavy) and light == sorted(light)


class FakeSource(MidiSource):
    """A MIDI source whose ports are a list, for the port rule alone."""

    def __init__(self, **kw):
        self.lines = []
        super().__init__(collections.deque(), poll_seconds=3600, log=self.lines.append, **kw)
        self.ports: list[str] = []
        self.refuse: set[str] = set()
        self.taken_calls: list[str] = []
        self.released: list[str] = []

    def _list_ports(self):
        return list(self.ports)

    def _take(self, name):
        if name in self.refuse:
            raise PortRefused("busy")
        self.taken_calls.append(name)
        return object()

    def _release(self, name, handle):
        self.released.append(name)


def test_the_port_rule_both_midi_inputs_share():
    """One rule for rtmidi and JACK MIDI (synth.io.ports): the synth's own clients never feed it; a
    pattern selects by regex search, case-insensitive; a wanted port is taken once per appearance; a
    refusal is logged once and asked again each scan; a taken port that vanishes is released and logged,
    and taken again when it comes back."""
    assert is_own("neural-synth:neural-synth") and is_own("neural-synth-audio:out_0")
    assert is_own("neural-synth-in3:in 130:0") and not is_own("neural-synthesizer:out")
    assert not is_own("Midi Through:Midi Through Port-0 14:0")
    src = FakeSource(port_patterns=["^keys", "DAW"])
    assert src.wanted("Keys:out") and src.wanted("ardour:daw out") and not src.wanted("other:out")
    assert not src.wanted("neural-synth-audio:keys")
    src.ports = ["keys:a", "keys:b", "other:out", "neural-synth:neural-synth"]
    src.refuse = {"keys:b"}
    for _ in range(3):
        src.rescan()
    assert src.taken_calls == ["keys:a"]
    assert [s for s in src.lines if "keys:b" in s] == ["midi: cannot open keys:b: busy; trying again every 3600 s"]
    src.refuse.clear()
    src.rescan()
    assert src.taken_calls == ["keys:a", "keys:b"] and src.port_names[1:] == ["keys:a", "keys:b"]
    src.ports.remove("keys:a")
    src.rescan()
    assert src.released == ["keys:a"] and src.lines[-1] == "midi: port closed: keys:a"
    src.ports.append("keys:a")
    src.rescan()
    src.rescan()
    assert src.taken_calls == ["keys:a", "keys:b", "keys:a"]
    with pytest.raises(UserError, match="--midi-port"):
        FakeSource(port_patterns=["("])


def _synth(args, tiny_preset, extra_env=None):
    env = dict(os.environ, JACK_DEFAULT_SERVER=f"absent{os.getpid()}", JACK_NO_START_SERVER="1", PYO_GUI_WX="0",
               **(extra_env or {}))
    return subprocess.run([sys.executable, "-m", "synth", *args, "--preset-dir", str(tiny_preset.path.parent)],
                          env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


@pytest.mark.skipif(os.path.exists("/dev/snd"), reason="this machine has a sound card")
def test_no_audio_device_is_one_clear_line(tiny_preset):
    r = _synth(["--preset", "piano"], tiny_preset)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no audio output device" in lines[0] and "JACK" in lines[0] \
        and "--device" in lines[0], r.stderr
    r = _synth(["--preset", "piano", "--audio-api", "jack"], tiny_preset)
    assert r.returncode == 2 and "start a JACK server" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_flags_are_user_errors(tiny_preset):
    for args, needle in ((["--preset", "piano", "--blocksize", "3"], "--blocksize"),
                         (["--preset", "piano", "--knob", "74"], "--knob"),
                         (["--preset", "nope"], "unknown preset"),
                         (["--preset", "piano", "--audio-api", "beos"], "--audio-api"),
                         (["--preset", "piano", "--audio-api", "jack-client"], "needs a running JACK server"),
                         (["--preset", "piano", "--audio-api", "jack-client", "--midi-api", "alsa"],
                          "reads MIDI on its own JACK port")):
        r = _synth(args, tiny_preset)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("jack, seq, asked, want", [
    (True, True, ("auto", "auto"), ("jack-client", "jack")),      # under JACK: our own client
    (True, False, ("auto", "jack"), ("jack-client", "jack")),
    (True, True, ("auto", "alsa"), ("jack", "alsa")),             # another MIDI system: PortAudio's JACK
    (True, True, ("auto", "none"), ("jack", "none")),
    (True, True, ("jack", "auto"), ("jack", "jack")),             # the other path, one word away
    (False, True, ("auto", "auto"), ("auto", "alsa")),            # no JACK: PortAudio's default output
    (False, False, ("auto", "auto"), ("auto", "alsa")),
])
def test_auto_chooses_the_jack_client_under_jack(monkeypatch, jack, seq, asked, want):
    from synth.io import apis

    monkeypatch.setattr(apis, "jack_server_running", lambda: jack)
    monkeypatch.setattr(apis, "has_alsa_seq", lambda: seq)
    assert apis.choose_apis(*asked) == want


def test_devices_lists_apis_without_any_device():
    env = dict(os.environ, JACK_DEFAULT_SERVER=f"absent{os.getpid()}", JACK_NO_START_SERVER="1")
    r = subprocess.run([sys.executable, "-m", "synth", "devices"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert "JACK server: not running" in r.stdout and "MIDI input ports" in r.stdout
    assert "audio host APIs" in r.stdout


def test_knob_sweep_prefills_only_once_the_knob_settles(tiny_preset):
    """Live engine, real worker: a CC 74 sweep (a new knob state every 20 ms) generates nothing while
    it lasts (no note is played, so there is no miss); the last state's keyboard is prefilled once the
    knob has been still for SETTLE_SECONDS, and the states passed through are never generated. A knob
    that keeps moving still gets a prefill begun after MAX_DEFER_SECONDS."""
    import time

    from synth.engine import Engine
    from synth.worker import MAX_DEFER_SECONDS, SETTLE_SECONDS

    e = Engine(sample_rate=SR, blocksize=BS, presets=[tiny_preset], realtime=True)
    try:
        assert e.wait_ready(60)
        g0 = e.worker.generated
        keys = []
        t0 = time.perf_counter()
        for i in range(15):                       # 0.3 s, well under MAX_DEFER_SECONDS
            e.control_change(0, 74, 10 + 7 * i)
            e.render(BS)
            keys.append(e.knobs["piano"])
            time.sleep(0.02)
        assert time.perf_counter() - t0 < MAX_DEFER_SECONDS
        assert e.worker.generated == g0, "prefilled while the knob was moving"
        t_last = time.perf_counter()
        while e.worker.generated == g0:
            assert time.perf_counter() - t_last < 10, "the settled knob state was never prefilled"
            time.sleep(0.005)
        assert time.perf_counter() - t_last >= SETTLE_SECONDS - 0.03   # 20 ms of sleep slop
        assert e.wait_ready(60)
        assert all(e.cache.peek(("piano", keys[-1], p, 96)) is not None for p in range(21, 109))
        assert all(e.cache.peek(("piano", k, 60, 96)) is None for k in keys[:-1])
        # A knob that never settles: one prefill begins within MAX_DEFER_SECONDS (+ a nap).
        g1 = e.worker.generated
        t0 = time.perf_counter()
        i = 0
        while e.worker.generated == g1:
            assert time.perf_counter() - t0 < MAX_DEFER_SECONDS + 2.0, "a moving knob was never prefilled"
            e.control_change(0, 74, (i * 5) % 128)
            e.render(BS)
            i += 1
            time.sleep(0.05)
        assert time.perf_counter() - t0 >= MAX_DEFER_SECONDS - 0.06
    finally:
        e.close()


def test_live_blas_runs_on_one_thread():
    """`single_thread_blas` (called by `python -m synth` at start) leaves numpy's BLAS one thread: the
    callback's matrix product must never wait for BLAS helper threads of normal priority."""
    code = ("import numpy\nfrom threadpoolctl import threadpool_info\nfrom synth.engine import single_thread_blas\n"
            "n = single_thread_blas()\n"
            "print(n, sorted({l['num_threads'] for l in threadpool_info() if l['user_api'] == 'blas'}))")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="2", OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    n, threads = r.stdout.split(maxsplit=1)
    assert int(n) >= 1 and threads.strip() == "[1]", r.stdout


def test_gc_tick_waits_for_the_end_of_a_callback():
    """A tamed collection starts just after a callback ends (it holds the GIL throughout), and does not
    wait forever for a stream that has stopped calling back."""
    from synth.rt import GcTamer

    bs = 4096                                     # 85 ms periods: the tick gives up after two
    core = LiveCore(CallLog(), SR, bs)
    tamer = GcTamer("tamed")
    tamer.start()
    try:
        fired = {}

        def callback_later():
            time.sleep(0.02)
            fired["t"] = time.monotonic()
            run_block(core, frames=bs)

        th = threading.Thread(target=callback_later)
        th.start()
        tamer.tick(core)
        done = time.monotonic()
        th.join()
        assert "t" in fired and done >= fired["t"] and tamer.collections == 1
        t0 = time.monotonic()
        tamer.tick(core)                          # no callback comes: two periods and it collects anyway
        assert 0.15 < time.monotonic() - t0 < 1.0 and tamer.collections == 2
        assert tamer.collect_cpu_max <= tamer.collect_seconds_max + 1e-3
    finally:
        tamer.stop()
