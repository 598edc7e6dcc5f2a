"""SoundFont source: render one-shot notes with the real FluidSynth (the `fluidsynth` CLI).

Speed comes from batching: each FluidSynth process renders one MIDI file holding many notes, one
after another in fixed slots, as raw float32 on its stdout, cut into notes as it streams (no
temporary audio on disk); `jobs` processes run at once. Each slot is

    note-on at 0 ─ note-off at (seconds − release) ─ all-sound-off (CC 120) at seconds + MAX_TRIM ─ gap

so no tail leaks into the next note, and the cut (onset .. onset + seconds) never reaches the CC 120.
Reverb and chorus are off (`-R 0 -C 0`): the notes are dry. Levels are kept relative across the set
(one set-wide gain makes the loudest sample −1 dBFS), so velocity stays audible in the data.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.errors import UserError

DEFAULT_SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
TICKS_PER_SECOND = 2000        # MIDI tempo 500000 us/beat at 1000 ticks/beat: 0.5 ms ticks
MAX_TRIM = 0.25                # s of leading silence a note may have before its window is cut short
GAP = 0.05                     # s between a slot's CC 120 and the next note-on
ONSET_DB = -40.0               # a note starts where it first reaches this level below its own peak
PRE_ROLL = 0.001               # s kept before the detected onset, so the attack transient is whole
FADE_OUT = 0.005               # s cosine fade at the window end, so a cut tail does not click
SILENT_DB = -60.0              # a note whose peak is this far below the set's loudest note is "silent"
TARGET_PEAK = 10 ** (-1 / 20)  # set-wide gain puts the loudest sample at -1 dBFS
RENDER_GAIN = 0.5              # FluidSynth -g; float output never clips, the set gain fixes the level
# When a SoundFont does not load, FluidSynth exits 0 and plays its default one (default-GM.sf2/.sf3,
# 8 s to load MuseScore General's Ogg samples) in its place; with none it renders silence, and
# `_render_group` turns its "Failed to load" message into an error.
NO_DEFAULT_SOUNDFONT = "synth.default-soundfont="


@dataclass(frozen=True)
class Preset:
    name: str
    program: int
    bank: int


@dataclass(frozen=True)
class SoundFontFacts:
    """What the header chunks of one SF2/SF3 file say: its presets and its INFO/INAM bank name."""
    presets: tuple[Preset, ...]
    bank_name: str


def _next_chunk(peek: Callable[[int], bytes], pos: int) -> int:
    """Where the next RIFF chunk starts after one ending at `pos`; `peek(p)` gives 4 bytes at p.

    RIFF pads odd-sized chunks to an even offset, but some SF3 writers (MuseScore_General.sf3) do
    not, so take the unpadded offset when a chunk id (4 ASCII letters) starts there.
    """
    if pos & 1 and not peek(pos).isalpha():
        return pos + 1
    return pos


def _sub_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(id, body) of the chunks inside one LIST body (after its 4-byte type)."""
    sub = 4
    while sub + 8 <= len(data):
        sid, ssize = data[sub:sub + 4], struct.unpack_from("<I", data, sub + 4)[0]
        yield sid, data[sub + 8:sub + 8 + ssize]
        sub = _next_chunk(lambda p: data[p:p + 4], sub + 8 + ssize)


def read_soundfont(path: str | os.PathLike) -> SoundFontFacts:
    """The presets (from `pdta/phdr`: 38-byte records, the last is EOP) and the bank name of a SoundFont.

    Seeks over the sample data, so even a 150 MB file costs a few small reads. Raises `UserError`
    naming the file when it is missing, not a RIFF `sfbk` file, or has no preset headers.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _scan(path, f, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        raise UserError(f"{path}: SoundFont not found; pass --soundfont PATH "
                        f"(Debian/Ubuntu: apt-get install fluid-soundfont-gm gives {DEFAULT_SOUNDFONT})") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a SoundFont; pass an .sf2 or .sf3 file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the SoundFont ({e.strerror}); check the path and permissions") from None


def _scan(path: Path, f, size: int) -> SoundFontFacts:
    def peek(p: int) -> bytes:
        f.seek(p)
        return f.read(4)

    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"sfbk":
        raise UserError(f"{path}: not a SoundFont (no RIFF 'sfbk' header); pass an .sf2 or .sf3 file")
    pos, end = 12, min(size, 8 + struct.unpack_from("<I", head, 4)[0])
    presets: list[Preset] = []
    bank_name = ""
    while pos + 8 <= end:
        f.seek(pos)
        hdr = f.read(12)
        cid, csize = hdr[:4], struct.unpack_from("<I", hdr, 4)[0]
        if cid == b"LIST" and hdr[8:12] in (b"pdta", b"INFO"):
            f.seek(pos + 8)
            body = f.read(min(csize, end - pos - 8))
            for sid, data in _sub_chunks(body):
                if sid == b"INAM":
                    bank_name = data.split(b"\0")[0].decode("latin-1").strip()
                elif sid == b"phdr" and not presets:
                    for i in range(len(data) // 38 - 1):  # the last record is the EOP terminator
                        name, program, bank = struct.unpack_from("<20sHH", data, i * 38)
                        presets.append(Preset(name.split(b"\0")[0].decode("latin-1").strip(), program, bank))
                    if not presets:
                        break
        pos = _next_chunk(peek, pos + 8 + csize)
    if not presets:
        raise UserError(f"{path}: SoundFont has no preset headers (truncated or corrupt file); try another SoundFont")
    return SoundFontFacts(tuple(presets), bank_name)


def read_presets(path: str | os.PathLike) -> list[Preset]:
    """The presets of an SF2/SF3 file (see `read_soundfont`)."""
    return list(read_soundfont(path).presets)


def find_preset(path: str | os.PathLike, program: int, bank: int,
                presets: list[Preset] | tuple[Preset, ...] | None = None) -> Preset:
    """The preset at (bank, program), or a `UserError` listing what the SoundFont does have.

    `presets`: the file's presets when already read (`read_soundfont`), to spare a second read.
    """
    presets = read_presets(path) if presets is None else presets
    for p in presets:
        if p.program == program and p.bank == bank:
            return p
    in_bank = sorted(p.program for p in presets if p.bank == bank)
    have = (f"bank {bank} has programs {_ranges(in_bank)}" if in_bank
            else f"it has banks {sorted({p.bank for p in presets})}")
    kind = "drum kit" if bank == 128 else "program"
    raise UserError(f"{path}: no {kind} {program} in bank {bank} ({have}); "
                    "pick one of those with --program (or --programs) and --bank")


def _ranges(xs: list[int]) -> str:
    parts: list[str] = []
    for x in xs:
        if parts and parts[-1].split("-")[-1] == str(x - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{x}"
        else:
            parts.append(str(x))
    return ",".join(parts)


def fluidsynth_version() -> str:
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise UserError("fluidsynth not found on PATH; install it (Debian/Ubuntu: apt-get install fluidsynth)")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "fluidsynth (unknown version)"


@dataclass(frozen=True)
class NoteSpec:
    key: int
    velocity: int


def _slot_seconds(seconds: float) -> float:
    return seconds + MAX_TRIM + GAP


def _write_midi(path: Path, notes: list[NoteSpec], *, program: int, bank: int, drums: bool,
                seconds: float, release: float) -> None:
    import mido

    ch = 9 if drums else 0
    t = lambda s: int(round(s * TICKS_PER_SECOND))  # noqa: E731
    mid = mido.MidiFile(ticks_per_beat=1000)
    tr = mido.MidiTrack()
    mid.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500000, time=0))
    if not drums:
        tr.append(mido.Message("control_change", channel=ch, control=0, value=bank & 127, time=0))
        tr.append(mido.Message("control_change", channel=ch, control=32, value=0, time=0))
    tr.append(mido.Message("program_change", channel=ch, program=program, time=0))
    # One beat of lead-in so bank/program changes are applied before the first note.
    events: list[tuple[int, int, mido.Message]] = []
    lead = t(0.05)
    for i, n in enumerate(notes):
        t0 = lead + i * t(_slot_seconds(seconds))
        events.append((t0, 2, mido.Message("note_on", channel=ch, note=n.key, velocity=n.velocity)))
        events.append((t0 + t(seconds - release), 1, mido.Message("note_off", channel=ch, note=n.key, velocity=0)))
        events.append((t0 + t(seconds + MAX_TRIM), 0, mido.Message("control_change", channel=ch, control=120, value=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    now = 0
    for when, _, msg in events:
        tr.append(msg.copy(time=when - now))
        now = when
    tr.append(mido.MetaMessage("end_of_track", time=t(GAP)))
    mid.save(path)


class _Procs:
    """FluidSynth processes of one render, so an error or Ctrl-C can stop them and nothing outlives us."""

    def __init__(self) -> None:
        self.procs: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def kill(self) -> None:
        with self.lock:
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _render_group(soundfont: Path, midi: Path, specs: list[NoteSpec], *, sample_rate: int, lead: int, slot: int,
                  note_samples: int, procs: _Procs, options: tuple[str, ...] = ()
                  ) -> list[tuple[NoteSpec, np.ndarray, float, float]]:
    """Run one FluidSynth process on `midi`, streaming raw float32 stereo from its stdout, and cut
    each slot into a note as it arrives (no temporary audio on disk, one slot in memory).
    `options`: extra `-o NAME=VALUE` settings."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise UserError("fluidsynth not found on PATH; install it (Debian/Ubuntu: apt-get install fluidsynth)")
    cmd = [exe, "-ni", "-q", "-R", "0", "-C", "0", "-g", str(RENDER_GAIN), "-r", str(sample_rate),
           "-o", "synth.polyphony=256", "-o", NO_DEFAULT_SOUNDFONT, *(a for o in options for a in ("-o", o)),
           "-T", "raw", "-O", "float", "-E", "little", "-F", "-", str(soundfont), str(midi)]
    out: list[tuple[NoteSpec, np.ndarray, float, float]] = []
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty stderr cannot block the render
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        with procs.lock:
            procs.procs.add(proc)
        try:
            buf = np.zeros((slot, 2), dtype="<f4")
            view = memoryview(buf).cast("B")
            got = _read_exact(proc.stdout, memoryview(bytearray(lead * 8)))
            for spec in specs:
                buf[:] = 0.0
                got = _read_exact(proc.stdout, view)
                out.append((spec, *cut_note(buf, sample_rate, note_samples)))
            while proc.stdout.read(1 << 16):  # the end-of-track tail
                pass
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            with procs.lock:
                procs.procs.discard(proc)
        err.seek(0)
        text = err.read().decode("utf-8", "replace")
        if proc.returncode != 0 or (specs and got == 0):
            tail = text.strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"{soundfont}: FluidSynth failed (exit {proc.returncode}: {tail[0]}); "
                            "check that the SoundFont loads with `fluidsynth -i FILE`")
        if re.search(r"failed to load (the )?soundfont", text, re.IGNORECASE):  # FluidSynth still exits 0
            raise UserError(f"{soundfont}: FluidSynth cannot load this SoundFont; check the file with "
                            "`fluidsynth -i FILE`, or use another SoundFont")
    return out


def _read_exact(stream, view: memoryview) -> int:
    """Fill `view` from `stream` as far as it goes; returns the bytes read (short only at EOF)."""
    n = 0
    while n < len(view):
        k = stream.readinto(view[n:])
        if not k:
            break
        n += k
    return n


def cut_note(stereo: np.ndarray, sample_rate: int, note_samples: int) -> tuple[np.ndarray, float, float]:
    """One slot of FluidSynth output -> (mono float32[note_samples], raw peak, seconds of sound).

    `stereo`: float32[frames, 2]. The leading silence is trimmed (at most MAX_TRIM s), the window is
    `note_samples` long from the onset, with a FADE_OUT cosine fade when sound is still going at
    the cut.
    """
    mono = stereo.mean(axis=1, dtype=np.float32)
    a = np.abs(mono)
    peak = float(a.max()) if a.size else 0.0
    out = np.zeros(note_samples, dtype=np.float32)
    if peak == 0.0:
        return out, 0.0, 0.0
    loud = np.flatnonzero(a >= peak * 10 ** (ONSET_DB / 20))
    onset = max(0, min(int(loud[0]), int(MAX_TRIM * sample_rate)) - int(PRE_ROLL * sample_rate))
    seg = mono[onset:onset + note_samples]
    out[:len(seg)] = seg
    fade = min(int(FADE_OUT * sample_rate), note_samples)
    if fade and np.abs(out[-fade:]).max() > peak * 10 ** (ONSET_DB / 20):
        out[-fade:] *= (0.5 + 0.5 * np.cos(np.linspace(0, np.pi, fade, dtype=np.float32)))
    above = np.flatnonzero(np.abs(out) >= peak * 10 ** (SILENT_DB / 20))
    duration = (int(above[-1]) + 1) / sample_rate if above.size else 0.0
    return out, peak, duration


def render_notes(soundfont: str | os.PathLike, notes: list[NoteSpec], *, program: int, bank: int, drums: bool,
                 seconds: float, release: float, sample_rate: int, jobs: int = 2, chunk: int = 64
                 ) -> Iterator[tuple[NoteSpec, np.ndarray, float, float]]:
    """Render `notes` with FluidSynth; yield (spec, float32[seconds*sr] mono, raw peak, duration) in order.

    `jobs` FluidSynth processes run at once, each on `chunk` notes (one MIDI file); at most
    `jobs + 1` groups of cut notes are held in memory.
    """
    voice = Voice(Path(soundfont), program, bank, drums)
    for _, spec, audio, peak, dur in render_parts([(voice, notes)], seconds=seconds, release=release,
                                                  sample_rate=sample_rate, jobs=jobs, chunk=chunk):
        yield spec, audio, peak, dur


@dataclass(frozen=True)
class Voice:
    """One instrument to render: a preset of a SoundFont (drums: a kit in bank 128, on channel 10)."""
    soundfont: Path
    program: int
    bank: int
    drums: bool


def render_parts(parts: list[tuple[Voice, list[NoteSpec]]], *, seconds: float, release: float, sample_rate: int,
                 jobs: int = 2, chunk: int = 64, options: tuple[str, ...] = ()
                 ) -> Iterator[tuple[int, NoteSpec, np.ndarray, float, float]]:
    """Render several instruments' notes; yield (part index, spec, float32[seconds*sr], raw peak, duration).

    Every part is cut into groups of `chunk` notes (one MIDI file and one FluidSynth process each,
    so a group never mixes instruments), and all groups of all parts share one pool of `jobs`
    processes, so no instrument waits for the last group of the one before it. `options` are extra
    FluidSynth `-o` settings. Notes come out in order; at most `jobs + 1` groups are held in memory.
    """
    note_samples = int(round(seconds * sample_rate))
    slot = int(round(_slot_seconds(seconds) * TICKS_PER_SECOND)) * sample_rate // TICKS_PER_SECOND
    lead = int(round(0.05 * TICKS_PER_SECOND)) * sample_rate // TICKS_PER_SECOND
    groups = [(pi, notes[i:i + chunk]) for pi, (_, notes) in enumerate(parts) for i in range(0, len(notes), chunk)]
    procs = _Procs()
    with tempfile.TemporaryDirectory(prefix="fluidsynth-") as tmp:
        tmpd = Path(tmp)

        def render(gi: int) -> list[tuple[NoteSpec, np.ndarray, float, float]]:
            pi, specs = groups[gi]
            v = parts[pi][0]
            midi = tmpd / f"g{gi}.mid"
            _write_midi(midi, specs, program=v.program, bank=v.bank, drums=v.drums, seconds=seconds, release=release)
            return _render_group(v.soundfont, midi, specs, sample_rate=sample_rate, lead=lead, slot=slot,
                                 note_samples=note_samples, procs=procs, options=options)

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            window = max(1, jobs) + 1
            futures = [ex.submit(render, gi) for gi in range(min(window, len(groups)))]
            try:
                for gi in range(len(groups)):
                    done = futures[gi].result()
                    futures[gi] = None
                    if len(futures) < len(groups):
                        futures.append(ex.submit(render, len(futures)))
                    for item in done:
                        yield (groups[gi][0], *item)
            finally:
                for f in futures:
                    if f is not None:
                        f.cancel()
                procs.kill()


def build(writer, *, soundfont: str | os.PathLike, program: int, bank: int, drums: bool, pitches: list[int],
          velocities: list[int], seconds: float, release: float, jobs: int,
          progress: Callable[[int], None] | None = None) -> dict:
    """Render every (pitch, velocity) into `writer`; return the manifest's `source` dict and the set gain.

    Silent notes (a key the preset has no sample for) are skipped with their reason.
    """
    from trainer.data.format import GM_DRUMS

    soundfont = Path(soundfont)
    if drums:
        bank = 128
    preset = find_preset(soundfont, program, bank)
    version = fluidsynth_version()
    specs = [NoteSpec(k, v) for k in pitches for v in velocities]
    sr = writer.sample_rate
    peaks: list[float] = []
    rendered = render_notes(soundfont, specs, program=program, bank=bank, drums=drums, seconds=seconds,
                            release=release, sample_rate=sr, jobs=jobs)
    pending: list[tuple[NoteSpec, float, float]] = []
    for spec, audio, peak, dur in rendered:
        pending.append((spec, peak, dur))
        peaks.append(peak)
        writer.add(audio, pitch=spec.key, velocity=spec.velocity, duration=dur,
                   source=f"{soundfont.name}:bank{bank}:program{program}:key{spec.key}:vel{spec.velocity}",
                   cls=GM_DRUMS.get(spec.key, f"key{spec.key}") if drums else None)
        if progress:
            progress(1)
    set_peak = max(peaks, default=0.0)
    # Silent notes were written in order with the rest; drop them now that the set's peak is known.
    floor = set_peak * 10 ** (SILENT_DB / 20)
    keep = [i for i, (_, p, _) in enumerate(pending) if p > floor and p > 0]
    keep_set = set(keep)
    for i, (spec, p, _) in enumerate(pending):
        if i not in keep_set:
            level = "no sound" if p == 0 else f"peak {20 * np.log10(p / set_peak):.0f} dB below the set"
            writer.skip(f"key {spec.key} velocity {spec.velocity}", f"silent render ({level}): "
                        f"the preset has no sample for this key")
    if not keep:
        raise UserError(f"{soundfont}: {preset.name!r} (bank {bank}, program {program}) rendered only silence "
                        f"for keys {pitches[0]}-{pitches[-1]}; try other --pitches or another --program")
    writer.keep_only(keep)
    gain = TARGET_PEAK / set_peak
    return {"source": {"type": "soundfont", "soundfont": str(soundfont.resolve()), "soundfont_bytes": soundfont.stat().st_size,
                       "preset": preset.name, "bank": bank, "program": program, "drums": drums,
                       "seconds": seconds, "release": release, "renderer": version,
                       "render": {"reverb": False, "chorus": False, "fluidsynth_gain": RENDER_GAIN,
                                  "set_gain": gain, "onset_db": ONSET_DB, "pre_roll_s": PRE_ROLL,
                                  "fade_out_s": FADE_OUT}},
            "gain": gain}
