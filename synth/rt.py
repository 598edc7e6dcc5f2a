"""Keeping Python out of the audio thread's way: the cyclic GC, the GIL switch interval, priority.

The audio callback runs on a real-time thread, but it needs the GIL, and whoever holds the GIL (or
runs a garbage collection with it) delays the callback. Why each setting, with measurements:
docs/live.md ("Real-time behaviour") and docs/decisions-live.md.
"""

from __future__ import annotations

import gc
import os
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from synth.callback import LiveCore

GC_TICK = 0.25         # seconds between gen-0 collections on the main thread (GC is off elsewhere)
GC_GEN1_EVERY = 8      # ticks between gen-1 collections (2 s: each one stays small)


class GcTamer:
    """Keep the cyclic GC off the audio thread, and hand the GIL over sooner.

    `start()`, after loading: `gc.freeze()` moves every live object to a permanent generation that
    collections never scan again (a full collection of the loaded synth takes milliseconds, an xrun),
    and automatic collection is disabled. `tick()`, called from the main thread every GC_TICK seconds,
    then runs a short gen-0 collection there (gen-1 every GC_GEN1_EVERY ticks). The switch interval is
    shortened so that a busy Python thread hands the GIL to the audio callback sooner (0.5 ms, not 5).
    `mode="default"` leaves the GC alone.
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
        """Collect now, or with `core`, just after its next callback ends (giving up after two blocks).
        A collection holds the GIL for its whole length; started as a block ends, it has most of the
        period to itself instead of being under way when the callback or the MIDI thread needs the GIL."""
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

    The thread holding the GIL is an ordinary one; on a busy machine it waits for a CPU while the
    real-time callback waits for it, a priority inversion that shows up as xruns. A lower nice value
    lets our threads win the CPU from batch work. Returns a note when it fails. Call it before any
    thread starts: on Linux the value is per thread and inherited by new threads.
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
