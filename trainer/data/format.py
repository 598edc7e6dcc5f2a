"""The dataset folder format (versions 1 and 2) and the writer that builds it.

A dataset folder holds:

- `manifest.json`: format `neural-synth-dataset`, set-wide facts (sample rate, note length, kind,
  pitch range, velocities, drum classes, instruments, how it was made) and one entry per note.
- The audio bank, every note's audio mono at the set's sample rate, `note_samples` samples per
  note, back to back. One flat file, so a loader opens one memory map whatever the number of notes
  and never holds the whole set in RAM. Two storages:
  - `notes.f32` (version 1): float32 little-endian in [-1, 1].
  - `notes.i16` (version 2, `"storage": "i16"`): int16 little-endian, each note scaled to its own
    peak; its float audio is `int16 * float32(note["scale"])`. Half the size of float32, and every
    note keeps 96 dB below its own peak, quiet velocities included.
- `report.json`: what was skipped and why, warnings, and the summary.
- `audio/` (optional, `--flac`): one FLAC per note, only for people who want to listen.

A note entry:
`{"file": "notes.f32"|"notes.i16", "offset": <first sample>, "pitch": <MIDI key>, "class": <drum class
or null>, "velocity": <1..127 or null>, "source": <where it came from>, "duration": <seconds of real
sound before zero padding>, "sample_rate": <Hz>, "hash": <16 hex digits of the sha256 of its float32
audio>, "split": "train"|"valid"|"test"}`, plus `scale` (i16), `f0_hz`, `f0_confidence` where the
pitch was estimated (or checked) with pYIN, and `flac` when written.

A multi-instrument set (several SoundFont presets, or a folder with a subfolder per instrument)
also lists `"instruments"`: `{"index", "id", "name", "source", "bank", "program", "gm_kind",
"held_out", "gain", "notes", "pitch_range", "splits"}`, and each note carries `instrument_index`
(into that list) and, for SoundFonts, `soundfont` (file name), `bank`, `program`, `preset`.
Duplicates are dropped within an instrument only, and every instrument with at least three notes
has notes in train, valid and test (see `balance_splits`).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from synth import gm

FORMAT = "neural-synth-dataset"
VERSION = 2          # the newest version this code reads and writes
VERSIONS = {1: "f32", 2: None}  # version -> the storage it implies (2 names it in "storage")
MANIFEST = "manifest.json"
BANK = "notes.f32"
BANK_I16 = "notes.i16"
BANKS = {"f32": (BANK, "<f4"), "i16": (BANK_I16, "<i2")}  # storage -> (bank file, numpy dtype)
REPORT = "report.json"
I16_FULL = 32767     # a note's peak is stored as +-32767

# Fractions of the 32-bit hash prefix: [0, 0.90) train, [0.90, 0.95) valid, [0.95, 1) test.
SPLIT_EDGES = (0.90, 0.95)

# GM percussion map (keys 35..81), one class per key so the key alone identifies the sound.
GM_DRUMS: dict[int, str] = {
    35: "kick_acoustic", 36: "kick", 37: "side_stick", 38: "snare", 39: "clap",
    40: "snare_electric", 41: "tom_floor_low", 42: "hat_closed", 43: "tom_floor_high",
    44: "hat_pedal", 45: "tom_low", 46: "hat_open", 47: "tom_low_mid", 48: "tom_high_mid",
    49: "crash", 50: "tom_high", 51: "ride", 52: "china", 53: "ride_bell", 54: "tambourine",
    55: "splash", 56: "cowbell", 57: "crash_2", 58: "vibraslap", 59: "ride_2", 60: "bongo_high",
    61: "bongo_low", 62: "conga_high_mute", 63: "conga_high_open", 64: "conga_low",
    65: "timbale_high", 66: "timbale_low", 67: "agogo_high", 68: "agogo_low", 69: "cabasa",
    70: "maracas", 71: "whistle_short", 72: "whistle_long", 73: "guiro_short", 74: "guiro_long",
    75: "claves", 76: "woodblock_high", 77: "woodblock_low", 78: "cuica_mute", 79: "cuica_open",
    80: "triangle_mute", 81: "triangle_open",
}


# The 16 GM program families, 8 programs each (GM 1 sound set): program // 8 indexes this.
# The GM families of synth.gm (the one table), as manifest words: "piano" .. "sound_effects".
GM_FAMILIES = tuple(f.lower().replace(" ", "_") for f in gm.FAMILIES)


def gm_kind(program: int | None, drums: bool = False) -> str | None:
    """The GM family of a program (0..127) -> 'piano' .. 'sound_effects'; 'drums' for a kit; None if unknown."""
    if drums:
        return "drums"
    if program is None or not 0 <= program <= 127:
        return None
    return GM_FAMILIES[program // 8]


def content_hash(audio: np.ndarray) -> str:
    """16 hex digits of the sha256 of `audio` as float32 little-endian bytes."""
    a = np.ascontiguousarray(audio, dtype="<f4")
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


def split_of(hash_hex: str) -> str:
    """Deterministic split from a content hash: about 90 % train, 5 % valid, 5 % test."""
    u = int(hash_hex[:8], 16) / 2**32
    if u < SPLIT_EDGES[0]:
        return "train"
    if u < SPLIT_EDGES[1]:
        return "valid"
    return "test"


def class_names(drum_classes: dict[str, str] | None) -> list[str]:
    """Drum class names ordered by MIDI key; `cls` in the loader indexes this list.

    Two keys with the same name share one index (the list holds each name once, at its lowest key).
    """
    if not drum_classes:
        return []
    names: list[str] = []
    for _, name in sorted(((int(k), v) for k, v in drum_classes.items()), key=lambda kv: kv[0]):
        if name not in names:
            names.append(name)
    return names


def _split_distance(hash_hex: str, split: str) -> float:
    """How far a hash's 32-bit fraction lies outside the range that `split_of` maps to `split`."""
    u = int(hash_hex[:8], 16) / 2**32
    lo, hi = {"train": (0.0, SPLIT_EDGES[0]), "valid": SPLIT_EDGES, "test": (SPLIT_EDGES[1], 1.0)}[split]
    return max(lo - u, u - hi, 0.0)


def balance_splits(notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give every instrument notes in train, test and valid (in that order of need); returns the moved notes.

    Splits stay by content hash, so a note's split does not depend on what else is in the set,
    except here: an instrument of n notes that has none in a split it needs (train for n >= 1,
    test for n >= 2, valid for n >= 3) gets the note whose hash lies nearest that split's range,
    taken from a split that keeps a note (or that it does not need). Moved notes get
    `"split_moved": true`. With ~440 notes an instrument practically never needs this; with a
    few dozen (`--key-step`, few velocities) it can, and a family must be measurable per timbre.
    """
    by_inst: dict[Any, list[dict[str, Any]]] = {}
    for n in notes:
        by_inst.setdefault(n.get("instrument_index"), []).append(n)
    moved: list[dict[str, Any]] = []
    for group in by_inst.values():
        need = ("train", "test", "valid")[:min(3, len(group))]
        for split in need:
            counts = {s: sum(1 for n in group if n["split"] == s) for s in ("train", "valid", "test")}
            if counts[split]:
                continue
            donors = [n for n in group if counts[n["split"]] > 1 or n["split"] not in need]
            pick = min(donors, key=lambda n: (_split_distance(n["hash"], split), n["hash"]))
            pick["split"], pick["split_moved"] = split, True
            moved.append(pick)
    return moved


class DatasetWriter:
    """Appends fixed-length notes to the audio bank in `folder`, then writes the manifest.

    Audio goes to disk as it arrives (memory stays bounded whatever the set size). `storage`:
    "f32" (notes.f32) or "i16" (notes.i16, each note quantised against its own peak as it is
    added, so a later gain only changes its scale). `finalize` applies one optional set-wide gain
    (or one per note), drops exact duplicates (within an instrument when notes carry
    `instrument_index`), hashes every note, assigns splits and writes `manifest.json` and
    `report.json`. The caller owns `folder` (a temporary folder from `synth.fsutil.atomic_dir`).
    """

    def __init__(self, folder: Path, sample_rate: int, note_samples: int, kind: str, storage: str = "f32") -> None:
        if kind not in ("pitched", "drums"):
            raise ValueError(f"kind must be 'pitched' or 'drums', not {kind!r}")
        if storage not in BANKS:
            raise ValueError(f"storage must be one of {sorted(BANKS)}, not {storage!r}")
        self.folder = Path(folder)
        self.sample_rate = int(sample_rate)
        self.note_samples = int(note_samples)
        self.kind = kind
        self.storage = storage
        self.bank_name, self.dtype = BANKS[storage]
        self.notes: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        self._drop: set[int] = set()
        self._bank = open(self.folder / self.bank_name, "wb")  # noqa: SIM115 - closed in finalize/close

    def add(self, audio: np.ndarray, *, pitch: int, velocity: int | None, source: str,
            duration: float, cls: str | None = None, **extra: Any) -> None:
        """Append one note. `audio`: float32[note_samples] mono at the set's sample rate."""
        a = np.ascontiguousarray(audio, dtype="<f4")
        if a.shape != (self.note_samples,):
            raise ValueError(f"note audio must have shape ({self.note_samples},), got {a.shape}")
        scale = None
        if self.storage == "i16":
            a, scale = quantize_i16(a)
        self._bank.write(a.tobytes())
        note = {"file": self.bank_name, "offset": len(self.notes) * self.note_samples, "pitch": int(pitch),
                "class": cls, "velocity": None if velocity is None else int(velocity),
                "source": source, "duration": round(float(duration), 6),
                "sample_rate": self.sample_rate}
        if scale is not None:
            note["scale"] = scale
        note.update(extra)
        self.notes.append(note)

    def keep_only(self, indices: Iterable[int]) -> None:
        """Leave out every note added so far whose index is not in `indices` (record why with `skip`)."""
        keep = set(indices)
        self._drop = {i for i in range(len(self.notes)) if i not in keep}

    def skip(self, what: str, reason: str) -> None:
        """Record a file or note that was left out, and why."""
        self.skipped.append({"file": what, "reason": reason})

    def warn(self, what: str, message: str) -> None:
        self.warnings.append({"file": what, "message": message})

    def _map(self, n: int, mode: str = "r") -> np.memmap:
        return np.memmap(self.folder / self.bank_name, dtype=self.dtype, mode=mode, shape=(n, self.note_samples))

    def _decode(self, rows: np.ndarray, notes: list[dict[str, Any]]) -> np.ndarray:
        """float32[len(notes), note_samples]: the audio of bank rows, as the loader will return it."""
        if self.storage == "f32":
            return np.asarray(rows, dtype=np.float32)
        scales = np.array([n["scale"] for n in notes], dtype=np.float32)
        return rows.astype(np.float32) * scales[:, None]

    def _write_flacs(self) -> None:
        import soundfile as sf

        (self.folder / "audio").mkdir(exist_ok=True)
        bank = self._map(len(self.notes))
        for j, note in enumerate(self.notes):
            name = f"audio/{j:05d}_{_label(note)}.flac"
            sf.write(self.folder / name, self._decode(bank[j:j + 1], [note])[0], self.sample_rate, subtype="PCM_24")
            note["flac"] = name
        del bank

    def close(self) -> None:
        if not self._bank.closed:
            self._bank.close()

    def peak(self, chunk_notes: int = 256) -> float:
        """Largest |sample| over every note written so far (reads the bank in chunks)."""
        self._bank.flush()
        n = len(self.notes)
        if n == 0:
            return 0.0
        if self.storage == "i16":  # each note's peak is its scale times 32767
            return max(abs(float(m["scale"])) * I16_FULL for m in self.notes)
        bank = self._map(n)
        return max(float(np.abs(bank[i:i + chunk_notes]).max()) for i in range(0, n, chunk_notes))

    def _compact(self, gain: float, note_gains: list[float] | None) -> list[dict[str, Any]]:
        """Apply the gains, drop left-out notes and exact duplicates, hash and split; rewrite the bank in place.

        Reads and writes one row at a time through the file (not a memory map), so a 1.4 GB bank
        costs one row of memory, not its whole page cache in this process's resident set.
        """
        N = self.note_samples
        row_bytes = N * np.dtype(self.dtype).itemsize
        kept: list[dict[str, Any]] = []
        seen: dict[tuple[Any, str], str] = {}
        with open(self.folder / self.bank_name, "rb+") as f:
            for i, note in enumerate(self.notes):
                if i in self._drop:
                    continue
                g = gain if note_gains is None else float(note_gains[i])
                f.seek(i * row_bytes)
                row = np.frombuffer(f.read(row_bytes), dtype=self.dtype)
                if self.storage == "i16":
                    note["scale"] = float(note["scale"]) * g
                    audio = self._decode(row[None], [note])[0]
                else:
                    if g != 1.0:
                        row = (row * np.float32(g)).astype("<f4")
                    audio = row
                h = content_hash(audio)
                key = (note.get("instrument_index"), h)  # a duplicate across instruments is two timbres' notes
                if key in seen:
                    self.skip(note["source"], f"exact duplicate of {seen[key]}")
                    continue
                seen[key] = note["source"]
                j = len(kept)
                if j != i or (self.storage == "f32" and g != 1.0):
                    f.seek(j * row_bytes)  # compaction in place: j <= i, so no unread row is overwritten
                    f.write(row.tobytes())
                note["offset"] = j * N
                note["hash"] = h
                note["split"] = split_of(h)
                kept.append(note)
            f.truncate(len(kept) * row_bytes)
            f.flush()
            os.fsync(f.fileno())
        return kept

    def finalize(self, *, pitch_range: Iterable[int] | None = None, velocities: Iterable[int] | None = None,
                 drum_classes: dict[str, str] | None = None, source: dict[str, Any] | None = None,
                 gain: float = 1.0, summary_extra: dict[str, Any] | None = None,
                 flac: bool = False, note_gains: list[float] | None = None,
                 instruments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Apply `gain` (or `note_gains`, one per added note), drop duplicates, hash, split, write
        manifest.json and report.json.

        With `instruments` (the set's instrument list; notes carry `instrument_index`), every
        instrument is given notes in each split (`balance_splits`) and its entry gains its note
        count, pitch range and split counts. With `flac`, also write each note as
        `audio/NNNNN_<pitch or class>_v<velocity>.flac` (24-bit) for listening; the loader never
        reads them.

        Returns the summary dict (also stored in report.json).
        """
        self.close()
        kept = self._compact(gain, note_gains)
        self.notes = kept
        if instruments is not None:
            for m in balance_splits(kept):
                self.warn(m["source"], f"moved to {m['split']} so that its instrument is in every split")
            instruments = _count_instruments(instruments, kept)
        if flac and kept:
            self._write_flacs()

        pitches = [m["pitch"] for m in kept]
        lo, hi = (min(pitches), max(pitches)) if pitches else (0, 0)
        if pitch_range is not None:
            lo, hi = (int(x) for x in pitch_range)
        vels = sorted({m["velocity"] for m in kept if m["velocity"] is not None})
        if velocities is not None:
            vels = sorted(int(v) for v in velocities)
        classes = None
        if self.kind == "drums":
            used = {m["pitch"] for m in kept}
            src = drum_classes or {}
            classes = {str(k): src[str(k)] for k in sorted(int(k) for k in src) if k in used}
        manifest: dict[str, Any] = {"format": FORMAT, "version": 1 if self.storage == "f32" else 2}
        if self.storage != "f32":
            manifest["storage"] = self.storage
        manifest.update({
            "sample_rate": self.sample_rate, "note_samples": self.note_samples,
            "kind": self.kind, "pitch_range": [lo, hi], "velocities": vels, "drum_classes": classes,
            "source": source or {}})
        if instruments is not None:
            manifest["instruments"] = instruments
        manifest["notes"] = kept
        splits = {s: sum(1 for m in kept if m["split"] == s) for s in ("train", "valid", "test")}
        summary = {
            "notes": len(kept), "minutes": round(len(kept) * self.note_samples / self.sample_rate / 60.0, 3),
            "pitch_min": min(pitches) if pitches else None, "pitch_max": max(pitches) if pitches else None,
            "skipped": len(self.skipped), "warnings": len(self.warnings), "splits": splits,
            "bytes": len(kept) * self.note_samples * np.dtype(self.dtype).itemsize, "gain": gain,
        }
        if instruments is not None:
            summary["instruments"] = len(instruments)
        summary.update(summary_extra or {})
        _write_manifest(self.folder / MANIFEST, manifest)
        _write_json(self.folder / REPORT, {"summary": summary, "skipped": self.skipped, "warnings": self.warnings})
        return summary


def quantize_i16(audio: np.ndarray) -> tuple[np.ndarray, float]:
    """float32[N] -> (int16[N] little-endian with the note's peak at +-32767, scale); audio ~= int16 * scale.

    Rounds to nearest without dither: the error is at most half a step, 96 dB below the note's own
    peak, and the same audio always gives the same bytes (and content hash).
    """
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return np.zeros(audio.shape, dtype="<i2"), 0.0
    q = np.rint(audio.astype(np.float64) * (I16_FULL / peak))
    return np.clip(q, -I16_FULL, I16_FULL).astype("<i2"), peak / I16_FULL


def _count_instruments(instruments: list[dict[str, Any]], notes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The instrument entries with `notes`, `pitch_range` and `splits` counted from the kept notes."""
    out = []
    for idx, inst in enumerate(instruments):
        mine = [n for n in notes if n.get("instrument_index") == idx]
        keys = [n["pitch"] for n in mine]
        out.append({"index": idx, **inst, "notes": len(mine),
                    "pitch_range": [min(keys), max(keys)] if keys else None,
                    "splits": {s: sum(1 for n in mine if n["split"] == s) for s in ("train", "valid", "test")}})
    return out


_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def _label(note: dict[str, Any]) -> str:
    if note.get("class"):
        what = str(note["class"])
    else:
        what = f"{_NAMES[note['pitch'] % 12]}{note['pitch'] // 12 - 1}".replace("#", "s")
    return f"{what}_v{note['velocity']}" if note.get("velocity") is not None else what


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Indented header, one line per note: readable, diffable and small for 20k notes."""
    head = {k: v for k, v in manifest.items() if k != "notes"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "notes": [\n'
    text += ",\n".join("  " + json.dumps(n) for n in manifest["notes"])
    text += "\n ]\n}\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
