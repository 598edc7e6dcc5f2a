"""The low-level JACK layer: libjack called directly through ctypes.

- `jack_server_info()`: is a JACK server up, at which rate and period; never starts one and needs
  neither PortAudio nor JACK-Client.
- `JackFast`: the libjack calls a process callback makes every cycle, through `ctypes.PyDLL`, which
  keeps the GIL (docs/decisions-live.md, 2026-12-04).
- `FrameClock`: JACK's 32-bit frame counter unwrapped to 64 bits, as seconds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from typing import Any

from synth.errors import UserError

# Strings and callbacks handed to C must outlive the call that stores the pointer.
_keepalive: list[Any] = []


def jack_server_running() -> bool:
    """True when a JACK server (the one `JACK_DEFAULT_SERVER` names, or the default) accepts clients."""
    return jack_server_info() is not None


def jack_server_info() -> tuple[int, int] | None:
    """(sample rate Hz, period frames) of the running JACK server, or None when none runs.

    Uses libjack through ctypes with `JackNoStartServer`, so it never starts a server itself and works
    without PortAudio or the JACK-Client package. None when libjack is not installed.
    """
    path = ctypes.util.find_library("jack")
    if not path:
        return None
    try:
        lib = ctypes.CDLL(path)
    except OSError:
        return None
    lib.jack_client_open.restype = ctypes.c_void_p
    lib.jack_client_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.jack_client_close.argtypes = [ctypes.c_void_p]
    # libjack prints "Cannot connect to server socket" on stderr when none runs; silence it.
    lib.jack_set_error_function.argtypes = [ctypes.c_void_p]
    lib.jack_set_info_function.argtypes = [ctypes.c_void_p]
    silent = ctypes.CFUNCTYPE(None, ctypes.c_char_p)(lambda msg: None)
    _keepalive.append(silent)
    lib.jack_set_error_function(ctypes.cast(silent, ctypes.c_void_p))
    lib.jack_set_info_function(ctypes.cast(silent, ctypes.c_void_p))
    status = ctypes.c_int(0)
    jack_no_start_server = 0x01
    for _ in range(3):
        # With no server, the open fails at once (nothing listens on its socket). A server that exists
        # but did not answer within its client timeout (a loaded machine) fails slowly: ask again
        # rather than decide that there is no JACK.
        t0 = time.monotonic()
        client = lib.jack_client_open(b"neural-synth-probe", jack_no_start_server, ctypes.byref(status))
        if client or time.monotonic() - t0 < 0.25:
            break
    if not client:
        return None
    lib.jack_get_sample_rate.argtypes = [ctypes.c_void_p]
    lib.jack_get_buffer_size.argtypes = [ctypes.c_void_p]
    info = (int(lib.jack_get_sample_rate(client)), int(lib.jack_get_buffer_size(client)))
    lib.jack_client_close(client)
    return info


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

    JACK-Client (cffi) releases the GIL around every C call, several per port access, and each release
    lets another thread take the GIL while the real-time thread then waits for it. These calls only read
    shared memory, so holding the GIL through them costs nothing. Same library and handles as
    JACK-Client: the pointers come from its objects."""

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
        self._by_name = lib.jack_port_by_name
        self._by_name.argtypes, self._by_name.restype = [vp, ctypes.c_char_p], vp
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

    def port_by_name(self, name: str) -> int:
        """The C pointer of the port called `name` (any client's), 0 when there is none. Not per cycle."""
        return self._by_name(self.client, name.encode()) or 0

    def playback_latency(self, port: int) -> int:
        """Frames from this port to the speaker, as the graph reports it (the upper bound; 0 for an
        output that feeds nothing)."""
        rng = (ctypes.c_uint32 * 2)()
        self._latency_range(port, 1, rng)   # 1: JackPlaybackLatency
        return int(rng[1])

    def write_audio(self, port: int, frames: int, src) -> None:
        """Copy float32 contiguous `src` (`frames` long) into audio output port `port`."""
        buf = self._get_buffer(port, frames)
        if buf:
            self._memmove(buf, src.ctypes.data, 4 * frames)
