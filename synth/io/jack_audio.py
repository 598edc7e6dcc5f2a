"""`--audio-api jack-client`: MIDI in and audio out on one JACK client, one process callback a cycle.

The default under JACK is two JACK clients in one process, PortAudio's for audio and ours for MIDI:
two Python callbacks on two real-time threads each cycle, each taking the GIL. Here the client
`neural-synth` owns the MIDI input port `neural-synth` and the audio outputs `out_0`/`out_1`, and one
process callback reads this cycle's MIDI, runs the audio callback and copies the block into the
ports. Why and how it measures: docs/live.md.
"""

from __future__ import annotations

import collections
import re
import time
from collections.abc import Callable

import numpy as np

from synth.errors import UserError
from synth.io.midi_jack import EEXIST, JackMidiInput
from synth.io.ports import CLIENT_NAME


def output_pattern(device: str | None) -> re.Pattern | None:
    """`--device` under `--audio-api jack-client`: a regex for the JACK ports to connect the outputs to."""
    if not device:
        return None
    try:
        return re.compile(device, re.I)
    except re.error as e:
        raise UserError(f"--device {device!r}: bad pattern ({e}); with --audio-api jack-client it names the "
                        "JACK ports to connect the outputs to, e.g. '^system:playback_'") from None


def output_destinations(client, connect_to: re.Pattern | None) -> list[str]:
    """Where `--audio-api jack-client` connects `out_0` and `out_1`: the names of the JACK audio inputs,
    one per output in order (one input takes both; none: nothing is connected). The inputs that match
    `connect_to` (`output_pattern(--device)`), else the physical playback ports. `client` is any
    JACK-Client `Client` of the server: `play` asks with its own, `python -m synth devices` with one it
    opens to predict it."""
    if connect_to is not None:
        dests = [p.name for p in client.get_ports(is_audio=True, is_input=True)
                 if connect_to.search(p.name) and not p.name.startswith(CLIENT_NAME + ":")]
    else:
        dests = [p.name for p in client.get_ports(is_audio=True, is_input=True, is_physical=True)]
    return dests[:2] if len(dests) != 1 else dests * 2


class _Timing:
    """What `LiveCore.callback` reads from sounddevice's `time_info` and `status`, filled by hand."""

    __slots__ = ("currentTime", "outputBufferDacTime", "output_underflow")

    def __init__(self) -> None:
        self.currentTime = 0.0
        self.outputBufferDacTime = 0.0
        self.output_underflow = False


class JackSynthClient(JackMidiInput):
    """The one JACK client: its MIDI input (`JackMidiInput`) plus two audio outputs and the audio callback.

    `callback(outdata: float32[frames, 2], frames, time_info, status)` has sounddevice's signature.
    Timing follows JACK's convention for synths: an event at offset `o` of this cycle's MIDI buffer
    sounds at frame `o` of the block this cycle writes. Events are stamped one period back on JACK's
    frame clock, where `LiveCore` places "one block later". xruns that JACK reports reach the callback
    as an output underflow; a server shutdown stops the stream (`active`). The object is also the
    stream facade `live` expects from `portaudio.AudioOutput` (`stream`, `latency_seconds`, `close`).
    """

    def __init__(self, queue: collections.deque, callback: Callable, port_patterns: list[str] | None = None,
                 virtual: bool = True, velocity_map: list[int] | None = None,
                 log: Callable[[str], None] | None = None, connect_to: re.Pattern | None = None,
                 poll_seconds: float = 1.0):
        super().__init__(queue, port_patterns=port_patterns, virtual=virtual, velocity_map=velocity_map, log=log,
                         poll_seconds=poll_seconds)
        self.callback = callback
        self.blocksize = self.client.blocksize
        self.outs = [self.client.outports.register(f"out_{i}") for i in range(2)]
        self._out_ptrs = [self._fast.ptr(p) for p in self.outs]
        self.connect_to = connect_to   # from output_pattern(--device)
        self.connections: list[str] = []   # "neural-synth:out_0 -> system:playback_1", as made by start()
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

    @property
    def stream(self):
        return self

    # Frames from a key's arrival to its frame in the block the synth writes: none. An event at offset
    # `o` of this cycle's MIDI sounds at frame `o` of this cycle's block (`latency_probe.
    # measure_latency_direct` measures 0 frames inside the graph).
    synth_latency_frames = 0

    def output_latency_frames(self) -> int:
        """JACK's playback latency of our outputs (the larger of the two), frames: what the graph reports
        from the block we write to the speaker, or to whatever the outputs feed (0 for a recorder or
        nothing). It follows the connections. Main thread; not for the process callback."""
        return max(self._fast.playback_latency(p) for p in self._out_ptrs)

    @property
    def latency_seconds(self) -> float:
        """`output_latency_frames` in seconds."""
        return self.output_latency_frames() / self.sample_rate

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
                    self._parser.feed(data, base + offset / sr, 0, self.emit)
            t = self._timing
            # JACK's frames since the cycle began: LiveCore's measure of how late the callback started.
            t.currentTime = (frame + fast.frames_since_cycle_start()) / sr
            n = self.xruns_reported
            t.output_underflow = n != self._xruns_seen
            self._xruns_seen = n
        except Exception:   # never let an exception deactivate the client: LiveCore logs its own
            t = self._timing
        if frames > self._planar.shape[1]:
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
        """Activate, connect the outputs (`output_destinations`), then connect MIDI sources and start the
        hot-plug thread. Called for audio and for MIDI: once."""
        if self._started:
            return
        self._started = True
        self.client.activate()
        self.active = True
        try:
            dests = output_destinations(self.client, self.connect_to)
            if not dests:
                what = f"matches --device {self.connect_to.pattern!r}" if self.connect_to else "is a playback port"
                self.log(f"audio: no JACK audio input {what}; connect {CLIENT_NAME}:out_0/out_1 by hand")
            for src, dst in zip(self.outs, dests, strict=False):
                self._connect_output(src, dst)
                self.connections.append(f"{src.name} -> {dst}")
        except self._jack.JackError as e:
            self.log(f"audio: cannot connect the outputs ({e}); connect {CLIENT_NAME}:out_0/out_1 by hand")
        self.start_hotplug()

    def _connect_output(self, src, dst, seconds: float = 2.0) -> None:
        """Connect `src` to `dst`, asking again for up to `seconds` while JACK refuses: a busy server
        (in xruns as the synth starts) can answer -1 to a request it accepts a moment later."""
        end = time.monotonic() + seconds
        while True:
            try:
                self.client.connect(src, dst)
                return
            except self._jack.JackError as e:
                if getattr(e, "code", None) == EEXIST:
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
