"""MIDI file reader: timing through tempo maps (type 0 and 1), event kinds, and bad files."""

from __future__ import annotations

import os
import struct

import mido
import numpy as np
import pytest

from synth.errors import MidiFileError
from synth.midifile import CONTROL, NOTE_OFF, NOTE_ON, PITCHBEND, PROGRAM, read_midi


def _save(mf: mido.MidiFile, path) -> str:
    mf.save(str(path))
    return str(path)


def _type1_with_tempo_changes(path) -> str:
    # Tempo events live in track 0, notes in track 1: the reader must apply them across tracks.
    mf = mido.MidiFile(type=1, ticks_per_beat=480)
    t0, t1 = mido.MidiTrack(), mido.MidiTrack()
    mf.tracks += [t0, t1]
    t0.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))        # 120 BPM
    t0.append(mido.MetaMessage("set_tempo", tempo=250_000, time=960))      # 240 BPM from 1.0 s
    t0.append(mido.MetaMessage("set_tempo", tempo=1_000_000, time=960))    # 60 BPM from 1.5 s
    t1.append(mido.Message("program_change", program=48, channel=2, time=0))
    t1.append(mido.Message("note_on", note=60, velocity=100, channel=2, time=0))
    t1.append(mido.Message("note_off", note=60, velocity=0, channel=2, time=960))   # 1.0 s
    t1.append(mido.Message("note_on", note=62, velocity=90, channel=2, time=480))   # 1.25 s
    t1.append(mido.Message("control_change", control=64, value=127, channel=2, time=0))
    t1.append(mido.Message("pitchwheel", pitch=-8192, channel=2, time=480))         # 1.5 s
    t1.append(mido.Message("note_on", note=62, velocity=0, channel=2, time=480))    # 2.5 s (vel 0 = off)
    return _save(mf, path)


def test_type1_tempo_map_spans_tracks(tmp_path):
    ev = read_midi(_type1_with_tempo_changes(tmp_path / "t1.mid"))
    assert ev.midi_type == 1
    assert ev.as_tuples() == [
        (0.0, "program_change", 2, 48, 0),
        (0.0, "note_on", 2, 60, 100),
        (1.0, "note_off", 2, 60, 0),
        (1.25, "note_on", 2, 62, 90),
        (1.25, "control_change", 2, 64, 127),
        (1.5, "pitchwheel", 2, -8192, 0),
        (2.5, "note_off", 2, 62, 0),
    ]
    assert list(ev.frames(48000)) == [0, 0, 48000, 60000, 60000, 72000, 120000]
    assert ev.end_time == pytest.approx(2.5)
    assert ev.note_count() == 2


def test_type0_tempo_change_mid_track(tmp_path):
    mf = mido.MidiFile(type=0, ticks_per_beat=96)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=600_000, time=0))      # 0.6 s per beat
    tr.append(mido.Message("note_on", note=40, velocity=1, channel=9, time=96))      # 0.6 s
    tr.append(mido.MetaMessage("set_tempo", tempo=300_000, time=48))                 # at 0.9 s
    tr.append(mido.Message("note_off", note=40, channel=9, time=96))                 # 0.9 + 0.3
    tr.append(mido.Message("note_on", note=41, velocity=127, channel=15, time=1))    # one tick later
    tr.append(mido.Message("note_off", note=41, channel=15, time=1))
    ev = read_midi(_save(mf, tmp_path / "t0.mid"))
    assert ev.midi_type == 0
    times = [round(t, 9) for t in ev.time.tolist()]
    tick = 0.3 / 96
    assert times == [0.6, 1.2, round(1.2 + tick, 9), round(1.2 + 2 * tick, 9)]
    assert ev.channel.tolist() == [9, 9, 15, 15]
    assert ev.kind.tolist() == [NOTE_ON, NOTE_OFF, NOTE_ON, NOTE_OFF]


def test_events_keep_file_order_at_equal_times_and_all_kinds(tmp_path):
    mf = mido.MidiFile(type=1, ticks_per_beat=100)
    a, b = mido.MidiTrack(), mido.MidiTrack()
    mf.tracks += [a, b]
    a.append(mido.Message("note_on", note=50, velocity=10, channel=0, time=5))
    b.append(mido.Message("control_change", control=74, value=3, channel=1, time=5))
    b.append(mido.Message("program_change", program=7, channel=1, time=0))
    b.append(mido.Message("pitchwheel", pitch=8191, channel=1, time=0))
    b.append(mido.Message("aftertouch", value=3, channel=1, time=0))     # dropped
    b.append(mido.Message("sysex", data=[1, 2, 3], time=0))              # dropped
    ev = read_midi(_save(mf, tmp_path / "order.mid"))
    assert ev.kind.tolist() == [NOTE_ON, CONTROL, PROGRAM, PITCHBEND]
    assert ev.a.tolist() == [50, 74, 7, 8191]


def test_smpte_division(tmp_path):
    # 25 fps x 40 ticks per frame = 1000 ticks per second.
    mf = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.Message("note_on", note=60, velocity=64, time=1500))
    tr.append(mido.Message("note_off", note=60, time=250))
    path = _save(mf, tmp_path / "smpte.mid")
    data = bytearray(open(path, "rb").read())
    data[12:14] = struct.pack(">bB", -25, 40)
    open(path, "wb").write(bytes(data))
    ev = read_midi(path)
    assert ev.time.tolist() == pytest.approx([1.5, 1.75])


def _good_bytes(tmp_path) -> bytes:
    return open(_type1_with_tempo_changes(tmp_path / "good.mid"), "rb").read()


BAD_CASES = {
    "empty": (lambda g: b"", "empty"),
    "random": (lambda g: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not a MIDI"),
    "text": (lambda g: b"this is a text file, not music\n" * 10, "not a MIDI"),
    "header_only_fragment": (lambda g: g[:10], "truncated"),
    "truncated_track": (lambda g: g[:-7], "truncated"),
    "missing_track": (lambda g: g[:14 + 8 + struct.unpack(">L", g[18:22])[0]], "truncated"),
    "zero_division": (lambda g: g[:12] + b"\x00\x00" + g[14:], "time division is 0"),
    "type2": (lambda g: g[:8] + b"\x00\x02" + g[10:], "type 2"),
    "type7": (lambda g: g[:8] + b"\x00\x07" + g[10:], "unknown MIDI file type"),
    "huge_header": (lambda g: b"MThd" + b"\xff\xff\xff\xff" + g[8:], "header declares"),
    "huge_track_length": (lambda g: g[:18] + b"\x7f\xff\xff\xff" + g[22:], "truncated"),
    "no_tracks": (lambda g: g[:10] + b"\x00\x00" + g[12:14], "no tracks"),
    "bad_status_in_track": (lambda g: g[:14] + b"MTrk\x00\x00\x00\x04\x00\xf4\x00\x00", "corrupt"),
    "running_status_without_status": (lambda g: g[:14] + b"MTrk\x00\x00\x00\x04\x00\x3c\x40\x00", "corrupt"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files_raise_one_line_naming_the_file(tmp_path, case):
    make, expect = BAD_CASES[case]
    data = make(_good_bytes(tmp_path))
    if case in ("bad_status_in_track", "running_status_without_status"):
        data = data[:10] + b"\x00\x01" + data[12:]  # one track, the broken one
    path = tmp_path / f"{case}.mid"
    path.write_bytes(data)
    with pytest.raises(MidiFileError) as ei:
        read_midi(path)
    msg = str(ei.value)
    assert str(path) in msg and expect in msg, msg
    assert "\n" not in msg


def test_missing_file_folder_and_special_files(tmp_path):
    with pytest.raises(MidiFileError, match="no such file"):
        read_midi(tmp_path / "nope.mid")
    with pytest.raises(MidiFileError, match="folder"):
        read_midi(tmp_path)
    fifo = tmp_path / "pipe.mid"
    os.mkfifo(fifo)  # opening it would block forever
    for p in (fifo, "/dev/zero"):  # /dev/zero would never end
        with pytest.raises(MidiFileError, match="not a regular file"):
            read_midi(p)


def test_size_and_event_limits_are_explicit(tmp_path):
    mf = mido.MidiFile(type=0, ticks_per_beat=96)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    for i in range(3000):  # one-tick notes
        tr.append(mido.Message("note_on", note=60 + i % 12, velocity=64, time=1))
        tr.append(mido.Message("note_off", note=60 + i % 12, time=1))
    path = _save(mf, tmp_path / "dense.mid")
    ev = read_midi(path)
    assert len(ev) == 6000 and ev.note_count() == 3000
    assert np.all(np.diff(ev.time) > 0)
    with pytest.raises(MidiFileError, match="more than 5000 channel events"):
        read_midi(path, max_events=5000)
    with pytest.raises(MidiFileError, match="byte limit"):
        read_midi(path, max_bytes=os.path.getsize(path) - 1)
