"""Multi-instrument SoundFont sets: several SoundFonts x programs rendered into one set (a "family").

A timbre space needs timbres: one preset gives a latent nothing to vary, so a family preset trains
on many. Each (SoundFont, bank, program) is one instrument: its notes carry `instrument_index`,
`soundfont` (file name, never a machine path), `bank`, `program` and `preset`, and the manifest
lists the instruments so training can condition on them and a family preset can name its timbres.

Levels: one gain per instrument puts its loudest note at -1 dBFS, as a one-instrument set does, so
velocity stays audible within an instrument and no SoundFont is quieter than another as a whole
(FluidR3 and MuseScore General differ by several dB). With float32 storage each instrument's notes
are exactly those of `--soundfont X --program N` with the same keys and velocities.

Held out: TimGM6mb is the source that capture is measured on, so no family may learn it; a family
refuses it (by file name or by the bank name in its INFO chunk) unless `--allow-held-out`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import UserError
from trainer.data import soundfont as sf
from trainer.data.format import GM_DRUMS, gm_kind
from trainer.data.soundfont import NoteSpec, Voice

HELD_OUT = ("timgm6mb",)  # lower-case name stems of SoundFonts that no family may be trained on
# Load only the samples of the preset in use: MuseScore General's Ogg samples take 7.5 s to decode
# in full per FluidSynth process, 1.5 s this way, with the same output (checked on SF2 and SF3).
RENDER_OPTIONS = ("synth.dynamic-sample-loading=1",)


@dataclass(frozen=True)
class Instrument:
    """One timbre of a family: a SoundFont preset, and what the manifest says about it."""
    voice: Voice
    preset: str
    file: str          # the SoundFont's file name (symlinks resolved: the file that was read)
    held_out: bool

    @property
    def id(self) -> str:
        """A stable unique name: '<SoundFont stem>:<bank>:<program>'."""
        return f"{Path(self.file).stem}:{self.voice.bank}:{self.voice.program}"

    def entry(self) -> dict[str, Any]:
        """The manifest's instrument entry (the writer adds index, note and split counts)."""
        return {"id": self.id, "name": self.preset, "source": self.file, "bank": self.voice.bank,
                "program": self.voice.program, "gm_kind": gm_kind(self.voice.program, self.voice.drums),
                "held_out": self.held_out}


def parse_programs(text: str, bank: int) -> list[tuple[int, int]]:
    """'0-7,16' or '8:4' or '0-3,8:4-5' -> [(bank, program), ...] in the order given, without repeats.

    A `B:` prefix picks bank B for that item; items without one use `bank` (--bank).
    """
    out: list[tuple[int, int]] = []
    hint = "expected programs like 0-7,16 or BANK:PROGRAM like 8:4 (programs 0..127, banks 0..128)"
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        b, _, prog = part.rpartition(":")
        try:
            b_num = int(b) if b else bank
            lo, _, hi = prog.partition("-")
            lo_n, hi_n = int(lo), int(hi) if hi else int(lo)
        except ValueError:
            raise UserError(f"--programs {text!r}: {part!r} is not a program or range; {hint}") from None
        if not (0 <= lo_n <= hi_n <= 127 and 0 <= b_num <= 128):
            raise UserError(f"--programs {text!r}: {part!r} is out of range; {hint}")
        out += [(b_num, p) for p in range(lo_n, hi_n + 1) if (b_num, p) not in out]
    if not out:
        raise UserError(f"--programs {text!r}: no programs; {hint}")
    return out


def is_held_out(path: Path, bank_name: str) -> bool:
    """Whether a SoundFont is one of HELD_OUT, by its file name or its INFO bank name (a renamed copy)."""
    names = (path.name.lower(), bank_name.lower())
    return any(h in n for h in HELD_OUT for n in names)


def plan(soundfonts: list[str], programs: list[tuple[int, int]], *, drums: bool,
         allow_held_out: bool) -> list[Instrument]:
    """Check every SoundFont and program before anything is rendered; the instruments in set order.

    Order: SoundFonts as given, programs as given within each. Raises `UserError` (one line naming
    the file and the fix) for a missing or unreadable file, a SoundFont given twice, a held-out
    SoundFont without `allow_held_out`, or a program the SoundFont lacks.
    """
    insts: list[Instrument] = []
    seen: dict[Path, str] = {}
    for given in soundfonts:
        path = Path(given)
        facts = sf.read_soundfont(path)
        real = path.resolve()
        if real in seen:
            raise UserError(f"{given}: the same SoundFont as --soundfont {seen[real]}; give each file once")
        seen[real] = given
        if real.name in {p.name for p in seen if p != real}:
            raise UserError(f"{given}: another --soundfont has the file name {real.name}, and notes name their "
                            "SoundFont by file name; rename one copy")
        held = is_held_out(real, facts.bank_name)
        if held and not allow_held_out:
            raise UserError(f"{given}: {real.name} is held out of every family (capture is measured on it); "
                            "drop it, or pass --allow-held-out for a set that is not a family's training data")
        for bank, program in programs:
            if drums and bank != 128:
                bank = 128
            elif not drums and bank == 128:
                raise UserError(f"--programs: bank 128 holds drum kits; pass --drums to render kits from {given}")
            preset = sf.find_preset(path, program, bank, facts.presets)
            insts.append(Instrument(Voice(real, program, bank, drums), preset.name, real.name, held))
    return insts


def build(writer, instruments: list[Instrument], *, pitches: list[int], velocities: list[int], seconds: float,
          release: float, jobs: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Render every instrument x pitch x velocity into `writer`.

    Returns `{"source", "note_gains", "instruments"}` for `writer.finalize`: the manifest's
    `source` dict, one gain per added note (its instrument's), and the instrument entries. A note
    more than 60 dB below its instrument's loudest is skipped (the preset has no sample there); an
    instrument with no sound at all is a `UserError`.
    """
    version = sf.fluidsynth_version()
    specs = [NoteSpec(k, v) for k in pitches for v in velocities]
    parts = [(inst.voice, specs) for inst in instruments]
    peaks: list[list[float]] = [[] for _ in instruments]
    owner: list[int] = []
    rendered = sf.render_parts(parts, seconds=seconds, release=release, sample_rate=writer.sample_rate, jobs=jobs,
                               options=RENDER_OPTIONS)
    for ii, spec, audio, peak, dur in rendered:
        inst = instruments[ii]
        v = inst.voice
        writer.add(audio, pitch=spec.key, velocity=spec.velocity, duration=dur,
                   source=f"{inst.file}:bank{v.bank}:program{v.program}:key{spec.key}:vel{spec.velocity}",
                   cls=GM_DRUMS.get(spec.key, f"key{spec.key}") if v.drums else None,
                   instrument_index=ii, soundfont=inst.file, bank=v.bank, program=v.program, preset=inst.preset)
        peaks[ii].append(peak)
        owner.append(ii)
        if progress:
            progress(1)
    gains = _drop_silent(writer, instruments, peaks, specs)
    entries = [{**inst.entry(), "gain": gains[i]} for i, inst in enumerate(instruments)]
    files = {}
    for inst in instruments:
        p = inst.voice.soundfont
        files.setdefault(inst.file, {"file": inst.file, "path": str(p), "bytes": p.stat().st_size,
                                     "held_out": inst.held_out})
    source = {"type": "soundfonts", "soundfonts": list(files.values()),
              "programs": [list(bp) for bp in dict.fromkeys((i.voice.bank, i.voice.program) for i in instruments)],
              "drums": instruments[0].voice.drums, "seconds": seconds, "release": release, "renderer": version,
              "render": {"reverb": False, "chorus": False, "fluidsynth_gain": sf.RENDER_GAIN,
                         "gain": "per instrument: its loudest note at -1 dBFS", "onset_db": sf.ONSET_DB,
                         "pre_roll_s": sf.PRE_ROLL, "fade_out_s": sf.FADE_OUT, "fluidsynth_options": list(RENDER_OPTIONS)}}
    return {"source": source, "note_gains": [gains[i] for i in owner], "instruments": entries}


def _drop_silent(writer, instruments: list[Instrument], peaks: list[list[float]], specs: list[NoteSpec]) -> list[float]:
    """Leave out each instrument's silent notes (as `soundfont.build` does for one); its gain per instrument."""
    keep: list[int] = []
    gains: list[float] = []
    base = 0
    for inst, pk in zip(instruments, peaks, strict=True):
        top = max(pk, default=0.0)
        floor = top * 10 ** (sf.SILENT_DB / 20)
        mine = [i for i, p in enumerate(pk) if p > floor and p > 0]
        if not mine:
            v = inst.voice
            raise UserError(f"{v.soundfont}: {inst.preset!r} (bank {v.bank}, program {v.program}) rendered only "
                            f"silence for keys {specs[0].key}-{specs[-1].key}; try other --pitches or drop that program")
        for i in sorted(set(range(len(pk))) - set(mine)):
            p = pk[i]
            level = "no sound" if p == 0 else f"peak {20 * np.log10(p / top):.0f} dB below the instrument"
            writer.skip(f"{inst.id} key {specs[i].key} velocity {specs[i].velocity}",
                        f"silent render ({level}): the preset has no sample for this key")
        keep += [base + i for i in mine]
        gains.append(sf.TARGET_PEAK / top)
        base += len(pk)
    writer.keep_only(keep)
    return gains
