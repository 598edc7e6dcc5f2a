"""Write the render benchmark piece: `python scripts/make_bench_midi.py OUT.mid [--minutes 5]`.

A dense, deterministic piano piece in the style of public-domain keyboard music, about 5 minutes
and 6,000 notes by default (the size the render bar in issue 5 is stated for):
  I.   a broken-chord prelude (the pattern of Bach's C major prelude, BWV 846) under the pedal;
  II.  a two-hand sixteenth-note toccata (the texture of the C minor prelude, BWV 847);
  III. a sonata movement over an Alberti bass with scale runs (Mozart's K. 545 texture), pedalled;
  IV.  the toccata again, with an accelerando, a long ritardando and closing chords.
Harmony comes from circle-of-fifths sequences and cadences, voiced with smooth voice leading;
velocities follow phrase-level dynamics with a small seeded humanisation. Tempo changes at every
section and ramps inside them. Type 1 file: tempo track + right hand + left hand on channel 0.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import mido

TPQ = 480
BAR = 4 * TPQ
S16 = TPQ // 4

# Scale-degree progressions (semitones above the tonic, chord quality).
MAJOR = {1: (0, "M"), 2: (2, "m"), 3: (4, "m"), 4: (5, "M"), 5: (7, "M"), 6: (9, "m"), 7: (11, "d")}
MINOR = {1: (0, "m"), 2: (2, "d"), 3: (3, "M"), 4: (5, "m"), 5: (7, "M"), 6: (8, "M"), 7: (11, "d")}
QUAL = {"M": (0, 4, 7), "m": (0, 3, 7), "d": (0, 3, 6), "7": (0, 4, 7, 10)}
PHRASES_MAJOR = [[1, 4, 7, 3, 6, 2, 5, 1], [1, 6, 4, 5, 1, 2, 5, 1], [6, 2, 5, 1, 4, 7, 3, 6],
                 [4, 5, 3, 6, 2, 5, 5, 1]]
PHRASES_MINOR = [[1, 4, 7, 3, 6, 2, 5, 1], [1, 6, 2, 5, 1, 4, 5, 1], [4, 7, 3, 6, 2, 5, 5, 1]]


def chords(key: int, minor: bool, n_bars: int, rng: random.Random) -> list[list[int]]:
    """`n_bars` chords (pitch classes + root first) from phrase templates; V gets a 7th at cadences."""
    table, phrases = (MINOR, PHRASES_MINOR) if minor else (MAJOR, PHRASES_MAJOR)
    out = []
    while len(out) < n_bars:
        for i, deg in enumerate(rng.choice(phrases)):
            off, q = table[deg]
            if deg == 5 and i >= 6:
                q = "7"
            out.append([(key + off + x) % 12 for x in QUAL[q]])
    return out[:n_bars]


def voice(pcs: list[int], prev: list[int] | None, lo: int, n: int) -> list[int]:
    """`n` ascending notes from pitch classes `pcs`, bass = root, upper voices near `prev`."""
    bass = lo + (pcs[0] - lo) % 12
    cands = sorted(p for p in range(bass + 3, bass + 30) if p % 12 in pcs)
    if prev is None:
        upper = cands[:n - 1]
    else:
        upper = []
        for target in prev[1:]:
            best = min((c for c in cands if c not in upper and (not upper or c > upper[-1])),
                       key=lambda c: abs(c - target), default=None)
            upper.append(best if best is not None else (upper[-1] + 12 if upper else cands[0]))
    return [bass] + upper[:n - 1]


class Writer:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.rh: list = []
        self.lh: list = []
        self.tempo: list = []

    def note(self, hand, tick, length, pitch, vel):
        vel = max(1, min(127, int(round(vel + self.rng.uniform(-4, 4)))))
        pitch = max(21, min(108, pitch))
        hand.append((tick, 1, mido.Message("note_on", note=pitch, velocity=vel, channel=0)))
        hand.append((tick + max(1, length), 0, mido.Message("note_off", note=pitch, velocity=0, channel=0)))

    def pedal(self, tick, down: bool):
        self.lh.append((tick, 2 if not down else 3,
                        mido.Message("control_change", control=64, value=127 if down else 0, channel=0)))

    def bpm(self, tick, bpm):
        self.tempo.append((tick, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))

    def ramp(self, t0, t1, bpm0, bpm1):
        """A tempo ramp, one tempo event per beat."""
        beats = max(1, (t1 - t0) // TPQ)
        for i in range(beats):
            self.bpm(t0 + i * TPQ, bpm0 + (bpm1 - bpm0) * i / beats)


def dyn(i: int, n: int, lo: float, hi: float) -> float:
    """Arch-shaped phrase dynamics over bars 0..n-1."""
    x = i / max(1, n - 1)
    return lo + (hi - lo) * (1 - abs(2 * x - 1))


def prelude(w: Writer, t: int, n_bars: int, bpm: float) -> int:
    w.bpm(t, bpm)
    prev = None
    for b, pcs in enumerate(chords(0, False, n_bars, w.rng)):
        v = voice(pcs, prev, 36, 5)
        prev = v
        t0 = t + b * BAR
        w.pedal(t0 + 5, False)
        w.pedal(t0 + 30, True)
        loud = dyn(b, n_bars, 50, 92)
        for half in range(2):
            h0 = t0 + half * 2 * TPQ
            w.note(w.lh, h0, 2 * TPQ - 10, v[0], loud)
            w.note(w.lh, h0 + S16, 2 * TPQ - S16 - 10, v[1], loud - 8)
            for rep in range(2):
                for k, idx in enumerate((2, 3, 4)):
                    tick = h0 + (2 + 3 * rep + k) * S16
                    w.note(w.rh, tick, S16 - 10, v[idx] + 12, loud - 4 + 3 * k)
                    # Octave doubling keeps the texture dense.
                    w.note(w.rh, tick, S16 - 10, v[idx] + 24, loud - 14)
    end = t + n_bars * BAR
    w.ramp(end - BAR, end, bpm, bpm * 0.8)
    w.pedal(end - 10, False)
    return end


def toccata(w: Writer, t: int, n_bars: int, bpm0: float, bpm1: float, key: int = 0) -> int:
    w.ramp(t, t + n_bars * BAR, bpm0, bpm1)
    prev = None
    for b, pcs in enumerate(chords(key, True, n_bars, w.rng)):
        v = voice(pcs, prev, 36, 4)
        prev = v
        t0 = t + b * BAR
        loud = dyn(b % 16, 16, 58, 100)
        rh_fig = [v[3] + 12, v[1] + 12, v[2] + 12, v[1] + 12]
        lh_fig = [v[0], v[2] - 12 if v[2] - 12 > v[0] else v[2], v[1], v[2] - 12 if v[2] - 12 > v[0] else v[2]]
        for beat in range(4):
            for k in range(4):
                tick = t0 + beat * TPQ + k * S16
                up = 12 if beat == 2 else 0
                w.note(w.rh, tick, S16 - 8, rh_fig[k] + up, loud + (6 if k == 0 else 0))
                w.note(w.lh, tick, S16 - 8, lh_fig[k], loud - 10 + (8 if k == 0 else 0))
                if k % 2 == 0:
                    # Inner voice in eighths: a sixth below the figure's top.
                    w.note(w.rh, tick, 2 * S16 - 10, rh_fig[k] + up - 9, loud - 14)
            # Bass octave on each beat.
            w.note(w.lh, t0 + beat * TPQ, TPQ - 20, v[0] - 12, loud - 4)
    return t + n_bars * BAR


def sonata(w: Writer, t: int, n_bars: int, bpm: float) -> int:
    w.bpm(t, bpm)
    prev = None
    scale = [0, 2, 4, 5, 7, 9, 11]
    for b, pcs in enumerate(chords(7 if (t // BAR) % 2 else 0, False, n_bars, w.rng)):
        v = voice(pcs, prev, 48, 3)
        prev = v
        t0 = t + b * BAR
        w.pedal(t0 + 5, False)
        w.pedal(t0 + 30, True)
        loud = dyn(b % 8, 8, 54, 90)
        # Alberti bass: low, high, middle, high in sixteenths.
        for k in range(16):
            w.note(w.lh, t0 + k * S16, S16 - 6, v[(0, 2, 1, 2)[k % 4]], loud - 16 + (6 if k % 4 == 0 else 0))
        top = 72 + pcs[0] % 12
        if b % 4 == 3:
            # Cadence bar: a half-note chord tone and a quarter-note pair.
            w.note(w.rh, t0, 2 * TPQ - 20, top, loud)
            w.note(w.rh, t0 + 2 * TPQ, TPQ - 20, top - 3, loud - 6)
            w.note(w.rh, t0 + 3 * TPQ, TPQ - 20, top - 5, loud - 8)
        elif b % 2 == 0:
            # A sixteenth-note scale run up or down through the chord's key.
            direction = 1 if (b // 2) % 2 == 0 else -1
            deg = 0
            for k in range(16):
                octave, d = divmod(deg, 7)
                pitch = top + 12 * octave + scale[d] - scale[0]
                w.note(w.rh, t0 + k * S16, S16 - 6, pitch, loud + k * 0.8)
                w.note(w.rh, t0 + k * S16, S16 - 6, pitch - (3 if d in (1, 2, 5) else 4), loud - 10 + k * 0.8)
                deg += direction
        else:
            # Melody in eighths on chord tones with neighbour notes.
            for k in range(8):
                pitch = top + (0, 4, 7, 5, 4, 2, 0, -1)[k]
                w.note(w.rh, t0 + k * TPQ // 2, TPQ // 2 - 20, pitch, loud + 4)
                w.note(w.rh, t0 + k * TPQ // 2, TPQ // 2 - 20, pitch - 12, loud - 10)
    end = t + n_bars * BAR
    w.ramp(end - 2 * BAR, end, bpm, bpm * 0.75)
    w.pedal(end - 10, False)
    return end


def closing(w: Writer, t: int) -> int:
    w.bpm(t, 60)
    for i, (lh, rh) in enumerate((([36, 43], [67, 72, 76]), ([41, 48], [65, 72, 77]), ([43, 50], [67, 71, 74, 77]),
                                  ([36, 48], [64, 67, 72, 79]))):
        t0 = t + i * 2 * TPQ
        w.pedal(t0 + 5, False)
        w.pedal(t0 + 30, True)
        length = 2 * TPQ - 20 if i < 3 else 4 * TPQ
        for p in lh:
            w.note(w.lh, t0, length, p, 90 - 8 * i)
        for p in rh:
            w.note(w.rh, t0, length, p, 94 - 8 * i)
    end = t + 3 * 2 * TPQ + 6 * TPQ
    w.pedal(end, False)
    return end


def build(minutes: float = 5.0, seed: int = 1685) -> mido.MidiFile:
    """The piece, scaled so it lasts about `minutes` (section bar counts scale together)."""
    w = Writer(random.Random(seed))
    s = minutes / 5.0
    t = 0
    t = prelude(w, t, max(2, int(27 * s)), 86)
    t = toccata(w, t, max(2, int(46 * s)), 134, 150)
    t = sonata(w, t, max(4, int(54 * s)), 146)
    t = toccata(w, t, max(2, int(28 * s)), 146, 164, key=5)
    w.ramp(t - 4 * BAR, t, 164, 110)
    t = closing(w, t)

    mf = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    names = ("tempo", "right hand", "left hand")
    for name, ev in zip(names, (w.tempo, w.rh, w.lh), strict=True):
        tr = mido.MidiTrack()
        tr.append(mido.MetaMessage("track_name", name=name, time=0))
        if name == "tempo":
            tr.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
        if name == "right hand":
            tr.append(mido.Message("program_change", program=0, channel=0, time=0))
        last = 0
        for tick, _, msg in sorted(ev, key=lambda e: (e[0], e[1])):
            tr.append(msg.copy(time=tick - last))
            last = tick
        tr.append(mido.MetaMessage("end_of_track", time=0))
        mf.tracks.append(tr)
    return mf


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output .mid")
    ap.add_argument("--minutes", type=float, default=5.0, help="approximate length (default 5)")
    ap.add_argument("--seed", type=int, default=1685)
    args = ap.parse_args(argv)
    if not 0.05 <= args.minutes <= 60:
        print("make_bench_midi: --minutes must be 0.05..60", file=sys.stderr)
        return 2
    mf = build(args.minutes, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    mf.save(str(tmp))
    tmp.replace(out)
    n = sum(1 for tr in mf.tracks for m in tr if m.type == "note_on")
    print(f"wrote {out}: {mf.length / 60:.2f} min, {n} notes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
