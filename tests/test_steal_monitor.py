"""synth.testing.jack.StealMonitor: hypervisor steal per second and the xruns it explains (synthetic samples;
one short real sampling of /proc/stat)."""

from __future__ import annotations

import time

from synth.testing.jack import StealMonitor


def test_steal_per_second_and_xrun_attribution():
    sm = StealMonitor()
    # Cumulative steal (ms) at 0.25-s samples from t = 100 s: 40 ms stolen during second 3, none else.
    t0 = 100.0
    sm.samples = [(t0 + 0.25 * i, 1000.0 + (40.0 if i >= 16 else 40.0 * max(0, i - 12) / 4)) for i in range(41)]
    bins = sm.per_second(t0, 10)
    assert len(bins) == 10 and abs(sum(bins) - 40.0) < 1e-6 and bins[3] == 40.0
    a = sm.attribution(t0, [0.5, 2.9, 3.5, 4.2, 8.0, 12.0], 10)   # 12 s lies outside the window
    assert a["steal_ms"] == 40.0 and a["seconds_with_steal"] == 1 and a["seconds"] == 10
    assert a["xruns"] == 5 and a["xruns_near_steal"] == 3               # seconds 2, 3 and 4
    assert a["share_of_seconds_near_steal"] == 0.3
    assert a["steal_ms_per_minute"] == [40.0]


def test_steal_monitor_reads_proc_stat():
    with StealMonitor(interval=0.05) as sm:
        time.sleep(0.3)
    assert len(sm.samples) >= 3
    assert all(b >= a for (_, a), (_, b) in zip(sm.samples, sm.samples[1:], strict=False))   # cumulative
    assert sm.attribution(sm.samples[0][0], [], 0.2)["steal_ms"] >= 0.0
