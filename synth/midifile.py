"""MIDI file -> time-stamped channel events (mido), for offline rendering.

`read_midi(path)` returns a `MidiEvents`: parallel numpy arrays, one entry per channel event, sorted
by time (ties keep file order: track by track, then position in the track). Times are seconds from
the start of the file (float64), converted through the tempo map, which type-1 files may spread
over any track. `MidiEvents.frames(sample_rate)` gives sample frames.

Kept: note on/off (a note-on with velocity 0 is a note-off), control change (sustain, knobs, bank
select CC 0/32, ...), program change and pitch bend, on all 16 channels, and the four system resets
a GM file may start with (`SYSRESET`, `a` = `RESET_GM`, `RESET_GM2`, `RESET_GS` or `RESET_XG`,
channel 0): GM System On (F0 7E <dev> 09 01 F7), GM2 System On (09 03), GS Reset (F0 41 <dev> 42 12
40 00 7F 00 41 F7; GS mode off, data 7F, resets into GM as in FluidSynth) and XG System On (F0 43 1<n> 4C 00 00 7E 00 F7). Dropped: other sysex, aftertouch,
and meta events other than tempo.

Limits, so that a hostile or absurd file is refused clearly instead of eating the machine:
`MAX_FILE_BYTES` (4 MiB; a dense 5-minute piece is about 50 KB) and `MAX_EVENTS` (2,000,000 kept
events); what parsing costs at those limits: docs/decisions-engine.md.
"""

from __future__ import annotations

import io
import os
import stat
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.errors import MidiFileError

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EVENTS = 2_000_000
MAX_TRACKS = 65535

NOTE_ON, NOTE_OFF, CONTROL, PROGRAM, PITCHBEND, SYSRESET = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("note_on", "note_off", "control_change", "program_change", "pitchwheel", "system_reset")
RESET_GM, RESET_GM2, RESET_GS, RESET_XG = 1, 2, 3, 4
DEFAULT_TEMPO = 500_000  # microseconds per quarter note (120 BPM), the SMF default


@dataclass(frozen=True)
class MidiEvents:
    """Channel events of one MIDI file, sorted by time.

    Arrays, all of length E:
      time     float64[E] seconds from the start of the file
      kind     uint8[E]   NOTE_ON, NOTE_OFF, CONTROL, PROGRAM, PITCHBEND or SYSRESET
      channel  uint8[E]   0..15 (0 for SYSRESET)
      a        int16[E]   note, controller, program, pitch bend value (-8192..8191), or the reset (RESET_*)
      b        int16[E]   velocity (1..127 for NOTE_ON, release velocity for NOTE_OFF), CC value, else 0
    `end_time` is the end of the file in seconds (the last event or end-of-track marker).
    """

    path: str
    midi_type: int
    time: np.ndarray
    kind: np.ndarray
    channel: np.ndarray
    a: np.ndarray
    b: np.ndarray
    end_time: float

    def __len__(self) -> int:
        return int(self.time.shape[0])

    def frames(self, sample_rate: int) -> np.ndarray:
        """int64[E]: each event's sample frame at `sample_rate` (rounded to the nearest frame)."""
        return np.rint(self.time * sample_rate).astype(np.int64)

    def end_frame(self, sample_rate: int) -> int:
        return int(round(self.end_time * sample_rate))

    def note_count(self) -> int:
        return int(np.count_nonzero(self.kind == NOTE_ON))

    def as_tuples(self) -> list[tuple[float, str, int, int, int]]:
        """(time s, kind name, channel, a, b) per event: handy for tests and debugging, not for big files."""
        return [(float(t), KIND_NAMES[k], int(c), int(x), int(y))
                for t, k, c, x, y in zip(self.time, self.kind, self.channel, self.a, self.b, strict=True)]


def _check_chunks(data: bytes, where: str) -> tuple[int, int, int]:
    """Walk the chunk structure before mido sees it; return (type, ntracks, division).

    mido trusts the declared lengths, so a truncated or lying file would surface as an odd
    exception deep inside it; checking here gives a message that says what is wrong.
    """
    if len(data) == 0:
        raise MidiFileError(f"{where}: the file is empty; pass a Standard MIDI File (.mid)")
    if data[:4] != b"MThd":
        hint = " (it looks like a RIFF file; unwrap RMID files first)" if data[:4] == b"RIFF" else ""
        raise MidiFileError(f"{where}: not a MIDI file (no 'MThd' header){hint}; pass a Standard MIDI File (.mid)")
    if len(data) < 14:
        raise MidiFileError(f"{where}: truncated MIDI header ({len(data)} bytes); the file is damaged")
    hlen = struct.unpack(">L", data[4:8])[0]
    if hlen < 6 or 8 + hlen > len(data):
        raise MidiFileError(f"{where}: MIDI header declares {hlen} bytes but the file has {len(data) - 8} "
                            f"after it; the file is damaged")
    fmt, ntracks, division = struct.unpack(">HHH", data[8:14])
    if fmt == 2:
        raise MidiFileError(f"{where}: MIDI type 2 (independent sequences) is not supported; "
                            f"convert it to type 1")
    if fmt not in (0, 1):
        raise MidiFileError(f"{where}: unknown MIDI file type {fmt} (expected 0 or 1); the file is damaged")
    if division == 0:
        raise MidiFileError(f"{where}: time division is 0 ticks per quarter note, so no event has a time; "
                            f"the file is damaged")
    if ntracks == 0:
        raise MidiFileError(f"{where}: the MIDI header declares no tracks; nothing to render")
    if fmt == 0 and ntracks != 1:
        raise MidiFileError(f"{where}: a type 0 MIDI file must have exactly 1 track, this one declares "
                            f"{ntracks}; the file is damaged")
    pos, found = 8 + hlen, 0
    while found < ntracks:
        if pos + 8 > len(data):
            raise MidiFileError(f"{where}: truncated: the header declares {ntracks} tracks but the file ends "
                                f"after {found}")
        name, size = struct.unpack(">4sL", data[pos:pos + 8])
        if pos + 8 + size > len(data):
            raise MidiFileError(f"{where}: truncated: chunk {found + 1} declares {size} bytes but only "
                                f"{len(data) - pos - 8} remain")
        if name == b"MTrk":
            found += 1
        pos += 8 + size
    return fmt, ntracks, division


def _read_bytes(p: Path, where: str, max_bytes: int) -> bytes:
    """The file's bytes, refusing folders, pipes and devices and anything over `max_bytes`."""
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise MidiFileError(f"{where}: is a folder, not a MIDI file")
        if not stat.S_ISREG(st.st_mode):
            # A FIFO would block forever and /dev/zero would never end: refuse before opening.
            raise MidiFileError(f"{where}: not a regular file (a pipe, device or socket); save the MIDI data "
                                f"to a .mid file first")
        if st.st_size > max_bytes:
            raise MidiFileError(f"{where}: {st.st_size} bytes is over the {max_bytes}-byte limit for MIDI files "
                                f"(a long dense piece is well under 1 MB); split the file")
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)  # bounded even if the file grows after stat()
        if len(data) > max_bytes:
            raise MidiFileError(f"{where}: over the {max_bytes}-byte limit for MIDI files; split the file")
    except FileNotFoundError:
        raise MidiFileError(f"{where}: no such file; check the path") from None
    except PermissionError:
        raise MidiFileError(f"{where}: permission denied; check the file's permissions") from None
    except OSError as e:
        raise MidiFileError(f"{where}: cannot read ({e.strerror or e})") from None
    return data


def _smpte_seconds_per_tick(division: int, where: str) -> float | None:
    """Seconds per tick of an SMPTE time division (tempo is then ignored); None for ticks per beat."""
    if division & 0x8000:
        # SMPTE division: high byte is -frames per second, low byte ticks per frame; tempo is ignored.
        fps = 256 - (division >> 8)
        tpf = division & 0xFF
        if fps not in (24, 25, 29, 30) or tpf == 0:
            raise MidiFileError(f"{where}: invalid SMPTE time division (fps {fps}, {tpf} ticks per frame); "
                                f"the file is damaged")
        fps_real = 29.97 if fps == 29 else float(fps)
        return 1.0 / (fps_real * tpf)
    return None


def read_midi(path: str | os.PathLike, max_events: int = MAX_EVENTS,
              max_bytes: int = MAX_FILE_BYTES) -> MidiEvents:
    """Parse the MIDI file at `path`. Raises `MidiFileError` (one line naming the file) on bad input."""
    import mido  # lazy: `python -m synth --help` must not pay for it

    where = str(path)
    data = _read_bytes(Path(path), where, max_bytes)
    fmt, ntracks, division = _check_chunks(data, where)
    try:
        mf = mido.MidiFile(file=io.BytesIO(data), clip=True)
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, struct.error) as e:
        msg = str(e) or type(e).__name__
        raise MidiFileError(f"{where}: corrupt MIDI data ({msg}); the file is damaged") from None

    smpte_sec_per_tick = _smpte_seconds_per_tick(division, where)

    ticks, kinds, chans, aa, bb, tempo_ticks, tempos = [], [], [], [], [], [], []
    end_tick = 0
    n_events = 0
    for ti, track in enumerate(mf.tracks):
        tick = 0
        # Compact typed arrays, not lists of Python ints: a million events cost ~14 MB here.
        tk, kd, ch = array("q"), array("B"), array("B")
        va, vb = array("h"), array("h")
        for msg in track:
            tick += msg.time
            t = msg.type
            if t == "note_on":
                if msg.velocity > 0:
                    kd.append(NOTE_ON)
                    vb.append(msg.velocity)
                else:
                    kd.append(NOTE_OFF)
                    vb.append(0)
                va.append(msg.note)
            elif t == "note_off":
                kd.append(NOTE_OFF)
                va.append(msg.note)
                vb.append(msg.velocity)
            elif t == "control_change":
                kd.append(CONTROL)
                va.append(msg.control)
                vb.append(msg.value)
            elif t == "program_change":
                kd.append(PROGRAM)
                va.append(msg.program)
                vb.append(0)
            elif t == "pitchwheel":
                kd.append(PITCHBEND)
                va.append(msg.pitch)
                vb.append(0)
            elif t == "sysex":
                reset = system_reset(msg.data)
                if not reset:
                    continue
                kd.append(SYSRESET)
                va.append(reset)
                vb.append(0)
                tk.append(tick)
                ch.append(0)
                continue
            elif t == "set_tempo":
                tempo_ticks.append(tick)
                tempos.append(msg.tempo)
                continue
            else:
                continue
            tk.append(tick)
            ch.append(msg.channel)
        end_tick = max(end_tick, tick)
        n_events += len(tk)
        if n_events > max_events:
            raise MidiFileError(f"{where}: more than {max_events} channel events; this synth refuses files that "
                                f"large (split the file)")
        ticks.append(np.frombuffer(tk, np.int64).copy() if len(tk) else np.zeros(0, np.int64))
        kinds.append(np.frombuffer(kd, np.uint8).copy() if len(kd) else np.zeros(0, np.uint8))
        chans.append(np.frombuffer(ch, np.uint8).copy() if len(ch) else np.zeros(0, np.uint8))
        aa.append(np.frombuffer(va, np.int16).copy() if len(va) else np.zeros(0, np.int16))
        bb.append(np.frombuffer(vb, np.int16).copy() if len(vb) else np.zeros(0, np.int16))
        del tk, kd, ch, va, vb
        mf.tracks[ti] = None  # free mido's message objects as we go
    del mf

    tick_arr = np.concatenate(ticks) if ticks else np.zeros(0, np.int64)
    order = np.argsort(tick_arr, kind="stable")  # stable: ties keep track order, then file order
    tick_arr = tick_arr[order]
    if smpte_sec_per_tick is not None:
        time = tick_arr * smpte_sec_per_tick
        end_time = end_tick * smpte_sec_per_tick
    else:
        time = _ticks_to_seconds(tick_arr, tempo_ticks, tempos, division)
        end_time = float(_ticks_to_seconds(np.array([end_tick], np.int64), tempo_ticks, tempos, division)[0])
    return MidiEvents(path=where, midi_type=fmt, time=time,
                      kind=np.concatenate(kinds)[order], channel=np.concatenate(chans)[order],
                      a=np.concatenate(aa)[order], b=np.concatenate(bb)[order], end_time=end_time)


def system_reset(data) -> int:
    """RESET_GM, RESET_GM2, RESET_GS or RESET_XG for a system-reset sysex (its bytes without F0/F7, as
    mido's `msg.data`), else 0. Any device ID, as FluidSynth accepts; a GS Reset's checksum is checked."""
    d = tuple(data)
    if len(d) == 4 and d[0] == 0x7E and d[2:] in ((0x09, 0x01), (0x09, 0x03)):
        return RESET_GM if d[3] == 0x01 else RESET_GM2
    if len(d) == 9 and d[0] == 0x41 and d[2:] == (0x42, 0x12, 0x40, 0x00, 0x7F, 0x00, 0x41):
        return RESET_GS
    if len(d) == 9 and d[0] == 0x41 and d[2:] == (0x42, 0x12, 0x40, 0x00, 0x7F, 0x7F, 0x42):
        return RESET_GM       # GS mode off: FluidSynth resets into GM mode
    if len(d) == 7 and d[0] == 0x43 and d[1] & 0xF0 == 0x10 and d[2:] == (0x4C, 0x00, 0x00, 0x7E, 0x00):
        return RESET_XG
    return 0


def _ticks_to_seconds(ticks: np.ndarray, tempo_ticks: list[int], tempos: list[int], tpq: int) -> np.ndarray:
    """float64 seconds for absolute `ticks` under a tempo map gathered from every track."""
    if tempo_ticks:
        tt = np.asarray(tempo_ticks, np.int64)
        tv = np.asarray(tempos, np.float64)
        o = np.argsort(tt, kind="stable")  # a later tempo event at the same tick wins
        tt, tv = tt[o], tv[o]
    else:
        tt, tv = np.zeros(0, np.int64), np.zeros(0)
    # Segment k starts at seg_tick[k] with tempo seg_tempo[k] (us per quarter note).
    seg_tick = np.concatenate([[0], tt]).astype(np.int64)
    seg_tempo = np.concatenate([[DEFAULT_TEMPO], tv])
    sec_per_tick = seg_tempo / 1e6 / tpq
    seg_start = np.concatenate([[0.0], np.cumsum(np.diff(seg_tick) * sec_per_tick[:-1])])
    k = np.searchsorted(seg_tick, ticks, side="right") - 1
    return seg_start[k] + (ticks - seg_tick[k]) * sec_per_tick[k]
