"""What flows from a MIDI input to the audio callback.

An event is a tuple `(t_seconds, kind, channel, a, b, source_id)`: `t` on the clock the callback uses
as reference (the audio stream's, or JACK's frame clock), `kind` one of the constants below, `a`/`b`
the note and velocity, the CC number and value, the program, or the bend (-8192..8191) and 0.
`source_id` tells ports apart for de-duplication. Sysex, clock and active sensing never get here.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

NOTE_ON, NOTE_OFF, CC, PROGRAM, BEND, AFTERTOUCH = 0, 1, 2, 3, 4, 5
# Data bytes per status high nibble (0x80..0xE0).
_DATA_LEN = {0x8: 2, 0x9: 2, 0xA: 2, 0xB: 2, 0xC: 1, 0xD: 1, 0xE: 2}


class EventQueue(collections.deque):
    """The MIDI -> audio deque. `append` (the MIDI thread) also counts panic messages (CC 120
    all-sound-off, CC 123 all-notes-off), so the callback reaches them past a flood's backlog."""

    panics = 0

    def append(self, ev) -> None:
        super().append(ev)
        if ev[1] == CC and (ev[3] == 120 or ev[3] == 123):
            self.panics += 1


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
