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


@dataclass(frozen=True)
class Preset:
    name: str
    program: int
    bank: int


def _next_chunk(data: bytes, pos: int) -> int:
    """Where the next RIFF chunk starts after one ending at `pos`.

    RIFF pads odd-sized chunks to an even offset, but some SF3 writers (MuseScore_General.sf3) do
    not, so take the unpadded offset when a chunk id (4 ASCII letters) starts there.
    """
    if pos & 1 and not data[pos:pos + 4].isalpha():
        return pos + 1
    return pos


def read_presets(path: str | os.PathLike) -> list[Preset]:
    """The presets of an SF2/SF3 file, from its `pdta/phdr` chunk (38-byte records, last is EOP).

    Raises `UserError` naming the file when it is not a RIFF `sfbk` file or has no preset headers.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: SoundFont not found; pass --soundfont PATH "
                        f"(Debian/Ubuntu: apt-get install fluid-soundfont-gm gives {DEFAULT_SOUNDFONT})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the SoundFont ({e.strerror}); check the path and permissions") from None
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"sfbk":
        raise UserError(f"{path}: not a SoundFont (no RIFF 'sfbk' header); pass an .sf2 or .sf3 file")
    pos, end = 12, min(len(data), 8 + struct.unpack_from("<I", data, 4)[0])
    while pos + 8 <= end:
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if cid == b"LIST" and data[body:body + 4] == b"pdta":
            sub, sub_end = body + 4, min(body + size, len(data))
            while sub + 8 <= sub_end:
                sid, ssize = data[sub:sub + 4], struct.unpack_from("<I", data, sub + 4)[0]
                if sid == b"phdr":
                    recs = data[sub + 8:sub + 8 + ssize]
                    out = []
                    for i in range(len(recs) // 38 - 1):  # the last record is the EOP terminator
                        name, program, bank = struct.unpack_from("<20sHH", recs, i * 38)
                        out.append(Preset(name.split(b"\0")[0].decode("latin-1").strip(), program, bank))
                    if out:
                        return out
                    break
                sub = _next_chunk(data, sub + 8 + ssize)
        pos = _next_chunk(data, body + size)
    raise UserError(f"{path}: SoundFont has no preset headers (truncated or corrupt file); try another SoundFont")


def find_preset(path: str | os.PathLike, program: int, bank: int) -> Preset:
    """The preset at (bank, program), or a `UserError` listing what the SoundFont does have."""
    presets = read_presets(path)
    for p in presets:
        if p.program == program and p.bank == bank:
            return p
    in_bank = sorted(p.program for p in presets if p.bank == bank)
    have = (f"bank {bank} has programs {_ranges(in_bank)}" if in_bank
            else f"it has banks {sorted({p.bank for p in presets})}")
    kind = "drum kit" if bank == 128 else "program"
    raise UserError(f"{path}: no {kind} {program} in bank {bank} ({have}); pick one of those with --program/--bank")


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
                  note_samples: int, procs: _Procs) -> list[tuple[NoteSpec, np.ndarray, float, float]]:
    """Run one FluidSynth process on `midi`, streaming raw float32 stereo from its stdout, and cut
    each slot into a note as it arrives (no temporary audio on disk, one slot in memory)."""
    exe = shutil.which("fluidsynth")
    if exe is None:
        raise UserError("fluidsynth not found on PATH; install it (Debian/Ubuntu: apt-get install fluidsynth)")
    cmd = [exe, "-ni", "-q", "-R", "0", "-C", "0", "-g", str(RENDER_GAIN), "-r", str(sample_rate),
           "-o", "synth.polyphony=256", "-T", "raw", "-O", "float", "-E", "little", "-F", "-",
           str(soundfont), str(midi)]
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
        if proc.returncode != 0 or (specs and got == 0):
            err.seek(0)
            tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"{soundfont}: FluidSynth failed (exit {proc.returncode}: {tail[0]}); "
                            "check that the SoundFont loads with `fluidsynth -i FILE`")
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
    soundfont = Path(soundfont)
    note_samples = int(round(seconds * sample_rate))
    slot = int(round(_slot_seconds(seconds) * TICKS_PER_SECOND)) * sample_rate // TICKS_PER_SECOND
    lead = int(round(0.05 * TICKS_PER_SECOND)) * sample_rate // TICKS_PER_SECOND
    groups = [notes[i:i + chunk] for i in range(0, len(notes), chunk)]
    procs = _Procs()
    with tempfile.TemporaryDirectory(prefix="fluidsynth-") as tmp:
        tmpd = Path(tmp)

        def render(gi: int) -> list[tuple[NoteSpec, np.ndarray, float, float]]:
            midi = tmpd / f"g{gi}.mid"
            _write_midi(midi, groups[gi], program=program, bank=bank, drums=drums, seconds=seconds, release=release)
            return _render_group(soundfont, midi, groups[gi], sample_rate=sample_rate, lead=lead, slot=slot,
                                 note_samples=note_samples, procs=procs)

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            window = max(1, jobs) + 1
            futures = [ex.submit(render, gi) for gi in range(min(window, len(groups)))]
            try:
                for gi in range(len(groups)):
                    done = futures[gi].result()
                    futures[gi] = None
                    if len(futures) < len(groups):
                        futures.append(ex.submit(render, len(futures)))
                    yield from done
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
