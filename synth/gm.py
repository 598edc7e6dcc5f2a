"""General MIDI: the 128 program names, the 16 families, and which installed preset plays which program.

One table for everything that routes GM programs to presets: `synth bake --all` (the GM SoundFont)
uses it now, and the engine's GM routing (program change → the installed preset of the program's
family) is meant to reuse it.

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

assert len(PROGRAMS) == 128 and len(FAMILIES) == 16


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


def program_label(bank: int, program: int) -> str:
    """A human name for a (bank, program) slot: the GM program name, or the drum kit's."""
    return DRUM_KIT_NAME if bank == DRUM_BANK else PROGRAMS[program]
