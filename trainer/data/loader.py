"""`OneShotDataset`: read a dataset folder (manifest.json + notes.f32) fast and memory-bounded.

The bank is one memory map, opened lazily in whichever process first reads a note, so the object
pickles cheaply into torch DataLoader workers (each worker maps the file itself) and a 20k-note set
needs one open file and only the pages actually touched in RAM. No torch import here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import UserError
from trainer.data.format import BANK, FORMAT, MANIFEST, VERSION, class_names

SPLITS = ("train", "valid", "test")
_REBUILD = "rebuild it with `python -m trainer dataset ... --out DIR --force`"


def load_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Read and validate `root/manifest.json`; raise `UserError` naming the file on any problem."""
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise UserError(f"{root}: dataset folder not found; build one with `python -m trainer dataset --out {root}`")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: missing; {root} is not a dataset folder ({_REBUILD})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); {_REBUILD}") from None
    try:
        m = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt JSON at line {e.lineno} ({e.msg}); {_REBUILD}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest; {_REBUILD}")
    if m.get("version") != VERSION:
        raise UserError(f"{path}: format version {m.get('version')!r}, this code reads version {VERSION}; {_REBUILD}")
    for key, typ in (("sample_rate", int), ("note_samples", int), ("kind", str), ("notes", list)):
        if not isinstance(m.get(key), typ):
            raise UserError(f"{path}: field {key!r} missing or not {typ.__name__}; {_REBUILD}")
    if m["kind"] not in ("pitched", "drums"):
        raise UserError(f"{path}: kind {m['kind']!r} is neither 'pitched' nor 'drums'; {_REBUILD}")
    for i, note in enumerate(m["notes"]):
        if not isinstance(note, dict) or not all(k in note for k in ("file", "offset", "pitch", "split")):
            raise UserError(f"{path}: note {i} lacks file/offset/pitch/split; {_REBUILD}")
    return m


class OneShotDataset:
    """The notes of one dataset folder, optionally one split of it.

    `ds[i]` -> `dict(audio=float32[note_samples] in [-1, 1] at info["sample_rate"], pitch=int (MIDI
    key; the key for drums), velocity=float in (0, 1] (MIDI velocity / 127; 1.0 when unknown),
    cls=int (index into info["class_names"], ordered by key; -1 for pitched sets))`.

    `ds.info`: sample_rate, note_samples, kind, pitch_range, velocities, drum_classes, class_names,
    n_notes (notes in this split), source. `ds.pitches`, `ds.velocities`, `ds.classes` are int64 /
    float32 / int64 arrays aligned with the indices, for samplers and conditioning tables.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, not {split!r}")
        self.root = Path(root)
        self.split = split
        m = load_manifest(self.root)
        self._bank_path = self.root / BANK
        N = int(m["note_samples"])
        files = {n["file"] for n in m["notes"]}
        if files - {BANK}:
            raise UserError(f"{self.root / MANIFEST}: notes refer to {sorted(files - {BANK})}, expected {BANK}; {_REBUILD}")
        try:
            size = self._bank_path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{self._bank_path}: audio bank missing; {_REBUILD}") from None
        if size % (4 * N):
            raise UserError(f"{self._bank_path}: size {size} B is not a whole number of {N}-sample notes "
                            f"(truncated or corrupt); {_REBUILD}")
        self._bank_notes = size // (4 * N)
        notes = [n for n in m["notes"] if split is None or n["split"] == split]
        offsets = np.array([int(n["offset"]) for n in notes], dtype=np.int64)
        if len(offsets) and ((offsets % N).any() or offsets.min() < 0 or offsets.max() // N >= self._bank_notes):
            raise UserError(f"{self._bank_path}: holds {self._bank_notes} notes but the manifest points past "
                            f"them or between them (truncated bank?); {_REBUILD}")
        self._rows = offsets // N
        names = class_names(m.get("drum_classes"))
        index = {name: i for i, name in enumerate(names)}
        self.notes = notes
        self.pitches = np.array([int(n["pitch"]) for n in notes], dtype=np.int64)
        self.velocities = np.array([1.0 if n.get("velocity") is None else int(n["velocity"]) / 127.0
                                    for n in notes], dtype=np.float32)
        self.classes = np.array([index.get(n.get("class"), -1) if n.get("class") is not None else -1
                                 for n in notes], dtype=np.int64)
        self.info: dict[str, Any] = {
            "sample_rate": int(m["sample_rate"]), "note_samples": N, "kind": m["kind"],
            "pitch_range": list(m.get("pitch_range") or [0, 0]), "velocities": list(m.get("velocities") or []),
            "drum_classes": m.get("drum_classes") or {}, "class_names": names, "n_notes": len(notes),
            "source": m.get("source") or {},
        }
        self._bank: np.memmap | None = None

    def _open(self) -> np.memmap:
        if self._bank is None:
            self._bank = np.memmap(self._bank_path, dtype="<f4", mode="r",
                                   shape=(self._bank_notes, self.info["note_samples"]))
        return self._bank

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_bank"] = None  # each worker maps the file itself
        return state

    def __len__(self) -> int:
        return len(self.notes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"note {i} out of range for {len(self)} notes")
        i = int(i) % len(self)
        audio = np.array(self._open()[self._rows[i]], dtype=np.float32)  # a copy: callers may write to it
        return {"audio": audio, "pitch": int(self.pitches[i]), "velocity": float(self.velocities[i]),
                "cls": int(self.classes[i])}

    def audio_batch(self, indices: np.ndarray) -> np.ndarray:
        """float32[len(indices), note_samples]: several notes in one gather (for fast batching)."""
        return np.asarray(self._open()[self._rows[np.asarray(indices, dtype=np.int64)]], dtype=np.float32)

    def __repr__(self) -> str:
        return (f"OneShotDataset({str(self.root)!r}, split={self.split!r}: {len(self)} {self.info['kind']} notes, "
                f"{self.info['sample_rate']} Hz x {self.info['note_samples']})")
