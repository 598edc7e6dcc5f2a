"""Live MIDI input: the only module that imports rtmidi (python-rtmidi) and, for JACK MIDI, JACK-Client;
both lazily.

- `MidiInput` (rtmidi; ALSA, or `--midi-api jack-rtmidi`) opens a virtual input port named
  `neural-synth` plus every existing input port (or those matching `--midi-port`). A background thread
  re-scans the port list about once a second: new ports are opened, vanished ones closed, and the sound
  never stops for it. The rtmidi callback stamps each message with the audio stream's clock.
- `JackMidiInput` (JACK-Client; `--midi-api jack`) owns the JACK port `neural-synth:neural-synth`,
  connects every MIDI output to it (hot-plug likewise), and stamps each event with its exact JACK
  frame.

Either way, the MIDI thread only stamps, parses (running status) into channel events and appends them
to a deque, which the audio callback drains. Sysex, clock and active sensing are dropped at the source.
Events are tuples `(t_seconds, kind, channel, a, b, source_id)`.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import re
import sys
import threading
import time
from collections.abc import Callable

from synth.errors import UserError

VIRTUAL_PORT = "neural-synth"
CLIENT_NAME = "neural-synth"

# Event kinds, as put on the queue: (t_seconds, kind, channel, a, b, source_id).
NOTE_ON, NOTE_OFF, CC, PROGRAM, BEND, AFTERTOUCH = 0, 1, 2, 3, 4, 5
# Data bytes per status high nibble (0x80..0xE0).
_DATA_LEN = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}


def _rtmidi():
    try:
        import rtmidi
    except ImportError as e:
        raise UserError(f"python-rtmidi is not installed ({e}); `pip install python-rtmidi`") from None
    return rtmidi


def api_id(api: str) -> int:
    rtmidi = _rtmidi()
    ids = {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK}
    if api not in ids:
        raise UserError(f"MIDI API {api!r} is not known; choose alsa or jack")
    if ids[api] not in rtmidi.get_compiled_api():
        raise UserError(f"this python-rtmidi build has no {api} support; try --midi-api "
                        f"{'alsa' if api == 'jack' else 'jack'}")
    return ids[api]


class Parser:
    """Bytes of one source → channel events, with MIDI running status.

    rtmidi usually hands over whole messages, but raw streams (JACK MIDI from some bridges) may use
    running status or pack several messages into one buffer; both are handled. System bytes (0xF0..)
    end running status; real-time bytes (0xF8..) are skipped without disturbing it.
    """

    __slots__ = ("status", "data", "need")

    def __init__(self) -> None:
        self.status = 0
        self.data: list[int] = []
        self.need = 0

    def feed(self, msg, t: float, src: int, emit: Callable[[tuple], None]) -> None:
        for byte in msg:
            if byte >= 0xF8:
                continue
            if byte >= 0xF0:
                self.status, self.need = 0, 0
                self.data = []
                continue
            if byte >= 0x80:
                self.status = byte
                self.need = _DATA_LEN[byte >> 4]
                self.data = []
                continue
            if not self.status:
                continue
            self.data.append(byte)
            if len(self.data) < self.need:
                continue
            ev = _event(self.status, self.data, t, src)
            self.data = []
            if ev is not None:
                emit(ev)


def _event(status: int, data: list[int], t: float, src: int) -> tuple | None:
    kind, ch = status >> 4, status & 0x0F
    if kind == 0x9:
        if data[1] == 0:
            return (t, NOTE_OFF, ch, data[0], 0, src)
        return (t, NOTE_ON, ch, data[0], data[1], src)
    if kind == 0x8:
        return (t, NOTE_OFF, ch, data[0], data[1], src)
    if kind == 0xB:
        return (t, CC, ch, data[0], data[1], src)
    if kind == 0xC:
        return (t, PROGRAM, ch, data[0], 0, src)
    if kind == 0xE:
        return (t, BEND, ch, (data[0] | (data[1] << 7)) - 8192, 0, src)
    return None  # aftertouch: not used by the engine


class MidiInput:
    """Every MIDI input port plus a virtual port, feeding `queue` (a deque) with timestamped events.

    `clock()` returns seconds on the audio stream's clock; each event carries the clock value read when
    rtmidi delivered it. `port_patterns` (regexes, case-insensitive) restrict which existing ports are
    opened; the virtual port is always opened unless `virtual=False`.
    """

    def __init__(self, api: str, queue: collections.deque, clock: Callable[[], float],
                 port_patterns: list[str] | None = None, virtual: bool = True, poll_seconds: float = 1.0,
                 velocity_map: list[int] | None = None, log: Callable[[str], None] | None = None):
        self.api = api
        self._api_id = api_id(api)
        self.queue = queue
        self.clock = clock
        try:
            self.patterns = [re.compile(p, re.I) for p in (port_patterns or [])]
        except re.error as e:
            raise UserError(f"--midi-port: bad pattern ({e}); use a plain name or a regular expression") from None
        self.virtual = virtual
        self.poll_seconds = poll_seconds
        self.velocity_map = velocity_map
        self.log = log or (lambda s: print(s, file=sys.stderr))
        self._ports: dict[str, object] = {}   # port name -> rtmidi.MidiIn
        self._virtual_in = None
        self._scanner = None
        self._next_src = 1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards _ports between the poll thread and close(); never audio
        self._failed: set[str] = set()   # ports that could not be opened: tried again each scan, logged once

    # -- rtmidi side -------------------------------------------------------------------------------
    def _make_callback(self, src: int):
        parser = Parser()
        append = self.queue.append
        clock = self.clock
        vmap = self.velocity_map

        def emit(ev: tuple) -> None:
            if vmap is not None and ev[1] == NOTE_ON:
                ev = (ev[0], NOTE_ON, ev[2], ev[3], vmap[ev[4]], ev[5])
            append(ev)

        def callback(message, _data=None) -> None:
            try:
                t = clock()
            except Exception:  # the stream is closing; events are no longer wanted
                return
            parser.feed(message[0], t, src, emit)

        return callback

    def _new_in(self, client_suffix: str = ""):
        rtmidi = _rtmidi()
        try:
            m = rtmidi.MidiIn(self._api_id, CLIENT_NAME + client_suffix, queue_size_limit=4096)
        except rtmidi.SystemError as e:
            hint = "start a JACK server or use --midi-api alsa" if self.api == "jack" else \
                "load the ALSA sequencer (`modprobe snd-seq`) or use --midi-api jack with a JACK server"
            raise UserError(f"cannot open MIDI ({self.api}): {e}; {hint}, or --midi-api none") from None
        m.ignore_types(sysex=True, timing=True, active_sense=True)
        return m

    # -- ports -------------------------------------------------------------------------------------
    def start(self) -> None:
        self._scanner = self._new_in("-scan")
        if self.virtual:
            v = self._new_in()
            v.set_callback(self._make_callback(0))
            try:
                v.open_virtual_port(VIRTUAL_PORT)
            except Exception as e:
                raise UserError(f"cannot open the virtual MIDI port {VIRTUAL_PORT!r}: {e}; use --no-virtual") \
                    from None
            self._virtual_in = v
        self.rescan()
        self._thread = threading.Thread(target=self._poll, name="midi-hotplug", daemon=True)
        self._thread.start()

    def _wanted(self, name: str) -> bool:
        # Our own ports never feed back into us (a JACK client lists its siblings' ports).
        if name.startswith(CLIENT_NAME + ":") or name.startswith(CLIENT_NAME + "-"):
            return False
        return not self.patterns or any(p.search(name) for p in self.patterns)

    def rescan(self) -> None:
        """Open ports that appeared and close ports that vanished."""
        try:
            names = self._scanner.get_ports()
        except Exception as e:  # a JACK server that went away: keep playing what we have
            self.log(f"midi: cannot list ports ({e})")
            return
        current = [n for n in names if self._wanted(n)]
        with self._lock:
            for name in list(self._ports):
                if name not in current:
                    self._close_port(name)
                    self.log(f"midi: port closed: {name}")
            for name in current:
                if name in self._ports:
                    continue
                try:
                    idx = self._scanner.get_ports().index(name)
                except ValueError:
                    continue
                src = self._next_src
                self._next_src += 1
                m = self._new_in(f"-in{src}")
                m.set_callback(self._make_callback(src))
                try:
                    m.open_port(idx, "in")
                except Exception as e:
                    if name not in self._failed:
                        self._failed.add(name)
                        self.log(f"midi: cannot open {name}: {e}; trying again every {self.poll_seconds:g} s")
                    m.delete()
                    continue
                self._failed.discard(name)
                self._ports[name] = m
                self.log(f"midi: port opened: {name}")
            self._failed &= set(current)

    def _close_port(self, name: str) -> None:
        m = self._ports.pop(name)
        try:
            m.cancel_callback()
            m.close_port()
        finally:
            m.delete()

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.rescan()

    @property
    def port_names(self) -> list[str]:
        with self._lock:
            names = list(self._ports)
        return ([f"{CLIENT_NAME}:{VIRTUAL_PORT} (virtual)"] if self._virtual_in is not None else []) + names

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for name in list(self._ports):
                self._close_port(name)
        for m in (self._virtual_in, self._scanner):
            if m is not None:
                try:
                    m.cancel_callback()
                    m.close_port()
                finally:
                    m.delete()
        self._virtual_in = self._scanner = None


class FrameClock:
    """JACK's 32-bit frame counter, unwrapped to 64 bits. One instance per thread that reads it."""

    __slots__ = ("_frame", "_sr", "_last", "_wraps")

    def __init__(self, last_frame_time: Callable[[], int], sample_rate: int):
        self._frame = last_frame_time
        self._sr = float(sample_rate)
        self._last = 0
        self._wraps = 0

    def unwrap(self, frame: int) -> int:
        if frame < self._last and self._last - frame > 1 << 31:
            self._wraps += 1
        self._last = frame
        return frame + (self._wraps << 32)

    def cycle_start(self) -> float:
        """Seconds (frames / sample rate) at the start of JACK's current process cycle. Valid from any
        JACK process callback of this server, e.g. PortAudio's audio callback under JACK."""
        return self.unwrap(self._frame()) / self._sr


class _MidiEvent(ctypes.Structure):
    _fields_ = [("time", ctypes.c_uint32), ("size", ctypes.c_size_t), ("buffer", ctypes.c_void_p)]


class JackFast:
    """The libjack calls a process callback makes every cycle, through `ctypes.PyDLL`: they keep the GIL.

    JACK-Client's calls (cffi) release the GIL around every C call, and JACK-Client makes several per
    port access (`get_array()` also asks for the buffer size). Each release is a chance for another
    thread, the generator worker say, to take the GIL; the real-time thread then waits until that
    thread hands it back (up to the switch interval, longer when that thread is preempted). These calls
    only read shared memory, so holding the GIL through them costs nothing. Same library, same handles:
    the pointers come from JACK-Client's objects."""

    def __init__(self, client):
        import jack

        path = ctypes.util.find_library("jack")
        if not path:
            raise UserError("libjack is not installed; `apt-get install libjack-jackd2-0`")
        self.lib = lib = ctypes.PyDLL(path)
        vp, u32 = ctypes.c_void_p, ctypes.c_uint32
        self._get_buffer = lib.jack_port_get_buffer
        self._get_buffer.argtypes, self._get_buffer.restype = [vp, u32], vp
        self._count = lib.jack_midi_get_event_count
        self._count.argtypes, self._count.restype = [vp], u32
        self._event_get = lib.jack_midi_event_get
        self._event_get.argtypes, self._event_get.restype = [ctypes.POINTER(_MidiEvent), vp, u32], ctypes.c_int
        self._last_frame = lib.jack_last_frame_time
        self._last_frame.argtypes, self._last_frame.restype = [vp], u32
        self._since_start = lib.jack_frames_since_cycle_start
        self._since_start.argtypes, self._since_start.restype = [vp], u32
        self._latency_range = lib.jack_port_get_latency_range
        self._latency_range.argtypes, self._latency_range.restype = [vp, ctypes.c_int, ctypes.c_void_p], None
        # ctypes.memmove releases the GIL (CFUNCTYPE); the same C function as a PYFUNCTYPE keeps it.
        self._memmove = ctypes.PYFUNCTYPE(vp, vp, vp, ctypes.c_size_t)(ctypes.cast(ctypes.memmove, vp).value)
        self._ev = _MidiEvent()
        self._evp = ctypes.pointer(self._ev)
        self._ffi = jack._ffi
        self.client = self.ptr(client)

    def ptr(self, obj) -> int:
        """The C pointer of a JACK-Client `Client` or `Port`."""
        return int(self._ffi.cast("uintptr_t", obj._ptr))

    def last_frame_time(self) -> int:
        return self._last_frame(self.client)

    def frames_since_cycle_start(self) -> int:
        return self._since_start(self.client)

    def midi_events(self, port: int, frames: int) -> list[tuple[int, bytes]]:
        """(offset in the period, bytes) of every event in MIDI input port `port` this cycle."""
        buf = self._get_buffer(port, frames)
        n = self._count(buf) if buf else 0
        if not n:
            return []
        ev, evp, out = self._ev, self._evp, []
        for i in range(n):
            if self._event_get(evp, buf, i):
                break
            out.append((ev.time, ctypes.string_at(ev.buffer, ev.size)))
        return out

    def playback_latency(self, port: int) -> int:
        """Frames from this port to the speaker, as the graph reports it (the upper bound)."""
        rng = (ctypes.c_uint32 * 2)()
        self._latency_range(port, 1, rng)   # 1: JackPlaybackLatency
        return int(rng[1])

    def write_audio(self, port: int, frames: int, src) -> None:
        """Copy float32 contiguous `src` (`frames` long) into audio output port `port`."""
        buf = self._get_buffer(port, frames)
        if buf:
            self._memmove(buf, src.ctypes.data, 4 * frames)


class JackMidiInput:
    """JACK MIDI through the JACK-Client package: frame-exact event times.

    rtmidi's JACK backend stamps events when its process callback runs, so every event of a period gets
    the same time and timing jitters by a whole period (measured: p95-p5 of 2.5 ms at 128 frames).
    Here one JACK client `neural-synth` owns the input port `neural-synth`; each event is stamped with
    `last_frame_time + offset`, in seconds of JACK's frame clock, so `cycle_clock()` (JACK cycle start,
    same clock) lets the audio callback place it at the exact frame one period later. When the audio does
    not go through JACK, pass `clock` (the audio stream's clock) instead: events are then stamped on it,
    accurate to about a JACK period.

    "Every input port" maps to JACK's many-to-one connections: every other client's MIDI output is
    connected to our port (JACK merges them, so a source connected twice cannot double its notes). A
    background thread connects ports that appear later; vanished ports drop out by themselves. A port
    the user disconnects by hand stays disconnected.
    """

    def __init__(self, queue: collections.deque, port_patterns: list[str] | None = None, virtual: bool = True,
                 poll_seconds: float = 1.0, velocity_map: list[int] | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None):
        try:
            import jack
        except (ImportError, OSError) as e:
            raise UserError(f"JACK MIDI needs the JACK-Client package and libjack ({e}); "
                            "`pip install JACK-Client` or use --midi-api jack-rtmidi") from None
        self._jack = jack
        self.api = "jack"
        self.queue = queue
        self.clock = clock   # None: stamp in JACK frames (audio on JACK too); else the audio stream's clock
        try:
            self.patterns = [re.compile(p, re.I) for p in (port_patterns or [])]
        except re.error as e:
            raise UserError(f"--midi-port: bad pattern ({e}); use a plain name or a regular expression") from None
        self.virtual = virtual
        self.poll_seconds = poll_seconds
        self.velocity_map = velocity_map
        self.log = log or (lambda s: print(s, file=sys.stderr))
        try:
            self.client = jack.Client(CLIENT_NAME, no_start_server=True)
        except jack.JackError as e:
            raise UserError(f"cannot open JACK MIDI ({e}); start a JACK server or use --midi-api alsa") from None
        self.sample_rate = self.client.samplerate
        self.port = self.client.midi_inports.register(VIRTUAL_PORT)
        self._fast = JackFast(self.client)
        self._port_ptr = self._fast.ptr(self.port)
        self._clock = FrameClock(self._fast.last_frame_time, self.sample_rate)
        # A second clock for the audio thread (each FrameClock belongs to one thread).
        self.cycle_clock = FrameClock(self._fast.last_frame_time, self.sample_rate).cycle_start
        # Ports handled: connected, or not wanted. A port the user disconnects by hand stays disconnected.
        self._seen: set[str] = set()
        self._failed: set[str] = set()   # ports whose connection JACK refused: tried again each scan
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parser = Parser()
        self._prev_events: list = []
        self.stale_cycles = 0   # cycles whose MIDI repeated the previous cycle's exactly: dropped
        self.client.set_process_callback(self._process)

    def _fresh(self, events: list) -> list:
        """This cycle's MIDI, or nothing when it repeats the previous cycle's exactly (the same bytes at
        the same offsets): a stale buffer. A client that sends us MIDI and runs after us in the cycle (a
        DAW that plays a track into the synth and records it back: JACK breaks the loop by running one
        first) writes its buffer after we read it; when it misses a cycle, we find last cycle's events
        there again, and would play every note-on twice (measured: one repeated cycle for each cycle the
        test probe missed). Repeats of controllers, bends and note-offs change nothing; a real note-on
        repeated at the same offset one period later (90 Hz and up) is not something anyone plays."""
        prev = self._prev_events
        self._prev_events = events
        if events and events == prev:
            self.stale_cycles += 1
            return []
        return events

    def _process(self, frames: int) -> None:
        # JACK process thread: read events, stamp, parse, append. Nothing else.
        events = self._fresh(self._fast.midi_events(self._port_ptr, frames))
        if not events:
            return
        sr = self.sample_rate
        if self.clock is None:
            base = self._clock.unwrap(self._fast.last_frame_time()) / sr
        else:
            # Audio is not on JACK: no shared frame clock. The events of this cycle happened during
            # the last period, so place them one period back on the audio stream's clock.
            base = self.clock() - frames / sr
        for offset, data in events:
            self._parser.feed(data, base + offset / sr, 0, self._emit)

    def _emit(self, ev: tuple) -> None:
        vmap = self.velocity_map
        if vmap is not None and ev[1] == NOTE_ON:
            ev = (ev[0], NOTE_ON, ev[2], ev[3], vmap[ev[4]], ev[5])
        self.queue.append(ev)

    def start(self) -> None:
        self.client.activate()
        self._start_hotplug()

    def _start_hotplug(self) -> None:
        self.rescan()
        self._thread = threading.Thread(target=self._poll, name="midi-hotplug", daemon=True)
        self._thread.start()

    def _wanted(self, name: str) -> bool:
        if name.split(":", 1)[0].startswith(CLIENT_NAME):
            return False
        return not self.patterns or any(p.search(name) for p in self.patterns)

    def rescan(self) -> None:
        """Connect MIDI outputs that appeared since the last scan."""
        try:
            ports = self.client.get_ports(is_midi=True, is_output=True)
            mine = {p.name for p in self.client.get_all_connections(self.port)}
        except self._jack.JackError as e:
            self.log(f"midi: cannot list JACK ports ({e})")
            return
        names = {p.name for p in ports}
        for name in sorted(names - self._seen):
            if not self._wanted(name) or name in mine:
                self._seen.add(name)
                continue
            try:
                self.client.connect(name, self.port)
            except self._jack.JackError as e:
                if getattr(e, "code", None) != 17:   # 17 (EEXIST): connected meanwhile from the other side
                    # A busy server can refuse a request (-1 while it is having xruns): not the port's
                    # fault, so ask again at the next scan instead of giving the port up.
                    if name not in self._failed:
                        self._failed.add(name)
                        self.log(f"midi: cannot connect {name}: {e}; trying again every {self.poll_seconds:g} s")
                    continue
            self._seen.add(name)
            self._failed.discard(name)
            self.log(f"midi: port connected: {name}")
        for name in sorted(self._seen - names):
            self._seen.discard(name)
            self.log(f"midi: port gone: {name}")
        self._failed &= names

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.rescan()

    @property
    def port_names(self) -> list[str]:
        try:
            conns = [p.name for p in self.client.get_all_connections(self.port)]
        except self._jack.JackError:
            conns = []
        return [f"{CLIENT_NAME}:{VIRTUAL_PORT}"] + conns

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.client.deactivate()
        finally:
            self.client.close()


def output_pattern(device: str | None) -> re.Pattern | None:
    """`--device` under `--audio-api jack-client`: a regex for the JACK ports to connect the outputs to."""
    if not device:
        return None
    try:
        return re.compile(device, re.I)
    except re.error as e:
        raise UserError(f"--device {device!r}: bad pattern ({e}); with --audio-api jack-client it names the "
                        "JACK ports to connect the outputs to, e.g. '^system:playback_'") from None


class _Timing:
    """What `LiveCore.callback` reads from sounddevice's `time_info` and `status`, filled by hand."""

    __slots__ = ("currentTime", "outputBufferDacTime", "output_underflow")

    def __init__(self) -> None:
        self.currentTime = 0.0
        self.outputBufferDacTime = 0.0
        self.output_underflow = False


class JackSynthClient(JackMidiInput):
    """MIDI in and audio out on one JACK client (`--audio-api jack-client`): one process callback a cycle.

    With `--audio-api jack` the synth is two JACK clients in one process: PortAudio's (audio) and
    JACK-Client's (MIDI). Both run a Python callback on their own real-time thread every cycle, each must
    take the GIL, and the graph's chain of wake-ups is one client longer. On a host that steals CPU, every
    such step is another chance to miss the cycle. Here the client `neural-synth` owns the MIDI input
    port `neural-synth` and the audio outputs `out_0`/`out_1`; its process callback reads this cycle's
    MIDI, then runs the audio callback (`callback`, sounddevice's signature) and copies the block into
    the output ports.

    Timing follows JACK's convention for synths: an event at offset `o` of this cycle's MIDI buffer sounds
    at frame `o` of the block this cycle writes, so it reaches the output one period after it was sent,
    as with PortAudio (whose callback takes the events of the previous cycle). Events are stamped one
    period back on JACK's frame clock, where `LiveCore` places "one block later". xruns that JACK reports
    are passed to the callback as an output underflow; a server shutdown stops the stream (`active`).
    """

    def __init__(self, queue: collections.deque, callback: Callable, port_patterns: list[str] | None = None,
                 velocity_map: list[int] | None = None, log: Callable[[str], None] | None = None,
                 connect_to: re.Pattern | None = None, poll_seconds: float = 1.0):
        import numpy as np

        super().__init__(queue, port_patterns=port_patterns, velocity_map=velocity_map, log=log,
                         poll_seconds=poll_seconds)
        self.callback = callback
        self.blocksize = self.client.blocksize
        self.outs = [self.client.outports.register(f"out_{i}") for i in range(2)]
        self._out_ptrs = [self._fast.ptr(p) for p in self.outs]
        self.connect_to = connect_to   # from output_pattern(--device)
        # The cycle's start on JACK's frame clock (seconds), read once per cycle by the process callback;
        # LiveCore's reference clock returns it rather than asking JACK a second time.
        self._cycle_s = 0.0
        self.cycle_clock = self._cycle_start
        # Planar: one contiguous row per port; the callback writes its (frames, 2) view.
        self._planar = np.zeros((2, max(self.blocksize, 1) * 4), np.float32)
        self._timing = _Timing()
        self.xruns_reported = 0   # written by JACK's notification thread only
        self._xruns_seen = 0      # written by the process thread only
        self.active = False
        self.shutdown_reason: str | None = None
        self._started = self._closed = False
        self.client.set_process_callback(self._process_all)
        self.client.set_xrun_callback(self._on_xrun)
        self.client.set_shutdown_callback(self._on_shutdown)

    # the stream facade live.main expects from audio_io.AudioOutput
    @property
    def stream(self):
        return self

    @property
    def latency_seconds(self) -> float:
        """Playback latency of our outputs as JACK reports it (the driver's periods), seconds."""
        return max(self._fast.playback_latency(self._out_ptrs[0]), self.blocksize) / self.sample_rate

    def _cycle_start(self) -> float:
        return self._cycle_s

    def time(self) -> float:
        return self._cycle_s

    def _process_all(self, frames: int) -> None:
        # The one real-time Python callback: this cycle's MIDI, then the audio block.
        fast = self._fast
        try:
            events = self._fresh(fast.midi_events(self._port_ptr, frames))
            frame = self._clock.unwrap(fast.last_frame_time())
            sr = self.sample_rate
            self._cycle_s = frame / sr
            if events:
                base = (frame - frames) / sr
                for offset, data in events:
                    self._parser.feed(data, base + offset / sr, 0, self._emit)
            t = self._timing
            # JACK's frames since the cycle began: LiveCore's measure of how late the callback started.
            t.currentTime = (frame + fast.frames_since_cycle_start()) / sr
            n = self.xruns_reported
            t.output_underflow = n != self._xruns_seen
            self._xruns_seen = n
        except Exception:   # never let an exception deactivate the client: LiveCore logs its own
            t = self._timing
        if frames > self._planar.shape[1]:
            import numpy as np

            self._planar = np.zeros((2, frames), np.float32)
        planar = self._planar[:, :frames]
        self.callback(planar.T, frames, t, t)
        fast.write_audio(self._out_ptrs[0], frames, planar[0])
        fast.write_audio(self._out_ptrs[1], frames, planar[1])

    def _on_xrun(self, delay_usecs: float) -> None:
        self.xruns_reported += 1

    def _on_shutdown(self, status, reason: str) -> None:
        self.shutdown_reason = reason or "the server shut down"
        self.active = False

    def start(self) -> None:
        """Activate, connect the outputs (to `connect_to`'s matches, else the physical playback ports),
        then connect MIDI sources and start the hot-plug thread. Called for audio and for MIDI: once."""
        if self._started:
            return
        self._started = True
        self.client.activate()
        self.active = True
        try:
            if self.connect_to is not None:
                dests = [p for p in self.client.get_ports(is_audio=True, is_input=True)
                         if self.connect_to.search(p.name) and not p.name.startswith(CLIENT_NAME + ":")]
            else:
                dests = self.client.get_ports(is_audio=True, is_input=True, is_physical=True)
            if not dests:
                what = f"matches --device {self.connect_to.pattern!r}" if self.connect_to else "is a playback port"
                self.log(f"audio: no JACK audio input {what}; connect {CLIENT_NAME}:out_0/out_1 by hand")
            pairs = list(zip(self.outs, dests[:2], strict=False))
            if len(dests) == 1:
                pairs.append((self.outs[1], dests[0]))
            for src, dst in pairs:
                self._connect_output(src, dst)
        except self._jack.JackError as e:
            self.log(f"audio: cannot connect the outputs ({e}); connect {CLIENT_NAME}:out_0/out_1 by hand")
        self._start_hotplug()

    def _connect_output(self, src, dst, seconds: float = 2.0) -> None:
        """Connect `src` to `dst`, asking again for up to `seconds` while JACK refuses: a busy server
        (in xruns as the synth starts) can answer -1 to a request it accepts a moment later."""
        end = time.monotonic() + seconds
        while True:
            try:
                self.client.connect(src, dst)
                return
            except self._jack.JackError as e:
                if getattr(e, "code", None) == 17:   # EEXIST: already connected
                    return
                if time.monotonic() > end:
                    raise
            time.sleep(0.1)

    def close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        if self.shutdown_reason is not None:
            # The server is gone: only stop our threads; the client's memory goes with the process.
            self._stop.set()
            return True
        super().close()
        self.active = False
        return True


def list_ports(api: str) -> list[str]:
    """Names of MIDI input ports visible through `api` ("alsa" or "jack")."""
    m = _rtmidi().MidiIn(api_id(api), CLIENT_NAME + "-list")
    try:
        return list(m.get_ports())
    finally:
        m.delete()

