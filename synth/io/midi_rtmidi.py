"""MIDI input through python-rtmidi (ALSA sequencer, or rtmidi's JACK API with `--midi-api jack-rtmidi`):
the only module that imports rtmidi, lazily.

`MidiInput` opens a virtual input port `neural-synth` and the wanted existing ports, each on an
rtmidi client of its own, with hot-plug (`synth.io.ports`). rtmidi's thread stamps each message with
the audio stream's clock, parses it and appends it to the queue; nothing else.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from synth.errors import UserError
from synth.io.events import Parser
from synth.io.ports import CLIENT_NAME, VIRTUAL_PORT, MidiSource, PortRefused


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


class MidiInput(MidiSource):
    """The virtual port plus every wanted input port, feeding `queue` with timestamped events.

    `api` is "alsa" or "jack" (rtmidi's JACK API). `clock()` returns seconds on the audio stream's clock;
    each event carries the value read when rtmidi delivered it. `virtual=False`: no virtual port.
    """

    def __init__(self, api: str, queue: collections.deque, clock: Callable[[], float],
                 port_patterns: list[str] | None = None, virtual: bool = True, poll_seconds: float = 1.0,
                 velocity_map: list[int] | None = None, log: Callable[[str], None] | None = None):
        self.api = api
        self._api_id = api_id(api)
        super().__init__(queue, port_patterns=port_patterns, virtual=virtual, poll_seconds=poll_seconds,
                         velocity_map=velocity_map, log=log)
        self.clock = clock
        self._virtual_in = None
        self._scanner = None
        self._next_src = 1

    def _make_callback(self, src: int):
        parser = Parser()
        clock = self.clock
        emit = self.emit

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
        self.start_hotplug()

    # -- the port rule's hooks (synth.io.ports) ---------------------------------------------------------
    def _list_ports(self) -> list[str]:
        return list(self._scanner.get_ports())

    def _take(self, name: str):
        try:
            idx = self._scanner.get_ports().index(name)
        except ValueError:   # gone since the listing
            return None
        src = self._next_src
        self._next_src += 1
        m = self._new_in(f"-in{src}")
        m.set_callback(self._make_callback(src))
        try:
            m.open_port(idx, "in")
        except Exception as e:
            m.delete()
            raise PortRefused(str(e)) from None
        return m

    def _release(self, name: str, handle) -> None:
        _close(handle)

    @property
    def virtual_port(self) -> str | None:
        return f"{CLIENT_NAME}:{VIRTUAL_PORT}" if self._virtual_in is not None else None

    def close(self) -> None:
        self.stop_hotplug()
        for m in (self._virtual_in, self._scanner):
            if m is not None:
                _close(m)
        self._virtual_in = self._scanner = None


def _close(m) -> None:
    try:
        m.cancel_callback()
        m.close_port()
    finally:
        m.delete()


def list_ports(api: str) -> list[str]:
    """Names of MIDI input ports visible through `api` ("alsa" or "jack")."""
    m = _rtmidi().MidiIn(api_id(api), CLIENT_NAME + "-list")
    try:
        return list(m.get_ports())
    finally:
        m.delete()
