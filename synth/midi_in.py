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
import re
import sys
import threading
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
                    self.log(f"midi: cannot open {name}: {e}")
                    m.delete()
                    continue
                self._ports[name] = m
                self.log(f"midi: port opened: {name}")

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

    __slots__ = ("_client", "_sr", "_last", "_wraps")

    def __init__(self, client, sample_rate: int):
        self._client = client
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
        return self.unwrap(self._client.last_frame_time) / self._sr


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
        self._clock = FrameClock(self.client, self.sample_rate)
        self.cycle_clock = FrameClock(self.client, self.sample_rate).cycle_start
        self._seen: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._parser = Parser()
        self.client.set_process_callback(self._process)

    def _process(self, frames: int) -> None:
        # JACK process thread: read events, stamp, parse, append. Nothing else.
        events = self.port.incoming_midi_events()
        base = None
        sr = self.sample_rate
        for offset, data in events:
            if base is None:
                if self.clock is None:
                    base = self._clock.unwrap(self.client.last_frame_time) / sr
                else:
                    # Audio is not on JACK: no shared frame clock. The events of this cycle happened during
                    # the last period, so place them one period back on the audio stream's clock.
                    base = self.clock() - frames / sr
            self._parser.feed(bytes(data), base + offset / sr, 0, self._emit)

    def _emit(self, ev: tuple) -> None:
        vmap = self.velocity_map
        if vmap is not None and ev[1] == NOTE_ON:
            ev = (ev[0], NOTE_ON, ev[2], ev[3], vmap[ev[4]], ev[5])
        self.queue.append(ev)

    def start(self) -> None:
        self.client.activate()
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
            self._seen.add(name)
            if not self._wanted(name) or name in mine:
                continue
            try:
                self.client.connect(name, self.port)
                self.log(f"midi: port connected: {name}")
            except self._jack.JackError as e:
                self.log(f"midi: cannot connect {name}: {e}")
        for name in sorted(self._seen - names):
            self._seen.discard(name)
            self.log(f"midi: port gone: {name}")

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


def list_ports(api: str) -> list[str]:
    """Names of MIDI input ports visible through `api` ("alsa" or "jack")."""
    m = _rtmidi().MidiIn(api_id(api), CLIENT_NAME + "-list")
    try:
        return list(m.get_ports())
    finally:
        m.delete()

