"""`OneShotDataset`: read a dataset folder (manifest.json + notes.f32 or notes.i16) fast and memory-bounded.

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
from trainer.data.format import BANKS, FORMAT, MANIFEST, VERSION, VERSIONS, class_names

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
    if m.get("version") not in VERSIONS:
        raise UserError(f"{path}: format version {m.get('version')!r}, this code reads versions "
                        f"{min(VERSIONS)}..{VERSION}; {_REBUILD}")
    storage = VERSIONS[m["version"]] or m.get("storage")
    if storage not in BANKS:
        raise UserError(f"{path}: storage {m.get('storage')!r} is not one of {sorted(BANKS)}; {_REBUILD}")
    m["storage"] = storage
    for key, typ in (("sample_rate", int), ("note_samples", int), ("kind", str), ("notes", list)):
        if not isinstance(m.get(key), typ):
            raise UserError(f"{path}: field {key!r} missing or not {typ.__name__}; {_REBUILD}")
    if m["kind"] not in ("pitched", "drums"):
        raise UserError(f"{path}: kind {m['kind']!r} is neither 'pitched' nor 'drums'; {_REBUILD}")
    need = ("file", "offset", "pitch", "split") + (("scale",) if storage == "i16" else ())
    for i, note in enumerate(m["notes"]):
        if not isinstance(note, dict) or not all(k in note for k in need):
            raise UserError(f"{path}: note {i} lacks {'/'.join(need)}; {_REBUILD}")
    insts = m.get("instruments")
    if insts is not None:
        if not isinstance(insts, list) or not all(isinstance(x, dict) for x in insts):
            raise UserError(f"{path}: field 'instruments' is not a list of objects; {_REBUILD}")
        for i, note in enumerate(m["notes"]):
            k = note.get("instrument_index")
            if not isinstance(k, int) or not 0 <= k < len(insts):
                raise UserError(f"{path}: note {i} has instrument_index {k!r}, expected 0..{len(insts) - 1}; {_REBUILD}")
    return m


class OneShotDataset:
    """The notes of one dataset folder, optionally one split of it.

    `ds[i]` -> `dict(audio=float32[note_samples] in [-1, 1] at info["sample_rate"], pitch=int (MIDI
    key; the key for drums), velocity=float in (0, 1] (MIDI velocity / 127; 1.0 when unknown),
    cls=int (index into info["class_names"], ordered by key; -1 for pitched sets),
    instrument=int (index into the set's instrument list; 0 in a set of one instrument))`.

    `ds.info`: sample_rate, note_samples, kind, pitch_range, velocities, drum_classes, class_names,
    n_notes (notes in this split), source, storage ("f32" or "i16"), and `instruments` (the
    manifest's list) for multi-instrument sets only, so a one-instrument set's facts, and the run
    configs that store them, stay as they were. `ds.pitches`, `ds.velocities`, `ds.classes`,
    `ds.instruments` are int64 / float32 / int64 / int64 arrays aligned with the indices, for
    samplers and conditioning tables. Both bank storages read the same: int16 notes come back as
    float32 (`int16 * scale`), exactly the audio their content hash was taken of.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be None or one of {SPLITS}, not {split!r}")
        self.root = Path(root)
        self.split = split
        m = load_manifest(self.root)
        bank_name, self._dtype = BANKS[m["storage"]]
        self._bank_path = self.root / bank_name
        N = int(m["note_samples"])
        files = {n["file"] for n in m["notes"]}
        if files - {bank_name}:
            raise UserError(f"{self.root / MANIFEST}: notes refer to {sorted(files - {bank_name})}, expected "
                            f"{bank_name}; {_REBUILD}")
        try:
            size = self._bank_path.stat().st_size
        except FileNotFoundError:
            raise UserError(f"{self._bank_path}: audio bank missing; {_REBUILD}") from None
        row_bytes = np.dtype(self._dtype).itemsize * N
        if size % row_bytes:
            raise UserError(f"{self._bank_path}: size {size} B is not a whole number of {N}-sample notes "
                            f"(truncated or corrupt); {_REBUILD}")
        self._bank_notes = size // row_bytes
        notes = [n for n in m["notes"] if split is None or n["split"] == split]
        offsets = np.array([int(n["offset"]) for n in notes], dtype=np.int64)
        if len(offsets) and ((offsets % N).any() or offsets.min() < 0 or offsets.max() // N >= self._bank_notes):
            raise UserError(f"{self._bank_path}: holds {self._bank_notes} notes but the manifest points past "
                            f"them or between them (truncated bank?); {_REBUILD}")
        self._rows = offsets // N
        self._scales = (np.array([float(n["scale"]) for n in notes], dtype=np.float32)
                        if m["storage"] == "i16" else None)
        names = class_names(m.get("drum_classes"))
        index = {name: i for i, name in enumerate(names)}
        self.notes = notes
        self.pitches = np.array([int(n["pitch"]) for n in notes], dtype=np.int64)
        self.velocities = np.array([1.0 if n.get("velocity") is None else int(n["velocity"]) / 127.0
                                    for n in notes], dtype=np.float32)
        self.classes = np.array([index.get(n.get("class"), -1) if n.get("class") is not None else -1
                                 for n in notes], dtype=np.int64)
        self.instruments = np.array([int(n.get("instrument_index") or 0) for n in notes], dtype=np.int64)
        self.info: dict[str, Any] = {
            "sample_rate": int(m["sample_rate"]), "note_samples": N, "kind": m["kind"],
            "pitch_range": list(m.get("pitch_range") or [0, 0]), "velocities": list(m.get("velocities") or []),
            "drum_classes": m.get("drum_classes") or {}, "class_names": names, "n_notes": len(notes),
            "source": m.get("source") or {},
        }
        if m["storage"] != "f32":
            self.info["storage"] = m["storage"]
        if m.get("instruments") is not None:
            self.info["instruments"] = m["instruments"]
        self._bank: np.memmap | None = None

    def _open(self) -> np.memmap:
        if self._bank is None:
            self._bank = np.memmap(self._bank_path, dtype=self._dtype, mode="r",
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
        audio = self.audio_batch(np.array([i]))[0]  # a copy: callers may write to it
        return {"audio": audio, "pitch": int(self.pitches[i]), "velocity": float(self.velocities[i]),
                "cls": int(self.classes[i]), "instrument": int(self.instruments[i])}

    def audio_batch(self, indices: np.ndarray) -> np.ndarray:
        """float32[len(indices), note_samples]: several notes in one gather (for fast batching)."""
        idx = np.asarray(indices, dtype=np.int64)
        rows = self._open()[self._rows[idx]]
        if self._scales is None:
            return np.asarray(rows, dtype=np.float32)
        return rows.astype(np.float32) * self._scales[idx][:, None]

    def __repr__(self) -> str:
        return (f"OneShotDataset({str(self.root)!r}, split={self.split!r}: {len(self)} {self.info['kind']} notes, "
                f"{self.info['sample_rate']} Hz x {self.info['note_samples']}, {len(self.instrument_list)} instrument(s))")

    @property
    def instrument_list(self) -> list[dict[str, Any]]:
        """The set's instruments: the manifest's list, or one entry made from `source` for a set of one."""
        if "instruments" in self.info:
            return self.info["instruments"]
        src = self.info["source"]
        if src.get("type") == "soundfont":
            from trainer.data.format import gm_kind

            return [{"index": 0, "name": src.get("preset"), "source": Path(str(src.get("soundfont"))).name,
                     "bank": src.get("bank"), "program": src.get("program"),
                     "gm_kind": gm_kind(src.get("program"), bool(src.get("drums")))}]
        return [{"index": 0, "name": Path(str(src.get("folder") or self.root)).name, "source": src.get("type"),
                 "bank": None, "program": None, "gm_kind": None}]
