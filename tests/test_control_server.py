"""`synth.testing.jack.ControlServer`, the machine's own xruns beside a live measurement: a second JACK dummy
server with an idle C client (jack_metro) and an xrun listener in its own process. Real jackd."""

from __future__ import annotations

import signal
import time

import pytest

from synth.testing.jack import ControlServer, have_jackd

pytestmark = [pytest.mark.jack]
if not have_jackd():
    raise RuntimeError("jackd is missing: run `make sysdeps` (scripts/system_deps.sh installs jackd2)")


def test_control_server_reports_the_xruns_of_its_own_graph():
    """jack_metro stopped for 0.1 s (ten 512-frame periods) cannot finish its cycles: the listener
    reports xruns, timed on the system-wide monotonic clock, inside the window where it happened."""
    with ControlServer(period=512) as ctl:
        time.sleep(0.3)
        t0 = time.monotonic()
        metro = ctl.procs[0]
        metro.send_signal(signal.SIGSTOP)
        time.sleep(0.1)
        metro.send_signal(signal.SIGCONT)
        time.sleep(0.5)
        xs = ctl.xruns(t0, 0.6)
        assert xs and all(0.0 <= x < 0.6 for x in xs), (xs, ctl.times)
        assert ctl.xruns(t0 + 10.0, 1.0) == []                 # the window bounds hold
    assert ctl.procs == [] and ctl.server.proc is None       # everything stopped on exit
