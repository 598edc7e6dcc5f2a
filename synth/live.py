"""`python -m synth [play] --preset NAME`: play live. The command line, and the wiring of its parts.

- `synth.io.apis` picks the audio and MIDI APIs; `synth.io.portaudio` (sounddevice) or
  `synth.io.jack_audio` (one JACK client) carries the audio; `synth.io.midi_rtmidi` or
  `synth.io.midi_jack` the MIDI.
- The audio callback is `synth.callback.LiveCore`; `synth.rt` keeps the GC and the GIL out of its way.
- This module's main thread starts them, then runs the status loop (status line, stats file, GC ticks)
  until Ctrl-C, SIGTERM, `--duration` or a lost stream, and closes everything without a click.
Threads and timing: docs/architecture.md ("Threads in live mode") and docs/live.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from synth.callback import FADE_OUT, LiveCore
from synth.errors import UserError
from synth.io.apis import AUDIO_APIS, JACK_CLIENT_API, MIDI_APIS, choose_apis, has_alsa_seq
from synth.io.events import EventQueue
from synth.io.libjack import jack_server_info
from synth.io.ports import CLIENT_NAME, VIRTUAL_PORT, velocity_map
from synth.rt import GC_TICK, GcTamer, raise_priority
from synth.status import StatusLine, engine_stats, final_summary, status_text

if TYPE_CHECKING:
    from synth.io.portaudio import OutputDevice


# -- command line ----------------------------------------------------------------------------------


def add_output_args(p: argparse.ArgumentParser) -> None:
    """The flags that choose where sound and MIDI go: `play` and `devices` (which predicts them) share them."""
    p.add_argument("--device", default=None, help="output device index or name substring (`synth devices`)")
    p.add_argument("--blocksize", type=int, default=128, help="frames per audio block (default 128)")
    p.add_argument("--sample-rate", type=int, default=48000, help="output rate in Hz (default 48000)")
    p.add_argument("--audio-api", default="auto",
                   help="auto, jack, alsa, pulse, ... (PortAudio host APIs), or jack-client: one JACK client of "
                        "our own for MIDI and audio, one callback a cycle (--device then names the ports to "
                        "connect to) (default auto: jack-client when a JACK server runs, else PortAudio's "
                        "default output)")
    p.add_argument("--midi-api", default="auto", choices=MIDI_APIS,
                   help="jack: frame-exact JACK MIDI; jack-rtmidi: rtmidi's JACK API (timing quantised "
                        "to the JACK period) (default auto)")
    p.add_argument("--midi-port", action="append", default=[], metavar="PATTERN",
                   help="open only input ports matching this regex (repeatable; default: all)")
    p.add_argument("--no-virtual", action="store_true",
                   help="take MIDI only from the ports the synth opens itself (--midi-port): no virtual port "
                        "'neural-synth' (ALSA); under JACK, connections from other ports are removed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m synth [play]", description=(
        "Play live: MIDI from every input port plus a virtual port 'neural-synth', audio through "
        "sounddevice. Ctrl-C stops."))
    p.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help="preset name; repeat for more (default: General MIDI, every installed preset); program "
                        "changes are routed to the loaded presets by GM family, as in `render`; "
                        "`python -m synth presets` lists them")
    p.add_argument("--preset-dir", action="append", default=[], metavar="DIR", help="extra folder of presets")
    add_output_args(p)
    p.add_argument("--cache-mb", type=float, default=None, help="note cache size in MB (engine default)")
    from synth.diskcache import HELP

    p.add_argument("--disk-cache", default=None, metavar="DIR|off", help=HELP)
    p.add_argument("--polyphony", type=int, default=None,
                   help="voices playing at most; beyond it the oldest released voice is stolen (default 256)")
    p.add_argument("--knob", action="append", default=[], metavar="CC=V",
                   help="initial knob position as in `render --knob`: 74=0.3 (fraction), 74=30%% or 74=38 (CC "
                        "value); the CC must be one of the presets' knobs; repeatable")
    p.add_argument("--gain", default=None, metavar="DB", help="master gain change in dB, -60..24 (default 0)")
    p.add_argument("--program-map", default=None, metavar="P=NAME,...",
                   help="MIDI program -> preset, e.g. 0=piano,48=strings, over the GM routing")
    p.add_argument("--drums", default=None, metavar="NAME",
                   help="drum-kit preset for MIDI channel 10 (default: the kit of its program, else the first kit)")
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


def check_output_ranges(args) -> None:
    if not 16 <= args.blocksize <= 8192:
        raise UserError(f"--blocksize {args.blocksize}: choose 16..8192 frames (128 is the default)")
    if not 8000 <= args.sample_rate <= 192000:
        raise UserError(f"--sample-rate {args.sample_rate}: choose 8000..192000 Hz")


def _check_ranges(args) -> None:
    check_output_ranges(args)
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be > 0 seconds")
    if getattr(args, "gain", None) is not None:
        from synth.render import parse_gain

        args.gain = parse_gain(args.gain)


# -- where the sound goes --------------------------------------------------------------------------
@dataclass
class Output:
    """The audio and MIDI choice, made before the engine loads (so a bad flag fails at once)."""

    audio_api: str
    midi_api: str
    device: OutputDevice | None       # PortAudio's device; None with --audio-api jack-client
    out_ports: re.Pattern | None      # --audio-api jack-client: --device as a pattern of JACK ports
    sample_rate: int
    blocksize: int

    @property
    def own_client(self) -> bool:
        return self.audio_api == JACK_CLIENT_API

    @property
    def on_jack(self) -> bool:
        """True when the audio callback runs in a JACK cycle (PortAudio's JACK host API or our client)."""
        return self.own_client or self.device.hostapi == AUDIO_APIS["jack"]

    def where(self, client_name: str = CLIENT_NAME) -> str:
        """The output as the reports name it: PortAudio's device, or our JACK client (`client_name`: the
        name JACK gave it, `neural-synth-01` when another synth runs)."""
        if self.own_client:
            return f"JACK client {client_name} (one callback for MIDI and audio)"
        return f"{self.device.name} ({self.device.hostapi})"


def choose_output(args, log: Callable[[str], None]) -> Output:
    """Resolve the APIs and the device; under JACK, follow the server's rate and period."""
    audio_api, midi_api = choose_apis(args.audio_api, args.midi_api)
    out = Output(audio_api, midi_api, None, None, args.sample_rate, args.blocksize)
    if out.own_client:
        from synth.io.jack_audio import output_pattern

        out.out_ports = output_pattern(args.device)
    else:
        from synth.io import portaudio

        out.device = portaudio.resolve_device(portaudio.load_sounddevice(), args.device, audio_api)
    if midi_api == "alsa" and not has_alsa_seq():
        raise UserError("no MIDI input: /dev/snd/seq is missing and no JACK server runs; load the ALSA "
                        "sequencer (`modprobe snd-seq`), start JACK, or pass --midi-api none")
    if out.on_jack:
        # A JACK client cannot choose the server's rate or period; follow them.
        info = jack_server_info()
        if info is not None:
            if info[0] != out.sample_rate:
                log(f"note: the JACK server runs at {info[0]} Hz; using that instead of {out.sample_rate}")
            if info[1] != out.blocksize:
                log(f"note: the JACK server's period is {info[1]} frames; using that instead of {out.blocksize}")
            out.sample_rate, out.blocksize = info
    return out


# -- what play opens, and what devices predicts it opens ---------------------------------------------
def opened_report(out: Output, audio_connections: list[str] | None, midi_ports: list[str],
                  virtual_port: str | None, client_name: str = CLIENT_NAME) -> dict:
    """What `play` opens, as `--stats-json` (`opened`) and `python -m synth devices --json` give it.

    `audio_connections`: "neural-synth:out_0 -> system:playback_1", ... with `--audio-api jack-client`
    (None with PortAudio, whose device says it). `midi_ports`: the ports of other programs that feed
    the synth, sorted. `virtual_port`: the synth's own input port, or None (`--no-virtual`)."""
    return {"audio_api": out.audio_api, "output": out.where(client_name), "sample_rate": out.sample_rate,
            "blocksize": out.blocksize, "audio_connections": audio_connections, "midi_api": out.midi_api,
            "midi_ports": list(midi_ports), "midi_virtual_port": virtual_port}


def report_lines(r: dict) -> list[str]:
    """`opened_report` as the two lines `play` logs at start and `devices` prints as its prediction."""
    audio = f"audio ({r['audio_api']}): {r['output']}, {r['sample_rate']} Hz, block {r['blocksize']}"
    if r["audio_connections"] is not None:
        audio += ", " + (", ".join(r["audio_connections"]) or "outputs not connected (no JACK audio input)")
    if r["midi_api"] == "none":
        return [audio, "midi (none): no MIDI input"]
    ports = ", ".join(r["midi_ports"]) or "no port of another program"
    virtual = f"; virtual port {r['midi_virtual_port']}" if r["midi_virtual_port"] else ""
    return [audio, f"midi ({r['midi_api']}): {ports}{virtual}"]


def predict(out: Output, args) -> dict:
    """What `play` with these flags would open (`opened_report`), without opening it: the JACK outputs it
    would connect (`jack_audio.output_destinations`) and the MIDI ports it would take (`ports.wants` over
    the same listing), by the same functions `play` uses. `out` is `choose_output`'s."""
    from synth.io.ports import compile_patterns, wants

    patterns = compile_patterns(args.midi_port)
    audio_connections = None
    names: list[str] = []
    client = None
    try:
        if out.own_client or out.midi_api == "jack":
            from synth.io.midi_jack import open_client

            client = open_client(CLIENT_NAME + "-devices")
        if out.own_client:
            from synth.io.jack_audio import output_destinations

            audio_connections = [f"{CLIENT_NAME}:out_{i} -> {d}"
                                 for i, d in enumerate(output_destinations(client, out.out_ports))]
        if out.midi_api == "jack":
            from synth.io.midi_jack import midi_sources

            names = midi_sources(client)
        elif out.midi_api in ("alsa", "jack-rtmidi"):
            from synth.io.midi_rtmidi import list_ports

            names = list_ports("jack" if out.midi_api == "jack-rtmidi" else "alsa")
    finally:
        if client is not None:
            client.close()
    virtual = None if args.no_virtual or out.midi_api == "none" else f"{CLIENT_NAME}:{VIRTUAL_PORT}"
    return opened_report(out, audio_connections, sorted(n for n in names if wants(n, patterns)), virtual)


def latency_readout(out: Output, audio, midi, engine) -> dict:
    """Key to sound, in frames, as far as the synth can know it (the `latency_*` fields of `--stats-json`):

    - `synth`: from a key's arrival to its frame in the block the synth writes. 0 with `--audio-api
      jack-client` (a key sounds in the cycle it arrives); else one block (the callback places an event
      one block after its time stamp; under JACK, PortAudio's callback takes the events our MIDI client
      read a cycle later).
    - `output`: from that block to the speaker. Under JACK, the playback latency that JACK reports for
      our output port (it follows the connections: 0 when the outputs feed a recorder or nothing);
      else PortAudio's output latency.
    - `engine`: the engine's own delay (`latency_samples`: the effects' chunk).

    Reads JACK: main thread only. `tests/test_cli_live.py` checks it against a measurement."""
    sr = out.sample_rate
    synth = int(getattr(audio, "synth_latency_frames", out.blocksize))
    output, source = None, "jack"
    if out.own_client:
        output = audio.output_latency_frames()
    elif out.on_jack and hasattr(midi, "playback_latency"):
        from synth.io.portaudio import JACK_AUDIO_CLIENT

        output = midi.playback_latency(f"{JACK_AUDIO_CLIENT}:out_0")
    if output is None:
        output, source = int(round(audio.latency_seconds * sr)), "portaudio"
    engine_frames = int(getattr(engine, "latency_samples", 0) or 0)
    total = synth + output + engine_frames
    return {"latency_frames": total, "latency_ms": round(1e3 * total / sr, 3),
            "latency_parts": {"synth": synth, "output": output, "engine": engine_frames, "output_from": source}}


def latency_line(lat: dict) -> str:
    parts = lat["latency_parts"]
    where = "JACK playback" if parts["output_from"] == "jack" else "PortAudio output"
    return (f"latency: {lat['latency_ms']:.1f} ms from key to sound ({lat['latency_frames']} frames: synth "
            f"{parts['synth']} + {where} {parts['output']} + engine {parts['engine']})")


def _default_engine_factory(**kw):
    try:
        from synth.engine import Engine
    except ImportError as e:
        raise UserError(f"the synth engine is not available ({e}); reinstall with `pip install -e .`") from None
    return Engine(**kw)


def make_engine(args, out: Output, presets: list, program_map: dict, knobs: list,
                engine_factory: Callable | None = None, router=None):
    """The live engine at the output's rate and block size, with the GM routing (`router`, a
    `synth.routing.Router` over `presets`; else `program_map`) and knob positions."""
    kw = dict(sample_rate=out.sample_rate, blocksize=out.blocksize, presets=presets, realtime=True)
    if router is not None:
        from synth.render import engine_routing

        kw.update(engine_routing(_engine_class() if engine_factory is None else engine_factory, router))
        program_map = kw.pop("program_map", None)
    if args.cache_mb is not None:
        kw["cache_mb"] = args.cache_mb
    if args.polyphony is not None:
        kw["polyphony"] = args.polyphony
    factory = engine_factory or _default_engine_factory
    if _takes(factory, "disk_cache"):
        from synth.diskcache import parse_option

        kw["disk_cache"] = parse_option(getattr(args, "disk_cache", "off"))   # a hand-made args: none
    if args.fx is not None:
        from synth.fx import parse_fx

        # 64-frame chunks: 1.3 ms of added latency at 48 kHz, reported in engine.latency_samples.
        kw["fx"] = parse_fx(args.fx, out.sample_rate, chunk=64)
    if getattr(args, "gain", None) is not None:
        from synth.render import master_gain

        kw["master_gain"] = master_gain(args.gain)
    engine = factory(**kw)
    if program_map and hasattr(engine, "set_program_map"):
        engine.set_program_map(program_map)
    for cc, v in knobs:
        if hasattr(engine, "set_knob"):
            engine.set_knob(cc, v)
        else:
            for ch in range(16):
                engine.control_change(ch, cc, v)
    return engine


def open_midi(out: Output, args, queue, audio, core: LiveCore, vmap, log):
    """The MIDI input beside a PortAudio stream (None for --midi-api none)."""
    if out.midi_api == "jack":
        from synth.io.midi_jack import JackMidiInput

        on_jack = out.device.hostapi == AUDIO_APIS["jack"]
        midi = JackMidiInput(queue, port_patterns=args.midi_port, virtual=not args.no_virtual, velocity_map=vmap,
                             log=log, clock=None if on_jack else audio.time)
        if on_jack:
            core.ref_clock = midi.cycle_clock
        return midi
    if out.midi_api in ("alsa", "jack-rtmidi"):
        from synth.io.midi_rtmidi import MidiInput

        return MidiInput("jack" if out.midi_api == "jack-rtmidi" else "alsa", queue, audio.time,
                         port_patterns=args.midi_port, virtual=not args.no_virtual, velocity_map=vmap, log=log)
    return None


# -- the running synth -----------------------------------------------------------------------------
class Session:
    """One live run: the engine, the audio callback, the audio and MIDI I/O, and the main thread's loop."""

    def __init__(self, args, out: Output, engine, preset_name: str, status: StatusLine):
        self.args = args
        self.out = out
        self.engine = engine
        self.preset_name = preset_name
        self.status = status
        self.queue = EventQueue()
        self.core = LiveCore(engine, out.sample_rate, out.blocksize, self.queue)
        self.tamer = GcTamer(args.gc, args.switch_interval)
        self.stop = threading.Event()
        self.reason = "stopped"
        self.rc = 0
        self.audio = self.midi = None
        self.opened: dict = {}    # `opened_report` of what `_start` opened
        self.latency: dict = {}   # `latency_readout`, refreshed at every status tick (JACK connections change)

    def run(self, notes: list[str]) -> int:
        """Open, play until told to stop, close. Returns the exit status."""
        handled = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])
        old_handlers = {s: signal.signal(s, self._on_signal) for s in handled}
        abandoned = False
        try:
            self._open()
            self._start(notes)
            self._loop()
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            abandoned = self._close()
        self.write_stats()
        self.status.log(stopped_line(self.summary()))
        if abandoned:
            # The JACK server died under the stream: PortAudio would hang in its exit handler
            # (Pa_Terminate), so leave now. Everything of ours is already written and flushed.
            self.status.log("the JACK server is gone; exiting without closing PortAudio")
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(self.rc or 1)
        return self.rc

    def _on_signal(self, signum, _frame) -> None:
        if signum == getattr(signal, "SIGUSR1", None):
            self.core.panic_request = True   # the panic button: counted and reported
            return
        self.reason = signal.Signals(signum).name
        self.stop.set()

    def _open(self) -> None:
        args, out, core = self.args, self.out, self.core
        vmap = velocity_map(args.velocity_curve)
        if out.own_client:
            from synth.io.jack_audio import JackSynthClient

            # One JACK client, one process callback a cycle, for MIDI in and audio out.
            self.audio = self.midi = JackSynthClient(
                self.queue, core.callback, port_patterns=args.midi_port, virtual=not args.no_virtual,
                velocity_map=vmap, log=self.status.log, connect_to=out.out_ports)
            core.ref_clock = self.midi.cycle_clock
        else:
            from synth.io.portaudio import AudioOutput

            self.audio = AudioOutput(out.device, out.sample_rate, out.blocksize, core.callback)
            self.midi = open_midi(out, args, self.queue, self.audio, core, vmap, self.status.log)

    def _start(self, notes: list[str]) -> None:
        out, log = self.out, self.status.log
        self.tamer.start()
        self.audio.start()
        for note in notes:
            log(note)
        if self.midi is not None:
            self.midi.start()   # with --audio-api jack-client, done by audio.start()
        midi = self.midi
        self.opened = opened_report(out, self.audio.connections if out.own_client else None,
                                    midi.external_ports if midi else [], midi.virtual_port if midi else None,
                                    midi.client.name if out.own_client else CLIENT_NAME)
        for line in report_lines(self.opened):
            log(line)
        self.latency = latency_readout(out, self.audio, midi, self.engine)
        log(latency_line(self.latency))

    def _loop(self) -> None:
        """The main thread until a stop: the ready line, errors, GC ticks, and one tick per status interval."""
        args, core, engine, status = self.args, self.core, self.engine, self.status
        t_start = time.monotonic()
        next_status = next_gc = t_start
        error_reported = False
        ready = not hasattr(engine, "wait_ready")
        if ready:
            status.log("ready")
        while not self.stop.is_set():
            if args.duration is not None and time.monotonic() - t_start >= args.duration:
                self.reason = "duration"
                break
            self.stop.wait(0.02 if not ready else 0.05)
            if not self.audio.stream.active:
                why = getattr(self.audio, "shutdown_reason", None)
                status.log("error: the audio stream stopped (" + (f"JACK server gone: {why}" if why else
                                                                     "device unplugged or JACK server gone") + ")")
                self.reason = "audio stream lost"
                self.rc = 1
                break
            if core.first_error is not None and not error_reported:
                status.log("error in the audio callback (that block was muted):\n" + core.first_error.rstrip())
                error_reported = True
            if not ready and engine.wait_ready(0) and engine_stats(engine).get("cache_entries", 1):
                ready = True
                status.log(f"ready: {engine_stats(engine).get('cache_entries', '?')} notes cached in "
                           f"{time.monotonic() - t_start:.1f} s")
            now = time.monotonic()
            if now >= next_gc:
                self.tamer.tick(core if self.audio.stream.active else None)
                next_gc = time.monotonic() + GC_TICK
            if now >= next_status:
                self.interval_tick()
                next_status = now + status.interval

    def interval_tick(self) -> None:
        """Once per status interval, on the main thread: what the audio thread only counts is reported
        here (it never logs), then the status line and the stats file."""
        self._report()
        try:
            self.latency = latency_readout(self.out, self.audio, self.midi, self.engine)
        except Exception:   # a JACK server going away: keep the last reading
            pass
        ports = len(self.midi.external_ports) if self.midi else 0
        self.status.show(status_text(self.preset_name, self.core, engine_stats(self.engine), ports,
                                     self.latency.get("latency_ms")))
        self.write_stats()

    def _report(self) -> None:
        """Log what the engine's render only counted (NaN/Inf blocks, notes a full cache skipped, ...)."""
        report = getattr(self.engine, "report", None)   # stand-in engines in tests may lack it
        if callable(report):
            report()

    def summary(self) -> dict:
        return final_summary(self.core, self.engine, self.tamer, self.reason, self.midi,
                             {**self.latency, "opened": self.opened})

    def write_stats(self) -> None:
        if self.args.stats_json:
            from synth.fsutil import atomic_write_text

            atomic_write_text(self.args.stats_json, json.dumps(self.summary(), indent=1))

    def _close(self) -> bool:
        """Close MIDI, fade out and close the audio, close the engine. False when the audio stream had
        to be left open (its JACK server is gone: see `portaudio.AudioOutput.close`)."""
        midi, audio = self.midi, self.audio
        if midi is not None and midi is not audio:
            midi.close()
        abandoned = False
        if audio is not None:
            if audio.stream.active:
                # Fade every voice out inside the stream before closing it: no click at exit. The same
                # silencing as a panic, but not one: a clean stop reports none.
                self.core.panic_request = FADE_OUT
                time.sleep(min(0.2, 0.01 + 4 * self.out.blocksize / self.out.sample_rate))
            abandoned = not audio.close()
        self._report()   # the last interval's counts
        close = getattr(self.engine, "close", None)
        if callable(close):
            close()
        self.tamer.stop()
        return abandoned


def _takes(factory, name: str) -> bool:
    """Whether `factory` (the engine, or a test's stand-in) accepts keyword `name`."""
    import inspect

    if factory is _default_engine_factory:
        return True
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _engine_class():
    """`synth.engine.Engine`, or None when it cannot be imported (the factory then says why)."""
    try:
        from synth.engine import Engine
    except ImportError:
        return None
    return Engine


def stopped_line(summary: dict) -> str:
    """The last line: why it stopped and the scalar counters. Panic counts only when there was one (a
    clean stop fades out without a panic)."""
    skip = {"panic_button", "panic_messages"} | ({"panics"} if not summary.get("panics") else set())
    return f"stopped ({summary['reason']}): " + " ".join(
        f"{k}={v}" for k, v in summary.items() if k not in skip and not isinstance(v, (dict, list)))


def load_presets(args, program_map: dict, log: Callable[[str], None]) -> list:
    """The presets `play` loads: `--preset`s (with the program map's and --drums), else every installed
    preset (General MIDI: any program finds its family; a broken preset is skipped with a line)."""
    from synth.preset import find_preset
    from synth.render import installed_presets

    if args.preset:
        extra = [*program_map.values(), *([args.drums] if args.drums else [])]
        return [find_preset(n, args.preset_dir) for n in dict.fromkeys([*args.preset, *extra])]
    return installed_presets(program_map, args.drums, args.preset_dir, log)


def main(argv: list[str], engine_factory: Callable | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_ranges(args)
    from synth.engine import single_thread_blas
    from synth.render import check_knobs, parse_knobs, parse_program_map, routed

    knobs = parse_knobs(args.knob)
    nice_note = raise_priority(args.nice)   # before any thread starts: new threads inherit it
    single_thread_blas()   # the mix's matrix product never waits for BLAS helper threads
    program_map = parse_program_map(args.program_map)
    status = StatusLine(args.status_interval)
    router = routed(load_presets(args, program_map, status.log), program_map, args.drums)
    presets = router.presets
    check_knobs(knobs, presets)
    out = choose_output(args, status.log)
    engine = make_engine(args, out, presets, program_map, knobs, engine_factory, router)
    session = Session(args, out, engine, presets[0].name, status)
    return session.run([nice_note] if nice_note else [])
