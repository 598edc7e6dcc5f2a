"""Sample-folder source: every WAV/FLAC/AIFF/OGG under a folder becomes one note.

Pitch comes from the file name when it holds one (see `samples.parse_name`); otherwise pYIN
(`trainer.data.pitch`) estimates it and the estimate and its confidence are recorded. With
`drums=True` each file's class is its subfolder's name (or the first word of its name), mapped to
its GM key when the name is a GM class, else to keys from 82 up.

With `by_subfolder=True` (pitched sets) each top-level subfolder is one instrument of a
multi-instrument set: its notes carry `instrument_index` and `instrument_folder`, and the set lists
the subfolders that gave notes as its instruments (sorted by name).
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import UserError
from trainer.data.format import GM_DRUMS
from trainer.data.samples import AUDIO_EXTENSIONS, Skip, parse_name, prepare, read_audio

MIN_CONFIDENCE = 0.5     # below this a pYIN estimate does not label a note
MISMATCH_SEMITONES = 1.0  # name and confident estimate further apart than this: a warning
PITCH_EXCERPT_S = 1.0    # pYIN looks at the first second of the note (cost ~20 ms)
MAX_FILE_SECONDS = 600.0  # a declared length above this is not a one-shot sample (and would be read whole)
MAX_CHANNELS = 64
MAX_SET_LEVEL = 1e3       # with one set-wide gain, one absurdly loud float file would silence every other note
SAMPLE_RATES = (1000, 768000)


def check_file(path: Path) -> None:
    """Refuse, before any audio is read, what is not a plain file or whose header is implausible.

    A FIFO or device named *.wav would block or never end; a header declaring hours of audio,
    hundreds of channels or a nonsense sample rate would make the reader allocate for it.
    Raises `Skip`.
    """
    import soundfile as sf

    try:
        st = os.stat(path)
    except OSError as e:
        raise Skip(f"unreadable: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not a regular file")
    if st.st_size == 0:
        raise Skip("empty file (0 bytes)")
    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types for corrupt or unknown data
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Skip(f"unreadable: {msg}") from None
    if not SAMPLE_RATES[0] <= info.samplerate <= SAMPLE_RATES[1]:
        raise Skip(f"implausible sample rate {info.samplerate} Hz in the header (expected "
                   f"{SAMPLE_RATES[0]}..{SAMPLE_RATES[1]})")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise Skip(f"implausible channel count {info.channels} in the header (expected 1..{MAX_CHANNELS})")
    if info.frames > MAX_FILE_SECONDS * info.samplerate:
        raise Skip(f"too long: the header declares {info.frames / info.samplerate:.0f} s "
                   f"(a one-shot sample is at most {MAX_FILE_SECONDS:.0f} s)")


def list_audio(root: Path) -> tuple[list[Path], int]:
    """(audio files under root, sorted; number of other files ignored). Hidden entries are ignored."""
    found: list[Path] = []
    ignored = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if f.lower().endswith(AUDIO_EXTENSIONS):
                found.append(Path(dirpath) / f)
            else:
                ignored += 1
    return found, ignored


def _drum_class(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    if len(rel.parts) > 1:
        return rel.parts[0].lower()
    stem = path.stem.lower().replace("-", "_").replace(" ", "_")
    return stem.split("_")[0] or stem


def process_file(path: Path, root: Path, cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything about one file, in a worker process: a note dict with 'audio', or {'skip': reason}."""
    rel = str(path.relative_to(root))
    try:
        check_file(path)
        data, sr = read_audio(path)
        prep = prepare(data, sr, target_sr=cfg["sample_rate"], note_samples=cfg["note_samples"],
                       min_seconds=cfg["min_seconds"], normalize=cfg["normalize"])
        del data
        if not np.isfinite(prep.audio).all():
            raise Skip("corrupt: samples so large that mixing or resampling overflowed")
        if cfg["normalize"] == "set" and float(np.abs(prep.audio).max()) > MAX_SET_LEVEL:
            raise Skip(f"implausible level: peak above {MAX_SET_LEVEL:g} (full scale is 1.0); corrupt float data?")
    except Skip as s:
        return {"file": rel, "skip": str(s)}
    except MemoryError:
        return {"file": rel, "skip": "too large to read into memory"}
    note: dict[str, Any] = {"file": rel, "audio": prep.audio, "duration": prep.duration,
                            "source_rate": prep.source_rate, "source_channels": prep.source_channels}
    pitch, velocity, how = parse_name(path.stem)
    note["velocity"] = velocity
    if cfg["drums"]:
        note["class"] = _drum_class(path, root)
        return note
    from trainer.data.pitch import estimate_f0, hz_to_midi

    f0, conf = estimate_f0(prep.audio[:int(PITCH_EXCERPT_S * cfg["sample_rate"])], cfg["sample_rate"])
    note["f0_hz"] = None if math.isnan(f0) else round(f0, 3)
    note["f0_confidence"] = round(conf, 3)
    if pitch is not None:
        note["pitch"], note["pitch_from"] = pitch, how
        if not math.isnan(f0) and conf >= MIN_CONFIDENCE and abs(hz_to_midi(f0) - pitch) > MISMATCH_SEMITONES:
            note["warning"] = (f"name says key {pitch} ({how}) but pYIN hears {hz_to_midi(f0):.1f} "
                               f"(confidence {conf:.2f}); the name was used")
    elif not math.isnan(f0) and conf >= MIN_CONFIDENCE:
        note["pitch"], note["pitch_from"] = int(round(hz_to_midi(f0))), "pYIN"
    else:
        conf_txt = "nothing voiced" if math.isnan(f0) else f"confidence {conf:.2f} < {MIN_CONFIDENCE}"
        return {"file": rel, "skip": f"no pitch: the name holds no note and pYIN is unsure ({conf_txt}); "
                                     "put the note in the name, e.g. piano_C4.wav"}
    if not 0 <= note["pitch"] <= 127:
        return {"file": rel, "skip": f"pitch {note['pitch']} outside MIDI 0..127"}
    return note


def _ordered(items: list[Path], fn: Callable[[Path], dict[str, Any]], jobs: int) -> Iterator[dict[str, Any]]:
    """fn over items in order, on `jobs` processes with a bounded number in flight."""
    if jobs <= 1 or len(items) < 16:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(jobs) as ex:
        window = jobs * 8
        futs = [ex.submit(fn, p) for p in items[:window]]
        nxt = len(futs)
        for i in range(len(items)):
            try:
                res = futs[i].result()
            except BrokenProcessPool:
                raise UserError(f"{items[i]}: an import worker process died (out of memory or a crash in the "
                                "audio library); move this file away or retry with --jobs 1") from None
            futs[i] = None  # free the audio once written
            if nxt < len(items):
                futs.append(ex.submit(fn, items[nxt]))
                nxt += 1
            yield res


class _Worker:
    """Picklable callable for the process pool."""

    def __init__(self, root: Path, cfg: dict[str, Any]) -> None:
        self.root, self.cfg = root, cfg

    def __call__(self, path: Path) -> dict[str, Any]:
        return process_file(path, self.root, self.cfg)


def build(writer, *, root: str | os.PathLike, drums: bool, pitches: list[int] | None, min_seconds: float,
          normalize: str, jobs: int, progress_factory: Callable[[int], Any], by_subfolder: bool = False
          ) -> dict[str, Any]:
    """Import every audio file under `root` into `writer`; return the manifest `source` dict, gain, drum
    map, and with `by_subfolder` the instrument entries (else None)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: folder not found; pass --from-folder DIR with your samples")
    files, ignored = list_audio(root)
    if not files:
        raise UserError(f"{root}: no WAV/FLAC/AIFF/OGG files found "
                        f"(searched all subfolders; {ignored} other files ignored); point --from-folder at your samples")
    cfg = {"sample_rate": writer.sample_rate, "note_samples": writer.note_samples, "min_seconds": min_seconds,
           "normalize": normalize, "drums": drums}
    wanted = set(pitches) if pitches is not None else None
    estimated = 0
    with progress_factory(len(files)) as bar:
        for res in _ordered(files, _Worker(root, cfg), jobs):
            bar.update(1)
            if "skip" in res:
                writer.skip(res["file"], res["skip"])
                continue
            if drums:
                writer.add(res["audio"], pitch=0, velocity=res["velocity"], source=res["file"],
                           duration=res["duration"], cls=res["class"])
                continue
            if wanted is not None and res["pitch"] not in wanted:
                writer.skip(res["file"], f"pitch {res['pitch']} ({res['pitch_from']}) outside --pitches")
                continue
            parts = Path(res["file"]).parts
            if by_subfolder and len(parts) < 2:
                writer.skip(res["file"], "not in an instrument subfolder (--by-subfolder: one subfolder per instrument)")
                continue
            if "warning" in res:
                writer.warn(res["file"], res["warning"])
            estimated += res["pitch_from"] == "pYIN"
            extra = {"instrument_folder": parts[0]} if by_subfolder else {}
            writer.add(res["audio"], pitch=res["pitch"], velocity=res["velocity"], source=res["file"],
                       duration=res["duration"], pitch_from=res["pitch_from"], f0_hz=res["f0_hz"],
                       f0_confidence=res["f0_confidence"], **extra)
    drum_classes = _assign_drum_keys(writer) if drums else None
    if not writer.notes:
        _no_notes(root, writer)
    instruments = _assign_instruments(root, writer, files) if by_subfolder else None
    gain = 1.0
    if normalize == "set":
        gain = 10 ** (-1 / 20) / max(writer.peak(), 1e-12)
    return {"source": {"type": "folder", "folder": str(root.resolve()), "files": len(files), "ignored_files": ignored,
                       "normalize": normalize, "min_seconds": min_seconds, "pitch_estimated": estimated,
                       "pitch_estimator": "pYIN thresholds, median over the stable part (trainer.data.pitch)",
                       **({"by_subfolder": True} if by_subfolder else {})},
            "gain": gain, "drum_classes": drum_classes, "instruments": instruments}


def _assign_instruments(root: Path, writer, files: list[Path]) -> list[dict[str, Any]]:
    """One instrument per subfolder that gave notes, sorted by name; sets each note's `instrument_index`.

    A subfolder whose files were all skipped is no instrument of the set (a warning says so), so
    the indices count only timbres that have notes.
    """
    names = sorted({n["instrument_folder"] for n in writer.notes})
    index = {name: i for i, name in enumerate(names)}
    for n in writer.notes:
        n["instrument_index"] = index[n["instrument_folder"]]
    for sub in sorted({f.relative_to(root).parts[0] for f in files if len(f.relative_to(root).parts) > 1} - set(names)):
        writer.warn(sub, "no usable notes in this subfolder (see skipped); it is not an instrument of the set")
    return [{"id": name, "name": name, "source": f"{root.name}/{name}", "bank": None, "program": None,
             "gm_kind": None, "held_out": False} for name in names]


def _assign_drum_keys(writer) -> dict[str, str]:
    """GM key for GM class names, keys 82.. for the rest (sorted by name); sets each note's pitch."""
    by_name = {v: k for k, v in sorted(GM_DRUMS.items(), reverse=True)}
    names = sorted({n["class"] for n in writer.notes})
    keys: dict[str, int] = {}
    nxt = 82
    for name in names:
        if name in by_name:
            keys[name] = by_name[name]
        else:
            while nxt in keys.values():
                nxt += 1
            if nxt > 127:
                raise UserError(f"more than {127 - 82 + 1} drum classes that are not GM names; merge some subfolders")
            keys[name] = nxt
            nxt += 1
    for n in writer.notes:
        n["pitch"] = keys[n["class"]]
    return {str(k): name for name, k in sorted(keys.items(), key=lambda kv: kv[1])}


def _no_notes(root: Path, writer) -> None:
    reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in writer.skipped[:3])
    more = f" (and {len(writer.skipped) - 3} more)" if len(writer.skipped) > 3 else ""
    raise UserError(f"{root}: no usable notes, every file was skipped: {reasons}{more}")


