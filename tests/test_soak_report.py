"""`make soak`'s report helpers (scripts/soak.py): xruns per minute, the steal cell, RSS growth with the
note cache's fill taken out."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import soak  # noqa: E402


def test_xruns_per_minute_show_clusters():
    # -0.1: an xrun just before the session's first frame counts in minute 1; 600 s clamps to the last.
    assert soak._per_minute([-0.1, 30.0, 61.0, 62.0, 599.9, 600.0], 10) == "2 2 0 0 0 0 0 0 0 2"
    assert soak._per_minute([], 2.5) == "0 0 0"


def test_steal_cell():
    st = {"steal_ms": 120.0, "steal_ms_per_minute": [0.0, 120.0], "seconds_with_steal": 3, "seconds": 120,
          "xruns": 5, "xruns_near_steal": 4, "share_of_seconds_near_steal": 0.075}
    assert soak._steal_text(st) == ("120 ms in 3 of 120 s (per minute: 0 120); 4 of 5 xruns, against 8% of "
                                    "the seconds")
    assert soak._steal_text(None).startswith("-") and soak._steal_text({"steal_ms": None}).startswith("-")


def test_rss_growth_is_judged_after_the_first_minute_less_the_cache():
    # (seconds, RSS MB, note cache MB): the cache fills to 100 MB in the first minute, then RSS is flat
    # but for 2 MB, and the cache stays full.
    samples = [(t, 300.0 + min(t, 60.0) / 60.0 * 100.0 + (2.0 if t > 300 else 0.0),
                min(t, 60.0) / 60.0 * 100.0) for t in range(0, 601, 10)]
    r = soak._rss_figures(samples)
    assert r["at_1min_mb"] == 400.0 and r["cache_at_1min_mb"] == 100.0 and r["end_mb"] == 402.0
    assert r["growth_after_1min_pct"] == 0.5 and r["growth_excl_cache_after_1min_pct"] == round(200 / 300, 2)


def test_jackd_blame_is_counted_from_its_log_after_a_mark(tmp_path):
    """JackServer.blame reads jackd's own account of each xrun (whose cycle was unfinished, in which
    state) from the log, only after the mark, so a run's startup does not count in its session."""
    from synth.testing.jack import JackServer

    srv = JackServer(log_dir=tmp_path)
    srv.log_path.write_text("JackEngine::XRun: client = neural-synth was not finished, state = Running\n")
    mark = srv.log_mark()
    with open(srv.log_path, "a") as f:
        f.write("JackEngine::XRun: client = neural-synth was not finished, state = Triggered\n"
                "JackTimedDriver::Process XRun = 11000 usec\n"
                "JackEngine::XRun: client = probe was not finished, state = Running\n"
                "JackEngine::XRun: client = neural-synth was not finished, state = Triggered\n")
    assert srv.blame(mark) == {"neural-synth: Triggered": 2, "probe: Running": 1}
    assert srv.blame() == {"neural-synth: Running": 1, "neural-synth: Triggered": 2, "probe: Running": 1}
    assert soak._blame_text(srv.blame(mark)) == "neural-synth: Triggered 2, probe: Running 1"
    assert soak._blame_text({}) == "nobody" and soak._blame_text(None) == "-"
