"""The dataset folder format (version 1) and the writer that builds it.

A dataset folder holds:

- `manifest.json`: format `neural-synth-dataset`, version 1, set-wide facts (sample rate, note
  length, kind, pitch range, velocities, drum classes, how it was made) and one entry per note.
- `notes.f32`: every note's audio, float32 little-endian mono in [-1, 1] at the set's sample rate,
  `note_samples` samples per note, back to back. One flat file, so a loader opens one memory map
  whatever the number of notes and never holds the whole set in RAM.
- `report.json`: what was skipped and why, warnings, and the summary.
- `audio/` (optional, `--flac`): one FLAC per note, only for people who want to listen.

A note entry:
`{"file": "notes.f32", "offset": <first sample>, "pitch": <MIDI key>, "class": <drum class or null>,
"velocity": <1..127 or null>, "source": <where it came from>, "duration": <seconds of real sound
before zero padding>, "sample_rate": <Hz>, "hash": <16 hex digits of the sha256 of its float32
bytes>, "split": "train"|"valid"|"test"}`, plus `f0_hz`, `f0_confidence` where the pitch was
estimated (or checked) with pYIN, and `flac` when written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "neural-synth-dataset"
VERSION = 1
MANIFEST = "manifest.json"
BANK = "notes.f32"
REPORT = "report.json"

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


class DatasetWriter:
    """Appends fixed-length notes to `notes.f32` in `folder`, then writes the manifest.

    Audio goes to disk as it arrives (memory stays bounded whatever the set size). `finalize`
    applies one optional set-wide gain, drops exact duplicates, hashes every note, assigns splits
    and writes `manifest.json` and `report.json`. The caller owns `folder` (a temporary folder from
    `synth.fsutil.atomic_dir`).
    """

    def __init__(self, folder: Path, sample_rate: int, note_samples: int, kind: str) -> None:
        if kind not in ("pitched", "drums"):
            raise ValueError(f"kind must be 'pitched' or 'drums', not {kind!r}")
        self.folder = Path(folder)
        self.sample_rate = int(sample_rate)
        self.note_samples = int(note_samples)
        self.kind = kind
        self.notes: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.warnings: list[dict[str, str]] = []
        self._drop: set[int] = set()
        self._bank = open(self.folder / BANK, "wb")  # noqa: SIM115 - closed in finalize/close

    def add(self, audio: np.ndarray, *, pitch: int, velocity: int | None, source: str,
            duration: float, cls: str | None = None, **extra: Any) -> None:
        """Append one note. `audio`: float32[note_samples] mono at the set's sample rate."""
        a = np.ascontiguousarray(audio, dtype="<f4")
        if a.shape != (self.note_samples,):
            raise ValueError(f"note audio must have shape ({self.note_samples},), got {a.shape}")
        self._bank.write(a.tobytes())
        note = {"file": BANK, "offset": len(self.notes) * self.note_samples, "pitch": int(pitch),
                "class": cls, "velocity": None if velocity is None else int(velocity),
                "source": source, "duration": round(float(duration), 6),
                "sample_rate": self.sample_rate}
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

    def _write_flacs(self) -> None:
        import soundfile as sf

        (self.folder / "audio").mkdir(exist_ok=True)
        bank = np.memmap(self.folder / BANK, dtype="<f4", mode="r", shape=(len(self.notes), self.note_samples))
        for j, note in enumerate(self.notes):
            name = f"audio/{j:05d}_{_label(note)}.flac"
            sf.write(self.folder / name, np.asarray(bank[j]), self.sample_rate, subtype="PCM_24")
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
        bank = np.memmap(self.folder / BANK, dtype="<f4", mode="r", shape=(n, self.note_samples))
        return max(float(np.abs(bank[i:i + chunk_notes]).max()) for i in range(0, n, chunk_notes))

    def finalize(self, *, pitch_range: Iterable[int] | None = None, velocities: Iterable[int] | None = None,
                 drum_classes: dict[str, str] | None = None, source: dict[str, Any] | None = None,
                 gain: float = 1.0, summary_extra: dict[str, Any] | None = None,
                 flac: bool = False) -> dict[str, Any]:
        """Apply `gain`, drop duplicates, hash, split, write manifest.json and report.json.

        With `flac`, also write each note as `audio/NNNNN_<pitch or class>_v<velocity>.flac` (24-bit)
        for listening; the loader never reads them.

        Returns the summary dict (also stored in report.json).
        """
        self.close()
        n = len(self.notes)
        N = self.note_samples
        kept: list[dict[str, Any]] = []
        if n:
            bank = np.memmap(self.folder / BANK, dtype="<f4", mode="r+", shape=(n, N))
            seen: dict[str, str] = {}
            for i, note in enumerate(self.notes):
                if i in self._drop:
                    continue
                row = bank[i]
                if gain != 1.0:
                    row = (row * np.float32(gain)).astype("<f4")
                h = content_hash(row)
                if h in seen:
                    self.skip(note["source"], f"exact duplicate of {seen[h]}")
                    continue
                seen[h] = note["source"]
                j = len(kept)
                if j != i or gain != 1.0:
                    bank[j] = row  # compaction in place: j <= i, so no unread row is overwritten
                note["offset"] = j * N
                note["hash"] = h
                note["split"] = split_of(h)
                kept.append(note)
            bank.flush()
            del bank
        with open(self.folder / BANK, "rb+") as f:
            f.truncate(len(kept) * N * 4)
            f.flush()
            os.fsync(f.fileno())
        self.notes = kept
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
        manifest = {
            "format": FORMAT, "version": VERSION, "sample_rate": self.sample_rate, "note_samples": N,
            "kind": self.kind, "pitch_range": [lo, hi], "velocities": vels, "drum_classes": classes,
            "source": source or {}, "notes": kept,
        }
        splits = {s: sum(1 for m in kept if m["split"] == s) for s in ("train", "valid", "test")}
        summary = {
            "notes": len(kept), "minutes": round(len(kept) * N / self.sample_rate / 60.0, 3),
            "pitch_min": min(pitches) if pitches else None, "pitch_max": max(pitches) if pitches else None,
            "skipped": len(self.skipped), "warnings": len(self.warnings), "splits": splits,
            "bytes": len(kept) * N * 4, "gain": gain,
        }
        summary.update(summary_extra or {})
        _write_manifest(self.folder / MANIFEST, manifest)
        _write_json(self.folder / REPORT, {"summary": summary, "skipped": self.skipped, "warnings": self.warnings})
        return summary


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
