"""Frame-exact JACK MIDI through JACK-Client (`--midi-api jack`, the default under JACK).

One JACK client `neural-synth` owns the input port `neural-synth:neural-synth`. Wanted MIDI outputs
are connected to it, with hot-plug (`synth.io.ports`); JACK merges them, so a source connected twice
cannot double its notes. The process thread reads the cycle's events, stamps each with its exact
JACK frame, parses it and appends it to the queue; nothing else.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from synth.errors import UserError
from synth.io.events import Parser
from synth.io.libjack import FrameClock, JackFast
from synth.io.ports import CLIENT_NAME, VIRTUAL_PORT, MidiSource, PortRefused, is_own

EEXIST = 17   # JACK's answer to a connection that exists already


def open_client(name: str):
    """A JACK-Client `Client` called `name` on the running server (never starting one), or a `UserError`
    that says how to get one."""
    try:
        import jack
    except (ImportError, OSError) as e:
        raise UserError(f"JACK MIDI needs the JACK-Client package and libjack ({e}); "
                        "`pip install JACK-Client` or use --midi-api jack-rtmidi") from None
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackError as e:
        raise UserError(f"cannot open JACK MIDI ({e}); start a JACK server or use --midi-api alsa") from None


def midi_sources(client) -> list[str]:
    """Every JACK MIDI output port, sorted: the ports the port rule chooses from (`synth.io.ports`).
    `client` is any JACK-Client `Client` of the server."""
    return sorted(p.name for p in client.get_ports(is_midi=True, is_output=True))


class JackMidiInput(MidiSource):
    """JACK MIDI with frame-exact event times.

    Each event is stamped `last_frame_time + offset`, in seconds of JACK's frame clock, so
    `cycle_clock()` (JACK's cycle start, same clock) lets the audio callback place it at its exact
    frame one period later. (rtmidi's JACK API stamps a whole period with one time: docs/live.md.)
    When the audio does not go through JACK, pass `clock` (the audio stream's clock): events are then
    stamped on it, accurate to about a JACK period.
    """

    take_words = ("connect", "connected")
    gone_word = "gone"

    def __init__(self, queue: collections.deque, port_patterns: list[str] | None = None, virtual: bool = True,
                 poll_seconds: float = 1.0, velocity_map: list[int] | None = None,
                 log: Callable[[str], None] | None = None, clock: Callable[[], float] | None = None):
        super().__init__(queue, port_patterns=port_patterns, virtual=virtual, poll_seconds=poll_seconds,
                         velocity_map=velocity_map, log=log)
        self.client = open_client(CLIENT_NAME)
        import jack

        self._jack = jack
        self.api = "jack"
        self.clock = clock   # None: stamp in JACK frames (audio on JACK too); else the audio stream's clock
        self.sample_rate = self.client.samplerate
        self.port = self.client.midi_inports.register(VIRTUAL_PORT)
        self._fast = JackFast(self.client)
        self._port_ptr = self._fast.ptr(self.port)
        self._clock = FrameClock(self._fast.last_frame_time, self.sample_rate)
        # A second clock for the audio thread (each FrameClock belongs to one thread).
        self.cycle_clock = FrameClock(self._fast.last_frame_time, self.sample_rate).cycle_start
        self._connected: set[str] = set()   # connections to our port, as the scan found them
        self._unwanted: set[str] = set()    # --no-virtual: ports whose connection we removed (logged once)
        self._parser = Parser()
        self._prev_events: list = []
        self.stale_cycles = 0   # cycles whose MIDI repeated the previous cycle's (or its first events): dropped
        self.client.set_process_callback(self._process)

    def _fresh(self, events: list) -> list:
        """This cycle's MIDI, or nothing when it repeats the previous cycle's, wholly or its first
        events (the same bytes at the same offsets): a stale buffer, left by a writer that runs after
        us in the cycle (a loop, such as a DAW recording the synth back) and missed a cycle. JACK 2
        hands over such a buffer's first events alone when we ran late (an xrun): seen in the flood
        test, it replayed a flood's note-ons after the panic that followed them. Played, its note-ons
        would sound twice. A real note-on repeated at the same offset one period later (90 Hz and up)
        is not something anyone plays."""
        prev = self._prev_events
        self._prev_events = events
        if events and len(events) <= len(prev) and events == prev[:len(events)]:
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
            self._parser.feed(data, base + offset / sr, 0, self.emit)

    def start(self) -> None:
        self.client.activate()
        self.start_hotplug()

    # -- the port rule's hooks (synth.io.ports) ---------------------------------------------------------
    def _list_ports(self) -> list[str]:
        names = midi_sources(self.client)
        self._connected = {p.name for p in self.client.get_all_connections(self.port)}
        return names

    def _take(self, name: str):
        if name in self._connected:
            return True
        try:
            self.client.connect(name, self.port)
        except self._jack.JackError as e:
            # A busy server can refuse a request (-1 while it is having xruns): not the port's fault.
            if getattr(e, "code", None) != EEXIST:
                raise PortRefused(str(e)) from None
        return True

    def _after_scan(self, present: set[str]) -> None:
        """--no-virtual: our port is the only way in, so it takes no connection from an unwanted port."""
        self._unwanted &= present
        if self.virtual:
            return
        for name in sorted(self._connected - set(self._taken)):
            if self.wanted(name):
                continue
            try:
                self.client.disconnect(name, self.port)
            except self._jack.JackError:
                continue   # gone meanwhile, or a busy server: the next scan looks again
            if name not in self._unwanted:
                self._unwanted.add(name)
                self.log(f"midi: disconnected {name}: --no-virtual takes only the ports --midi-port selects")

    @property
    def external_ports(self) -> list[str]:
        """The ports of other programs connected to our input, sorted: those the scan connected (JACK
        shows a new connection to other clients a cycle or so later) and those connected by hand.
        Never the synth's own ports."""
        try:
            conns = {p.name for p in self.client.get_all_connections(self.port)}
        except self._jack.JackError:
            conns = set()
        with self._lock:
            conns |= set(self._taken)
        return sorted(n for n in conns if not is_own(n))

    @property
    def virtual_port(self) -> str | None:
        return self.port.name if self.virtual else None   # "neural-synth-01:..." when JACK renamed us

    def playback_latency(self, port_name: str) -> int | None:
        """JACK's playback latency of any port of this server (frames from it to the speaker, as the graph
        reports it), or None when there is no such port. Main thread; not for the process callback."""
        ptr = self._fast.port_by_name(port_name)
        return self._fast.playback_latency(ptr) if ptr else None

    def close(self) -> None:
        self.stop_hotplug()
        try:
            self.client.deactivate()
        finally:
            self.client.close()
