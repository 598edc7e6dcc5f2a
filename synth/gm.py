"""General MIDI: the 128 program names, the 16 families, and which installed preset plays which program.

One table for everything that routes GM programs to presets: `synth bake --all` (the GM SoundFont)
and the engine's GM routing (`synth.routing.Router`: program change → the installed preset of the
program's family; `FALLBACK_FAMILIES` says where a family with no installed preset goes).

A preset's own GM program is the program of the data it learned (`training.data["source program"]`
/ `["source bank"]` in its manifest, written by `trainer export` for SoundFont data), else a program
named by its name (`NAME_PROGRAMS`: "piano" → 0, "strings" → 48, ...); drum kits play bank 128
program 0 (channel 10). A preset then plays every program of its routing group: its GM family, with
Strings (40-47) and Ensemble (48-55) as one group, since a bowed-string ensemble is the nearest
sound for a solo violin and the reverse. Within a group, each program goes to the preset whose own
program is nearest (ties: the lower one). Families no installed preset belongs to stay empty.
"""

from __future__ import annotations

PROGRAMS: tuple[str, ...] = (
    # Piano
    "Acoustic Grand Piano", "Bright Acoustic Piano", "Electric Grand Piano", "Honky-tonk Piano",
    "Electric Piano 1", "Electric Piano 2", "Harpsichord", "Clavinet",
    # Chromatic Percussion
    "Celesta", "Glockenspiel", "Music Box", "Vibraphone", "Marimba", "Xylophone", "Tubular Bells", "Dulcimer",
    # Organ
    "Drawbar Organ", "Percussive Organ", "Rock Organ", "Church Organ", "Reed Organ", "Accordion", "Harmonica",
    "Tango Accordion",
    # Guitar
    "Acoustic Guitar (nylon)", "Acoustic Guitar (steel)", "Electric Guitar (jazz)", "Electric Guitar (clean)",
    "Electric Guitar (muted)", "Overdriven Guitar", "Distortion Guitar", "Guitar Harmonics",
    # Bass
    "Acoustic Bass", "Electric Bass (finger)", "Electric Bass (pick)", "Fretless Bass", "Slap Bass 1",
    "Slap Bass 2", "Synth Bass 1", "Synth Bass 2",
    # Strings
    "Violin", "Viola", "Cello", "Contrabass", "Tremolo Strings", "Pizzicato Strings", "Orchestral Harp", "Timpani",
    # Ensemble
    "String Ensemble 1", "String Ensemble 2", "Synth Strings 1", "Synth Strings 2", "Choir Aahs", "Voice Oohs",
    "Synth Voice", "Orchestra Hit",
    # Brass
    "Trumpet", "Trombone", "Tuba", "Muted Trumpet", "French Horn", "Brass Section", "Synth Brass 1",
    "Synth Brass 2",
    # Reed
    "Soprano Sax", "Alto Sax", "Tenor Sax", "Baritone Sax", "Oboe", "English Horn", "Bassoon", "Clarinet",
    # Pipe
    "Piccolo", "Flute", "Recorder", "Pan Flute", "Blown Bottle", "Shakuhachi", "Whistle", "Ocarina",
    # Synth Lead
    "Lead 1 (square)", "Lead 2 (sawtooth)", "Lead 3 (calliope)", "Lead 4 (chiff)", "Lead 5 (charang)",
    "Lead 6 (voice)", "Lead 7 (fifths)", "Lead 8 (bass + lead)",
    # Synth Pad
    "Pad 1 (new age)", "Pad 2 (warm)", "Pad 3 (polysynth)", "Pad 4 (choir)", "Pad 5 (bowed)", "Pad 6 (metallic)",
    "Pad 7 (halo)", "Pad 8 (sweep)",
    # Synth Effects
    "FX 1 (rain)", "FX 2 (soundtrack)", "FX 3 (crystal)", "FX 4 (atmosphere)", "FX 5 (brightness)",
    "FX 6 (goblins)", "FX 7 (echoes)", "FX 8 (sci-fi)",
    # Ethnic
    "Sitar", "Banjo", "Shamisen", "Koto", "Kalimba", "Bag pipe", "Fiddle", "Shanai",
    # Percussive
    "Tinkle Bell", "Agogo", "Steel Drums", "Woodblock", "Taiko Drum", "Melodic Tom", "Synth Drum", "Reverse Cymbal",
    # Sound Effects
    "Guitar Fret Noise", "Breath Noise", "Seashore", "Bird Tweet", "Telephone Ring", "Helicopter", "Applause",
    "Gunshot",
)

FAMILIES: tuple[str, ...] = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Ensemble", "Brass", "Reed", "Pipe",
    "Synth Lead", "Synth Pad", "Synth Effects", "Ethnic", "Percussive", "Sound Effects",
)

DRUM_BANK = 128          # SoundFont bank of GM drum kits
DRUM_CHANNEL = 9         # MIDI channel 10
DRUM_KIT_NAME = "Standard Kit"

# Routing groups: families (indices into FAMILIES) whose programs one preset covers together.
ROUTE_GROUPS: tuple[tuple[int, ...], ...] = tuple(
    (5, 6) if f == 5 else (f,) for f in range(16) if f != 6)

# A preset without a recorded source program, by name (the trainer's recipe names and common words).
NAME_PROGRAMS: dict[str, int] = {
    "piano": 0, "grand": 0, "epiano": 4, "rhodes": 4, "harpsichord": 6, "celesta": 8, "glockenspiel": 9,
    "vibraphone": 11, "marimba": 12, "xylophone": 13, "bells": 14, "organ": 16, "accordion": 21,
    "guitar": 24, "bass": 32, "violin": 40, "cello": 42, "harp": 46, "strings": 48, "choir": 52, "brass": 61,
    "trumpet": 56, "horn": 60, "sax": 65, "oboe": 68, "clarinet": 71, "flute": 73, "lead": 80, "pad": 88,
}

# Where a program goes when no installed preset belongs to its family (`synth.routing`): for each
# family, the other families in the order to try, nearest sound first. Sustained families (organ, winds,
# pads, strings) try sustained ones before the piano, since a decaying piano cuts a held chord short;
# struck and plucked ones try struck and plucked ones first. Strings and Ensemble are one routing
# group, so naming either reaches both. Every list names all 15 other families, so a program always
# finds an installed family when there is one. A judgement of similarity, not a measurement.
FALLBACK_FAMILIES: tuple[tuple[int, ...], ...] = (
    (1, 3, 13, 2, 14, 4, 11, 5, 6, 7, 8, 9, 10, 12, 15),     # Piano: mallets, guitars, ethnic plucks
    (0, 14, 13, 3, 15, 4, 11, 12, 2, 5, 6, 9, 8, 7, 10),     # Chromatic Percussion: piano, percussive
    (8, 9, 11, 10, 7, 6, 5, 0, 1, 13, 3, 4, 12, 14, 15),     # Organ: reeds (accordion), pipes, pads
    (13, 0, 4, 1, 5, 6, 14, 2, 11, 10, 8, 9, 7, 12, 15),     # Guitar: sitar and banjo, piano, bass
    (3, 0, 5, 6, 13, 1, 14, 10, 11, 2, 7, 8, 9, 12, 15),     # Bass: guitar, piano (plucked, decaying), strings
    (6, 11, 7, 8, 9, 2, 10, 0, 1, 3, 13, 4, 12, 14, 15),     # Strings: ensemble, pads, brass
    (5, 11, 7, 2, 8, 9, 10, 0, 1, 3, 13, 4, 12, 14, 15),     # Ensemble: strings, pads, brass
    (8, 6, 5, 10, 2, 9, 11, 0, 1, 3, 13, 4, 12, 14, 15),     # Brass: reeds, ensemble, leads
    (9, 7, 2, 10, 6, 5, 11, 0, 13, 1, 3, 4, 12, 14, 15),     # Reed: pipes, brass, organ
    (8, 2, 10, 6, 5, 11, 7, 13, 0, 1, 3, 4, 12, 14, 15),     # Pipe: reeds, organ, leads
    (11, 2, 8, 7, 9, 6, 5, 0, 3, 4, 1, 13, 12, 14, 15),      # Synth Lead: pads, organ, winds
    (6, 5, 2, 10, 12, 7, 8, 9, 0, 1, 3, 13, 4, 14, 15),      # Synth Pad: ensemble, strings, organ
    (11, 10, 6, 5, 1, 15, 2, 0, 14, 13, 3, 4, 7, 8, 9),      # Synth Effects: pads, leads, strings
    (3, 0, 1, 9, 8, 5, 6, 14, 4, 2, 7, 10, 11, 12, 15),      # Ethnic: plucked strings: guitar, piano, mallets
    (1, 13, 0, 3, 4, 15, 12, 5, 6, 2, 7, 8, 9, 10, 11),      # Percussive: mallets, ethnic, piano
    (12, 14, 11, 1, 10, 6, 5, 0, 2, 3, 4, 7, 8, 9, 13),      # Sound Effects: synth effects, percussive
)

# Programs whose family is mixed try these families first, then their family's list above.
PROGRAM_FALLBACKS: dict[int, tuple[int, ...]] = {
    108: (1,),            # Kalimba: struck, a mallet sound
    109: (8, 9, 2),       # Bag pipe: a reed drone
    110: (5, 6),          # Fiddle: a violin
    111: (8, 9),          # Shanai: a double reed
    120: (3,),            # Guitar Fret Noise
    121: (9, 8),          # Breath Noise: a flute's breath
}


def fallback_families(program: int) -> tuple[int, ...]:
    """The families `program` tries, in order, when no installed preset belongs to its own."""
    own = family_of(program)
    order = (*PROGRAM_FALLBACKS.get(program, ()), *FALLBACK_FAMILIES[own])
    return tuple(dict.fromkeys(f for f in order if f != own))


assert len(PROGRAMS) == 128 and len(FAMILIES) == 16
assert all(sorted(f for f in FALLBACK_FAMILIES[i]) == [f for f in range(16) if f != i] for i in range(16))


def family_of(program: int) -> int:
    """GM family index (0..15) of program 0..127."""
    if not 0 <= program <= 127:
        raise ValueError(f"GM program {program} is not 0..127")
    return program // 8


def group_programs(program: int) -> range:
    """The programs of `program`'s routing group (its family; Strings and Ensemble together)."""
    fam = family_of(program)
    group = next(g for g in ROUTE_GROUPS if fam in g)
    return range(8 * group[0], 8 * group[-1] + 8)


def preset_program(preset) -> int | None:
    """The GM program (bank 0) a pitched `synth.preset.Preset` was made from, or None when unknown.

    From the manifest's training data (`source program` in bank 0), else from the preset's name."""
    if preset.is_drums:
        return None
    data = preset.training.get("data") if isinstance(preset.training, dict) else None
    if isinstance(data, dict):
        prog, bank = data.get("source program"), data.get("source bank", 0)
        if isinstance(prog, int) and not isinstance(prog, bool) and 0 <= prog <= 127 and bank == 0:
            return prog
    name = preset.name.lower()
    for word, prog in sorted(NAME_PROGRAMS.items(), key=lambda kv: -len(kv[0])):   # "epiano" before "piano"
        if word in name:
            return prog
    return None


def routing(presets) -> dict[tuple[int, int], str]:
    """{(bank, program): preset name} for a GM bank made of `presets` (loaded `Preset`s).

    Pitched presets take their routing group's programs in bank 0 (the nearest own program wins each
    program); the first drum kit takes bank 128 program 0. Presets whose program is unknown are left
    out (see `unrouted`)."""
    own: dict[str, int] = {}
    out: dict[tuple[int, int], str] = {}
    for p in presets:
        if p.is_drums:
            out.setdefault((DRUM_BANK, 0), p.name)
            continue
        prog = preset_program(p)
        if prog is not None:
            own.setdefault(p.name, prog)
    for prog in range(128):
        rivals = [(abs(own_prog - prog), own_prog, name) for name, own_prog in own.items()
                  if prog in group_programs(own_prog)]
        if rivals:
            out[(0, prog)] = min(rivals)[2]
    return out


def unrouted(presets) -> list[str]:
    """Names of presets `routing` cannot place (a pitched preset with no known GM program)."""
    return [p.name for p in presets if not p.is_drums and preset_program(p) is None]


# GS/GM2 drum kit programs (bank 128 in a SoundFont; the program change on channel 10 picks the kit).
DRUM_KITS: dict[int, str] = {0: "Standard Kit", 8: "Room Kit", 16: "Power Kit", 24: "Electronic Kit",
                             25: "TR-808 Kit", 32: "Jazz Kit", 40: "Brush Kit", 48: "Orchestra Kit", 56: "SFX Kit"}


def kit_program(preset) -> int:
    """The bank-128 program of a drum-kit `Preset`: from its training data (`source program` with
    `source bank` 128), else 0, the Standard Kit."""
    data = preset.training.get("data") if isinstance(preset.training, dict) else None
    if isinstance(data, dict):
        prog, bank = data.get("source program"), data.get("source bank")
        if isinstance(prog, int) and not isinstance(prog, bool) and 0 <= prog <= 127 and bank == DRUM_BANK:
            return prog
    return 0


def kit_label(program: int) -> str:
    """A drum kit program's name (`DRUM_KITS`), or "Kit N" for a program no GS kit uses."""
    return DRUM_KITS.get(program, f"Kit {program}")


def program_label(bank: int, program: int) -> str:
    """A human name for a (bank, program) slot: the GM program name, or the drum kit's."""
    return DRUM_KIT_NAME if bank == DRUM_BANK else PROGRAMS[program]
