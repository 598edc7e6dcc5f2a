"""Write the piano demo MIDI file (about 28 s): `python scripts/make_demo_midi.py examples/demo.mid`.

A short, deterministic piece for `make demo`: a chord progression in C major with a singing melody
over broken-chord accompaniment, the sustain pedal changed on every chord, a crescendo to the
climax and a quiet close on a rolled chord. Type 1 file: a tempo track (with a ritardando) plus
right- and left-hand tracks on channel 0. Written with mido; the same bytes every run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mido

TPQ = 480
BAR = 4 * TPQ

# Eight bars: (left-hand chord as MIDI notes, melody as (pitch, beats) pairs).
PROGRESSION = [
    ([48, 55, 64], [(72, 1.5), (74, 0.5), (76, 1), (79, 1)]),          # C
    ([45, 52, 60], [(81, 2), (79, 1), (76, 1)]),                        # Am
    ([41, 48, 57], [(77, 1.5), (76, 0.5), (74, 1), (72, 1)]),          # F
    ([43, 50, 59], [(74, 3), (71, 1)]),                                 # G
    ([48, 55, 64], [(72, 1), (76, 1), (79, 1), (84, 1)]),              # C
    ([40, 47, 55], [(83, 1.5), (81, 0.5), (79, 2)]),                    # Em
    ([41, 48, 57], [(81, 1), (77, 1), (74, 1), (77, 1)]),              # F
    ([43, 50, 55, 59], [(79, 2), (77, 1), (74, 1)]),                    # G7-ish
]
ENDING = ([36, 43, 52, 55, 60, 64, 67, 72], 4)  # rolled C major chord, held


def build() -> mido.MidiFile:
    mf = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    tempo, rh, lh = mido.MidiTrack(), mido.MidiTrack(), mido.MidiTrack()
    mf.tracks += [tempo, rh, lh]
    tempo.append(mido.MetaMessage("track_name", name="tempo", time=0))
    tempo.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    rh.append(mido.MetaMessage("track_name", name="right hand", time=0))
    lh.append(mido.MetaMessage("track_name", name="left hand", time=0))
    rh.append(mido.Message("program_change", program=0, channel=0, time=0))

    bars = PROGRESSION + PROGRESSION[4:]  # 12 bars: the second half returns an octave up
    n_bars = len(bars) + 1
    # Tempo: 112 BPM, a slight push at the climax, then a ritardando over the last two bars.
    tempo_map = [(0, 112), (8 * BAR, 116), ((n_bars - 3) * BAR, 106), ((n_bars - 2) * BAR, 94),
                 ((n_bars - 2) * BAR + 2 * TPQ, 82), ((n_bars - 1) * BAR, 70)]
    last = 0
    for tick, bpm in tempo_map:
        tempo.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm), time=tick - last))
        last = tick

    rh_ev: list[tuple[int, int, mido.Message]] = []  # (tick, order, message): note-offs sort first
    lh_ev: list[tuple[int, int, mido.Message]] = []

    def note(ev, tick, length, pitch, vel):
        ev.append((tick, 1, mido.Message("note_on", note=pitch, velocity=vel, channel=0)))
        ev.append((tick + length, 0, mido.Message("note_off", note=pitch, velocity=40, channel=0)))

    for b, (chord, melody) in enumerate(bars):
        t0 = b * BAR
        # Dynamics: p at the start, crescendo to f in bar 9, back to mp.
        base = 48 + int(40 * min(1.0, b / 8)) if b <= 8 else 88 - 10 * (b - 8)
        # Sustain pedal: lift just before the bar line, press again right after it (legato pedalling).
        lh_ev.append((t0 + 10, 2, mido.Message("control_change", control=64, value=0, channel=0)))
        lh_ev.append((t0 + 40, 3, mido.Message("control_change", control=64, value=127, channel=0)))
        # Left hand: broken chord in eighths, bass note accented.
        pattern = [0, 1, 2, 1, 0, 1, 2, 1] if len(chord) == 3 else [0, 1, 2, 3, 0, 1, 2, 3]
        for i, idx in enumerate(pattern):
            v = base - 18 + (10 if i % 4 == 0 else 0)
            note(lh_ev, t0 + i * TPQ // 2, TPQ // 2 - 20, chord[idx], max(20, v))
        # Right hand: the melody, an octave higher the second time through.
        t = t0
        for pitch, beats in melody:
            length = int(beats * TPQ)
            up = 12 if b >= 8 else 0
            note(rh_ev, t, length - 30, pitch + up, min(120, base + 6))
            t += length
    # Ending: a rolled chord under the pedal, left to ring.
    t0 = len(bars) * BAR
    lh_ev.append((t0 + 10, 2, mido.Message("control_change", control=64, value=0, channel=0)))
    lh_ev.append((t0 + 40, 3, mido.Message("control_change", control=64, value=127, channel=0)))
    chord, beats = ENDING
    for i, pitch in enumerate(chord):
        ev = lh_ev if pitch < 60 else rh_ev
        note(ev, t0 + i * 40, beats * TPQ - i * 40, pitch, 50 + i * 2)
    lh_ev.append((t0 + beats * TPQ + TPQ, 2, mido.Message("control_change", control=64, value=0, channel=0)))

    for track, ev in ((rh, rh_ev), (lh, lh_ev)):
        last = 0
        for tick, _, msg in sorted(ev, key=lambda e: (e[0], e[1])):
            track.append(msg.copy(time=tick - last))
            last = tick
    for track in mf.tracks:
        track.append(mido.MetaMessage("end_of_track", time=0))
    return mf


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/make_demo_midi.py OUT.mid", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    mf = build()
    tmp = out.with_name(f".{out.name}.tmp")
    mf.save(str(tmp))
    tmp.replace(out)
    print(f"wrote {out}: {mf.length:.1f} s, {sum(1 for t in mf.tracks for m in t if m.type == 'note_on')} notes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
