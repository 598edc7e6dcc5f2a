"""The default output level (issue 19 item 5): a solo piano piece at f, rendered with the shipped
piano at the default master gain, lands at -20..-14 LUFS integrated and never above full scale; the
same piece at mf is quieter by its dynamics alone. The level was chosen by `scripts/bench_level.py`
over a set of GM files whose solo piano pieces span 11 dB (p to ff), more than the window: it puts
the f-ff pieces inside and the p-mf ones under (docs/decisions-engine.md, 2026-12-05, 2026-12-07)."""

from __future__ import annotations

import mido
import numpy as np
import pyloudnorm
import soundfile as sf

from synth.preset import find_preset
from synth.render import render_file

SR = 48000
TPQ = 480
# C  Am  F  G: left-hand broken chord (eighths), right-hand melody (quarters) over a chord tone
BARS = [((48, 55, 64), (72, 76, 79, 76)), ((45, 52, 60), (76, 72, 69, 72)),
        ((41, 48, 57), (77, 76, 74, 72)), ((43, 50, 59), (74, 71, 67, 71))]


def piece(path, louder: int = 0) -> None:
    """Eight bars of mf piano (the progression twice) at 96 BPM under the pedal, then a held chord;
    `louder`: added to every velocity (22: f)."""
    ev = [(0, 0, mido.Message("program_change", program=0))]

    def note(t, length, pitch, vel):
        ev.append((t, 2, mido.Message("note_on", note=pitch, velocity=min(127, vel + louder))))
        ev.append((t + length, 1, mido.Message("note_off", note=pitch, velocity=0)))

    for b, (chord, melody) in enumerate(BARS * 2):
        t0 = b * 4 * TPQ
        ev.append((t0 + 5, 0, mido.Message("control_change", control=64, value=0)))
        ev.append((t0 + 30, 0, mido.Message("control_change", control=64, value=127)))
        for i, k in enumerate((0, 1, 2, 1, 0, 1, 2, 1)):
            note(t0 + i * TPQ // 2, TPQ // 2 - 20, chord[k], 66 if i % 4 == 0 else 58)
        for i, p in enumerate(melody):
            note(t0 + i * TPQ, TPQ - 30, p, 80 if i % 2 == 0 else 74)
            note(t0 + i * TPQ, TPQ - 30, chord[2] + 12, 62)
    end = 8 * 4 * TPQ
    for p in (48, 55, 64, 72):
        note(end, 4 * TPQ, p, 70)
    mf = mido.MidiFile(type=0, ticks_per_beat=TPQ)
    tr = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(96), time=0)])
    last = 0
    for t, _, m in sorted(ev, key=lambda e: (e[0], e[1])):
        tr.append(m.copy(time=t - last))
        last = t
    mf.tracks.append(tr)
    mf.save(str(path))


def _lufs(tmp_path, louder: int) -> tuple[float, float]:
    mid, wav = tmp_path / f"p{louder}.mid", tmp_path / f"p{louder}.wav"
    piece(mid, louder)
    render_file(mid, wav, preset="piano", fmt="float", sample_rate=SR, progress=False)
    x, sr = sf.read(str(wav), dtype="float64", always_2d=True)
    return pyloudnorm.Meter(sr).integrated_loudness(x), float(np.abs(x).max())


def test_solo_piano_at_the_default_level_is_minus_20_to_minus_14_lufs(tmp_path):
    assert find_preset("piano").name == "piano"      # the shipped piano, not a stand-in
    f_lufs, f_peak = _lufs(tmp_path, 22)
    assert -20.0 <= f_lufs <= -14.0, f"{f_lufs:.2f} LUFS"
    mf_lufs, mf_peak = _lufs(tmp_path, 0)
    # mf: velocities 22 lower, about 5 dB quieter through the velocity curve, and never inaudibly soft
    assert 3.0 <= f_lufs - mf_lufs <= 7.0 and mf_lufs >= -24.0, (f_lufs, mf_lufs)
    assert max(f_peak, mf_peak) <= 1.0
