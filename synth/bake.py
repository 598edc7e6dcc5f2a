"""`python -m synth bake --preset NAME -o OUT.sf2|OUT.sfz`: a preset as a sampler instrument.

Every key of the preset's range (every kit key) is generated at every velocity layer, at the knob
state of `--knob` (the preset's defaults otherwise), and written as a SoundFont 2 bank or as an SFZ
file with a folder of FLAC samples, so any sampler or DAW plays the preset without this engine.
`--all` bakes every installed preset into one General MIDI bank (`synth.gm` routing). A family
preset (manifest `timbres`) bakes one SF2 preset per timbre at its GM program (`place_timbres`; SFZ: one
file per timbre), or only `--timbre NAME`.

What a baked note is, and why (details and measurements: docs/bake.md):
- The generated note at the preset's own sample rate (`--sample-rate` resamples, as the engine
  does): the model has nothing above its Nyquist, a sampler resamples per key anyway, and it halves
  the file against 48 kHz (the piano: 127 MB at 24 bits instead of 254). A sampler's interpolation
  leaves images above the preset's Nyquist, 40-70 dB down, that a 48 kHz bake avoids. 24 bits by
  default (SF2 sm24): at 16 the model's quietest notes (the top octave, 20-40 dB under full scale)
  carry audible-in-measurement quantisation noise. The engine's decay knob, the preset's gain and,
  for loop-mode presets, the engine's loop (`synth.worker.make_loop`: whole pitch periods,
  crossfaded 50 ms into the note, ending at `sustain.loop_end_seconds`) are baked in; a looped
  sample ends 8 samples after its loop.
- Release: the engine's own. Both fall linearly in dB from the note-off, 100 dB in the release's
  span (SF2 releaseVolEnv, SFZ ampeg_release = `synth.engine.release_span`: 10/3 x the preset's
  release_seconds, the time to fall 30 dB), so `release_envelope_seconds` is that span.
- Velocity: each velocity 1..127 plays the nearest layer (ties to the louder), at the engine's gain
  (v/127)^curve / (layer/127)^curve. Each layer's sample is stored at the gain of the top velocity of
  its range, and the velocities below attenuate it (SF2: one preset zone per velocity with a
  velocity modulator onto initialAttenuation; SFZ: amp_velcurve_N points), so a note at a layer's
  own velocity plays exactly the generated note. The SoundFont default modulators (velocity →
  attenuation, velocity → filter cutoff) are overridden with amount 0, so no second curve applies.
- Keys outside a pitched preset's range play its first or last key transposed, as the engine does;
  every zone is panned by key with the engine's spread; kit hits play out (SF2: the longest release;
  SFZ: one_shot), as on the engine's channel 10.
- `ring_tail` appends the engine's ringing continuation (`synth.ring`, issue 19) to each note of a
  preset whose notes ring; those bake 6 s of it by default, then a loop of whole periods that the
  volume envelope keeps decaying at the note's measured rate (`--max-seconds full`: whole rings).
  `--max-seconds` caps a sample, and `--loop-tail` ends a one-shot sample in such a loop.

Output is written to a temporary file beside OUT and renamed at the end (SFZ: the sample folder too):
a bad preset, knob or path, or a full disk, leaves nothing behind and exits 2 with one line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synth.errors import OneLineParser, UserError

SUFFIXES = (".sf2", ".sfz")
LOOP_GUARD = 8                 # samples kept after a loop end, copied from after the loop start
FADE_S = 0.01                  # fade at a capped sample's end, so it does not click
TAIL_WINDOW_S = 0.5            # --loop-tail: the decay is measured and the loop found in this last stretch
RING_CAP_S = 6.0               # a ringing preset's samples by default: 6 s, then a looped tail that keeps decaying
ENV_DB = 100.0                 # SoundFont envelopes: a decay/release time is the time for 100 dB
DRUM_RELEASE_S = 100.0         # kit hits play out: the longest release SoundFont has (8000 timecents)
PAN_SPREAD = 0.6               # the engine's default constant-power pan spread by key (Engine.pan_spread)



def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m synth bake", description=(
        "Bake a preset into a SoundFont 2 bank (.sf2) or an SFZ instrument (.sfz + a folder of FLAC "
        "samples): every key at every velocity layer, playable by any sampler or DAW."))
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", metavar="NAME", help="the preset to bake (`python -m synth presets`)")
    which.add_argument("--all", action="store_true",
                       help="every installed preset into one General MIDI bank (.sf2 only)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.sf2", help="output file: .sf2 or .sfz")
    p.add_argument("--knob", action="append", default=[], metavar="CC=V",
                   help="knob position as in `render --knob`: 74=0.3 (fraction), 74=30%% or 74=38 (CC value); "
                        "repeatable")
    p.add_argument("--timbre", metavar="NAME", help="a family preset's timbre (its manifest's `timbres`)")
    p.add_argument("--velocity-layers", metavar="N", help="velocity layers to bake (default: the preset's)")
    p.add_argument("--bits", default="24", choices=["16", "24"],
                   help="sample resolution (default 24, the SF2 sm24 chunk; 16 is a third smaller, and its "
                        "quantisation noise shows on the quietest samples)")
    p.add_argument("--sample-rate", metavar="HZ",
                   help="resample the notes to HZ (soxr, as the engine does; default: the preset's own rate)")
    p.add_argument("--max-seconds", metavar="S|full",
                   help=f"cap every sample at S seconds (default: the whole note; for a preset whose notes ring "
                        f"on, {RING_CAP_S:g} s with --loop-tail; `full`: the whole ring, up to 40 s a sample)")
    p.add_argument("--loop-tail", action="store_true",
                   help="end one-shot samples in a loop that the envelope keeps decaying (long notes, small files)")
    p.add_argument("--preset-dir", action="append", default=[], metavar="DIR",
                   help="extra folder of presets (repeatable; also SYNTH_PRESET_PATH)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line")
    return p


# ---- what gets baked ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layer:
    """A velocity layer: the model's `velocity` (MIDI 1..127), playing MIDI velocities lo..hi."""

    velocity: int
    lo: int
    hi: int


@dataclass
class BakedNote:
    """One sample: `audio` float32 at the bake's rate, stored at the gain of velocity `layer.hi`;
    `loop` (start, end) in samples, end exclusive; `hold_s`/`decay_db_s`: the envelope that carries on
    a looped tail's decay (None when the sample is not a tail loop)."""

    key: int
    layer: Layer
    audio: np.ndarray
    loop: tuple[int, int] | None = None
    hold_s: float | None = None
    decay_db_s: float | None = None


@dataclass
class BakedPreset:
    preset: object                 # synth.preset.Preset
    label: str                     # instrument name: the preset, or preset/timbre
    knobkey: tuple
    tune: float                    # semitones from the tune knob (drum kits)
    layers: list[Layer]
    notes: list[BakedNote]
    spans: dict[int, tuple[int, int]]   # key -> (lokey, hikey) it plays
    bad_notes: int = 0
    timbre: str | None = None
    rate: int = 0                 # Hz of the samples
    notes_s: float = 0.0          # seconds spent generating


@dataclass
class BakeOptions:
    knobs: list[tuple[int, int]] = field(default_factory=list)
    timbre: str | None = None
    velocity_layers: int | None = None
    bits: int = 24
    sample_rate: int | None = None
    max_seconds: float | None = None
    loop_tail: bool = False


def plan_layers(preset, n: int | None = None) -> list[Layer]:
    """The velocity layers to bake and the velocities each plays: the nearest layer, ties to the louder
    one (`Engine._vlayer`). Unconditioned presets have one layer (the model ignores velocity)."""
    if not preset.velocity_conditioned:
        vels = [preset.velocity_layers[-1]]
    elif n is None or n == len(preset.velocity_layers):
        vels = list(preset.velocity_layers)
    else:
        vels = sorted({max(1, round(127 * i / n)) for i in range(1, n + 1)})
    owner = [min(vels, key=lambda v, vel=vel: (abs(v - vel), -v)) for vel in range(128)]
    return [Layer(v, min(i for i in range(1, 128) if owner[i] == v), max(i for i in range(1, 128) if owner[i] == v))
            for v in vels]


def bridge_gain(preset, velocity: int, layer: int) -> float:
    """The engine's gain for `velocity` played from `layer`: (v/127)^curve, divided by the layer's own
    (layer/127)^curve when the model is velocity-conditioned (it already plays the layer's loudness)."""
    g = (velocity / 127.0) ** preset.velocity_curve
    if preset.velocity_conditioned:
        g /= (layer / 127.0) ** preset.velocity_curve
    return g


def key_spans(preset) -> dict[int, tuple[int, int]]:
    """key -> the MIDI keys its sample plays: a kit key itself; a pitched preset's keys, the first and
    last stretched to 0 and 127 (the engine plays notes outside the range from the nearest key)."""
    keys = preset.playable_keys()
    if preset.is_drums:
        return {k: (k, k) for k in keys}
    return {k: (0 if k == keys[0] else k, 127 if k == keys[-1] else k) for k in keys}


def pan_of(key: int) -> float:
    """The engine's pan position for `key`, -1 (left) .. 1 (right) (`Engine._pan_calc`)."""
    pos = min(1.0, max(0.0, 0.5 + PAN_SPREAD * (key - 64) / 128.0))
    return 2.0 * pos - 1.0


def release_envelope_seconds(release_s: float) -> float:
    """The sampler release time (SF2 releaseVolEnv, SFZ ampeg_release: ENV_DB in that time, linear in
    dB) of a preset whose release_seconds is `release_s`: exactly the engine's release, which falls
    linearly in dB, 30 dB in `release_s` and 100 dB, where its voice ends, in `release_span`."""
    from synth.engine import release_span

    return release_span(release_s)


def timbre_latent(preset, name: str) -> np.ndarray:
    """The latent point of timbre `name` (a one-line error when the preset has no such timbre)."""
    where = preset.path / "preset.json"
    if not preset.timbres:
        raise UserError(f"{where}: preset {preset.name!r} has no timbres (only family presets do); drop --timbre")
    names = [t.name for t in preset.timbres]
    if name not in names:
        raise UserError(f"{where}: preset {preset.name!r} has no timbre {name!r}; its timbres: "
                        + ", ".join(names))
    return np.asarray(preset.timbres[names.index(name)].latent, np.float32)


def timbre_program(preset, t) -> int:
    """The GM program a timbre is placed at: its own `program`, else the preset's (`gm.preset_program`),
    else 0."""
    from synth import gm

    if t.program is not None:
        return t.program
    own = gm.preset_program(preset)
    return 0 if own is None else own


def place_timbres(families, reserved=()) -> list[tuple[int, int, object, object]]:
    """SF2 slots of family presets' timbres: [(bank, program, preset, timbre)], deterministic.

    Presets in the order given, timbres in manifest order. A timbre goes to bank 0 at its program
    (`timbre_program`; a drum-kit timbre, source bank 128, to bank 128) unless that slot is already
    held by an earlier timbre or is in `reserved`; then to its own source `bank` when that is 1..127
    and free at the program, else to the lowest free bank 1, 2, ... (skipping 128)."""
    used = set(reserved)
    out = []
    for p in families:
        for t in p.timbres:
            prog = timbre_program(p, t)
            first = 128 if t.bank == 128 else 0
            if (first, prog) in used:
                first = t.bank if t.bank is not None and 1 <= t.bank <= 127 and (t.bank, prog) not in used else None
                if first is None:
                    first = next((b for b in range(1, 128) if (b, prog) not in used), None)
            if first is None:
                print(f"synth bake: skipped timbre {p.name}/{t.name}: every bank of program {prog} is taken",
                      file=sys.stderr)
                continue
            used.add((first, prog))
            out.append((first, prog, p, t))
    return out


def knob_state(preset, mapper, knobs: list[tuple[int, int]], strict: bool) -> tuple:
    """The knob state after `--knob` moves; with `strict`, a CC the preset has no knob on is an error."""
    key = mapper.default_key
    for cc, v in knobs:
        if mapper.knob_for_cc(cc) is None:
            if strict:
                from synth.render import check_knobs

                check_knobs([(cc, v)], [preset])   # raises: the same message as render's and play's
            continue
        key = mapper.with_cc(key, cc, v)
    return key


# ---- making the samples -------------------------------------------------------------------------------
def ring_tail(x: np.ndarray, preset, key: int) -> np.ndarray:
    """The note with its ringing continuation (synth.ring; issue 19): for a preset whose notes ring
    on (a pitched one-shot trained with a note-off), the generated note up to its seam, crossfaded
    into damped partials fitted to its late decay, until they are 80 dB under its peak, so a baked
    sample rings as long as the engine plays the note (`--max-seconds` then caps it); any other
    note as it is. Made at the model's rate, before the resampling."""
    from synth import ring

    off = ring.ring_off(preset)
    if off is None:
        return x
    try:
        y = ring.continuation(x, preset.sample_rate, off)
    except ValueError:
        return x            # too short to analyse: as generated
    return y


def _fade_end(x: np.ndarray, rate: int) -> None:
    n = min(len(x), max(1, int(FADE_S * rate)))
    x[len(x) - n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)


def decay_rate_db_s(x: np.ndarray, rate: int) -> float:
    """How fast `x` falls, dB/s (>= 0): the least-squares slope of its 10-ms RMS levels within 60 dB
    of its loudest frame."""
    h = max(1, rate // 100)
    m = len(x) // h
    if m < 4:
        return 0.0
    lev = 10.0 * np.log10(np.maximum(np.mean(x[:m * h].astype(np.float64).reshape(m, h) ** 2, axis=1), 1e-20))
    ok = lev > lev.max() - 60.0
    if ok.sum() < 4:
        return 0.0
    t = np.arange(m)[ok] * h / rate
    slope = np.polyfit(t, lev[ok], 1)[0]
    return float(max(0.0, -slope))


def loop_tail(x: np.ndarray, rate: int, key: int) -> tuple[tuple[int, int], float, float] | None:
    """End one-shot note `x` (modified in place) in a loop for the envelope to keep decaying:
    ((loop start, end), envelope hold in s, decay in dB/s), or None when no loop fits.

    The last TAIL_WINDOW_S is levelled (its measured decay divided out) and a loop of whole periods
    is made at its end (`make_loop`); the envelope holds until the levelled stretch begins and then
    falls at the measured rate, so the sample and envelope together continue the note's decay."""
    from synth.worker import make_loop

    n = len(x)
    w = min(n // 2, int(TAIL_WINDOW_S * rate))
    if w < 256:
        return None
    seg = x[n - w:]
    decay = decay_rate_db_s(seg, rate)
    seg *= (10.0 ** (decay * np.arange(w) / rate / 20.0)).astype(np.float32)
    loop = make_loop(seg, rate, key, end_seconds=w / rate)
    if loop is None:
        seg /= (10.0 ** (decay * np.arange(w) / rate / 20.0)).astype(np.float32)
        return None
    return (n - w + int(loop[0]), n - w + int(loop[1])), (n - w) / rate, decay


def shape_note(x: np.ndarray, preset, key: int, layer: Layer, knobkey: tuple, mapper, opts: BakeOptions,
               rate: int) -> BakedNote:
    """Generated note → the sample a zone plays at `rate` Hz (before the layer's velocity gain), in the
    engine's order: ring tail, resampling (soxr HQ), decay knob, preset gain, then the loop, or the cap
    and the looped tail."""
    from synth.worker import make_loop

    x = ring_tail(np.array(x, np.float32), preset, key)
    if rate != preset.sample_rate:
        import soxr

        x = soxr.resample(x, preset.sample_rate, rate, quality="HQ").astype(np.float32)
    env = mapper.decay_envelope(knobkey, len(x), rate)
    if env is not None:
        x *= env
    if preset.gain_db:
        x *= np.float32(10.0 ** (preset.gain_db / 20.0))
    cap_s, tail_loop = opts.max_seconds, opts.loop_tail
    if cap_s is None and len(x) > RING_CAP_S * rate:     # a ringing note, uncapped by the user
        cap_s, tail_loop = RING_CAP_S, True
    cap = None if not cap_s else max(4 * LOOP_GUARD, int(cap_s * rate))
    pitched = not preset.is_drums
    if preset.sustain_mode == "loop" and pitched:
        end_s = preset.loop_end_seconds
        if cap is not None:
            end_s = min(end_s if end_s is not None else 0.85 * len(x) / rate, (cap - LOOP_GUARD) / rate)
        loop = make_loop(x, rate, key, end_s)
        if loop is not None:
            return _looped(BakedNote(key, layer, x), x, int(loop[0]), int(loop[1]))
    capped = cap is not None and cap < len(x)
    if capped:
        x = x[:cap].copy()
    note = BakedNote(key, layer, x)
    if tail_loop and pitched:
        tail = loop_tail(x, rate, key)
        if tail is not None:
            (s, e), note.hold_s, note.decay_db_s = tail
            return _looped(note, x, s, e)
    if capped:
        _fade_end(x, rate)
    return note


def _looped(note: BakedNote, x: np.ndarray, s: int, e: int) -> BakedNote:
    """Keep `x` up to LOOP_GUARD samples past its loop [s, e); those repeat the loop's start, which a
    sampler interpolating across the seam reads."""
    y = x[:e + LOOP_GUARD].copy()
    y[e:] = x[s:s + len(y) - e]
    note.audio, note.loop = y, (s, e)
    return note


def bake_preset(preset, opts: BakeOptions, strict_knobs: bool = True, threads: int | None = None,
                timbre: str | None = None) -> BakedPreset:
    """Generate and shape every sample of `preset` (see the module docstring), at `timbre`'s latent
    point (default: `opts.timbre`) plus the knob offsets."""
    from synth.inference import GeneratorSession
    from synth.latent import LatentMapper, level_gain

    t0 = time.perf_counter()
    mapper = LatentMapper(preset)
    knobkey = knob_state(preset, mapper, opts.knobs, strict_knobs)
    timbre = opts.timbre if timbre is None else timbre
    if timbre is not None:
        timbre_latent(preset, timbre)    # a one-line error for an unknown timbre
        t = [tb.name for tb in preset.timbres].index(timbre)
        knobkey = mapper.with_timbre(knobkey, t, t, 0)   # the engine's latent for that timbre's program
    cache_key, rate_factor = mapper.split(knobkey)
    z = mapper.latent(cache_key)
    layers = plan_layers(preset, opts.velocity_layers)
    keys = preset.playable_keys()
    sess = GeneratorSession(preset, threads=threads or os.cpu_count() or 1, warmup=False)
    rate = opts.sample_rate or preset.sample_rate
    baked = BakedPreset(preset, preset.name if timbre is None else f"{preset.name}/{timbre}", knobkey,
                        12.0 * math.log2(rate_factor), layers, [], key_spans(preset), timbre=timbre, rate=rate)
    zs = np.repeat(z[None, :], len(keys), axis=0)
    pitch = np.asarray(keys, np.int64)
    held = level_gain(mapper, cache_key, sess.generate)     # a family's knobs keep its level, as the engine's
    for layer in layers:
        audio = sess.generate(zs, pitch, np.full(len(keys), layer.velocity / 127.0, np.float32))
        top = np.float32(bridge_gain(preset, layer.hi, layer.velocity) * held)
        for i, k in enumerate(keys):
            x = audio[i]
            if not np.isfinite(x).all():
                baked.bad_notes += 1         # the engine plays such a note as silence; so does the bank
                x = np.zeros_like(x)
            note = shape_note(x, preset, k, layer, cache_key, mapper, opts, rate)
            note.audio *= top
            baked.notes.append(note)
        del audio
    baked.notes_s = time.perf_counter() - t0
    return baked


def apply_level(baked: list[BakedPreset]) -> float:
    """One gain for the whole file, applied to every sample in place and returned: 1 (the engine's
    level) unless a sample would clip."""
    peak = max((float(np.max(np.abs(n.audio))) for b in baked for n in b.notes if len(n.audio)), default=0.0)
    k = 1.0 if peak <= 0.999 else 0.999 / peak
    if k != 1.0:
        for b in baked:
            for n in b.notes:
                n.audio *= np.float32(k)
    return k


# ---- provenance ---------------------------------------------------------------------------------------
def _digest(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError:
        return "unreadable"
    return h.hexdigest()[:16]


def provenance(baked: list[BakedPreset], opts: BakeOptions, k: float, fmt: str) -> list[str]:
    """Lines saying what was baked, how, and by which version (SF2 ICMT; SFZ header comments)."""
    from synth import __version__

    lines = [f"Baked by neural-synth {__version__} (python -m synth bake) on "
             f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}."]
    for b in baked:
        p = b.preset
        knobs = " ".join(f"{kn.cc}={v}({kn.name})" for kn, v in zip(p.knobs, b.knobkey[:len(p.knobs)], strict=True)) or "none"
        vel = (f"layers {' '.join(str(la.velocity) for la in b.layers)}, curve {p.velocity_curve:g}"
               + ("" if p.velocity_conditioned else " (not velocity-conditioned)"))
        lines.append(f"preset {b.label}: {p.kind}, {p.description or 'no description'}; generator.onnx sha256 "
                     f"{_digest(p.generator_path)}; knobs {knobs}; timbre {b.timbre or '-'}; {vel}; "
                     f"model {p.sample_rate} Hz, baked at {b.rate} Hz, note {p.note_samples / p.sample_rate:.2f} s; "
                     f"sustain {p.sustain_mode}"
                     f"{'' if p.loop_end_seconds is None else f' (loop end {p.loop_end_seconds:g} s)'}; "
                     f"release {p.release_seconds:g} s; gain {p.gain_db:g} dB")
    lines.append(
        f"engine settings: velocity -> nearest layer (ties louder), gain (v/127)^curve/(layer/127)^curve; loop "
        f"crossfade 50 ms of whole periods; pan spread {PAN_SPREAD} by key; decay/tune knobs applied; "
        f"release: {'releaseVolEnv' if fmt == 'sf2' else 'ampeg_release'} = 10/3 x release_seconds "
        f"(the engine's: linear in dB, 30 dB in release_seconds); "
        f"default velocity modulators overridden (amount 0); {opts.bits}-bit samples; max seconds "
        f"{opts.max_seconds if opts.max_seconds is not None else '-'}; loop tail {'on' if opts.loop_tail else 'off'}; "
        f"sample level = engine voice level x {k:.4f} ({20 * math.log10(k):+.2f} dB) before master gain and pan.")
    return lines


# ---- SoundFont assembly -------------------------------------------------------------------------------
def _bridge_modulator(att_cb: float, velocity: int):
    """A preset-zone modulator adding `att_cb` centibels of attenuation at `velocity` (its zone plays
    that velocity alone). Modulators count true centibels in FluidSynth and by the spec, where the
    initialAttenuation generator is scaled by 0.4 in FluidSynth and EMU hardware but not by the spec.
    A 7-bit source is normalised by 128 (FluidSynth); the positive curve keeps the other convention
    (127) within 0.8% of the amount, the negative one serves the lowest velocities, whose amount would
    overflow a SHORT."""
    from synth import sf2

    if att_cb < 0.05:
        return None
    amount = round(att_cb * 128.0 / velocity)
    if amount <= 32767:
        return sf2.Modulator(sf2.SRC_VELOCITY, sf2.INITIAL_ATTENUATION, amount)
    return sf2.Modulator(sf2.SRC_VELOCITY | sf2.NEGATIVE, sf2.INITIAL_ATTENUATION,
                         round(att_cb / (1.0 - velocity / 128.0)))


def velocity_zones(b: BakedPreset, instrument: int) -> list:
    """Preset zones, one per velocity: each plays its layer's sample attenuated from the layer's top
    velocity to this one (the engine's bridge gain)."""
    from synth import sf2

    p = b.preset
    zones = []
    for layer in b.layers:
        top = bridge_gain(p, layer.hi, layer.velocity)
        for v in range(layer.lo, layer.hi + 1):
            att = 200.0 * math.log10(top / bridge_gain(p, v, layer.velocity))
            mod = _bridge_modulator(att, v)
            zones.append(sf2.Zone({sf2.VEL_RANGE: (v, v)}, [mod] if mod else [], instrument))
    return zones


def default_overrides() -> list:
    """Instrument modulators that switch off SoundFont's default velocity modulators (SF2.04 8.4.2; a
    modulator with the same source, destination and amount source replaces a default one). The
    velocity → filter cutoff default is overridden in both forms players use: the spec's (no amount
    source) and FluidSynth's (velocity switch as amount source)."""
    from synth import sf2

    return [sf2.Modulator(sf2.SRC_VELOCITY | sf2.NEGATIVE | sf2.CONCAVE, sf2.INITIAL_ATTENUATION, 0),
            sf2.Modulator(sf2.SRC_VELOCITY | sf2.NEGATIVE, sf2.INITIAL_FILTER_FC, 0),
            sf2.Modulator(sf2.SRC_VELOCITY | sf2.NEGATIVE, sf2.INITIAL_FILTER_FC, 0, sf2.SRC_VELOCITY | sf2.SWITCH)]


def instrument_zones(b: BakedPreset, first_sample: int) -> list:
    """The instrument: a global zone (release, tune, modulator overrides), then one zone per sample."""
    from synth import sf2

    p = b.preset
    glob: dict = {sf2.RELEASE_VOL_ENV: sf2.timecents(
        DRUM_RELEASE_S if p.is_drums else release_envelope_seconds(p.release_seconds))}
    if abs(b.tune) > 1e-9:
        coarse = int(round(b.tune))
        glob[sf2.COARSE_TUNE] = coarse
        fine = int(round((b.tune - coarse) * 100))
        if fine:
            glob[sf2.FINE_TUNE] = fine
    zones = [sf2.Zone(glob, default_overrides(), None)]
    for i, n in enumerate(b.notes):
        lo, hi = b.spans[n.key]
        g: dict = {sf2.KEY_RANGE: (lo, hi), sf2.VEL_RANGE: (n.layer.lo, n.layer.hi),
                   sf2.PAN: int(round(500 * pan_of(n.key))), sf2.OVERRIDING_ROOT_KEY: n.key}
        if n.loop is not None:
            g[sf2.SAMPLE_MODES] = 1
        if n.hold_s is not None:
            g[sf2.HOLD_VOL_ENV] = sf2.timecents(n.hold_s)
            if n.decay_db_s:
                g[sf2.DECAY_VOL_ENV] = sf2.timecents(ENV_DB / n.decay_db_s)
                g[sf2.SUSTAIN_VOL_ENV] = 1000
        zones.append(sf2.Zone(g, [], first_sample + i))
    return zones


def sf2_parts(baked: list[BakedPreset], slots: list[tuple[int, int, int, str]]):
    """(samples, instruments, preset headers); `slots`: (bank, program, baked index, name) per preset."""
    from synth import sf2

    samples, instruments = [], []
    for b in baked:
        first = len(samples)
        short = (b.timbre or b.label).replace("/", "-")[:9]
        for n in b.notes:
            samples.append(sf2.Sample(f"{short} {n.key:03d} v{n.layer.velocity:03d}", n.audio, b.rate, n.key, 0,
                                      n.loop))
        instruments.append(sf2.Instrument(b.label, instrument_zones(b, first)))
    headers = [sf2.PresetHeader(name, prog, bank, velocity_zones(baked[i], i)) for bank, prog, i, name in slots]
    return samples, instruments, headers


# ---- SFZ assembly ------------------------------------------------------------------------------------
def sfz_text(b: BakedPreset, folder: str, comments: list[str], files: list[str]) -> str:
    """The .sfz text: one group per layer (its velocities and the bridge as amp_velcurve_N points), one
    region per sample."""
    p = b.preset
    out = [f"// {line}" for line in comments]
    out += ["", "<control>", f"default_path={folder}/", "", "<global>"]
    if p.is_drums:
        out.append("loop_mode=one_shot")
    else:
        out.append(f"ampeg_release={max(release_envelope_seconds(p.release_seconds), 0.001):.4f}")
        out.append("loop_mode=no_loop")
    if abs(b.tune) > 1e-9:
        coarse = int(round(b.tune))
        out.append(f"transpose={coarse}")
        out.append(f"tune={int(round((b.tune - coarse) * 100))}")
    by_layer: dict[Layer, list[int]] = {}
    for i, n in enumerate(b.notes):
        by_layer.setdefault(n.layer, []).append(i)
    for layer in b.layers:
        top = bridge_gain(p, layer.hi, layer.velocity)
        curve = " ".join(f"amp_velcurve_{v}={bridge_gain(p, v, layer.velocity) / top:.6f}"
                         for v in range(layer.lo, layer.hi + 1))
        out += ["", f"<group> lovel={layer.lo} hivel={layer.hi} amp_veltrack=100 {curve}"]
        for i in by_layer.get(layer, []):
            n = b.notes[i]
            lo, hi = b.spans[n.key]
            r = (f"<region> sample={files[i]} lokey={lo} hikey={hi} pitch_keycenter={n.key} "
                 f"pan={100 * pan_of(n.key):.1f}")
            if n.loop is not None:
                r += f" loop_mode=loop_continuous loop_start={n.loop[0]} loop_end={n.loop[1] - 1}"
            if n.hold_s is not None:
                r += f" ampeg_hold={n.hold_s:.4f}"
                if n.decay_db_s:
                    r += f" ampeg_decay={ENV_DB / n.decay_db_s:.4f} ampeg_sustain=0"
            out.append(r)
    return "\n".join(out) + "\n"


def _flac_bytes(x: np.ndarray, rate: int, bits: int) -> bytes:
    """One sample as FLAC, encoded in memory (a short write to disk then fails as an OSError, which
    libsndfile would not always report)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1.0, 1.0 - 2.0 ** (1 - bits)), rate, format="FLAC", subtype=f"PCM_{bits}")
    return buf.getvalue()


# ---- output ------------------------------------------------------------------------------------------
def check_output(out: Path, all_presets: bool) -> str:
    """Validate OUT before any work; return 'sf2' or 'sfz'."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name such as {out / 'piano.sf2'}")
    suffix = out.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"{out}: unknown output type {out.suffix or '(none)'!r}; use .sf2 or .sfz")
    if suffix == ".sfz" and all_presets:
        raise UserError(f"{out}: an SFZ file holds one instrument; bake --all into an .sf2 (or one --preset to .sfz)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{out}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: folder {parent} is not writable; choose another output path")
    samples = parent / f"{out.stem}-samples"
    if suffix == ".sfz" and os.path.lexists(samples) and not samples.is_dir():
        raise UserError(f"{out}: {samples} is in the way of the sample folder and is not a folder; move it")
    return suffix[1:]


def _write_error(out: Path, e: BaseException) -> UserError:
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return UserError(f"{out}: cannot write ({e.strerror}); the disk or a file size limit is full: "
                         f"free some space or lower --max-seconds / --velocity-layers")
    if isinstance(e, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return UserError(f"{out}: cannot create a file in {out.parent or '.'} ({e.strerror}); choose a writable path")
    if isinstance(e, OSError):
        return UserError(f"{out}: cannot write ({e.strerror or e}); check free space and permissions")
    return UserError(f"{out}: cannot write ({e}); check free space and permissions")


def write_sf2_file(out: Path, baked: list[BakedPreset], slots, opts: BakeOptions, k: float, name: str) -> int:
    """Write the bank atomically; returns its size in bytes."""
    from synth import __version__, sf2
    from synth.fsutil import atomic_path

    samples, instruments, headers = sf2_parts(baked, slots)
    info = [(b"INAM", name), (b"ICRD", dt.date.today().isoformat()), (b"IENG", "neural-synth bake"),
            (b"IPRD", "neural-synth"), (b"ICMT", "\n".join(provenance(baked, opts, k, "sf2"))),
            (b"ISFT", f"neural-synth {__version__}")]
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            size = sf2.write_sf2(f, info, samples, instruments, headers, bits=opts.bits)
    except ValueError as e:
        raise UserError(f"{out}: {e}") from None
    except OSError as e:
        raise _write_error(out, e) from None
    return size


def _file_words(names: list[str]) -> list[str]:
    """Timbre names as parts of file names: [A-Za-z0-9_.-] only, never empty, all different (a
    repeat gets `-N`, N its position)."""
    import re

    out: list[str] = []
    for i, name in enumerate(names):
        w = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:48] or f"timbre{i}"
        out.append(w if w.lower() not in {o.lower() for o in out} else f"{w}-{i}")
    return out


def write_sfz_files(out: Path, baked: list[BakedPreset], opts: BakeOptions, k: float,
                    outs: list[Path] | None = None) -> int:
    """Write one .sfz per baked preset (`outs`, default [OUT]) and their shared sample folder
    `<OUT stem>-samples/` (each atomically); returns total bytes."""
    from synth.fsutil import atomic_dir, atomic_path

    outs = outs or [out]
    folder = out.parent / f"{out.stem}-samples"
    words = _file_words([b.timbre or b.preset.name for b in baked])
    files = []
    for b, w in zip(baked, words, strict=True):
        short = b.label.replace("/", "-") if len(baked) == 1 else f"{b.preset.name}-{w}"
        files.append([f"{short}-{n.key:03d}-v{n.layer.velocity:03d}.flac" for n in b.notes])
    total = 0
    try:
        with atomic_dir(folder, replace=True) as tmpdir:
            for b, names in zip(baked, files, strict=True):
                for n, fname in zip(b.notes, names, strict=True):
                    data = _flac_bytes(n.audio, b.rate, opts.bits)
                    with open(tmpdir / fname, "wb") as f:
                        f.write(data)
                    total += len(data)
        for b, names, path in zip(baked, files, outs, strict=True):
            text = sfz_text(b, folder.name, provenance([b], opts, k, "sfz"), names).encode("utf-8")
            with atomic_path(path) as tmp:
                tmp.write_bytes(text)
            total += len(text)
    except OSError as e:
        raise _write_error(out, e) from None
    return total


# ---- the command -------------------------------------------------------------------------------------
def parse_options(args) -> BakeOptions:
    from synth.render import parse_int, parse_knobs

    opts = BakeOptions(knobs=parse_knobs(args.knob), timbre=args.timbre, bits=int(args.bits),
                       loop_tail=bool(args.loop_tail))
    if args.velocity_layers is not None:
        opts.velocity_layers = parse_int(args.velocity_layers, "--velocity-layers", 1, 127,
                                         "give 1..127 layers (default: the preset's)")
    if args.sample_rate is not None:
        opts.sample_rate = parse_int(args.sample_rate, "--sample-rate", 8000, 192000,
                                     "choose 8000..192000 Hz (default: the preset's own rate)")
    if args.max_seconds is not None and str(args.max_seconds).strip().lower() == "full":
        opts.max_seconds = 0.0
    elif args.max_seconds is not None:
        try:
            s = float(args.max_seconds)
        except ValueError:
            s = float("nan")
        if not (math.isfinite(s) and 0.01 <= s <= 600):
            raise UserError(f"--max-seconds {args.max_seconds!r}: give seconds 0.01..600 (e.g. 2.5)")
        opts.max_seconds = s
    if args.all and args.timbre is not None:
        raise UserError("--timbre picks one family preset's timbre; use it with --preset, not --all")
    return opts


def load_all(preset_dirs) -> list:
    """Every installed preset that loads; the others are skipped with a line on stderr."""
    from synth.preset import available_presets, load_preset_dir

    out = []
    for name, folder in sorted(available_presets(preset_dirs).items()):
        try:
            out.append(load_preset_dir(folder))
        except UserError as e:
            print(f"synth bake: skipped preset {name}: {e}", file=sys.stderr)
    if not out:
        raise UserError("no presets installed to bake; see `python -m synth presets` and --preset-dir")
    return out


def gm_slots(presets) -> tuple[list[tuple[object, str | None]], list[tuple[int, int, int, str]]]:
    """What a GM bank bakes, [(preset, timbre name or None)], and its (bank, program, index into that
    list, header name) slots.

    Single-instrument presets (and kits) are routed by family (`gm.routing`); a family preset (one
    with `timbres`) places each timbre at its program instead (`place_timbres`), taking the slot over
    from a preset routed there by family, except the single-instrument `piano` at 0:0 and a kit at
    128:0, which stay the defaults (the timbre goes to the next bank of its program)."""
    from synth import gm

    families = [p for p in presets if p.timbres]
    singles = [p for p in presets if not p.timbres]
    for name in gm.unrouted(singles):
        print(f"synth bake: skipped preset {name}: no GM program known for it (its manifest records no "
              f"SoundFont source program)", file=sys.stderr)
    route: dict[tuple[int, int], tuple[object, str | None]] = {
        slot: (next(p for p in singles if p.name == name), None) for slot, name in gm.routing(singles).items()}
    reserved = {s for s in ((0, 0), (gm.DRUM_BANK, 0))
                if s in route and (s[0] == gm.DRUM_BANK or route[s][0].name == "piano")}
    labels = {slot: gm.program_label(*slot) for slot in route}
    for bank, prog, p, t in place_timbres(families, reserved):
        route[(bank, prog)] = (p, t.name)
        labels[(bank, prog)] = t.name
    if not route:
        raise UserError("no installed preset has a GM program or is a drum kit; bake them one by one with --preset")
    units: list[tuple[object, str | None]] = []
    index: dict[tuple[str, str | None], int] = {}
    slots = []
    for slot in sorted(route):
        p, t = route[slot]
        if (p.name, t) not in index:
            index[(p.name, t)] = len(units)
            units.append((p, t))
        slots.append((slot[0], slot[1], index[(p.name, t)], labels[slot]))
    for p in singles:
        if (p.name, None) not in index and (p.is_drums or gm.preset_program(p) is not None):
            print(f"synth bake: skipped preset {p.name}: its GM slots went to another preset or timbre of the same "
                  f"program (bake it alone with --preset)", file=sys.stderr)
    return units, slots


def bake(output, preset: str | None = None, all_presets: bool = False, preset_dirs=(),
         opts: BakeOptions | None = None) -> dict:
    """Bake `preset` (or every installed preset, GM-routed) to `output` (.sf2/.sfz); returns a summary
    dict (presets, samples, bytes, seconds, level). Raises `UserError` on bad input."""
    from synth.preset import find_preset

    t0 = time.perf_counter()
    opts = opts or BakeOptions()
    out = Path(output)
    fmt = check_output(out, all_presets)
    sfz_outs = [out]
    if all_presets:
        units, slots = gm_slots(load_all(list(preset_dirs)))
        for cc, v in opts.knobs:
            if not any(kn.cc == cc for p, _ in units for kn in p.knobs):
                raise UserError(f"--knob {cc}={v}: no preset in the bank has a knob on CC {cc}")
        baked = [bake_preset(p, opts, strict_knobs=False, timbre=t) for p, t in units]
        name = "neural-synth GM"
    else:
        p = find_preset(preset, list(preset_dirs))
        if opts.timbre is not None:
            timbre_latent(p, opts.timbre)     # a bad timbre is reported before any work
        if opts.timbre is None and p.timbres:
            # A family preset: every timbre at its program (place_timbres), named after the timbre.
            placed = place_timbres([p])
            baked = [bake_preset(p, opts, timbre=t.name) for _, _, _, t in placed]
            slots = [(bank, prog, i, t.name) for i, (bank, prog, _, t) in enumerate(placed)]
            sfz_outs = [out.parent / f"{out.stem}-{w}{out.suffix}" for w in _file_words([t.name for *_, t in placed])]
            name = f"neural-synth {p.name}"
        else:
            baked = [bake_preset(p, opts)]
            # A kit sits at bank 128 (GM channel 10) and at 0:0, where a DAW's sampler track looks first.
            slots = ([(128, 0, 0, baked[0].label), (0, 0, 0, baked[0].label)] if p.is_drums
                     else [(0, 0, 0, baked[0].label)])
            name = f"neural-synth {baked[0].label}"
    k = apply_level(baked)
    size = (write_sf2_file(out, baked, slots, opts, k, name) if fmt == "sf2"
            else write_sfz_files(out, baked, opts, k, sfz_outs))
    return {"path": out if fmt == "sf2" or len(sfz_outs) == 1 else ", ".join(map(str, sfz_outs)), "format": fmt, "presets": [b.label for b in baked], "slots": len(slots),
            "samples": sum(len(b.notes) for b in baked), "bytes": size, "level": k,
            "bad_notes": sum(b.bad_notes for b in baked), "seconds": time.perf_counter() - t0,
            "audio_seconds": sum(len(n.audio) / b.rate for b in baked for n in b.notes),
            "layers": {b.label: [la.velocity for la in b.layers] for b in baked},
            "rates": sorted({b.rate for b in baked})}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    opts = parse_options(args)
    res = bake(args.output, preset=args.preset, all_presets=args.all, preset_dirs=args.preset_dir, opts=opts)
    if res["bad_notes"]:
        print(f"synth bake: {res['bad_notes']} note(s) came out of the model as NaN/Inf and were baked silent",
              file=sys.stderr)
    if not args.quiet:
        layers = "; ".join(f"{n}: {' '.join(map(str, v))}" for n, v in res["layers"].items())
        print(f"wrote {res['path']}: {len(res['presets'])} preset(s) in {res['slots']} slot(s), {res['samples']} "
              f"samples ({res['audio_seconds']:.0f} s of audio at {'/'.join(map(str, res['rates']))} Hz, "
              f"{opts.bits}-bit; velocity layers {layers}), {res['bytes'] / 1e6:.1f} MB; level "
              f"{20 * math.log10(res['level']):+.1f} dB; took {res['seconds']:.1f} s")
    return 0
