"""The live command line as a newcomer meets it (issue #19, item 6): `play`'s default preset, `devices`
predicting what `play` opens, the status line's MIDI port count, a clean stop that reports no panic,
and a latency readout that matches a measurement.

The JACK tests run the synth as a subprocess against a real `jackd -d dummy` server (synth/testing/jack.py)
with a stand-in engine (`DelayedSine`: exact onsets and a known latency, no model to load); the others
need no audio at all.
"""

from __future__ import annotations

import collections
import functools
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import ROOT

from synth.callback import FADE_OUT, LiveCore
from synth.io.events import CC, EventQueue
from synth.io.ports import MidiSource
from synth.status import final_summary, panic_counts
from synth.testing.jack import JackServer, Probe, SynthProcess, have_jackd, note_events, onsets

SR = 48000


def _env(**extra) -> dict:
    """No JACK server (a name nobody runs), no wx notice."""
    return dict(os.environ, JACK_DEFAULT_SERVER=f"absent{os.getpid()}", JACK_NO_START_SERVER="1", PYO_GUI_WX="0",
                **extra)


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], env=_env(), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, cwd=str(ROOT))


# -- 1. `play` defaults to the piano preset ---------------------------------------------------------------
# The real dispatcher (`synth.cli.main`), stopped once the presets are resolved: the engine factory
# prints their names and exits (there is no audio device here to go further).
_STOP_AT_ENGINE = (
    "import sys, synth.cli as C, synth.live as L\n"
    "L.choose_output = lambda args, log: L.Output('auto', 'none', None, None, args.sample_rate, args.blocksize)\n"
    "def factory(**kw):\n"
    "    print('presets:', ','.join(p.name for p in kw['presets']))\n"
    "    sys.exit(0)\n"
    "L._default_engine_factory = factory\n"
    "sys.exit(C.main(sys.argv[1:]))\n")


def test_play_defaults_to_the_piano_preset(tiny_preset):
    """`python -m synth` and `python -m synth play` without --preset play General MIDI: every installed
    preset, the piano first (channels start on it), as `render` routes a file. (Before, both stopped
    with "the following arguments are required: --preset".)"""
    from synth.live import build_parser
    from synth.preset import available_presets

    assert build_parser().parse_args([]).preset is None
    d = str(tiny_preset.path.parent)
    for argv in ([], ["play"], ["--preset-dir", d], ["play", "--preset-dir", d, "--program-map", "0=piano"]):
        r = _run(_STOP_AT_ENGINE, *argv)
        names = r.stdout.strip().removeprefix("presets: ").split(",")
        installed = set(available_presets([d] if d in argv else None))
        assert r.returncode == 0 and names[0] == "piano" and set(names) == installed, (argv, r.stdout, r.stderr)
    r = _run(_STOP_AT_ENGINE, "--preset-dir", d, "--preset", "piano", "--preset", "piano")
    assert r.stdout.strip() == "presets: piano", r.stderr


def test_without_a_piano_gm_plays_what_is_installed_and_none_is_one_line(tmp_path):
    """No piano installed and no --preset: GM routing plays the installed presets (program 0 falls back
    by family); none installed at all: one line, exit 2, naming the fix."""
    from synth.testing.tinymodel import make_tiny_preset

    make_tiny_preset(tmp_path / "presets", name="strings")
    make_tiny_preset(tmp_path / "presets", name="marimba")
    (tmp_path / "empty").mkdir()
    code = (f"import sys, synth.preset as P; P.REPO_PRESETS = P.Path({str(tmp_path / 'empty')!r})\n"
            + _STOP_AT_ENGINE)
    r = _run(code, "--preset-dir", str(tmp_path / "presets"))
    assert r.returncode == 0 and sorted(r.stdout.strip().removeprefix("presets: ").split(",")) == [
        "marimba", "strings"], (r.stdout, r.stderr)
    r = _run(code, "--preset-dir", str(tmp_path / "empty"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "no presets are installed" in lines[0], r.stderr


# -- 3. the status line counts the ports of other programs only -------------------------------------------
class _Ports(MidiSource):
    """A MIDI source whose ports are a list (the port rule runs for real)."""

    def __init__(self, ports, **kw):
        super().__init__(collections.deque(), poll_seconds=3600, log=lambda s: None, **kw)
        self.ports = ports

    def _list_ports(self):
        return list(self.ports)

    def _take(self, name):
        return object()


class _Shown:
    def __init__(self):
        self.lines: list[str] = []
        self.interval = 1.0

    def show(self, text):
        self.lines.append(text)

    def log(self, text):
        self.lines.append(text)


class _Silent:
    latency_samples = 0

    def note_on(self, ch, note, vel, frame=0):
        pass

    note_off = program_change = pitch_bend = lambda self, *a, **k: None

    def control_change(self, ch, cc, value, frame=0):
        pass

    def render(self, frames, out=None):
        out.fill(0)
        return out

    def panic(self):
        pass

    def stats(self):
        return {"voices": 0}


def _session(midi, audio=None):
    from synth.live import Output, Session

    args = SimpleNamespace(gc="default", switch_interval=0.0, stats_json=None)
    out = Output("alsa", "alsa", SimpleNamespace(name="card", hostapi="ALSA"), None, SR, 128)
    s = Session(args, out, _Silent(), "piano", _Shown())
    s.midi, s.audio = midi, audio
    return s


def test_the_status_line_counts_only_external_midi_ports():
    """The virtual port `neural-synth` and the synth's own clients are not counted: one keyboard is
    "MIDI ports 1". (Before, the virtual port made it 2, and a synth with no keyboard said 1.)"""
    midi = _Ports(["keys:out", "neural-synth:neural-synth", "neural-synth-in1:in 130:0", "neural-synth-audio:x"])
    midi.rescan()
    assert midi.external_ports == ["keys:out"]
    assert midi.port_names == ["neural-synth:neural-synth (virtual)", "keys:out"]   # the start-up log's
    audio = SimpleNamespace(latency_seconds=0.004, synth_latency_frames=128)
    s = _session(midi, audio)
    s.interval_tick()
    assert s.status.lines[-1].endswith("| MIDI ports 1 | latency 6.7 ms"), s.status.lines
    midi.ports = ["neural-synth:neural-synth"]
    midi.rescan()
    s.interval_tick()
    assert "| MIDI ports 0 |" in s.status.lines[-1], s.status.lines


# -- 4. a clean stop fades out without a panic ------------------------------------------------------------
class _Panics(_Silent):
    def __init__(self):
        self.panicked = 0

    def panic(self):
        self.panicked += 1


def _block(core):
    out = np.zeros((128, 2), np.float32)
    t = core.callbacks * 128 / SR
    core.callback(out, 128, SimpleNamespace(currentTime=t, outputBufferDacTime=t + 0.004),
                  SimpleNamespace(output_underflow=False))


def test_a_clean_stop_fades_out_without_reporting_a_panic():
    """The fade-out of a clean stop silences like a panic but is not one: no count, no "panic" in the
    last line. The panic button (SIGUSR1) and CC 120/123 messages still are. (Before, every Ctrl-C ended
    with "panics=1".)"""
    from synth.live import stopped_line
    from synth.rt import GcTamer

    eng = _Panics()
    q = EventQueue()
    core = LiveCore(eng, SR, 128, q)
    core.panic_request = FADE_OUT
    _block(core)
    assert eng.panicked == 1 and core.panics == 0 and core.panic_request is False
    summary = final_summary(core, eng, GcTamer("default"), "SIGINT")
    assert summary["panics"] == 0
    line = stopped_line(summary)
    assert line.startswith("stopped (SIGINT): ") and "panic" not in line, line
    core.panic_request = True                            # SIGUSR1
    _block(core)
    q.append((0.0, CC, 3, 123, 0, 0))                   # all-notes-off from a keyboard
    _block(core)
    assert eng.panicked == 2
    assert panic_counts(core) == {"panics": 2, "panic_button": 1, "panic_messages": 1}
    assert "panics=2" in stopped_line(final_summary(core, eng, GcTamer("default"), "SIGINT"))


# -- JACK: what play opens, what devices predicts, latency --------------------------------------------------
class DelayedSine:
    """Engine API stand-in: a note-on starts a cosine (full amplitude from its first sample, so its onset is
    exact) LATENCY frames after its event frame, as an effects chain would delay it, and `latency_samples`
    says so. A note-off stops it."""

    LATENCY = 40

    def __init__(self, sample_rate, blocksize, presets, realtime=True, **kw):
        self.sr = sample_rate
        self.latency_samples = self.LATENCY
        self.voices: dict = {}   # (ch, note) -> [phase increment, phase, frames until it starts]

    def note_on(self, ch, note, vel, frame=0):
        self.voices[(ch, note)] = [2 * np.pi * 440 * 2 ** ((note - 69) / 12) / self.sr, 0.0, frame + self.LATENCY]

    def note_off(self, ch, note, frame=0):
        self.voices.pop((ch, note), None)

    def control_change(self, ch, cc, value, frame=0):
        if cc in (120, 123):
            self.voices.clear()

    def program_change(self, ch, program, frame=0):
        pass

    def pitch_bend(self, ch, value, frame=0):
        pass

    def panic(self):
        self.voices.clear()

    def render(self, frames, out=None):
        out.fill(0)
        for v in self.voices.values():
            inc, ph, wait = v
            if wait >= frames:
                v[2] = wait - frames
                continue
            k = np.arange(frames - wait)
            out[wait:, 0] += 0.3 * np.cos(ph + inc * k)
            v[1], v[2] = ph + inc * (frames - wait), 0
        out[:, 1] = out[:, 0]
        return out

    def stats(self):
        return {"voices": len(self.voices)}


def _stand_in_cmd(preset_dir, *args: str) -> list[str]:
    """`synth.live.main` with `DelayedSine` as the engine, and no --preset (the default)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import test_cli_live as T; "
            "import synth.live as L; raise SystemExit(L.main(sys.argv[1:], engine_factory=T.DelayedSine))")
    return [sys.executable, "-c", code, "--preset-dir", str(preset_dir), *args]


def _jack_only(fn):
    """A test on a real JACK server. Like the other JACK tests it fails, not skips, without jackd."""

    @functools.wraps(fn)
    def run(*args, **kw):
        if not have_jackd():
            raise RuntimeError("jackd is missing: run `make sysdeps` (scripts/system_deps.sh installs jackd2)")
        return fn(*args, **kw)

    return pytest.mark.jack(run)


def _devices(srv, *flags: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "synth", "devices", *flags], env=srv.env, capture_output=True,
                       text=True, timeout=60, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    return r


# Per API: the flags, the ports JACK MIDI takes (no --midi-port with PortAudio: every other program's MIDI
# output, the recorder's too) and the --sample-rate/--blocksize the server overrides (a note says so).
PREDICT_CASES = {
    "jack-client": (["--audio-api", "jack-client", "--device", "^rec:in_", "--midi-port", "^keys:",
                     "--sample-rate", "44100", "--blocksize", "64"], ["keys:midi_out"]),
    "jack": (["--audio-api", "jack", "--device", "rec", "--sample-rate", "44100"],
             ["keys:midi_out", "rec:midi_out"]),
}


@_jack_only
@pytest.mark.parametrize("audio_api", list(PREDICT_CASES))
def test_devices_predicts_what_play_opens(tiny_preset, tmp_path, audio_api):
    """`python -m synth devices` with play's flags predicts the API, the output (and the JACK ports it
    connects), the rate and block the server imposes, and the MIDI ports: `--json` equals play's
    `opened` in --stats-json, and each predicted line is in play's start-up log. The same run: no
    --preset plays the piano, the status line counts the keyboard alone (not the virtual port), and
    SIGINT stops without a panic."""
    import json

    flags, midi_ports = PREDICT_CASES[audio_api]
    with JackServer(period=256) as srv:
        keys, rec = Probe(srv, name="keys"), Probe(srv, name="rec")
        try:
            predicted = json.loads(_devices(srv, *flags, "--json").stdout)
            text = _devices(srv, *flags).stdout
            with SynthProcess(srv, _stand_in_cmd(tiny_preset.path.parent, *flags), tmp_path) as sp:
                sp.wait_for("ready")
                stats = sp.fresh_stats()
                sp.wait_for("| MIDI ports")
                rc = sp.stop(signal.SIGINT)
                err = sp.stderr
                final = sp.stats()
        finally:
            keys.close()
            rec.close()
    assert predicted["audio_api"] == audio_api and predicted["midi_ports"] == midi_ports, predicted
    assert (predicted["sample_rate"], predicted["blocksize"]) == (48000, 256), predicted
    if audio_api == "jack-client":
        assert predicted["audio_connections"] == ["neural-synth:out_0 -> rec:in_1", "neural-synth:out_1 -> rec:in_2"]
    else:
        assert predicted["output"] == "rec (JACK Audio Connection Kit)", predicted
    assert stats["opened"] == predicted, (stats["opened"], predicted)
    block = text.split("play would open:\n", 1)[1].split("\n\n", 1)[0]
    lines = [s.strip() for s in block.splitlines() if not s.strip().startswith("(")]
    assert any(s.startswith("audio (") for s in lines) and any(s.startswith("midi (") for s in lines), text
    assert "note: the JACK server runs at 48000 Hz; using that instead of 44100" in lines, text
    for s in lines:
        assert s in err.splitlines(), (s, err[-3000:])
    status = [s for s in err.splitlines() if "| MIDI ports" in s]
    assert status and all(f"| MIDI ports {len(midi_ports)} |" in s for s in status), status
    assert rc == 0 and "stopped (SIGINT)" in err, err[-2000:]
    assert final["panics"] == 0 and "panic" not in err.lower(), err[-2000:]


def _settled_stats(sp, key, want, seconds: float = 5.0) -> dict:
    """The synth's next stats whose `key` equals `want`, or the last ones after `seconds` (JACK shows a
    connection's latency to clients a cycle or so after it is made)."""
    end = time.monotonic() + seconds
    while True:
        st = sp.fresh_stats()
        if st[key] == want or time.monotonic() > end:
            return st
        time.sleep(0.1)


@_jack_only
@pytest.mark.flaky(reruns=2, only_rerun=["AssertionError"])
@pytest.mark.parametrize("audio_api", ["jack-client", "jack"])
def test_the_latency_readout_matches_a_measurement(tiny_preset, tmp_path, audio_api):
    """The key-to-sound figure the synth reports (--stats-json `latency_frames`, the start-up and status
    lines) against one measured as a keyboard sees it: `keys` only sends MIDI, `rec` only records
    the synth's outputs (connected to nothing else), so JACK runs keys -> synth -> rec each cycle. With
    the stand-in's 40 frames of engine latency: `jack-client` sounds 40 frames after the key, PortAudio
    with our MIDI client 128 + 40. The readout must agree within one period; it agrees exactly. Then the
    outputs are also connected to the playback ports: the readout adds what JACK says they add (the
    dummy driver: two periods).

    Before, `jack-client` reported at least one period of output latency (128 frames here) whatever its
    outputs fed, PortAudio reported its own figure (one period) rather than JACK's, and --stats-json
    held no readout at all."""
    period = 128
    device = "^rec:in_" if audio_api == "jack-client" else "rec"
    with JackServer(period=period) as srv:
        keys = Probe(srv, name="keys", record_seconds=0.1)
        rec = Probe(srv, name="rec", record_seconds=8)
        try:
            cmd = _stand_in_cmd(tiny_preset.path.parent, "--audio-api", audio_api, "--device", device,
                                "--midi-port", "^keys:")
            with SynthProcess(srv, cmd, tmp_path) as sp:
                sp.wait_for("ready")
                sp.wait_for("port connected: keys:", timeout=10)
                readout = sp.fresh_stats()
                base = keys.now + SR // 4
                sent = [base + i * int(0.1 * SR) + (i * 37) % period for i in range(8)]
                xr0 = len(rec.xrun_frames)
                rec.start_recording()
                keys.schedule(note_events(sent, [69] * len(sent), hold=1200))
                while rec.now < sent[-1] + SR // 5:
                    time.sleep(0.02)
                x = rec.stop_recording()
                start, xruns = rec.rec_start, rec.xrun_frames[xr0:]
                # The same outputs also to the speakers: the readout follows JACK's latency of the outputs.
                ours = "neural-synth" if audio_api == "jack-client" else "neural-synth-audio"
                for i in (1, 2):
                    rec.client.connect(f"{ours}:out_{i - 1}", f"system:playback_{i}")
                fast = rec._fast
                speaker = fast.playback_latency(fast.port_by_name("system:playback_1"))
                want = readout["latency_frames"] + speaker
                with_speakers = _settled_stats(sp, "latency_frames", want)
                assert sp.stop(signal.SIGTERM) == 0
                err = sp.stderr
        finally:
            keys.close()
            rec.close()
    found = onsets(x, [f - start for f in sent], int(0.1 * SR), 0.01)
    near = [any(abs(f - xf) <= 4 * period for xf in xruns) for f in sent]
    measured = [o + start - f for o, f, nx in zip(found, sent, near, strict=True) if o is not None and not nx]
    assert len(measured) >= 4, (found, xruns)
    lat = readout["latency_frames"]
    print(f"{audio_api}: readout {lat} frames {readout['latency_parts']}, measured {measured}, "
          f"with the speakers {with_speakers['latency_frames']} ({speaker} from JACK)")
    assert all(abs(m - lat) < period for m in measured), (lat, measured)
    assert all(m == lat for m in measured), (lat, measured)
    expect = (0 if audio_api == "jack-client" else period) + DelayedSine.LATENCY
    assert lat == expect and readout["latency_parts"]["output"] == 0, readout["latency_parts"]
    assert f"latency: {1e3 * lat / SR:.1f} ms from key to sound ({lat} frames" in err, err[-2000:]
    assert f"| latency {1e3 * lat / SR:.1f} ms" in err, err[-2000:]
    assert speaker == 2 * period and with_speakers["latency_frames"] == want, (speaker, with_speakers["latency_parts"])


# -- the engine's counted faults reach the log from the main thread ----------------------------------------
class _Counting(_Silent):
    """Counts like Engine.render does on the audio thread; `report` is what the status tick must call."""

    def __init__(self):
        self.reported = 0

    def report(self):
        self.reported += 1
        return 0


def test_each_status_tick_and_the_close_report_what_the_audio_thread_counted():
    """render() only counts (NaN blocks, notes a full cache skipped); the main thread's status tick
    logs them through `engine.report()`, and the close reports the last interval."""
    s = _session(None)
    s.engine = _Counting()
    s.interval_tick()
    s.interval_tick()
    assert s.engine.reported == 2
    s._close()
    assert s.engine.reported == 3


# -- issue 19 item 6: `play` shares render's --knob parser and check, and takes --gain -------------------
_PRINT_GAIN = _STOP_AT_ENGINE.replace("print('presets:', ','.join(p.name for p in kw['presets']))",
                                      "print('gain:', kw.get('master_gain'))")


def test_play_refuses_a_knob_the_preset_lacks_and_takes_gain(tiny_preset):
    """`play --knob 64=127` held the sustain pedal for the whole session; it is now one line naming the
    preset's knobs. `play --gain DB` scales the engine's master gain; a non-number is one line."""
    d = str(tiny_preset.path.parent)
    r = _run(_STOP_AT_ENGINE, "play", "--preset-dir", d, "--knob", "64=127")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no loaded preset has a knob on CC 64 (CC 64 is the sustain pedal); their knobs: " in r.stderr
    r = _run(_STOP_AT_ENGINE, "play", "--preset-dir", d, "--preset", "piano", "--knob", "74=30%")
    assert r.returncode == 0 and r.stdout.strip() == "presets: piano", r.stderr
    r = _run(_PRINT_GAIN, "play", "--preset-dir", d, "--gain", "6")
    assert r.returncode == 0, r.stderr
    from synth.engine import DEFAULT_MASTER_GAIN
    assert abs(float(r.stdout.split()[-1]) - DEFAULT_MASTER_GAIN * 10 ** (6 / 20)) < 1e-9, r.stdout
    r = _run(_PRINT_GAIN, "play", "--preset-dir", d)
    assert r.returncode == 0 and r.stdout.strip() == "gain: None", r.stderr
    r = _run(_STOP_AT_ENGINE, "play", "--preset-dir", d, "--gain", "loud")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--gain 'loud': not a number" in r.stderr
