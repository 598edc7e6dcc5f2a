"""Live faults on a real JACK server (dummy driver) with `python -m synth` and the tiny ONNX preset:
a MIDI flood through JACK MIDI, MIDI ports that vanish and come back, and the JACK server stopped
under the running synth. Nothing is mocked.

The flood here lasts 5 s (CI budget); `scripts/soak.py --flood-seconds 30` runs the full 30 s.
xruns are judged at 512 frames and only after the first second (docs/live.md).
"""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest

from synth.testing.jack import (
    FLOOD_KNOBS,
    JackServer,
    Probe,
    SynthProcess,
    have_jackd,
    note_events,
    onsets,
    play_and_record,
    run_flood,
    synth_cmd,
)

pytestmark = [pytest.mark.jack]
if not have_jackd():
    raise RuntimeError("jackd is missing: run `make sysdeps` (scripts/system_deps.sh installs jackd2)")

SR = 48000
PERIOD = 512


# Timing under a real JACK server on a shared 2-core machine: an xrun from the host's scheduling
# noise (not the synth) can fail one run, so the test reruns up to twice; the bars themselves are
# bench rows (docs/benchmarks.md). A synth that is really late fails all three runs.
JACK_NOISE = pytest.mark.flaky(reruns=2, only_rerun=["AssertionError"])


@JACK_NOISE
@pytest.mark.parametrize("audio_api", ["jack", "jack-client"])
def test_jack_midi_flood(tiny_preset, tmp_path, audio_api):
    """10,000 JACK MIDI events/s for 5 s at 512 frames, then CC 120 + 123 on every channel: the synth
    keeps up (from the first second to the flood's end its callback's own CPU time stays inside the
    block at the 99th percentile), its memory apart from the note cache stays flat after the first second, the output stays
    finite and within +-1, and the panic silences everything within a block (plus the 5 ms fade)
    although a backlog of deferred note-ons was waiting (two panics go 0.2 s apart; the second is judged
    only where the first failed next to an xrun). xruns are printed, not asserted (see below).
    The flood and its measurements are `synth.testing.jack.run_flood`, shared with `scripts/soak.py`."""
    seconds = 5.0
    cmd = synth_cmd(tiny_preset.path.parent, "--midi-port", "^probe:", "--cache-mb", "128", "--audio-api", audio_api)
    fl = run_flood(cmd, tmp_path, seconds, knobs=FLOOD_KNOBS, period=PERIOD)
    print(f"flood: {fl['events_sent']} JACK events in {seconds} s; synth events {fl['events']}, dropped "
          f"{fl['dropped']}, deferred {fl['deferred']}, xruns synth {fl['xruns_synth_after_1s']} (1 s to the "
          f"end) / {fl['xruns_synth_all']} (all), JACK {fl['xruns_jack_after_1s']}; load p99 {fl['load_p99']:.2f} "
          f"max {fl['load_max']:.2f}; RSS {fl['rss_1s_mb']:.0f} -> {fl['rss_end_mb']:.0f} MB ({fl['rss_growth_excl_cache_pct']}% "
          f"without the note cache, {fl['cache_1s_mb']} -> {fl['cache_end_mb']} MB); voices {fl['voices']}, "
          f"misses dropped {fl['misses_dropped']}, stale {fl['misses_stale']}; silent {fl['silence_ms']} ms after "
          f"panic {fl['panic_judged']}; JACK xruns at {fl['jack_xrun_seconds']} s; callback CPU {fl['cpu']}, wall {fl['load_window']}; "
          f"hypervisor steal {fl['steal']}")
    assert fl["alive"] and fl["exit_code"] == 0, fl["log_tail"]
    assert fl["callback_errors"] == 0
    assert fl["finite"] and fl["peak"] <= 1.0
    assert fl["flood_peak"] > 0.01                                           # the flood did sound
    # The panic goes twice, 0.2 s apart; an xrun drops its period's MIDI, so where the first failed
    # next to an xrun the second is judged (CI, 2026-12-07: one xrun-ridden run sounded 56 ms on).
    assert fl["silent_after_panic"], (fl["panic_judged"], fl["silence_ms"], fl["post_panic_peak"])
    # Judged from 1 s to the end of the flood, on the callback's CPU time (thread time: without the
    # time it was preempted, waited for the GIL, or lost to the hypervisor). xruns themselves measure
    # the machine as much as the synth: on the 2-core CI machine this flood measured 12-120 synth and
    # 24-183 JACK xruns in 4 s in three runs back to back (a JACK-log count blamed every client in the
    # graph, the probe included), and 0 alone on a quiet one. So the zero-xrun bar is a `make soak` /
    # bench row (docs/reliability.md), and this test asserts the part that is the synth's own: its
    # work fits in the block. A regression to per-event blocks or O(backlog) dispatch breaks it.
    cpu = fl["cpu"]
    assert cpu["callbacks"] >= 0.25 * fl["periods_judged"], cpu          # the window held callbacks
    assert cpu["p99"] < 1.0, (cpu, fl["load_window"])
    # Memory: flat apart from the note cache filling towards its --cache-mb cap (its pages are mapped
    # as notes are first written). Knob states are per channel, so the flood's CC storms on 16
    # channels ask for many keyboards, and the 128-MB cache fills within the 5 s (76 -> 128 MB here).
    acct = {k: fl[k] for k in ("rss_1s_mb", "rss_end_mb", "cache_1s_mb", "cache_end_mb", "cache_cap_mb")}
    assert fl["cache_end_mb"] <= fl["cache_cap_mb"] + 1, acct
    # Without the cache, -4.2 to +5.3% in six runs (2026-12-05): the jack-client path's 1-s snapshot
    # comes ~13 MB earlier in its start-up (305-307 MB against 316-324; both end at 364-366). A leak
    # per event would grow with the flood's 50,000 events, far beyond 8%.
    assert fl["rss_growth_excl_cache_pct"] is not None and fl["rss_growth_excl_cache_pct"] < 8.0, acct


@pytest.mark.parametrize("api", ["jack", "jack-rtmidi", "jack-client"])
def test_midi_port_vanishes_and_reappears(tiny_preset, tmp_path, api):
    """A keyboard's MIDI port disappears while a note is held, then a port of the same name comes back:
    the sound goes on through the gap (no callback error), the synth says so, reconnects the new port
    within about a second, and its notes sound. (jack-client: `--audio-api jack-client`, whose one JACK
    client reads MIDI the way `--midi-api jack` does.)"""
    how = ["--audio-api", "jack-client"] if api == "jack-client" else ["--midi-api", api]
    cmd = synth_cmd(tiny_preset.path.parent, *how, "--midi-port", "^keys:")
    opened = "port opened: keys:midi_out" if api == "jack-rtmidi" else "port connected: keys:midi_out"
    gone = "port closed: keys:midi_out" if api == "jack-rtmidi" else "port gone: keys:midi_out"
    with JackServer(period=PERIOD) as srv, SynthProcess(srv, cmd, tmp_path) as sp:
        sp.wait_for("ready")
        rec = Probe(srv, name="rec")
        try:
            rec.record_synth()
            sounded = []
            for round_ in range(2):
                keys = Probe(srv, name="keys", record_seconds=0.1)
                try:
                    sp.wait_for(opened if round_ == 0 else gone, timeout=10)
                    if round_ == 1:
                        end = time.monotonic() + 10
                        while sp.stderr.count(opened) < 2:
                            assert time.monotonic() < end, sp.stderr[-2000:]
                            time.sleep(0.05)
                    time.sleep(0.3)   # rtmidi opens the port on its own client: let the connection settle
                    base = keys.now + SR // 4
                    rec.start_recording()
                    keys.schedule([(base, bytes([0x90, 60 + 7 * round_, 100]))])   # held across the unplug
                    while keys.now < base + SR // 4:
                        time.sleep(0.02)
                finally:
                    keys.close()      # the port vanishes with its note still held
                time.sleep(0.3)
                x = rec.stop_recording()
                sounded.append(onsets(x, [base - rec.rec_start], SR // 5, 0.005)[0] is not None)
                # The held note kept sounding after its port vanished.
                assert np.abs(x[-PERIOD * 4:]).max() > 0.005, round_
            sp.wait_for(gone, timeout=5)
            st = sp.fresh_stats()
        finally:
            rec.close()
        rc = sp.stop()
    assert sounded == [True, True], sp.stderr[-2000:]
    assert sp.stderr.count(opened) == 2 and st["callback_errors"] == 0
    assert rc == 0, sp.stderr[-2000:]


@pytest.mark.parametrize("audio_api", ["jack", "jack-client"])
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_jack_server_stopped_under_the_synth(tiny_preset, tmp_path, how, audio_api):
    """The JACK server goes away while the synth plays (stopped, or killed): the synth prints one clear
    line and exits with status 1 within a few seconds; it never hangs and prints no traceback."""
    cmd = synth_cmd(tiny_preset.path.parent, "--audio-api", audio_api)
    srv = JackServer(period=PERIOD)
    srv.start()
    try:
        with SynthProcess(srv, cmd, tmp_path) as sp:
            sp.wait_for("ready")
            probe = Probe(srv)
            try:
                probe.connect_synth()
                play_and_record(probe, note_events([probe.now + SR // 10], [60], hold=SR), tail_seconds=0.05)
            finally:
                probe.close()
            t = time.monotonic()
            srv.proc.send_signal(how)
            try:
                rc = sp.proc.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail(f"the synth hung after the JACK server went away:\n{sp.stderr[-2000:]}")
            waited = time.monotonic() - t
            err = sp.stderr
    finally:
        srv.stop()
    assert rc == 1, err[-2000:]
    assert "error: the audio stream stopped" in err, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert waited < 10, waited


def test_refused_midi_connection_is_tried_again(monkeypatch):
    """JACK can refuse a connection (a busy server answers -1; here, a port whose client is not active
    yet). The synth's JACK MIDI input logs it once, asks again at each scan, and connects the port as
    soon as JACK accepts. (Before, the port was marked as seen and never connected: a keyboard plugged in
    while the server had xruns stayed silent.) Real server, real JACK clients."""
    import collections

    import jack

    from synth.io.midi_jack import JackMidiInput

    with JackServer(period=PERIOD) as srv:
        for k, v in srv.env.items():
            monkeypatch.setenv(k, v)
        keys = jack.Client("late-keys", servername=srv.name, no_start_server=True)
        out = keys.midi_outports.register("out")
        lines: list[str] = []
        midi = JackMidiInput(collections.deque(), poll_seconds=3600, log=lines.append)
        try:
            midi.start()                      # first scan: JACK refuses (late-keys is not active)
            midi.rescan()
            midi.rescan()
            refused = [s for s in lines if "cannot connect late-keys:out" in s]
            assert len(refused) == 1, lines  # logged once, however many scans
            assert "trying again" in refused[0]
            assert not keys.get_all_connections(out)
            keys.activate()
            midi.rescan()
            assert any(s.endswith("port connected: late-keys:out") for s in lines), lines
            assert [p.name for p in keys.get_all_connections(out)] == ["neural-synth:neural-synth"]
        finally:
            midi.close()
            keys.deactivate()
            keys.close()


def _connections_settle(client, port, want: list[str], seconds: float = 3.0) -> list[str]:
    """`port`'s connections once they equal `want`, or as they are after `seconds`: JACK2 makes a graph
    change visible to other clients at a later cycle, not as the request returns."""
    end = time.monotonic() + seconds
    while True:
        got = [p.name for p in client.get_all_connections(port)]
        if got == want or time.monotonic() > end:
            return got
        time.sleep(0.02)


@pytest.mark.parametrize("virtual", [True, False], ids=["virtual", "no-virtual"])
def test_no_virtual_under_jack_keeps_only_the_selected_ports(monkeypatch, virtual):
    """Under JACK our input port is both the virtual port and where the selected ports are connected.
    By default it keeps what another program connects to it; with `virtual=False` (`--no-virtual`) only
    the ports `--midi-port` selects may feed it, as under ALSA: a connection from any other port is
    removed at the next scan, logged once. (Before, the flag was ignored under JACK.) Real server."""
    import collections

    import jack

    from synth.io.midi_jack import JackMidiInput

    with JackServer(period=PERIOD) as srv:
        for k, v in srv.env.items():
            monkeypatch.setenv(k, v)
        clients = {n: jack.Client(n, servername=srv.name, no_start_server=True) for n in ("keys", "other")}
        outs = {n: c.midi_outports.register("out") for n, c in clients.items()}
        for c in clients.values():
            c.activate()
        lines: list[str] = []
        midi = JackMidiInput(collections.deque(), port_patterns=["^keys:"], virtual=virtual, poll_seconds=3600,
                             log=lines.append)
        try:
            midi.start()
            clients["other"].connect(outs["other"], "neural-synth:neural-synth")   # by hand, as a patchbay
            _connections_settle(clients["other"], outs["other"], ["neural-synth:neural-synth"])
            midi.rescan()
            midi.rescan()
            synth_port = ["neural-synth:neural-synth"]
            assert _connections_settle(clients["keys"], outs["keys"], synth_port) == synth_port, lines
            dropped = [s for s in lines if "disconnected other:out" in s]
            if virtual:
                assert _connections_settle(clients["other"], outs["other"], synth_port) == synth_port, lines
                assert not dropped, lines
            else:
                assert _connections_settle(clients["other"], outs["other"], []) == [], lines
                assert len(dropped) == 1 and "--no-virtual" in dropped[0], lines
        finally:
            midi.close()
            for c in clients.values():
                c.deactivate()
                c.close()


@pytest.mark.parametrize("audio_api", ["jack", "jack-client"])
def test_no_virtual_reaches_the_jack_midi_input(tiny_preset, tmp_path, audio_api):
    """`python -m synth --midi-api jack --no-virtual` (and `--audio-api jack-client`): the flag reaches
    the JACK MIDI input, which removes a connection from a port `--midi-port` does not select and keeps
    the selected one."""
    import jack

    cmd = synth_cmd(tiny_preset.path.parent, "--audio-api", audio_api, "--midi-api", "jack", "--midi-port",
                    "^keys:", "--no-virtual")
    with JackServer(period=PERIOD) as srv, SynthProcess(srv, cmd, tmp_path) as sp:
        sp.wait_for("ready")
        clients = {n: jack.Client(n, servername=srv.name, no_start_server=True) for n in ("keys", "other")}
        try:
            outs = {n: c.midi_outports.register("out") for n, c in clients.items()}
            for c in clients.values():
                c.activate()
            clients["other"].connect(outs["other"], "neural-synth:neural-synth")
            sp.wait_for("port connected: keys:out", timeout=10)
            sp.wait_for("midi: disconnected other:out", timeout=10)
            assert _connections_settle(clients["other"], outs["other"], []) == []
            synth_port = ["neural-synth:neural-synth"]
            assert _connections_settle(clients["keys"], outs["keys"], synth_port) == synth_port
        finally:
            for c in clients.values():
                c.deactivate()
                c.close()
        assert sp.stop() == 0, sp.stderr[-2000:]


def test_refused_output_connection_is_tried_again(monkeypatch):
    """`--audio-api jack-client` connects its outputs at start. A request JACK refuses (here: the
    playback ports' client activates 0.5 s later) is asked again for up to 2 s, so a busy server at
    start-up does not leave the synth unconnected and silent. Real server, real clients."""
    import collections
    import re
    import threading

    import jack

    from synth.io.jack_audio import JackSynthClient

    with JackServer(period=PERIOD) as srv:
        for k, v in srv.env.items():
            monkeypatch.setenv(k, v)
        speakers = jack.Client("speakers", servername=srv.name, no_start_server=True)
        ins = [speakers.inports.register(f"in_{i}") for i in range(2)]
        lines: list[str] = []

        def silence(outdata, frames, time_info, status):
            outdata.fill(0)

        synth = JackSynthClient(collections.deque(), silence, log=lines.append, poll_seconds=3600,
                                connect_to=re.compile("^speakers:"))
        later = threading.Timer(0.5, speakers.activate)
        try:
            later.start()
            synth.start()
            later.join()
            conns = [[p.name for p in speakers.get_all_connections(i)] for i in ins]
            assert conns == [["neural-synth:out_0"], ["neural-synth:out_1"]], (conns, lines)
            assert not any("cannot connect the outputs" in s for s in lines), lines
        finally:
            later.cancel()
            synth.close()
            speakers.deactivate()
            speakers.close()


@pytest.mark.parametrize("audio_api", ["jack", "jack-client"])
def test_stale_midi_buffer_does_not_retrigger(tiny_preset, tmp_path, audio_api):
    """A MIDI source that misses a cycle leaves last cycle's events in its output buffer, and a client
    that reads it then finds them again (in a loop, such as a DAW playing a track into the synth and
    recording it back, the synth runs first and always reads the buffer of the cycle before). Here a
    real JACK client writes one note-on and then leaves its buffer uncleared for 5 cycles, as a client
    that missed them would: the synth plays the note once and counts 5 stale cycles; a later note plays
    too. Then a cycle of three note-ons is followed by one holding only its first two, at the same
    offsets: what JACK 2 handed the synth after the synth's own xrun in the flood test (the flood's
    last note-ons again, after its panic). It is stale too. (Measured before: every probe-missed
    cycle of a bench session played its notes twice.)"""
    import threading

    import jack

    cmd = synth_cmd(tiny_preset.path.parent, "--audio-api", audio_api, "--midi-port", "^lazy:")
    with JackServer(period=PERIOD) as srv, SynthProcess(srv, cmd, tmp_path) as sp:
        sp.wait_for("ready")
        lazy = jack.Client("lazy", servername=srv.name, no_start_server=True)
        out = lazy.midi_outports.register("out")
        plan: list = []          # what the next cycles do: a message to write, or None to leave the buffer
        done = threading.Event()

        @lazy.set_process_callback
        def process(frames):
            if plan:
                step = plan.pop(0)
                if step is not None:
                    out.clear_buffer()
                    for offset, msg in step:
                        out.write_midi_event(offset, msg)
                if not plan:
                    done.set()
            else:
                out.clear_buffer()

        lazy.activate()
        try:
            sp.wait_for("port connected: lazy:out", timeout=10)
            before = sp.fresh_stats()
            chord = [(7, bytes([0x90, 62, 90])), (30, bytes([0x90, 64, 90])), (61, bytes([0x90, 65, 90]))]
            plan[:] = [[(7, bytes([0x90, 60, 100]))], None, None, None, None, None, [], [],
                       [(7, bytes([0x90, 67, 100]))], [], chord, chord[:2], [], []]
            assert done.wait(5)
            time.sleep(0.3)
            after = sp.fresh_stats()
        finally:
            lazy.deactivate()
            lazy.close()
        rc = sp.stop()
    assert after["events"] - before["events"] == 5, (before["events"], after["events"])
    assert after["stale_midi_cycles"] - before["stale_midi_cycles"] == 6, after["stale_midi_cycles"]
    assert rc == 0, sp.stderr[-2000:]
