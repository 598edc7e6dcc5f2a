"""Live-playing probe on a private JACK server (dummy driver): latency, jitter, callback load, xruns.

    python scripts/latency_probe.py                       # all three parts, 60 s session
    python scripts/latency_probe.py --session-seconds 10  # short session (CI)
    python scripts/latency_probe.py --preset piano --preset-dir presets --json out.json

Parts (the bars are issue 6's):
1. latency, 128 frames: cached notes at random offsets inside the period; key-to-sound latency is the
   probe's send frame to the first frame of the note in the synth's output (the onset detector's
   attack bias is measured on an offline render of the same note and taken off). Median <= 8 ms,
   jitter p95 - p5 <= 1 ms; the callback's duration p99 over the playing window <= 50% of a block.
   Each note is pressed in silence: notes are spaced by their hold plus the preset's release plus a
   margin, and a note whose recording is not silent for a period before its send frame is not
   measured (`not_silent`). Otherwise the previous note's release tail crosses the threshold first
   and the "onset" lands at the send frame: that gave -1.333 ms (minus the attack bias) with the
   piano's 0.27 s release at 0.12 s spacing. A latency below zero is impossible and is counted
   (`negative`); both counts fail the bench row.
1b. keyboard latency, 128 frames, both ways to JACK: one client only sends MIDI and another only
   records, with no feedback loop through the probe (`measure_latency_direct`).
2. cache miss, 128 frames: a small note cache (--cache-mb) so that most keys miss; every note must
   still sound within one period of the cached-note latency (nearest-pitch fallback).
3. session, 512 frames: a 256-voice cluster (8 channels x 32 notes, held), CC 74 sweeps on every
   channel (each new value is a new knob state: the worker prefills the keyboard again), and 50 notes
   per second on top. Zero xruns: the synth's own counter and JACK's xrun callback.

The synth runs as `python -m synth` in a subprocess; the probe is a JACK-Client client in this one.
Without --preset the repo's `piano` is used when installed, else the tiny test preset.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PYO_GUI_WX", "0")

from synth.testing.jack import (  # noqa: E402
    ControlServer,
    JackServer,
    Probe,
    StealMonitor,
    SynthProcess,
    note_events,
    onsets,
    play_and_record,
    silent_before,
    synth_cmd,
    window_load,
)

SR = 48000
THRESHOLD = 0.005


def _preset_args(preset: str | None, preset_dir: str | None, work: Path) -> tuple[Path, str]:
    """(preset folder parent, name): the given one, the repo's piano, or the tiny test preset."""
    from synth.preset import available_presets

    if preset:
        found = available_presets([preset_dir] if preset_dir else None)
        if preset not in found:
            raise SystemExit(f"latency_probe: unknown preset {preset!r}; known: {', '.join(found) or 'none'}")
        return found[preset].parent, preset
    if (ROOT / "presets" / "piano" / "preset.json").is_file():
        return ROOT / "presets", "piano"
    from synth.testing.tinymodel import make_tiny_preset

    make_tiny_preset(work / "presets")
    return work / "presets", "piano"


def _cmd(parent: Path, name: str, *args: str) -> list[str]:
    cmd = synth_cmd(parent, *args)
    i = cmd.index("--preset")
    cmd[i + 1] = name
    return cmd


def onset_bias(parent: Path, name: str, notes: list[int], velocity: int) -> dict[int, int]:
    """Frames from note start to the detector's onset, per note, on an offline render."""
    from synth.engine import Engine
    from synth.preset import find_preset

    out = {}
    with Engine(sample_rate=SR, blocksize=512, presets=[find_preset(name, [parent])], realtime=False) as eng:
        for n in sorted(set(notes)):
            eng.panic()
            eng.render(4800)
            eng.note_on(0, n, velocity)
            x = eng.render(4800)
            hit = onsets(x, [0], 4800, THRESHOLD)[0]
            out[n] = int(hit) if hit is not None else 0
            eng.note_off(0, n)
    return out


def standin_bias(parent: Path, name: str, notes: list[int], velocity: int, cache_mb: float,
                 gap: int) -> list[int | None]:
    """Frames from note start to the detector's onset for each note of `notes` in order, as the live
    synth plays them with a `cache_mb` cache: a live-mode engine (the same worker, prefill order and
    eviction) plays the sequence, and the worker finishes between notes as it does in the probe's gap.

    A miss sounds through the nearest cached pitch resampled, so its attack is stretched or squeezed
    (a stand-in an octave up plays its attack at half speed) and crosses the detector's threshold
    later or earlier than the exact note. Taking this off leaves the time until the voice starts."""
    from synth.engine import Engine
    from synth.preset import find_preset

    out: list[int | None] = []
    with Engine(sample_rate=SR, blocksize=128, presets=[find_preset(name, [parent])], realtime=True,
                cache_mb=cache_mb) as eng:
        eng.wait_ready(120)
        for n in notes:
            eng.note_on(0, n, velocity)
            x = eng.render(4800)    # one call: the stand-in is not swapped for the exact note inside it
            hit = onsets(x, [0], 4800, THRESHOLD)[0]
            out.append(None if hit is None else int(hit))
            eng.note_off(0, n)
            eng.render(gap - 4800)
            eng.wait_ready(60)
    return out


def measure_latency(parent: Path, name: str, work: Path, notes: int = 40, cache_mb: float | None = None,
                    pitches: list[int] | None = None, seed: int = 0, synth_args: tuple[str, ...] = (),
                    period: int = 128) -> dict:
    """Part 1 (or 2 with a small cache and many pitches): latency at `period` frames (the bench's 128)
    and callback load."""
    from synth.engine import release_span
    from synth.preset import find_preset

    rng = np.random.default_rng(seed)
    pitches = pitches or [69]
    seq = [pitches[i % len(pitches)] for i in range(notes)]
    vel = 100
    bias = onset_bias(parent, name, seq, vel)
    hold = int(0.04 * SR)
    # Press every key in silence: the previous note has ended (hold + release) with a margin.
    release = release_span(find_preset(name, [parent]).release_seconds)   # to 100 dB down, where it ends
    gap = max(int(0.12 * SR), hold + int((release + 0.05) * SR))
    extra = (["--cache-mb", str(cache_mb)] if cache_mb else []) + list(synth_args)
    with JackServer(period=period) as srv, SynthProcess(srv, _cmd(parent, name, *extra), work) as sp:
        sp.wait_for("ready")
        probe = Probe(srv, record_seconds=notes * gap / SR + 3)
        try:
            probe.connect_synth()
            time.sleep(0.3)
            before = sp.fresh_stats()
            xr0 = probe.xruns
            base = probe.now + SR // 4
            sent = [base + i * gap + int(rng.integers(0, period)) for i in range(notes)]
            x = play_and_record(probe, note_events(sent, seq, velocity=vel, hold=hold))
            after = sp.fresh_stats()
            start, xr = probe.rec_start, probe.xruns - xr0
            xframes = list(probe.xrun_frames[xr0:])
        finally:
            probe.close()
        sp.stop()
    # JACK drops a period's MIDI on an xrun (128 frames on a shared machine: not judged there), so a
    # note within 4 periods of one the probe saw may be missing or shifted: it leaves the statistics
    # and is counted as `near_xrun`.
    near = [any(abs(f - xf) <= 4 * period for xf in xframes) for f in sent]
    rows = [f - start for f in sent]
    found = onsets(x, rows, int(0.1 * SR), THRESHOLD)
    quiet = silent_before(x, rows, period, THRESHOLD)
    # A note-off lost at an xrun leaves the previous note ringing into this key: not silent before it,
    # for the xrun's sake. Such a note counts as next to an xrun, not as `not_silent`.
    off_lost = [i > 0 and any(abs(sent[i - 1] + hold - xf) <= 4 * period for xf in xframes) for i in range(notes)]
    near = [nx or (lost and not q) for nx, lost, q in zip(near, off_lost, quiet, strict=True)]
    if cache_mb:
        # Misses play a stand-in whose attack differs from the exact note's: take the stand-in's bias.
        sbias = standin_bias(parent, name, seq, vel, cache_mb, gap)
        extra_ms = [(b - bias[n]) / SR * 1e3 for b, n in zip(sbias, seq, strict=True) if b is not None]
        bias_of = [bias[n] if b is None else b for b, n in zip(sbias, seq, strict=True)]
    else:
        extra_ms = []
        bias_of = [bias[n] for n in seq]
    frames = [o + start - f - b for o, f, b, q, nx in zip(found, sent, bias_of, quiet, near, strict=True)
              if o is not None and q and not nx]
    lat = [d / SR * 1e3 for d in frames]
    arr = np.array(lat) if lat else np.array([np.nan])
    p5, p50, p95 = np.percentile(arr, [5, 50, 95])
    eng0, eng1 = before.get("engine", {}), after.get("engine", {})
    return {
        "period": period, "notes": notes, "sounded": sum(o is not None for o in found), "measured": len(lat),
        "not_silent": sum(1 for q, nx in zip(quiet, near, strict=True) if not q and not nx), "negative": sum(d < 0 for d in frames), "near_xrun": sum(near),
        "spacing_ms": gap / SR * 1e3, "latency_frames": frames,
        "standin_attack_ms": [round(e, 3) for e in extra_ms],
        "latency_ms_median": float(p50), "latency_ms_p5": float(p5), "latency_ms_min": float(arr.min()),
        "latency_ms_p95": float(p95), "latency_ms_max": float(arr.max()), "jitter_ms": float(p95 - p5),
        "period_ms": period / SR * 1e3, "engine_latency_samples": after.get("latency_samples", 0),
        "load": window_load(before, after), "cpu": window_load(before, after, "cpu_hist_pct"), "xruns_synth": after["xruns"] - before["xruns"], "xruns_jack": xr,
        "late_events": after["late_events"] - before["late_events"],
        "events_sent": 2 * notes, "events_played": after["events"] - before["events"],
        "fallbacks": eng1.get("fallbacks", 0) - eng0.get("fallbacks", 0),
        "misses": eng1.get("cache_misses", 0) - eng0.get("cache_misses", 0),
        "peak": float(np.abs(x).max()),
    }


def measure_latency_direct(parent: Path, name: str, work: Path, audio_api: str = "jack", notes: int = 20,
                           period: int = 128, seed: int = 3) -> dict:
    """Key-to-sound latency as a keyboard sees it: one JACK client (`keys`) only sends MIDI, like a MIDI
    capture port, and another (`rec`) only records the synth's outputs, like the playback ports. No
    feedback loop, so JACK runs keys -> synth -> rec in that order every cycle (the probe of part 1 both
    sends and records, and that loop costs a period whichever way JACK orders it).

    Returned in frames of JACK's clock from the send frame to the note's first frame (the attack bias
    taken off), inside the graph: the driver's playback buffering comes on top, the same for any client.
    With `--audio-api jack-client` the note sounds in the cycle it was sent (0 frames); with PortAudio and
    a separate MIDI client, whose events the audio callback takes a cycle later, one period."""
    from synth.engine import release_span
    from synth.preset import find_preset

    rng = np.random.default_rng(seed)
    vel = 100
    bias = onset_bias(parent, name, [69], vel)[69]
    hold = int(0.04 * SR)
    gap = max(int(0.12 * SR), hold + int((release_span(find_preset(name, [parent]).release_seconds) + 0.05) * SR))
    cmd = _cmd(parent, name, "--midi-port", "^keys:", "--audio-api", audio_api)
    with JackServer(period=period) as srv, SynthProcess(srv, cmd, work) as sp:
        sp.wait_for("ready")
        keys = Probe(srv, name="keys", record_seconds=0.1)
        rec = Probe(srv, name="rec", record_seconds=notes * gap / SR + 3)
        try:
            sp.wait_for("port connected: keys:", timeout=10)
            rec.record_synth()
            time.sleep(0.3)
            base = keys.now + SR // 4
            sent = [base + i * gap + int(rng.integers(0, period)) for i in range(notes)]
            rec.start_recording()
            keys.schedule(note_events(sent, [69] * notes, velocity=vel, hold=hold))
            while keys.now < sent[-1] + gap:
                time.sleep(0.05)
            x = rec.stop_recording()
            start = rec.rec_start
            xframes = list(rec.xrun_frames)
        finally:
            keys.close()
            rec.close()
        sp.stop()
    near = [any(abs(f - xf) <= 4 * period for xf in xframes) for f in sent]
    found = onsets(x, [f - start for f in sent], int(0.1 * SR), THRESHOLD)
    quiet = silent_before(x, [f - start for f in sent], period, THRESHOLD)
    frames = [o + start - f - bias for o, f, q, nx in zip(found, sent, quiet, near, strict=True)
              if o is not None and q and not nx]
    arr = np.array(frames, float) if frames else np.array([np.nan])
    return {"audio_api": audio_api, "period": period, "notes": notes, "measured": len(frames),
            "near_xrun": sum(near), "latency_frames": frames,
            "latency_ms_median": float(np.median(arr) / SR * 1e3),
            "jitter_ms": float((np.percentile(arr, 95) - np.percentile(arr, 5)) / SR * 1e3),
            "xruns_jack": len(xframes)}


def session_events(t0: int, seconds: float, rate: float, rng: np.random.Generator, sweeps: bool = True,
                   cluster: bool = True, sweep_cc: int = 74) -> list[tuple[int, bytes]]:
    """The session's MIDI, (frame, message) from frame t0: a 256-voice cluster (8 channels x 32 notes)
    held throughout, CC `sweep_cc` swept up and down every 2 s on those 8 channels, and `rate` notes/s
    of 150 ms on channels 8-11; CC 123 on the cluster's channels at the end. Sorted by frame."""
    ev: list[tuple[int, bytes]] = []
    for ch in range(8 if cluster else 0):        # the cluster: held for the whole session
        for k in range(32):
            ev.append((t0 + ch * 64 + k, bytes([0x90 | ch, 36 + k + ch, 40 + k])))
    end = t0 + int(seconds * SR)
    for ch in range(8):
        ev.append((end, bytes([0xB0 | ch, 123, 0])))
    sweep_period = 2.0                           # s per up-and-down sweep
    steps = 32
    n_sweeps = int(seconds / sweep_period) if sweeps else 0
    for s in range(n_sweeps):
        for j in range(steps):
            v = int(round(127 * (1 - abs(1 - 2 * j / (steps - 1)))))
            f = t0 + int((s * sweep_period + j * sweep_period / steps) * SR)
            for ch in range(8):
                ev.append((f, bytes([0xB0 | ch, sweep_cc, v])))
    n = int(seconds * rate)
    times = np.sort(rng.uniform(0, seconds - 0.3, n))
    for t in times:                              # `rate` notes/s on channels 8..11
        ch = 8 + int(rng.integers(0, 4))
        note = int(rng.integers(36, 96))
        f = t0 + int(t * SR)
        ev.append((f, bytes([0x90 | ch, note, int(rng.integers(30, 127))])))
        ev.append((f + int(0.15 * SR), bytes([0x80 | ch, note, 0])))
    ev.sort(key=lambda e: e[0])
    return ev


def session(parent: Path, name: str, work: Path, seconds: float = 60.0, rate: float = 50.0, seed: int = 1,
            sweeps: bool = True, cluster: bool = True, synth_args: tuple[str, ...] = (), sweep_cc: int = 74,
            control: bool = True) -> dict:
    """Part 3: 512 frames, 256-voice cluster + CC 74 sweeps + `rate` notes/s for `seconds`.
    `sweeps`, `cluster` and `synth_args` exist to take the load apart (see docs/live.md). With
    `control`, a second JACK server with an idle C client runs beside it (`synth.testing.jack.ControlServer`):
    its xruns over the same seconds are the machine's own."""
    rng = np.random.default_rng(seed)
    cmd = _cmd(parent, name, "--midi-port", "^probe:", *synth_args)
    with ControlServer(period=512) if control else contextlib.nullcontext() as ctl:
        return _session(cmd, work, seconds, rate, rng, sweeps, cluster, sweep_cc, ctl)


def _session(cmd, work, seconds, rate, rng, sweeps, cluster, sweep_cc, ctl) -> dict:
    with JackServer(period=512) as srv, SynthProcess(srv, cmd, work) as sp:
        sp.wait_for("ready")
        probe = Probe(srv, record_seconds=seconds + 3)
        try:
            probe.connect_synth()
            time.sleep(0.5)
            before = sp.fresh_stats()
            xr0 = probe.xruns
            t0 = probe.now + SR // 4
            log0 = srv.log_mark()
            t0_mono = time.monotonic() + (t0 - probe.now) / SR
            ev = session_events(t0, seconds, rate, rng, sweeps=sweeps, cluster=cluster, sweep_cc=sweep_cc)
            with StealMonitor() as steal:
                x = play_and_record(probe, ev, tail_seconds=0.3)
            after = sp.fresh_stats()
            xr = probe.xruns - xr0
            xrun_at = [round((f - t0) / SR, 2) for f in probe.xrun_frames[xr0:]]
            blame = srv.blame(log0)
        finally:
            probe.close()
        rc = sp.stop()
    eng0, eng1 = before.get("engine", {}), after.get("engine", {})
    return {
        "seconds": seconds, "notes_per_second": rate, "events_sent": len(ev),
        "events_played": after["events"] - before["events"], "xruns_synth": after["xruns"] - before["xruns"],
        "stale_midi_cycles": after.get("stale_midi_cycles", 0) - before.get("stale_midi_cycles", 0),
        "xruns_jack": xr, "load": window_load(before, after), "cpu": window_load(before, after, "cpu_hist_pct"),
        "max_voices_requested": 256 + int(rate * 0.15) + 1,
        "knob_states_generated": eng1.get("generated", 0) - eng0.get("generated", 0),
        "steals": eng1.get("steals", 0) - eng0.get("steals", 0), "peak": float(np.abs(x).max()),
        "finite": bool(np.isfinite(x).all()), "exit_code": rc, "xrun_seconds": xrun_at,
        # Whom jackd's log blamed for each xrun of the session, and in which state (JackServer.blame).
        "jack_blame": blame,
        "entry_delay": window_load(before, after, "entry_hist_pct"),
        "gc_collect_ms_max": after.get("gc_collect_ms_max"),
        "gc_collect_cpu_ms_max": after.get("gc_collect_cpu_ms_max"),
        # The synth's costliest callbacks in CPU time since it started (prefill included), with when
        # (stream_s, on the synth's own stream clock) and what they did.
        "worst_callbacks": after.get("worst_callbacks", []),
        # Hypervisor steal (/proc/stat) over the session, and how many JACK xruns came within a second
        # of a second with steal: the machine's share of them.
        "steal": steal.attribution(t0_mono, xrun_at, seconds),
        # The same seconds on a second JACK server with an idle C client only (None: not run).
        "control_xrun_seconds": None if ctl is None else ctl.xruns(t0_mono, seconds),
    }


def prefill_xruns(parent: Path, name: str, work: Path, moves: int = 6, synth_args: tuple[str, ...] = (),
                  control: bool = True) -> dict:
    """Issue 6's prefill bar at 512 frames: xruns while the synth fills the whole keyboard and nothing
    else plays. First at start-up (every velocity layer, with the stream already running: counted up
    to "ready"), then after each of `moves` knob moves (one CC 74 message, then still: the worker fills
    the settled knob state's keyboard; a move is judged finished when the worker has made no note for a
    stats tick, 0.5 s). With `control`, the idle C client on a second JACK server counts the machine's
    own xruns over the moves."""
    cmd = _cmd(parent, name, "--midi-port", "^probe:", *synth_args)
    with ControlServer(period=512) if control else contextlib.nullcontext() as ctl:
        with JackServer(period=512) as srv, SynthProcess(srv, cmd, work) as sp:
            log0 = srv.log_mark()
            sp.wait_for("ready")
            at_ready = sp.fresh_stats()
            startup_blame = srv.blame(log0)
            log0 = srv.log_mark()
            probe = Probe(srv, record_seconds=moves * 16 + 3)
            try:
                probe.connect_synth()
                time.sleep(0.5)
                before = sp.fresh_stats()
                xr0 = probe.xruns
                t0 = probe.now
                t0_mono = time.monotonic()
                per_move = []
                with StealMonitor() as steal:
                    probe.start_recording()
                    for i in range(moves):
                        gen0 = sp.fresh_stats()["engine"].get("generated", 0)
                        probe.schedule([(probe.now + SR // 20, bytes([0xB0, 74, (17 + 37 * i) % 128]))])
                        t_move = time.monotonic()
                        end = t_move + 15.0
                        last = gen0
                        while time.monotonic() < end:
                            # Done when the worker has generated notes and made none since the last
                            # stats tick (0.5 s), with nothing pending.
                            e = sp.fresh_stats()["engine"]
                            g = e.get("generated", 0)
                            if g > gen0 and g == last and not e.get("worker_pending"):
                                break
                            last = g
                        per_move.append({"notes": e.get("generated", 0) - gen0,
                                         "seconds": round(time.monotonic() - t_move, 2)})
                        time.sleep(0.3)
                    x = probe.stop_recording()
                seconds = time.monotonic() - t0_mono
                after = sp.fresh_stats()
                xr = probe.xruns - xr0
                xrun_at = [round((f - t0) / SR, 2) for f in probe.xrun_frames[xr0:]]
                blame = srv.blame(log0)
            finally:
                probe.close()
            rc = sp.stop()
    return {
        "startup_xruns": at_ready["xruns"], "startup_notes": at_ready.get("engine", {}).get("generated", 0),
        "startup_blame": startup_blame, "startup_worst_callbacks": at_ready.get("worst_callbacks", [])[:4],
        "moves": per_move, "xruns_synth": after["xruns"] - before["xruns"], "xruns_jack": xr,
        "cache_mb": after.get("engine", {}).get("cache_mb"), "cache_evictions": after.get("engine", {}).get("cache_evictions"),
        "seconds": round(seconds, 1), "peak": float(np.abs(x).max()) if len(x) else 0.0, "exit_code": rc,
        "cpu": window_load(before, after, "cpu_hist_pct"), "xrun_seconds": xrun_at,
        "jack_blame": blame,   # the knob moves (start-up: startup_blame)
        "steal": steal.attribution(t0_mono, xrun_at, seconds),
        "control_xrun_seconds": None if ctl is None else ctl.xruns(t0_mono, seconds),
    }


def gc_and_gil(parent: Path, name: str, churn_seconds: float = 1.2, reps: int = 3) -> dict:
    """GC pauses and GIL waits in a synth-like process (engine loaded, realtime worker running).

    - full collection (gen 2) time before and after `gc.freeze()` (what an automatic collection would
      cost the audio thread if it struck there);
    - wake lateness of a SCHED_FIFO Python thread that sleeps 1 ms in a loop (it needs the GIL to wake,
      like the audio callback) while the worker regenerates the keyboard for a knob moved every 60 ms,
      with Python's default switch interval (5 ms) and with the synth's (0.5 ms), interleaved.
    The process first takes the synth's priority (nice -10), before the engine starts its worker.
    """
    import gc
    import threading

    from synth.engine import Engine
    from synth.preset import find_preset
    from synth.rt import raise_priority

    raise_priority(-10)
    out: dict = {}
    eng = Engine(sample_rate=SR, blocksize=512, presets=[find_preset(name, [parent])], realtime=True)
    try:
        eng.wait_ready(60)
        out["gc_objects"] = len(gc.get_objects())

        def timed(fn, n=5):
            ts = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return float(np.median(ts) * 1e3)

        out["gc_full_ms"] = timed(lambda: gc.collect(2))
        gc.freeze()
        out["gc_full_frozen_ms"] = timed(lambda: gc.collect(2))
        out["gc_gen0_frozen_ms"] = timed(lambda: gc.collect(0))
        gc.unfreeze()
        old = sys.getswitchinterval()
        lat_by: dict[float, list[float]] = {0.005: [], 0.0005: []}
        for rep in range(reps):
            for interval in (0.005, 0.0005):   # interleaved: the machine's load drifts
                sys.setswitchinterval(interval)
                lat: list[float] = lat_by[interval]
                stop = threading.Event()

                def probe(stop=stop, lat=lat):
                    try:
                        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(5))
                    except (OSError, AttributeError):
                        pass
                    while not stop.is_set():
                        t0 = time.perf_counter()
                        time.sleep(0.001)
                        lat.append(time.perf_counter() - t0 - 0.001)

                th = threading.Thread(target=probe)
                th.start()
                for i in range(int(churn_seconds / 0.06)):
                    eng.set_knob(74, (i * 13 + rep * 7 + int(interval * 1e4)) % 128)
                    time.sleep(0.06)
                stop.set()
                th.join()
                eng.wait_ready(60)
        for interval, lat in lat_by.items():
            a = np.array(lat) * 1e3
            key = f"gil_wait_switch_{interval * 1e3:g}ms"
            out[key] = {"p50": float(np.median(a)), "p99": float(np.percentile(a, 99)),
                        "p999": float(np.percentile(a, 99.9)), "max": float(a.max()), "n": len(a)}
        sys.setswitchinterval(old)
    finally:
        eng.close()
    return out


def _shown(folder: Path, work: Path) -> str:
    """The preset folder as the results show it: repo-relative, never a path of this machine."""
    if folder.is_relative_to(work):
        return "the tiny test preset (a temporary folder)"
    return str(folder.relative_to(ROOT)) + "/" if folder.is_relative_to(ROOT) else folder.name + "/ (--preset-dir)"


def run(quick: bool = False, preset: str | None = None, preset_dir: str | None = None,
        session_seconds: float | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="latency-probe-") as tmp:
        work = Path(tmp)
        parent, name = _preset_args(preset, preset_dir, work)
        out = {"preset": name, "preset_dir": _shown(parent, work)}
        out["latency_128"] = measure_latency(parent, name, work, notes=24 if quick else 60)
        # As a keyboard sees it (no feedback loop through the probe): both ways to JACK.
        out["direct_128"] = {api: measure_latency_direct(parent, name, work, api, notes=12 if quick else 24)
                             for api in ("jack", "jack-client")}
        out["miss_128"] = measure_latency(parent, name, work, notes=12 if quick else 24, cache_mb=4,
                                          pitches=[30, 97, 41, 86, 52, 75, 35, 92, 47, 80, 58, 69], seed=2)
        secs = session_seconds or (10.0 if quick else 60.0)
        out["session_512"] = session(parent, name, work, seconds=secs)
        # The same session on the other path under JACK: PortAudio's JACK host API plus a MIDI client
        # (the default is the synth's own JACK client since 2026-12-06).
        out["session_512_portaudio"] = session(parent, name, work, seconds=secs,
                                               synth_args=("--audio-api", "jack"))
        out["prefill_512"] = prefill_xruns(parent, name, work, moves=3 if quick else 6)
        out["gc_gil"] = gc_and_gil(parent, name)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None)
    ap.add_argument("--preset-dir", default=None)
    ap.add_argument("--session-seconds", type=float, default=60.0)
    ap.add_argument("--quick", action="store_true", help="fewer notes, 10 s session")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    res = run(args.quick, args.preset, args.preset_dir, None if args.quick else args.session_seconds)
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        from synth.fsutil import atomic_write_text

        atomic_write_text(args.json, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
