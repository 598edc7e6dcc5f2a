"""NSynth source: `examples.json` plus `audio/<note_str>.wav` (16 kHz, 4 s), filtered.

`examples.json` maps each note_str (e.g. `keyboard_acoustic_004-060-100`) to its facts: `pitch`,
`velocity`, `instrument_str`, `instrument_family_str`, `instrument_source_str`, `sample_rate`, ...
Filters take names or numeric ids, comma-separated: `--instrument keyboard_acoustic_004`,
`--family keyboard,mallet`, `--source acoustic`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synth.errors import UserError
from trainer.data.samples import Skip, prepare, read_audio

FILTERS = {  # flag -> (name field, id field)
    "instrument": ("instrument_str", "instrument"),
    "family": ("instrument_family_str", "instrument_family"),
    "source": ("instrument_source_str", "instrument_source"),
}


def load_examples(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "examples.json"
    if not root.is_dir():
        raise UserError(f"{root}: folder not found; pass --nsynth DIR holding examples.json and audio/")
    try:
        ex = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: missing; --nsynth wants an NSynth split folder (examples.json + audio/*.wav)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable or corrupt JSON ({e}); download the split again") from None
    if not isinstance(ex, dict) or not all(isinstance(v, dict) for v in ex.values()):
        raise UserError(f"{path}: expected an object of note_str -> note facts, as in NSynth")
    if not ex:
        raise UserError(f"{path}: lists no notes; point --nsynth at a real NSynth split")
    return ex


def select(examples: dict[str, dict[str, Any]], filters: dict[str, str | None], path: Path) -> list[str]:
    """note_strs that pass every filter (sorted). A filter value that matches nothing is a UserError."""
    keys = sorted(examples)
    for flag, text in filters.items():
        if not text:
            continue
        name_f, id_f = FILTERS[flag]
        wanted = {w.strip() for w in text.split(",") if w.strip()}
        have = {str(examples[k].get(name_f)) for k in keys} | {str(examples[k].get(id_f)) for k in keys}
        unknown = sorted(wanted - have)
        if unknown:
            names = sorted({str(v.get(name_f)) for v in examples.values()})
            shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            raise UserError(f"{path}: --{flag} {','.join(unknown)} matches no note; {flag} values there: {shown}")
        keys = [k for k in keys if str(examples[k].get(name_f)) in wanted or str(examples[k].get(id_f)) in wanted]
    return keys


def build(writer, *, root: str | os.PathLike, filters: dict[str, str | None], pitches: list[int] | None,
          velocities: list[int] | None, min_seconds: float, normalize: str,
          progress_factory: Callable[[int], Any]) -> dict[str, Any]:
    """Import the selected NSynth notes into `writer`; return the manifest `source` dict and the set gain."""
    root = Path(root)
    examples = load_examples(root)
    keys = select(examples, filters, root / "examples.json")
    if not keys:
        raise UserError(f"{root / 'examples.json'}: the filters leave no notes; loosen --instrument/--family/--source")
    wanted_p = set(pitches) if pitches is not None else None
    wanted_v = set(velocities) if velocities is not None else None
    picked = 0
    with progress_factory(len(keys)) as bar:
        for k in keys:
            bar.update(1)
            e = examples[k]
            try:
                pitch, vel = int(e["pitch"]), int(e["velocity"])
            except (KeyError, TypeError, ValueError):
                writer.skip(k, "examples.json entry lacks an integer pitch/velocity")
                continue
            if (wanted_p is not None and pitch not in wanted_p) or (wanted_v is not None and vel not in wanted_v):
                continue
            picked += 1
            wav = root / "audio" / f"{k}.wav"
            try:
                if not wav.exists():
                    raise Skip(f"missing audio file audio/{k}.wav")
                data, sr = read_audio(wav)
                prep = prepare(data, sr, target_sr=writer.sample_rate, note_samples=writer.note_samples,
                               min_seconds=min_seconds, normalize=normalize)
            except Skip as s:
                writer.skip(f"audio/{k}.wav", str(s))
                continue
            writer.add(prep.audio, pitch=pitch, velocity=vel or None, source=k, duration=prep.duration,
                       instrument=e.get("instrument_str"), family=e.get("instrument_family_str"),
                       nsynth_source=e.get("instrument_source_str"), qualities=e.get("qualities_str"))
    if not writer.notes:
        if not picked:
            raise UserError(f"{root}: no note passes --pitches/--velocities among the {len(keys)} selected")
        reasons = "; ".join(f"{s['file']}: {s['reason']}" for s in writer.skipped[:3])
        raise UserError(f"{root}: no usable notes, every selected file was skipped: {reasons}")
    gain = 1.0
    if normalize == "set":
        gain = 10 ** (-1 / 20) / max(writer.peak(), 1e-12)
    return {"source": {"type": "nsynth", "folder": str(root.resolve()), "filters": {k: v for k, v in filters.items() if v},
                       "selected": len(keys), "normalize": normalize, "min_seconds": min_seconds},
            "gain": gain}
