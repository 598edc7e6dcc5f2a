"""Render a shipped preset's short demo: `python scripts/make_preset_demo.py presets/NAME`.

Writes `presets/NAME/demo.flac` (about 9 s, 24 kHz, 16-bit, under 500 kB: mono when stereo would be larger), rendered by
`python -m synth render` from a phrase written for the preset's kind and playable range:
- pitched, one-shot (struck/plucked): an arpeggiated I-vi-IV-V progression with a melody on top;
- pitched, looped (sustained): four held chords, each longer than the training notes, so the
  loop is heard, then a slow melody;
- drums: two bars of a GM beat on channel 10 with the kit's kick, snare, hats, toms and a crash;
  with engine knobs, the beat once more with the decay knob closed (tight hits) and the kit tuned
  down, then up.
The MIDI file (`demo.mid` beside it) is written with mido and is the same every run.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import mido

TPQ = 480


def _fit(notes: list[int], lo: int, hi: int) -> list[int]:
    """Transpose by octaves so every note lies in lo..hi (as far as the range allows)."""
    out = []
    for n in notes:
        while n < lo:
            n += 12
        while n > hi:
            n -= 12
        out.append(n)
    return out


def pitched(lo: int, hi: int, held: bool) -> list[tuple[float, float, int, int, int]]:
    """(start beat, beats, channel, note, velocity) events for a pitched preset in lo..hi."""
    centre = max(lo + 12, min(hi - 12, 60))
    root = centre - (centre % 12)                     # a C near the middle of the range
    chords = [[0, 4, 7], [-3, 0, 4], [-7, -3, 0], [-5, -1, 2]]
    ev = []
    if held:
        for i, c in enumerate(chords):
            for n in _fit([root + x for x in c], lo, hi):
                ev.append((i * 4.0, 4.0, 0, n, 70 + 10 * (i % 2)))
        for j, m in enumerate([7, 9, 7, 4, 2, 0]):
            ev.append((16.0 + j * 1.0, 1.0, 0, _fit([root + 12 + m], lo, hi)[0], 90))
        return ev
    for i, c in enumerate(chords):
        arp = _fit([root - 12 + c[0], root + c[1], root + c[2], root + 12 + c[0]], lo, hi)
        for j, n in enumerate(arp + arp[::-1][1:3]):
            ev.append((i * 3.0 + j * 0.5, 0.5, 0, n, 60 + 8 * (j % 3)))
        ev.append((i * 3.0, 1.5, 0, _fit([root + 12 + c[2]], lo, hi)[0], 100))
    ev.append((12.0, 3.0, 0, _fit([root + 12], lo, hi)[0], 110))
    return ev


def drums(keys: list[int]) -> list[tuple[float, float, int, int, int]]:
    def pick(*want: int) -> int | None:
        return next((k for k in want if k in keys), None)

    kick, snare, hat, crash = pick(36, 35), pick(38, 40), pick(42, 44), pick(49, 57)
    toms = [k for k in (50, 48, 47, 45, 43, 41) if k in keys]
    ev = []
    for bar in range(2):
        b = bar * 4.0
        for i in range(8):
            if hat is not None:
                ev.append((b + i * 0.5, 0.25, 9, hat, 70 + 20 * (i % 2 == 0)))
        for t in (0.0, 1.5, 2.5):
            if kick is not None:
                ev.append((b + t, 0.25, 9, kick, 115))
        for t in (1.0, 3.0):
            if snare is not None:
                ev.append((b + t, 0.25, 9, snare, 105))
    for i, k in enumerate(toms[:4]):
        ev.append((8.0 + i * 0.5, 0.25, 9, k, 100))
    for k in (crash, kick):
        if k is not None:
            ev.append((10.0, 2.0, 9, k, 120))
    return ev


def knob_bars(keys: list[int], knobs) -> tuple[list, list]:
    """Two more bars of the beat that show a kit's engine knobs: (note events, (beat, channel, CC,
    value) events). Bar 1 tight (decay knob low) and tuned down 5 semitones, bar 2 tuned up 5."""
    cc = {k.kind: k for k in knobs if k.kind in ("tune", "decay")}
    if not cc:
        return [], []
    beat = [e for e in drums(keys) if e[0] < 4.0]
    notes = [(b + 13.0 + bar * 4.0, d, ch, n, v) for bar in range(2) for b, d, ch, n, v in beat]
    ctl = []
    if "decay" in cc:
        ctl.append((12.5, 9, cc["decay"].cc, 40))
    if "tune" in cc:
        lo, hi = cc["tune"].range
        val = lambda st: max(0, min(127, round((st - lo) / (hi - lo) * 127)))   # noqa: E731
        ctl += [(12.5, 9, cc["tune"].cc, val(-5.0)), (16.75, 9, cc["tune"].cc, val(5.0))]
    return notes, ctl


def write_midi(events, path: Path, bpm: float, controls=()) -> None:
    mid = mido.MidiFile(ticks_per_beat=TPQ)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    msgs = [(0, 0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))]
    for start, ch, number, value in controls:
        msgs.append((round(start * TPQ), 0, mido.Message("control_change", channel=ch, control=number, value=value)))
    for start, beats, ch, note, vel in events:
        on, off = round(start * TPQ), round((start + beats) * TPQ) - 1
        msgs.append((on, 2, mido.Message("note_on", channel=ch, note=note, velocity=vel)))
        msgs.append((off, 1, mido.Message("note_off", channel=ch, note=note, velocity=0)))
    now = 0
    for tick, _, msg in sorted(msgs, key=lambda m: (m[0], m[1])):
        tr.append(msg.copy(time=tick - now))
        now = tick
    mid.save(str(path))


MAX_DEMO_BYTES = 500_000


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python scripts/make_preset_demo.py presets/NAME", file=sys.stderr)
        return 2
    from synth.errors import UserError
    from synth.preset import load_preset_dir

    folder = Path(argv[0])
    try:
        p = load_preset_dir(folder)
    except UserError as e:
        print(f"make_preset_demo: {e}", file=sys.stderr)
        return 2
    controls: list = []
    if p.is_drums:
        events, bpm = drums(sorted(p.drum_classes)), 100.0
        more, controls = knob_bars(sorted(p.drum_classes), p.knobs)
        events += more
    else:
        events, bpm = pitched(p.pitch_range[0], p.pitch_range[1], p.sustain_mode == "loop"), 100.0
    mid = folder / "demo.mid"
    write_midi(events, mid, bpm, controls)
    cmd = [sys.executable, "-m", "synth", "render", str(mid), "-o", str(folder / "demo.flac"), "--preset", p.name,
           "--preset-dir", str(folder.parent), "--sample-rate", str(p.sample_rate), "-q"]
    if p.is_drums:
        cmd += ["--drums", p.name]
    rc = subprocess.call(cmd)
    demo = folder / "demo.flac"
    if rc == 0 and demo.stat().st_size > MAX_DEMO_BYTES:
        # Dense sustained sounds compress less; a mono demo keeps the preset folder within the bar.
        import numpy as np
        import soundfile as sf

        from synth.fsutil import atomic_write_bytes

        audio, sr = sf.read(str(demo), dtype="float32")
        mono = audio.mean(axis=1) if audio.ndim == 2 else audio
        buf = io.BytesIO()
        sf.write(buf, np.clip(mono, -1.0, 1.0), sr, format="FLAC", subtype="PCM_16")
        atomic_write_bytes(demo, buf.getvalue())
        print(f"{demo}: over {MAX_DEMO_BYTES // 1000} kB in stereo, written in mono "
              f"({demo.stat().st_size // 1000} kB)", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
