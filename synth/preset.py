"""Preset manifests (`presets/<name>/preset.json`): schema, validation, lookup by name.

A preset is only ever data: JSON plus an ONNX graph. Nothing in it is executed or unpickled.
The trainer's export writes manifests through `Preset.to_json` / `validate_manifest`, the synth
reads them through `load_preset`, so both sides share one schema.

Schema (version 1), all keys required unless marked optional:

    format           "neural-synth-preset"
    version          1
    name             str, [A-Za-z0-9][A-Za-z0-9_.-]*, at most 64 chars
    description      str (optional)
    kind             "pitched" | "drums"
    sample_rate      int Hz, the generator's output rate (8000..192000)
    note_samples     int N, samples per generated note (the ONNX output length)
    pitch_range      [lo, hi] MIDI notes the model was trained on (inclusive)
    drum_classes     {"<midi key>": "<class name>"} (drums only; the key is fed as `pitch`)
    velocity         {"conditioned": bool, "layers": [MIDI velocities 1..127, ascending],
                      "curve": float exponent of the velocity->gain curve (gain = (v/127)**curve)}
    latent           {"size": Z, "default": [Z floats]}
    knobs            [{"cc": 0..127, "name": str, "description": str, "kind": "latent" | "tune" | "decay",
                       "direction": [Z floats] (latent only), "range": [lo, hi], "default": 0..127}]
                     kind "latent" (the default): a timbre direction,
                     latent = default + sum_k (lo_k + (hi_k - lo_k) * cc_k / 127) * direction_k;
                     engine knobs, which shape the generated notes without the model (drum-machine knobs):
                     "tune": transposes every note by lo + (hi - lo) * cc / 127 semitones (range within
                     -24..24; the voices play faster or slower, no regeneration);
                     "decay": CC 127 leaves the notes as generated, lower values fade each note (after
                     its first 5 ms) to -60 dB in T60 = lo * (hi / lo) ** (cc / 126) seconds (0.01 <= lo
                     < hi <= 60); the worker applies it as it caches the notes.
    release_seconds  float >= 0 (at most 30), the release after note-off: the time it takes to fall
                     RELEASE_DB (30 dB), the fall `trainer export` measures in the data. The release
                     falls linearly in dB, as a sampler's and a real instrument's do (100 dB in
                     10/3 x release_seconds: SF2 releaseVolEnv, SFZ ampeg_release), and ends there
    sustain          {"mode": "oneshot" | "loop", "loop_end_seconds": float}  "loop": the engine loops
                     the note's sustain portion, crossfaded, for as long as the key is held (optional,
                     default oneshot). loop_end_seconds (optional): where the sustain ends in the
                     generated note, i.e. before the note-off of the training data; default 85 % of it
    gain_db          float, preset output trim (optional, default 0)
    generator        file name of the ONNX graph inside the folder (default "generator.onnx")
    training         free-form dict: data, arch, steps, minutes, hardware, commands (optional)
    metrics          free-form dict: trainer eval figures (optional)
    timbres          [{"name": str, "source": str, "bank": int | null, "program": int | null,
                       "gm_kind": str | null, "latent": [Z floats]}] (optional; family presets): the
                     latent point of each instrument the model was trained on, at most MAX_TIMBRES;
                     playing timbre i means using its `latent` in place of latent.default

ONNX contract (`generator.onnx`): inputs `z float32[B, Z]`, `pitch int64[B]` (MIDI note),
`velocity float32[B]` (0..1); output `audio float32[B, N]` in [-1, 1] at `sample_rate`. The batch
axis is dynamic. `metadata_props` repeat name, sample_rate, note_samples, pitch_range, latent size.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synth.errors import PresetError

FORMAT = "neural-synth-preset"
VERSION = 1
MANIFEST = "preset.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_LATENT = 4096
MAX_KNOBS = 32
MAX_TIMBRES = 256
RELEASE_DB = 30.0     # release_seconds is the time the release takes to fall this far
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
REPO_PRESETS = Path(__file__).resolve().parent.parent / "presets"


KNOB_KINDS = ("latent", "tune", "decay")


@dataclass(frozen=True)
class Knob:
    cc: int
    name: str
    description: str
    direction: tuple[float, ...]     # empty for engine knobs (tune, decay)
    range: tuple[float, float]
    default: int
    kind: str = "latent"

    def offset(self, value: int) -> float:
        """Latent offset along `direction` for a CC value 0..127."""
        lo, hi = self.range
        return lo + (hi - lo) * (value / 127.0)


@dataclass(frozen=True)
class Timbre:
    """One training instrument of a family preset and its point in the latent space."""
    name: str
    latent: tuple[float, ...]
    source: str = ""
    bank: int | None = None
    program: int | None = None
    gm_kind: str | None = None


@dataclass(frozen=True)
class Preset:
    """A validated preset. `path` is the preset folder; `generator_path` the ONNX file."""

    path: Path
    name: str
    kind: str
    sample_rate: int
    note_samples: int
    pitch_range: tuple[int, int]
    velocity_conditioned: bool
    velocity_layers: tuple[int, ...]
    velocity_curve: float
    latent_size: int
    default_latent: tuple[float, ...]
    knobs: tuple[Knob, ...]
    release_seconds: float
    sustain_mode: str = "oneshot"
    loop_end_seconds: float | None = None
    gain_db: float = 0.0
    drum_classes: dict[int, str] = field(default_factory=dict)
    description: str = ""
    generator: str = "generator.onnx"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    timbres: tuple[Timbre, ...] = ()

    @property
    def generator_path(self) -> Path:
        return self.path / self.generator

    @property
    def is_drums(self) -> bool:
        return self.kind == "drums"

    def playable_keys(self) -> list[int]:
        """MIDI keys the model generates directly (drum keys for kits, the pitch range otherwise)."""
        if self.is_drums:
            return sorted(self.drum_classes)
        lo, hi = self.pitch_range
        return list(range(lo, hi + 1))


def _fail(where: str, msg: str) -> PresetError:
    return PresetError(f"{where}: {msg}")


def _get(m: dict, key: str, where: str, types, optional=False, default=None):
    if key not in m:
        if optional:
            return default
        raise _fail(where, f"missing required field {key!r}")
    v = m[key]
    if types is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if isinstance(v, bool) and types is not bool and bool not in (types if isinstance(types, tuple) else (types,)):
        raise _fail(where, f"field {key!r} must be {getattr(types, '__name__', types)}, got bool")
    if not isinstance(v, types):
        tname = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise _fail(where, f"field {key!r} must be {tname}, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise _fail(where, f"field {key!r} must be finite, got {v}")
    return v


def _int_in(m, key, where, lo, hi, optional=False, default=None):
    v = _get(m, key, where, int, optional, default)
    if v is None:
        return v
    if not lo <= v <= hi:
        raise _fail(where, f"field {key!r} = {v} is out of range {lo}..{hi}")
    return v


def _floats(v, where, what, n=None):
    if not isinstance(v, list):
        raise _fail(where, f"{what} must be a list of numbers, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise _fail(where, f"{what} has {len(v)} values, expected {n} (the latent size)")
    out = []
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise _fail(where, f"{what} must hold finite numbers, found {x!r}")
        out.append(float(x))
    return tuple(out)


def validate_manifest(m: Any, path: Path, check_files: bool = True) -> Preset:
    """Validate a parsed manifest dict and return a `Preset`. Raises `PresetError` naming the file."""
    where = str(path / MANIFEST)
    if not isinstance(m, dict):
        raise _fail(where, "the manifest must be a JSON object")
    if m.get("format") != FORMAT:
        raise _fail(where, f"not a neural-synth preset (field 'format' must be {FORMAT!r})")
    version = _get(m, "version", where, int)
    if version != VERSION:
        raise _fail(where, f"preset format version {version} is not supported (this synth reads {VERSION})")
    name = _get(m, "name", where, str)
    if not NAME_RE.match(name):
        raise _fail(where, f"invalid preset name {name!r}")
    kind = _get(m, "kind", where, str)
    if kind not in ("pitched", "drums"):
        raise _fail(where, f"field 'kind' must be 'pitched' or 'drums', got {kind!r}")
    sr = _int_in(m, "sample_rate", where, 8000, 192000)
    n = _int_in(m, "note_samples", where, 64, 60 * 192000)
    pr = _get(m, "pitch_range", where, list)
    if len(pr) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 127 for p in pr) \
            or pr[0] > pr[1]:
        raise _fail(where, f"field 'pitch_range' must be [lo, hi] MIDI notes 0..127 with lo <= hi, got {pr!r}")
    drum_classes: dict[int, str] = {}
    if kind == "drums":
        dc = _get(m, "drum_classes", where, dict)
        if not dc or len(dc) > 128:
            raise _fail(where, "field 'drum_classes' must map 1..128 MIDI keys to class names")
        for k, v in dc.items():
            if not (isinstance(k, str) and k.isdigit() and 0 <= int(k) <= 127 and isinstance(v, str) and v):
                raise _fail(where, f"drum_classes entry {k!r}: {v!r} must be \"<key 0..127>\": \"<name>\"")
            drum_classes[int(k)] = v
    vel = _get(m, "velocity", where, dict)
    vel_where = where + " velocity"
    conditioned = _get(vel, "conditioned", vel_where, bool)
    layers = _get(vel, "layers", vel_where, list)
    if not layers or len(layers) > 127 or not all(
            isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 127 for x in layers) \
            or list(layers) != sorted(set(layers)):
        raise _fail(where, f"velocity.layers must be ascending distinct MIDI velocities 1..127, got {layers!r}"[:300])
    curve = _get(vel, "curve", vel_where, float, optional=True, default=1.0)
    if not 0.1 <= curve <= 10:
        raise _fail(where, f"velocity.curve = {curve} is out of range 0.1..10")
    lat = _get(m, "latent", where, dict)
    z = _int_in(lat, "size", where + " latent", 1, MAX_LATENT)
    default = _floats(_get(lat, "default", where + " latent", list), where, "latent.default", z)
    knobs_raw = _get(m, "knobs", where, list)
    if len(knobs_raw) > MAX_KNOBS:
        raise _fail(where, f"{len(knobs_raw)} knobs; at most {MAX_KNOBS} are allowed")
    knobs = []
    seen = set()
    for i, k in enumerate(knobs_raw):
        kw = f"{where} knobs[{i}]"
        if not isinstance(k, dict):
            raise _fail(where, f"knobs[{i}] must be an object")
        cc = _int_in(k, "cc", kw, 0, 127)
        if cc in seen:
            raise _fail(where, f"knobs[{i}]: CC {cc} is mapped twice")
        seen.add(cc)
        rng = _floats(_get(k, "range", kw, list), where, f"knobs[{i}].range", 2)
        knob_kind = _get(k, "kind", kw, str, optional=True, default="latent")
        if knob_kind not in KNOB_KINDS:
            raise _fail(where, f"knobs[{i}].kind must be one of {', '.join(KNOB_KINDS)}, got {knob_kind!r}"[:300])
        if knob_kind == "latent":
            direction = _floats(_get(k, "direction", kw, list), where, f"knobs[{i}].direction", z)
        else:
            direction = ()
            if sum(1 for o in knobs if o.kind == knob_kind):
                raise _fail(where, f"knobs[{i}]: a second {knob_kind!r} knob; a preset has at most one")
            if knob_kind == "tune" and not -24.0 <= rng[0] < rng[1] <= 24.0:
                raise _fail(where, f"knobs[{i}].range {list(rng)} must be ascending semitones within -24..24")
            if knob_kind == "decay" and not 0.01 <= rng[0] < rng[1] <= 60.0:
                raise _fail(where, f"knobs[{i}].range {list(rng)} must be ascending seconds within 0.01..60")
        knobs.append(Knob(cc=cc, name=_get(k, "name", kw, str), description=_get(k, "description", kw, str,
                                                                                   optional=True, default=""),
                          direction=direction, range=(rng[0], rng[1]), default=_int_in(k, "default", kw, 0, 127),
                          kind=knob_kind))
    release = _get(m, "release_seconds", where, float)
    if not 0 <= release <= 30:
        raise _fail(where, f"release_seconds = {release} is out of range 0..30")
    sustain = _get(m, "sustain", where, dict, optional=True, default={"mode": "oneshot"})
    mode = sustain.get("mode", "oneshot")
    if mode not in ("oneshot", "loop"):
        raise _fail(where, f"sustain.mode must be 'oneshot' or 'loop', got {mode!r}")
    loop_end = sustain.get("loop_end_seconds")
    if loop_end is not None:
        if isinstance(loop_end, bool) or not isinstance(loop_end, (int, float)) or not math.isfinite(loop_end):
            raise _fail(where, f"sustain.loop_end_seconds must be a number, got {loop_end!r}")
        loop_end = float(loop_end)
        if not 0.05 <= loop_end <= n / sr:
            raise _fail(where, f"sustain.loop_end_seconds = {loop_end} is outside the note (0.05..{n / sr:.3f} s)")
    gain_db = _get(m, "gain_db", where, float, optional=True, default=0.0)
    if not -60 <= gain_db <= 24:
        raise _fail(where, f"gain_db = {gain_db} is out of range -60..24")
    gen = _get(m, "generator", where, str, optional=True, default="generator.onnx")
    if gen != os.path.basename(gen) or gen in ("", ".", "..") or "\\" in gen:
        raise _fail(where, f"field 'generator' must be a file name inside the preset folder, got {gen!r}")
    training = _get(m, "training", where, dict, optional=True, default={})
    metrics = _get(m, "metrics", where, dict, optional=True, default={})
    description = _get(m, "description", where, str, optional=True, default="")
    timbres = _timbres(m, where, z)
    preset = Preset(path=path, name=name, kind=kind, sample_rate=sr, note_samples=n, pitch_range=(pr[0], pr[1]),
                    velocity_conditioned=conditioned, velocity_layers=tuple(layers), velocity_curve=curve,
                    latent_size=z, default_latent=default, knobs=tuple(knobs), release_seconds=release,
                    sustain_mode=mode, loop_end_seconds=loop_end, gain_db=gain_db, drum_classes=drum_classes, description=description,
                    generator=gen, training=training, metrics=metrics, timbres=timbres)
    if check_files and not preset.generator_path.is_file():
        raise _fail(str(preset.generator_path), "generator file is missing; re-export the preset with "
                    "`python -m trainer export`")
    return preset


def _timbres(m: dict, where: str, z: int) -> tuple[Timbre, ...]:
    """The optional `timbres` list: objects with a non-empty name and a latent of size z."""
    raw = _get(m, "timbres", where, list, optional=True, default=[])
    if len(raw) > MAX_TIMBRES:
        raise _fail(where, f"{len(raw)} timbres; at most {MAX_TIMBRES} are allowed")
    out = []
    for i, t in enumerate(raw):
        tw = f"{where} timbres[{i}]"
        if not isinstance(t, dict):
            raise _fail(where, f"timbres[{i}] must be an object")
        name = _get(t, "name", tw, str)
        if not name.strip():
            raise _fail(where, f"timbres[{i}].name is empty")
        opt_int = {}
        for key, hi in (("bank", 128), ("program", 127)):
            v = t.get(key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi):
                raise _fail(where, f"timbres[{i}].{key} must be null or an integer 0..{hi}, got {v!r}"[:300])
            opt_int[key] = v
        for key in ("gm_kind", "source"):
            if t.get(key) is not None and not isinstance(t.get(key), str):
                raise _fail(where, f"timbres[{i}].{key} must be null or a string, got {type(t.get(key)).__name__}")
        gm = t.get("gm_kind")
        out.append(Timbre(name=name, latent=_floats(_get(t, "latent", tw, list), where, f"timbres[{i}].latent", z),
                          source=t.get("source") or "",
                          bank=opt_int["bank"], program=opt_int["program"], gm_kind=gm))
    return tuple(out)


def load_preset_dir(path: str | os.PathLike) -> Preset:
    """Load and validate the preset in folder `path`."""
    path = Path(path)
    mf = path / MANIFEST
    try:
        st = mf.stat()
    except FileNotFoundError:
        raise PresetError(f"{mf}: no preset manifest here") from None
    except OSError as e:
        raise PresetError(f"{mf}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        # A FIFO would block the read forever and /dev/zero would never end it.
        raise PresetError(f"{mf}: not a regular file (a folder, pipe or device); restore the preset's manifest")
    size = st.st_size
    if size > MAX_MANIFEST_BYTES:
        raise PresetError(f"{mf}: manifest is {size} bytes, larger than the {MAX_MANIFEST_BYTES} allowed")
    try:
        m = json.loads(mf.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise PresetError(f"{mf}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise PresetError(f"{mf}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise PresetError(f"{mf}: JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits (sys.int_info.str_digits_check_threshold)
        raise PresetError(f"{mf}: invalid JSON ({e}"[:300] + ")") from None
    return validate_manifest(m, path)


def search_path(preset_dirs: list[str | os.PathLike] | None = None) -> list[Path]:
    """Folders searched for presets, in order: `--preset-dir` folders, `SYNTH_PRESET_PATH`, repo `presets/`."""
    dirs = [Path(d) for d in (preset_dirs or [])]
    env = os.environ.get("SYNTH_PRESET_PATH", "")
    dirs += [Path(d) for d in env.split(os.pathsep) if d]
    dirs.append(REPO_PRESETS)
    out, seen = [], set()
    for d in dirs:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


def available_presets(preset_dirs=None) -> dict[str, Path]:
    """name -> folder for every folder with a preset.json on the search path (first one wins)."""
    found: dict[str, Path] = {}
    for d in search_path(preset_dirs):
        if not d.is_dir():
            continue
        for sub in sorted(d.iterdir()):
            if sub.name not in found and (sub / MANIFEST).is_file() and NAME_RE.match(sub.name):
                found[sub.name] = sub
    return found


def find_preset(name: str, preset_dirs=None) -> Preset:
    """Find preset `name` on the search path and load it. A name is never a path."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise PresetError(f"preset {name!r} is not a preset name (a name, not a path: put the folder's parent in "
                          f"--preset-dir or SYNTH_PRESET_PATH and pass the folder's name)")
    known = available_presets(preset_dirs)
    if name not in known:
        listing = ", ".join(sorted(known)) or "none installed"
        raise PresetError(f"unknown preset {name!r}; known presets: {listing}")
    return load_preset_dir(known[name])


def _sustain_dict(p: Preset) -> dict[str, Any]:
    d: dict[str, Any] = {"mode": p.sustain_mode}
    if p.loop_end_seconds is not None:
        d["loop_end_seconds"] = p.loop_end_seconds
    return d


def _knob_dict(k: Knob) -> dict[str, Any]:
    d: dict[str, Any] = {"cc": k.cc, "name": k.name, "description": k.description}
    if k.kind == "latent":
        d["direction"] = list(k.direction)
    else:
        d["kind"] = k.kind
    d.update({"range": list(k.range), "default": k.default})
    return d


def manifest_dict(p: Preset) -> dict[str, Any]:
    """The JSON-able manifest for `p` (inverse of `validate_manifest`)."""
    m: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "name": p.name, "description": p.description, "kind": p.kind,
        "sample_rate": p.sample_rate, "note_samples": p.note_samples, "pitch_range": list(p.pitch_range),
        "velocity": {"conditioned": p.velocity_conditioned, "layers": list(p.velocity_layers),
                     "curve": p.velocity_curve},
        "latent": {"size": p.latent_size, "default": list(p.default_latent)},
        "knobs": [_knob_dict(k) for k in p.knobs],
        "release_seconds": p.release_seconds, "sustain": _sustain_dict(p), "gain_db": p.gain_db,
        "generator": p.generator, "training": p.training, "metrics": p.metrics,
    }
    if p.is_drums:
        m["drum_classes"] = {str(k): v for k, v in sorted(p.drum_classes.items())}
    if p.timbres:
        m["timbres"] = [{"name": t.name, "source": t.source, "bank": t.bank, "program": t.program,
                         "gm_kind": t.gm_kind, "latent": list(t.latent)} for t in p.timbres]
    return m
