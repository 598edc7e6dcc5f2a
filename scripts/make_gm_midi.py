"""Write the General MIDI level set: `python scripts/make_gm_midi.py OUT_DIR`.

The files `scripts/bench_level.py` measures the default output level on, written by code so the set
is the same bytes every run and nothing binary is committed:
  piano-chorale.mid   soft four-part chorale (p to mp), sustained chords under the pedal;
  piano-demo.mid      the `make demo` piece (`make_demo_midi.py`: p, crescendo to f, mp close);
  piano-sonata.mid    Alberti bass under scale runs and melody, pedalled (`make_bench_midi.py`'s
                      sonata texture, mp to f): a typical classical piano texture;
  piano-toccata.mid   loud, dense two-hand sixteenths (`make_bench_midi.py`'s toccata, mf to ff);
  gm-band.mid         drums (channel 10), fingered bass 33, piano 0 and strings 48 at CC7 100/90/110;
  gm-mallets.mid      marimba 12, drawbar organ 16 (no organ preset: it falls back), strings 48 with
                      CC11 swells, drums; CC7 from 80 to 115.
The shipped preset demo `presets/piano/demo.mid` is the seventh file (`bench_level.py` adds it).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import mido

HERE = Path(__file__).resolve().parent
TPQ = 480
BAR = 4 * TPQ


def _track(events: list[tuple[int, int, mido.Message]], name: str) -> mido.MidiTrack:
    """A track from (tick, order, message) events; at one tick, lower `order` first."""
    tr = mido.MidiTrack()
    tr.append(mido.MetaMessage("track_name", name=name, time=0))
    last = 0
    for tick, _, msg in sorted(events, key=lambda e: (e[0], e[1])):
        tr.append(msg.copy(time=tick - last))
        last = tick
    tr.append(mido.MetaMessage("end_of_track", time=0))
    return tr


def _note(ev: list, ch: int, tick: int, length: int, pitch: int, vel: int) -> None:
    ev.append((tick, 2, mido.Message("note_on", channel=ch, note=pitch, velocity=max(1, min(127, vel)))))
    ev.append((tick + length, 0, mido.Message("note_off", channel=ch, note=pitch, velocity=0)))


def _cc(ev: list, ch: int, tick: int, cc: int, value: int) -> None:
    ev.append((tick, 1, mido.Message("control_change", channel=ch, control=cc, value=value)))


def _file(bpm: float, tracks: list[tuple[str, list]]) -> mido.MidiFile:
    mf = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    tempo = [(0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))]
    mf.tracks.append(_track(tempo, "tempo"))
    mf.tracks += [_track(ev, name) for name, ev in tracks]
    return mf


# I  vi  IV  V | I  IV  ii  V | vi  iii  IV  I | ii  V  I  I  (C major, SATB voicings)
CHORALE = [(48, 55, 64, 72), (45, 57, 64, 72), (41, 57, 65, 72), (43, 55, 62, 71),
           (48, 55, 64, 72), (41, 57, 65, 69), (50, 57, 65, 69), (43, 55, 62, 67),
           (45, 57, 64, 69), (40, 55, 64, 67), (41, 53, 60, 69), (48, 55, 64, 67),
           (38, 57, 65, 69), (43, 55, 62, 71), (48, 55, 64, 72), (48, 55, 64, 72)]


def chorale() -> mido.MidiFile:
    """Soft SATB chorale, a chord every half note, pedal changed with each; velocities 40-68."""
    rng = random.Random(7)
    ev: list = [(0, 0, mido.Message("program_change", channel=0, program=0))]
    for rep in range(2):                 # the hymn twice, the second verse a little louder
        for i, chord in enumerate(CHORALE):
            t = (rep * len(CHORALE) + i) * 2 * TPQ
            _cc(ev, 0, t + 5, 64, 0)
            _cc(ev, 0, t + 30, 64, 127)
            swell = 46 + 8 * rep + int(10 * (1 - abs(2 * i / (len(CHORALE) - 1) - 1)))
            for v, pitch in enumerate(chord):
                _note(ev, 0, t, 2 * TPQ - 20, pitch, swell + (6 if v == 3 else 0) + rng.randint(-3, 3))
    end = 2 * len(CHORALE) * 2 * TPQ
    _cc(ev, 0, end + TPQ, 64, 0)
    return _file(72, [("piano", ev)])


def _bench_section(section: str, *args) -> mido.MidiFile:
    """One section of `make_bench_midi.py`'s piece alone (16 bars), ending on a held C, channel 0."""
    sys.path.insert(0, str(HERE))
    import make_bench_midi as mb

    w = mb.Writer(random.Random(1685))
    end = getattr(mb, section)(w, 0, 16, *args)
    w.note(w.lh, end, 2 * TPQ, 36, 80)
    w.note(w.rh, end, 2 * TPQ, 72, 84)
    prog = [(0, 0, mido.Message("program_change", channel=0, program=0))]
    mf = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    mf.tracks += [_track(w.tempo, "tempo"), _track(prog + w.rh, "right hand"), _track(w.lh, "left hand")]
    return mf


def sonata() -> mido.MidiFile:
    """The sonata texture: Alberti bass, scale runs, melody; pedalled; 146 BPM, arch mp-f."""
    return _bench_section("sonata", 146)


def toccata() -> mido.MidiFile:
    """The toccata: two-hand sixteenths with an inner voice and bass octaves; 140-150 BPM, arch mf-ff."""
    return _bench_section("toccata", 140, 150)


def _drums(ev: list, bars: int, vel: int, t0: int = 0) -> None:
    """Rock beat on channel 10: kick 36, snare 38, closed hat 42 in eighths, crash 49 every 4 bars."""
    for b in range(bars):
        t = t0 + b * BAR
        if b % 4 == 0:
            _note(ev, 9, t, TPQ, 49, vel + 4)
        for k in range(8):
            _note(ev, 9, t + k * TPQ // 2, 60, 42, vel - 20 + (10 if k % 2 == 0 else 0))
        for k in (0, 5):
            _note(ev, 9, t + k * TPQ // 2, 120, 36, vel + 6)
        for k in (1, 3):
            _note(ev, 9, t + k * TPQ, 120, 38, vel)


PROG = [(48, (0, 4, 7)), (45, (0, 3, 7)), (41, (0, 4, 7)), (43, (0, 4, 7))]   # C Am F G, roots


def band() -> mido.MidiFile:
    """Drums, fingered bass (33), piano comping (0) and a string pad (48): 16 bars at 112 BPM."""
    dr, bass, pno, st = [], [], [], []
    for ev, ch, prog, vol in ((bass, 1, 33, 100), (pno, 0, 0, 90), (st, 2, 48, 110), (dr, 9, 0, 100)):
        ev.append((0, 0, mido.Message("program_change", channel=ch, program=prog)))
        _cc(ev, ch, 0, 7, vol)
    _cc(pno, 0, 0, 10, 48)
    _cc(st, 2, 0, 10, 80)
    _drums(dr, 16, 96)
    for b in range(16):
        root, q = PROG[b % 4]
        t = b * BAR
        for k, off in enumerate((0, 0, 7, 12, 0, 0, 7, 10)):
            _note(bass, 1, t + k * TPQ // 2, TPQ // 2 - 30, root - 12 + off, 92 if k % 4 == 0 else 80)
        for beat in (0, 1.5, 2, 3.5):
            for p in q:
                _note(pno, 0, t + int(beat * TPQ), TPQ // 2, root + 12 + p, 76)
        for p in q:
            _note(st, 2, t, BAR - 10, root + 12 + p, 70)
        _note(st, 2, t, BAR - 10, root + 24, 74)
    return _file(112, [("piano", pno), ("bass", bass), ("strings", st), ("drums", dr)])


def mallets() -> mido.MidiFile:
    """Marimba (12) melody, drawbar organ (16) chords, strings (48) with CC11 swells, drums: 16 bars."""
    mar, org, st, dr = [], [], [], []
    for ev, ch, prog, vol in ((mar, 3, 12, 115), (org, 4, 16, 80), (st, 2, 48, 100), (dr, 9, 0, 90)):
        ev.append((0, 0, mido.Message("program_change", channel=ch, program=prog)))
        _cc(ev, ch, 0, 7, vol)
    _drums(dr, 16, 84)
    melody = (0, 4, 7, 12, 11, 7, 4, 2, 0, 2, 4, 7, 9, 7, 4, 0)
    for b in range(16):
        root, q = PROG[b % 4]
        t = b * BAR
        for k in range(16):
            p = root + 24 + q[k % 3] + (12 if k % 8 >= 4 else 0)
            pitch = p if k % 2 else root + 24 + melody[k]
            _note(mar, 3, t + k * TPQ // 4, TPQ // 4, pitch, 88 + (12 if k % 4 == 0 else 0))
        for p in q:
            _note(org, 4, t, BAR - 10, root + p, 80)
            _note(st, 2, t, BAR - 10, root + 12 + p, 84)
        for s in range(8):                       # a swell each bar: expression 60 → 127 → 60
            _cc(st, 2, t + s * TPQ // 2, 11, 60 + int(67 * (1 - abs(s - 4) / 4)))
    return _file(100, [("marimba", mar), ("organ", org), ("strings", st), ("drums", dr)])


def demo() -> mido.MidiFile:
    """The `make demo` piece (`make_demo_midi.py`), as it is."""
    sys.path.insert(0, str(HERE))
    import make_demo_midi

    return make_demo_midi.build()


PIECES = {"piano-chorale": chorale, "piano-demo": demo, "piano-sonata": sonata,
          "piano-toccata": toccata,
          "gm-band": band, "gm-mallets": mallets}


def write_all(out_dir) -> list[Path]:
    """Write every piece to `out_dir` (created); returns the paths, in PIECES order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in PIECES.items():
        path = out / f"{name}.mid"
        build().save(str(path))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/make_gm_midi.py OUT_DIR", file=sys.stderr)
        return 2
    for p in write_all(argv[0]):
        mf = mido.MidiFile(str(p))
        n = sum(1 for t in mf.tracks for m in t if m.type == "note_on")
        print(f"wrote {p}: {mf.length:.1f} s, {n} notes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
