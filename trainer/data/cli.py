"""`python -m trainer dataset`: build a one-shot dataset folder from a SoundFont, a folder or NSynth.

Examples:
    python -m trainer dataset --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 --program 0 --out data/piano
    python -m trainer dataset --soundfont /usr/share/sounds/sf2/FluidR3_GM.sf2 \
        --soundfont /usr/share/sounds/sf3/MuseScore_General.sf3 --programs 0-7 --out data/keys
    python -m trainer dataset --drums --out data/gm-kit
    python -m trainer dataset --from-folder ~/samples/rhodes --out data/rhodes
    python -m trainer dataset --from-folder ~/samples/keys --by-subfolder --out data/my-keys
    python -m trainer dataset --nsynth ~/nsynth-valid --family keyboard --source acoustic --out data/keys

The folder is written to a temporary folder beside --out and renamed into place at the end, so a
failure never leaves a half-written set. An existing --out is replaced only with --force.

Several --soundfont, or --programs, make a multi-instrument set (a family: `trainer.data.family`),
stored as 16-bit by default; one --soundfont with --program writes exactly what it always has.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from synth.errors import UserError
from synth.fsutil import atomic_dir
from trainer.data.format import GM_DRUMS, MANIFEST, DatasetWriter
from trainer.data.soundfont import DEFAULT_SOUNDFONT

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def note_name(key: int) -> str:
    """MIDI key -> scientific pitch name (60 -> C4)."""
    return f"{NOTE_NAMES[key % 12]}{key // 12 - 1}"


def parse_pitches(text: str) -> list[int]:
    """'21-108' or '60,62,64' or '21-30,60' -> sorted MIDI keys (0..127)."""
    keys: set[int] = set()
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                keys.update(range(lo, hi + 1))
            elif part:
                keys.add(int(part))
    except ValueError:
        raise UserError(f"--pitches {text!r}: expected MIDI keys like 21-108 or 60,64,67") from None
    if not keys or min(keys) < 0 or max(keys) > 127:
        raise UserError(f"--pitches {text!r}: expected MIDI keys in 0..127, like 21-108")
    return sorted(keys)


def parse_velocities(text: str) -> list[int]:
    """'25,50,75,100,127' -> sorted MIDI velocities (1..127)."""
    try:
        vels = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"--velocities {text!r}: expected MIDI velocities like 25,50,75,100,127") from None
    if not vels or vels[0] < 1 or vels[-1] > 127:
        raise UserError(f"--velocities {text!r}: expected MIDI velocities in 1..127, like 25,50,75,100,127")
    return vels


class _SoundFonts(argparse.Action):
    """--soundfont: a path when given once (the namespace of the one-SoundFont form is unchanged), a
    list of paths when repeated."""

    def __call__(self, parser, namespace, values, option_string=None):
        have = getattr(namespace, self.dest, None)
        if have is None:
            setattr(namespace, self.dest, values)
        else:
            setattr(namespace, self.dest, [*(have if isinstance(have, list) else [have]), values])


def soundfonts(args: argparse.Namespace) -> list[str]:
    """The --soundfont paths given, in order (none: [])."""
    sfs = args.soundfont
    return [] if sfs is None else list(sfs) if isinstance(sfs, list) else [sfs]


def _program_given(argv: list[str]) -> bool:
    return any(a == "--program" or a.startswith("--program=") for a in argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainer dataset",
        description="Build a one-shot dataset folder (manifest.json + notes.f32 or notes.i16) from SoundFonts "
                    "(rendered with FluidSynth), a folder of samples, or NSynth. Several --soundfont or "
                    "--programs make a multi-instrument set: every program of every SoundFont.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--soundfont", metavar="PATH", nargs="?", const=DEFAULT_SOUNDFONT, action=_SoundFonts,
                     help=f"SF2/SF3 to render (the default source; default file {DEFAULT_SOUNDFONT}); "
                          "repeat it for a multi-instrument set")
    src.add_argument("--from-folder", metavar="DIR", help="import every WAV/FLAC/AIFF/OGG under DIR")
    src.add_argument("--nsynth", metavar="DIR", help="import an NSynth split (examples.json + audio/*.wav)")
    p.add_argument("--out", metavar="DIR", required=True, help="dataset folder to create")
    p.add_argument("--program", type=int, default=0, help="SoundFont program (GM 0 = piano; the kit with --drums)")
    p.add_argument("--programs", metavar="LIST", default=None,
                   help="programs of a multi-instrument set, each from every --soundfont: e.g. 0-7,16, "
                        "or BANK:PROGRAM items like 8:4 (several --soundfont without it: --program)")
    p.add_argument("--bank", type=int, default=0, help="SoundFont bank (128 with --drums)")
    p.add_argument("--key-step", type=int, default=1,
                   help="SoundFont: render every Nth key of --pitches (from the lowest), to keep a family small")
    p.add_argument("--storage", choices=("auto", "f32", "i16"), default="auto",
                   help="audio bank: float32 (notes.f32) or int16 scaled per note (notes.i16, half the size); "
                        "auto = i16 for multi-instrument SoundFont sets, f32 otherwise")
    p.add_argument("--allow-held-out", action="store_true",
                   help="let a multi-instrument set use a held-out SoundFont (TimGM6mb: capture is measured on it)")
    p.add_argument("--by-subfolder", action="store_true",
                   help="folder: each top-level subfolder of --from-folder is one instrument")
    p.add_argument("--drums", action="store_true", help="render a GM drum kit (bank 128): each key is a class")
    p.add_argument("--pitches", metavar="KEYS", default=None,
                   help="MIDI keys, e.g. 21-108 or 60,64,67 (default 21-108; 35-81 with --drums; "
                        "for folders and NSynth a filter, default all)")
    p.add_argument("--velocities", metavar="LIST", default=None,
                   help="MIDI velocities (default 25,50,75,100,127 for SoundFonts; a filter for NSynth)")
    p.add_argument("--seconds", type=float, default=4.0, help="note length in seconds")
    p.add_argument("--release", type=float, default=1.0, help="SoundFont: seconds of the note after note-off")
    p.add_argument("--sample-rate", type=int, default=24000, help="sample rate of the set in Hz")
    p.add_argument("--instrument", help="NSynth: instrument names or ids, comma-separated")
    p.add_argument("--family", help="NSynth: families (keyboard, mallet, ...) or ids, comma-separated")
    p.add_argument("--source", help="NSynth: acoustic, electronic and/or synthetic (or ids)")
    p.add_argument("--normalize", choices=("note", "set"), default=None,
                   help="folder/NSynth loudness: per note (-20 dBFS, default for folders) or one gain for "
                        "the whole set, which keeps velocity dynamics (default for NSynth)")
    p.add_argument("--min-seconds", type=float, default=0.1,
                   help="folder/NSynth: files with less sound than this are skipped as too short")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="FluidSynth processes at once")
    p.add_argument("--flac", action="store_true",
                   help="also write every note as a FLAC under DIR/audio/ for listening (the loader reads notes.f32)")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder (atomically)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _check_common(args: argparse.Namespace) -> None:
    if not 0.1 <= args.seconds <= 60:
        raise UserError(f"--seconds {args.seconds}: expected 0.1..60")
    if not 4000 <= args.sample_rate <= 192000:
        raise UserError(f"--sample-rate {args.sample_rate}: expected 4000..192000 Hz")
    if not 0 <= args.min_seconds <= args.seconds:
        raise UserError(f"--min-seconds {args.min_seconds}: expected 0..--seconds ({args.seconds})")
    if args.jobs < 1:
        raise UserError(f"--jobs {args.jobs}: expected 1 or more")
    if not 1 <= args.key_step <= 127:
        raise UserError(f"--key-step {args.key_step}: expected 1..127 (1 renders every key)")
    if _other_source(args):
        for flag, given in (("--programs", args.programs is not None), ("--program", _program_given(args.argv)),
                            ("--key-step", args.key_step != 1), ("--allow-held-out", args.allow_held_out)):
            if given:
                raise UserError(f"{flag} applies to SoundFont renders, not to --from-folder/--nsynth")
    if args.by_subfolder and args.from_folder is None:
        raise UserError("--by-subfolder applies to --from-folder DIR (each subfolder of DIR is one instrument)")
    if args.by_subfolder and args.drums:
        raise UserError("--by-subfolder with --drums: a drum folder's subfolders are already its classes; drop one")
    if args.programs is not None and _program_given(args.argv):
        raise UserError("--program and --programs both given; use --programs (a list) alone")
    if args.soundfont is not None or not _other_source(args):
        if not 0 <= args.release < args.seconds:
            raise UserError(f"--release {args.release}: must be >= 0 and shorter than --seconds {args.seconds}")
        if not 0 <= args.program <= 127:
            raise UserError(f"--program {args.program}: expected 0..127")
        if not 0 <= args.bank <= 128:
            raise UserError(f"--bank {args.bank}: expected 0..128")
        if args.bank == 128 and not args.drums:
            raise UserError("--bank 128 holds drum kits; pass --drums (with --program choosing the kit)")


def _is_family(args: argparse.Namespace) -> bool:
    """Several SoundFonts or --programs: a multi-instrument set (the one-SoundFont form stays as it was)."""
    return not _other_source(args) and (args.programs is not None or len(soundfonts(args)) > 1)


def _other_source(args: argparse.Namespace) -> bool:
    return any(getattr(args, a, None) is not None for a in ("from_folder", "nsynth"))


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        if out.is_dir() and not any(out.iterdir()):
            return
        what = "a dataset" if (out / MANIFEST).exists() else "a folder that is not a dataset"
        raise UserError(f"{out}: already exists ({what}); pass --force to replace it "
                        f"(the old folder stays until the new set is complete), or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose another --out")


def _progress(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="note", file=sys.stderr, leave=False,
                disable=quiet or not sys.stderr.isatty())


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    _check_common(args)
    out = Path(args.out)
    _check_out(out, args.force)
    t0 = time.perf_counter()
    note_samples = int(round(args.seconds * args.sample_rate))
    kind = "drums" if args.drums else "pitched"
    family = _is_family(args)
    storage = args.storage if args.storage != "auto" else ("i16" if family else "f32")
    instruments = None
    if family:
        instruments = _preflight_family(args)
    elif args.from_folder is None and args.nsynth is None:
        _preflight_soundfont(args)
    with atomic_dir(out, replace=True) as tmp:
        writer = DatasetWriter(tmp, args.sample_rate, note_samples, kind, storage)
        try:
            if family:
                summary = _build_family(args, writer, instruments)
            elif args.from_folder is not None:
                summary = _build_folder(args, writer)
            elif args.nsynth is not None:
                if args.drums:
                    raise UserError("--drums does not apply to --nsynth (NSynth notes are pitched)")
                summary = _build_nsynth(args, writer)
            else:
                summary = _build_soundfont(args, writer)
        finally:
            writer.close()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it 0700; a finished set is as readable as any folder
    elapsed = time.perf_counter() - t0
    print(_summary_line(summary, out, elapsed, kind))
    return 0


def _preflight_soundfont(args: argparse.Namespace) -> None:
    """Every SoundFont error that needs no rendering, before any folder is created."""
    from trainer.data import soundfont as sf

    path = Path(args.soundfont or DEFAULT_SOUNDFONT)
    if args.soundfont is None and not path.exists():
        raise UserError(f"no source given and the default SoundFont {path} is not installed; pass --soundfont PATH, "
                        "--from-folder DIR or --nsynth DIR (or apt-get install fluid-soundfont-gm)")
    parse_pitches(args.pitches or "0")
    parse_velocities(args.velocities or "1")
    sf.find_preset(path, args.program, 128 if args.drums else args.bank)
    sf.fluidsynth_version()


def _preflight_family(args: argparse.Namespace) -> list:
    """Every error of a multi-instrument set that needs no rendering, before any folder is created."""
    from trainer.data import family
    from trainer.data import soundfont as sf

    _soundfont_pitches(args)
    parse_velocities(args.velocities or "1")
    bank = 128 if args.drums else args.bank
    programs = family.parse_programs(args.programs if args.programs is not None else str(args.program), bank)
    insts = family.plan(soundfonts(args) or [DEFAULT_SOUNDFONT], programs, drums=args.drums,
                        allow_held_out=args.allow_held_out)
    sf.fluidsynth_version()
    return insts


def _soundfont_pitches(args: argparse.Namespace) -> list[int]:
    """--pitches (default 21-108; 35-81 for kits), every --key-step-th from the lowest."""
    pitches = parse_pitches(args.pitches or ("35-81" if args.drums else "21-108"))
    return pitches[::args.key_step]


def _build_family(args: argparse.Namespace, writer: DatasetWriter, instruments: list) -> dict:
    from trainer.data import family

    pitches = _soundfont_pitches(args)
    velocities = parse_velocities(args.velocities or "25,50,75,100,127")
    with _progress(len(pitches) * len(velocities) * len(instruments), "rendering", args.quiet) as bar:
        res = family.build(writer, instruments, pitches=pitches, velocities=velocities, seconds=args.seconds,
                           release=args.release, jobs=args.jobs, progress=bar.update)
    res["source"].update(key_step=args.key_step, allow_held_out=args.allow_held_out,
                         command=["python", "-m", "trainer", "dataset", *args.argv])
    drum_classes = {str(k): GM_DRUMS.get(k, f"key{k}") for k in pitches} if args.drums else None
    return writer.finalize(pitch_range=(pitches[0], pitches[-1]), velocities=velocities, drum_classes=drum_classes,
                           source=res["source"], note_gains=res["note_gains"], instruments=res["instruments"],
                           flac=args.flac)


def _build_soundfont(args: argparse.Namespace, writer: DatasetWriter) -> dict:
    from trainer.data import soundfont as sf

    path = Path(args.soundfont or DEFAULT_SOUNDFONT)
    pitches = _soundfont_pitches(args)
    velocities = parse_velocities(args.velocities or "25,50,75,100,127")
    bank = 128 if args.drums else args.bank
    with _progress(len(pitches) * len(velocities), "rendering", args.quiet) as bar:
        res = sf.build(writer, soundfont=path, program=args.program, bank=bank, drums=args.drums,
                       pitches=pitches, velocities=velocities, seconds=args.seconds, release=args.release,
                       jobs=args.jobs, progress=bar.update)
    res["source"]["command"] = ["python", "-m", "trainer", "dataset", *args.argv]
    drum_classes = {str(k): GM_DRUMS.get(k, f"key{k}") for k in pitches} if args.drums else None
    return writer.finalize(pitch_range=(pitches[0], pitches[-1]), velocities=velocities,
                           drum_classes=drum_classes, source=res["source"], gain=res["gain"], flac=args.flac)


def _build_folder(args: argparse.Namespace, writer: DatasetWriter) -> dict:
    from trainer.data import folder

    pitches = parse_pitches(args.pitches) if args.pitches else None
    res = folder.build(writer, root=args.from_folder, drums=args.drums, pitches=pitches,
                       min_seconds=args.min_seconds, normalize=args.normalize or "note", jobs=args.jobs,
                       progress_factory=lambda n: _progress(n, "importing", args.quiet), by_subfolder=args.by_subfolder)
    res["source"]["command"] = ["python", "-m", "trainer", "dataset", *args.argv]
    return writer.finalize(drum_classes=res["drum_classes"], source=res["source"], gain=res["gain"],
                           flac=args.flac, instruments=res["instruments"])


def _build_nsynth(args: argparse.Namespace, writer: DatasetWriter) -> dict:
    from trainer.data import nsynth

    res = nsynth.build(writer, root=Path(args.nsynth),
                       filters={"instrument": args.instrument, "family": args.family, "source": args.source},
                       pitches=parse_pitches(args.pitches) if args.pitches else None,
                       velocities=parse_velocities(args.velocities) if args.velocities else None,
                       min_seconds=args.min_seconds, normalize=args.normalize or "set",
                       progress_factory=lambda n: _progress(n, "importing", args.quiet))
    res["source"]["command"] = ["python", "-m", "trainer", "dataset", *args.argv]
    return writer.finalize(source=res["source"], gain=res["gain"], flac=args.flac)


def _summary_line(s: dict, out: Path, elapsed: float, kind: str) -> str:
    rng = "-"
    if s["pitch_min"] is not None:
        rng = f"{s['pitch_min']}-{s['pitch_max']}"
        if kind == "pitched":
            rng += f" ({note_name(s['pitch_min'])}-{note_name(s['pitch_max'])})"
    sp = s["splits"]
    skipped = f"{s['skipped']} skipped (reasons in {out / 'report.json'})" if s["skipped"] else "0 skipped"
    insts = f"{s['instruments']} instruments, " if "instruments" in s else ""
    return (f"dataset {out}: {insts}{s['notes']} notes, {s['minutes']:.1f} min of audio, "
            f"{'keys' if kind == 'drums' else 'pitch'} {rng}, {skipped}; "
            f"train/valid/test {sp['train']}/{sp['valid']}/{sp['test']}; {s['bytes'] / 1e6:.0f} MB in {elapsed:.1f} s")
