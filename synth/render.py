"""`python -m synth render IN.mid -o OUT.wav`: offline MIDI -> WAV/FLAC.

General MIDI by default, as FluidSynth plays a GM file: the file is scanned for its program changes,
bank selects and channel-10 notes, and only the installed presets they route to are loaded
(`synth.routing`); `--preset` names the loaded set instead (routed among themselves), and
`--program-map` / `--drums` override. The routing table (one line per channel and program played,
with every fallback) is printed to stderr before rendering.

The same `Engine` as live playing, with `realtime=False`, so a missing note is generated on the
spot and the output is deterministic. What makes it fast:
  1. the whole file is pre-scanned and every note it needs is generated in one batched
     `engine.prepare(...)` call before rendering starts;
  2. audio is rendered in large blocks (`--blocksize`, 65,536 frames by default); events inside a
     block are handed over with their frame offsets, so timing stays sample-accurate.
The output does not depend on `--blocksize`: the body is cut into blocks of that size, and the
release tail is rendered in fixed windows (`TAIL_WINDOW`) cut again into blocks.

After the last event the render goes on until a whole window is quieter than `SILENCE` (-80 dBFS),
for at most `MAX_TAIL_SECONDS`. The engine's reported latency (the effects FIFO) is removed, so
event times in the file and in the output agree.

The file is written to a temporary file beside OUT and renamed at the end: any error leaves no
output behind (and an existing OUT untouched). A writer thread encodes and writes fixed-size
buffers while the engine renders the next ones. Files longer than `MAX_SECONDS` (4 h; usually a
broken tempo map) are refused before any work.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synth.errors import OneLineParser, UserError

FORMATS = {"pcm16": "PCM_16", "pcm24": "PCM_24", "float": "FLOAT"}
CONTAINERS = {".wav": "WAV", ".flac": "FLAC"}
DEFAULT_BLOCKSIZE = 65536         # frames a render call covers offline (output is the same at any size)
MAX_BLOCKSIZE = 65536
TAIL_WINDOW = 2048          # frames per silence check in the tail (independent of --blocksize)
SILENCE = 1e-4              # -80 dBFS
MAX_TAIL_SECONDS = 30.0
MAX_SECONDS = 4 * 3600.0    # longest file we render; a longer one is almost surely a broken tempo map
MAX_TABLE = 100             # routing table lines printed (a real GM file uses a few dozen routes at most)



def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m synth render", description=(
        "Render a MIDI file (type 0 or 1) to WAV or FLAC offline with the same engine as live playing."))
    p.add_argument("input", metavar="IN.mid", help="Standard MIDI File")
    p.add_argument("-o", "--output", required=True, metavar="OUT.wav", help="output file: .wav or .flac")
    p.add_argument("--preset", action="append", default=None, metavar="NAME",
                   help="preset; repeat for more (default: General MIDI, the installed presets the file's "
                        "programs need); programs are routed to the loaded presets by GM family, with the nearest "
                        "family when one is missing; `python -m synth presets` lists them")
    p.add_argument("--preset-dir", action="append", default=[], metavar="DIR",
                   help="extra folder of presets (repeatable; also SYNTH_PRESET_PATH)")
    p.add_argument("--sample-rate", default="48000", metavar="HZ", help="output rate, 8000..192000 (default 48000)")
    p.add_argument("--format", default="pcm16", choices=sorted(FORMATS),
                   help="sample format (default pcm16; FLAC takes pcm16 or pcm24)")
    p.add_argument("--knob", action="append", default=[], metavar="CC=V",
                   help="initial knob position for every preset: a fraction with a decimal point (74=0.3), a "
                        "percentage (74=30%%) or a CC value 0..127 (74=38); the CC must be one of the preset's "
                        "knobs; repeatable or comma-separated")
    p.add_argument("--gain", default=None, metavar="DB",
                   help="master gain change in dB, -60..24 (default 0), before the limiter")
    p.add_argument("--normalize", default=None, metavar="MODE",
                   help="scale the whole file before writing: peak[:DBFS] (default -1 dBFS) or lufs[:TARGET] "
                        "(ITU-R BS.1770 integrated loudness, default -16 LUFS)")
    p.add_argument("--program-map", default=None, metavar="P=NAME,...",
                   help="GM program -> preset, e.g. 0=piano,48=strings, over the GM routing")
    p.add_argument("--drums", default=None, metavar="NAME",
                   help="drum-kit preset for MIDI channel 10 (default: the kit of its program, else the first "
                        "kit; silent without one, as in FluidSynth)")
    p.add_argument("--blocksize", default=str(DEFAULT_BLOCKSIZE), metavar="N",
                   help=f"frames per engine call, 1..{MAX_BLOCKSIZE} (default {DEFAULT_BLOCKSIZE}); "
                        f"does not change the output")
    p.add_argument("--fx", default=None, metavar="LIST",
                   help="effects, e.g. reverb,chorus or reverb=0.4,filter (default: none)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show a progress bar even when stderr is not a terminal")
    prog.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("-q", "--quiet", action="store_true", help="no routing table, no summary line")
    from synth.diskcache import HELP

    p.add_argument("--disk-cache", default=None, metavar="DIR|off", help=HELP)
    return p


# ---- argument parsing ------------------------------------------------------------------------------
def parse_int(text: str, flag: str, lo: int, hi: int, hint: str) -> int:
    try:
        v = int(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a whole number; {hint}") from None
    if not lo <= v <= hi:
        raise UserError(f"{flag} {v}: out of range {lo}..{hi}; {hint}")
    return v


_UINT = re.compile(r"\d+")
_DECIMAL = re.compile(r"\d+\.\d*|\.\d+")
_PERCENT = re.compile(r"\d+(?:\.\d*)?|\.\d+")


def parse_knobs(items: list[str], flag: str = "--knob") -> list[tuple[int, int]]:
    """`["74=0.3", "1=100,71=50%"]` -> [(cc, value 0..127), ...]; shared by render, play and bake.

    The value's spelling says what it is: a fraction 0..1 has a decimal point (`74=0.3`, `74=1.0`),
    a percentage ends in `%` (`74=30%`), a bare integer is a CC value 0..127 (`74=1` is CC value 1).
    """
    out = []
    hint = (f"expected CC=VALUE: a fraction with a decimal point ({flag} 74=0.3), a percentage ({flag} 74=30%) "
            f"or a CC value 0..127 ({flag} 74=38)")
    for item in items:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            cc_s, sep, v_s = part.partition("=")
            if not sep:
                raise UserError(f"{flag} {part!r}: {hint}")
            cc = parse_int(cc_s, flag, 0, 127, "the controller number is 0..127")
            v_s = v_s.strip()
            if v_s.endswith("%") and _PERCENT.fullmatch(v_s[:-1].strip()):
                pct = float(v_s[:-1])
                if not 0.0 <= pct <= 100.0:
                    raise UserError(f"{flag} {part!r}: a percentage must be 0..100%")
                v = int(round(pct * 1.27))
            elif _DECIMAL.fullmatch(v_s):
                f = float(v_s)
                if not 0.0 <= f <= 1.0:
                    raise UserError(f"{flag} {part!r}: a fractional value must be 0..1 (or give a CC value "
                                    f"0..127 without a decimal point)")
                v = int(round(f * 127))
            elif _UINT.fullmatch(v_s):
                v = int(v_s)
                if not 0 <= v <= 127:
                    raise UserError(f"{flag} {part!r}: a CC value must be 0..127 (or a fraction 0..1 with a "
                                    f"decimal point, or a percentage)")
            else:
                raise UserError(f"{flag} {part!r}: {hint}")
            out.append((cc, v))
    return out


def describe_knobs(preset) -> str:
    """`CC 70 timbre, CC 74 brightness` (or `none`): a preset's knobs for an error message."""
    return ", ".join(f"CC {k.cc} {k.name}" for k in preset.knobs) or "none"


def check_knobs(knobs: list[tuple[int, int]], presets, flag: str = "--knob") -> None:
    """Refuse a `--knob` CC that no loaded preset has a knob on (a CC such as 64, the sustain pedal,
    would otherwise be held for the whole performance); the message lists the presets' knobs."""
    for cc, _v in knobs:
        if any(k.cc == cc for p in presets for k in p.knobs):
            continue
        what = " (CC 64 is the sustain pedal)" if cc == 64 else ""
        if len(presets) == 1:
            p = presets[0]
            raise UserError(f"{flag} {cc}=...: preset {p.name!r} has no knob on CC {cc}{what}; its knobs: "
                            f"{describe_knobs(p)}")
        have = "; ".join(f"{p.name}: {describe_knobs(p)}" for p in presets)
        raise UserError(f"{flag} {cc}=...: no loaded preset has a knob on CC {cc}{what}; their knobs: {have}")


def parse_gain(text, flag: str = "--gain") -> float:
    """`--gain DB`: a number of dB, -60..+24, added to the engine's master gain."""
    try:
        db = float(str(text).strip())
    except ValueError:
        raise UserError(f"{flag} {text!r}: not a number; give decibels, e.g. {flag} -6 or {flag} 3.5") from None
    if not (math.isfinite(db) and -60.0 <= db <= 24.0):
        raise UserError(f"{flag} {text!r}: choose -60..24 dB")
    return db


def master_gain(gain_db: float | None) -> float | None:
    """The engine's `master_gain` for `--gain DB` (None: the engine's default)."""
    if gain_db is None:
        return None
    from synth.engine import DEFAULT_MASTER_GAIN

    return DEFAULT_MASTER_GAIN * 10.0 ** (gain_db / 20.0)


NORMALIZE_DEFAULTS = {"peak": -1.0, "lufs": -16.0}


def parse_normalize(text: str | None) -> tuple[str, float] | None:
    """`peak[:DBFS]` (default -1 dBFS) or `lufs[:TARGET]` (default -16 LUFS) -> (mode, target)."""
    if text is None:
        return None
    mode, sep, target_s = str(text).strip().partition(":")
    mode = mode.strip().lower()
    hint = "use --normalize peak[:DBFS] (e.g. peak:-1) or --normalize lufs[:TARGET] (e.g. lufs:-16)"
    if mode not in NORMALIZE_DEFAULTS:
        raise UserError(f"--normalize {text!r}: unknown mode; {hint}")
    if not sep:
        return mode, NORMALIZE_DEFAULTS[mode]
    try:
        target = float(target_s)
    except ValueError:
        raise UserError(f"--normalize {text!r}: {target_s.strip()!r} is not a number; {hint}") from None
    if not (math.isfinite(target) and -60.0 <= target <= 0.0):
        unit = "dBFS" if mode == "peak" else "LUFS"
        raise UserError(f"--normalize {text!r}: choose a target of -60..0 {unit}")
    return mode, target


def parse_program_map(spec: str | None) -> dict[int, str]:
    """`"0=piano,48=strings"` -> {0: "piano", 48: "strings"} (GM programs 0..127)."""
    if not spec:
        return {}
    out: dict[int, str] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        prog_s, sep, name = part.partition("=")
        if not sep or not name.strip():
            raise UserError(f"--program-map {part!r}: expected PROGRAM=PRESET, e.g. --program-map 0=piano,48=strings")
        prog = parse_int(prog_s, "--program-map", 0, 127, "GM programs are 0..127")
        out[prog] = name.strip()
    return out


def check_output(out: Path, inp: Path, fmt: str) -> str:
    """Validate OUT before any work; return the soundfile container name."""
    if out.is_dir():
        raise UserError(f"{out}: is a folder; give a file name such as {out / 'out.wav'}")
    container = CONTAINERS.get(out.suffix.lower())
    if container is None:
        raise UserError(f"{out}: unknown output type {out.suffix or '(none)'!r}; use .wav or .flac")
    if container == "FLAC" and fmt == "float":
        raise UserError(f"{out}: FLAC stores integer samples; use --format pcm16 or pcm24, or write a .wav")
    with contextlib.suppress(OSError):
        if out.exists() and inp.exists() and os.path.samefile(out, inp):
            raise UserError(f"{out}: the output would overwrite the input MIDI file")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"{out}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{out}: folder {parent} is not writable; choose another output path")
    try:   # before any work or output (os.access says yes to root, even in /proc)
        with tempfile.TemporaryFile(dir=parent, prefix=".render-"):
            pass
    except OSError:
        raise UserError(f"{out}: cannot create a file in {parent}; choose a writable output path") from None
    return container


# ---- rendering ---------------------------------------------------------------------------------------
@dataclass
class RenderResult:
    path: Path
    sample_rate: int
    frames: int
    notes: int
    peak: float
    seconds_prepare: float                    # starting the background prepare, plus waiting for its notes
    seconds_total: float
    notes_prepared: int | None = None
    normalize_gain_db: float | None = None   # what --normalize applied
    clipped: int = 0                          # samples --normalize pushed past full scale (clipped)
    routing: list[str] | None = None          # the routing table (`Router.describe` of the notes played)


def _dispatch(engine, kind, ch, a, b, frame) -> None:
    from synth.midifile import CONTROL, NOTE_OFF, NOTE_ON, PITCHBEND, PROGRAM, SYSRESET

    if kind == NOTE_ON:
        engine.note_on(ch, a, b, frame=frame)
    elif kind == NOTE_OFF:
        engine.note_off(ch, a, frame=frame)
    elif kind == CONTROL:
        engine.control_change(ch, a, b, frame=frame)
    elif kind == PROGRAM:
        engine.program_change(ch, a, frame=frame)
    elif kind == PITCHBEND:
        engine.pitch_bend(ch, a, frame=frame)
    elif kind == SYSRESET:
        reset = getattr(engine, "system_reset", None)   # GM/GM2/GS/XG System On (an engine without it ignores them)
        if reset is not None:
            reset(frame=frame, kind=a)


class _Sink:
    """Writes engine output to the sound file, dropping the first `skip` frames (the engine latency).

    Blocks of any size are gathered into `chunk`-frame buffers that a writer thread encodes and
    writes (libsndfile releases the GIL), so file output overlaps rendering on a second core and
    its cost does not depend on the block size. Memory stays bounded: `nbuf` buffers in flight.
    """

    def __init__(self, f, skip: int, chunk: int = 65536, nbuf: int = 4):
        import queue
        import threading

        self.f = f
        self.skip = skip
        self.frames = 0
        self.peak = 0.0
        self._chunk = chunk
        self._free: queue.Queue = queue.Queue()
        self._full: queue.Queue = queue.Queue()
        for _ in range(nbuf):
            self._free.put(np.empty((chunk, 2), np.float32))
        self._buf = self._free.get()
        self._fill = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="render-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._full.get()
            if item is None:
                return
            buf, n = item
            try:
                if self._error is None:
                    self.f.write(buf[:n])
            except BaseException as e:  # noqa: BLE001 - re-raised in the rendering thread
                self._error = e
            self._free.put(buf)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, block: np.ndarray) -> None:
        if self.skip:
            k = min(self.skip, block.shape[0])
            block = block[k:]
            self.skip -= k
        n = block.shape[0]
        if not n:
            return
        self.peak = max(self.peak, float(np.max(np.abs(block))))
        self.frames += n
        i = 0
        while i < n:
            m = min(self._chunk - self._fill, n - i)
            self._buf[self._fill:self._fill + m] = block[i:i + m]
            self._fill += m
            i += m
            if self._fill == self._chunk:
                self._check()
                self._full.put((self._buf, self._fill))
                self._buf = self._free.get()
                self._fill = 0

    def close(self) -> None:
        """Write what is left and wait for the writer; raises its error, if any."""
        if self._thread is None:
            return
        if self._fill:
            self._full.put((self._buf, self._fill))
            self._fill = 0
        self._full.put(None)
        self._thread.join()
        self._thread = None
        self._check()


def render_events(engine, events, sample_rate: int, blocksize: int, sink: _Sink, progress=None) -> None:
    """Drive `engine` through `events` (a `MidiEvents`) and the release tail into `sink`.

    The engine is called with at most `blocksize` frames at a time; events are passed with their
    frame offset inside the call. Output is identical for any `blocksize`.
    """
    frames = events.frames(sample_rate)
    end = max(events.end_frame(sample_rate), int(frames[-1]) + 1 if len(frames) else 0, 1)
    kinds, chans, aa, bb = events.kind, events.channel, events.a, events.b
    buf = np.zeros((blocksize, 2), np.float32)
    latency = int(getattr(engine, "latency_samples", 0) or 0)
    pos, i, n_ev = 0, 0, len(frames)

    def step(n: int) -> np.ndarray:
        nonlocal pos, i
        j = int(np.searchsorted(frames, pos + n, side="left"))
        if j > i:
            for k, c, a, b, f in zip(kinds[i:j].tolist(), chans[i:j].tolist(), aa[i:j].tolist(),
                                     bb[i:j].tolist(), (frames[i:j] - pos).tolist(), strict=True):
                _dispatch(engine, k, c, a, b, f)
            i = j
        out = _render(engine, n, buf)
        sink.write(out)
        pos += n
        if progress is not None:
            progress.update(n / sample_rate)
        return out

    while pos < end:
        step(min(blocksize, end - pos))
    assert i == n_ev
    # Tail: fixed windows after `end`, so the stopping point does not depend on blocksize. The
    # latency is rendered on top so the last audible frames are not cut.
    max_tail = int(MAX_TAIL_SECONDS * sample_rate)
    tail = 0
    while tail < max_tail:
        peak = 0.0
        w = 0
        while w < TAIL_WINDOW:
            out = step(min(blocksize, TAIL_WINDOW - w))
            w += out.shape[0]
            peak = max(peak, float(np.max(np.abs(out))) if out.shape[0] else 0.0)
        tail += TAIL_WINDOW
        if progress is not None:
            progress.total = max(progress.total or 0, (pos + TAIL_WINDOW) / sample_rate)
        if peak < SILENCE and tail > latency:
            break


def _render(engine, n: int, buf: np.ndarray) -> np.ndarray:
    out = engine.render(n, out=buf[:n])
    if out is None:
        out = buf[:n]
    return out


def prepare_notes(engine, events) -> int:
    """Start generating every note the file needs (`engine.prepare` in the background: the model
    runs beside the mix, and the render waits only for a note still to come); returns how many.

    The engine simulates the file's program changes and knob CCs itself, so notes played after a
    knob move are generated with the moved latent.
    """
    return int(engine.prepare(events, background=True) or 0)


def make_progress(enabled: bool | None, total_seconds: float):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=round(total_seconds, 2), unit="s", file=sys.stderr, dynamic_ncols=True, leave=False,
                desc="render", bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total:.1f} s audio "
                                          "[{elapsed}<{remaining}]")


def _load_presets(preset, program_map: dict, drums: str | None, preset_dirs) -> list:
    """The presets a render plays, as `play` loads them: `preset` (a name or a list of names; the first
    plays on every channel, program change N selects the N-th), the program map's, and the drum kit last."""
    from synth.preset import find_preset

    names = [preset] if isinstance(preset, str) else list(preset)
    presets = [find_preset(n, list(preset_dirs)) for n in dict.fromkeys([*names, *program_map.values()])]
    if drums is not None:
        kit = find_preset(drums, list(preset_dirs))
        if not kit.is_drums:
            raise UserError(f"--drums {drums}: is a {kit.kind} preset, not a drum kit (`python -m synth presets` "
                            f"shows each preset's kind)")
        presets = [p for p in presets if p.name != kit.name] + [kit]
    return presets


def _router(preset, program_map: dict, drums: str | None, preset_dirs, midi_events, report):
    """The render's `Router`: over `preset` (names), or, for None, over the installed presets the file
    (`midi_events()`, waited for) routes its notes to."""
    from synth.routing import scan_uses

    if preset is None:   # General MIDI: the file says which presets it needs
        presets = needed_presets(installed_presets(program_map, drums, preset_dirs, report), program_map,
                                 drums, scan_uses(midi_events()))
    else:
        presets = _load_presets(preset, program_map, drums, preset_dirs)
    return routed(presets, program_map, drums)


def installed_presets(program_map: dict, drums: str | None, preset_dirs, report=None) -> list:
    """Every installed preset (manifests only: no ONNX session yet), in search-path order, for GM
    routing. A preset the program map or `drums` names must load (one-line error otherwise); another
    broken one is skipped and `report`ed, as `python -m synth presets` lists it."""
    from synth.errors import PresetError
    from synth.preset import available_presets, find_preset, load_preset_dir

    for name in [*program_map.values(), *([drums] if drums is not None else [])]:
        find_preset(name, list(preset_dirs))
    out = []
    for name, folder in available_presets(list(preset_dirs)).items():
        try:
            out.append(load_preset_dir(folder))
        except PresetError as e:
            if report is not None:
                report(f"skipped preset {name}: {e}")
    if not out:
        raise UserError("no presets are installed; pass --preset-dir DIR or set SYNTH_PRESET_PATH "
                        "(`python -m synth presets` shows where presets are looked for)")
    return out


def needed_presets(installed: list, program_map: dict, drums: str | None, uses) -> list:
    """The presets of `installed` that GM routing sends `uses` ((channel, bank, lsb, program) tuples,
    `synth.routing.scan_uses`) to, plus the default pitched preset, the program map's and the kit."""
    from synth.routing import Router

    keep = Router(installed, program_map, drums).presets_for(uses)
    return [p for i, p in enumerate(installed) if i in keep]


def routed(presets: list, program_map: dict, drums: str | None):
    """The `synth.routing.Router` over `presets` put in engine order: the preset channels start on
    first, then the default kit (an engine without a router plays both by position)."""
    from synth.routing import Router

    r = Router(presets, program_map, drums)
    first, kit = r.default(0), r.kit()
    front = list(dict.fromkeys(i for i in (first.preset if first else None, kit) if i is not None))
    order = front + [i for i in range(len(presets)) if i not in front]
    return r if order == list(range(len(presets))) else Router([presets[i] for i in order], program_map, drums)


def engine_routing(engine_cls, router) -> dict:
    """Engine keyword arguments for `router`: `presets` and `router=` when the engine (or factory) takes one
    (or any keyword), else the bank-0 routing as a `program_map` (no banks or timbres; channel 10 then
    plays the first kit)."""
    import inspect

    try:
        params = inspect.signature(engine_cls).parameters
    except (TypeError, ValueError):
        params = {}
    takes = "router" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw: dict = {"presets": router.presets}
    if takes:
        kw["router"] = router
    else:
        kw["program_map"] = router.program_map()
    return kw


class _RawSink:
    """A file object taking float32 blocks as raw bytes: the render's intermediate for --normalize."""

    def __init__(self, f):
        self.f = f

    def write(self, block: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(block, np.float32).tobytes())


def _normalize_gain(raw, normalize: tuple[str, float], peak: float, sample_rate: int, out: Path) -> float:
    """The linear gain that brings the rendered file (raw float32 stereo in `raw`) to the target."""
    mode, target = normalize
    if mode == "peak":
        if peak <= 0.0:
            raise UserError(f"{out}: the render is silent; --normalize peak has nothing to scale")
        return 10.0 ** (target / 20.0) / peak
    try:
        import pyloudnorm
    except ImportError:
        raise UserError("--normalize lufs needs the pyloudnorm package: pip install pyloudnorm") from None
    raw.seek(0)
    x = np.fromfile(raw, np.float32).reshape(-1, 2).astype(np.float64)
    try:
        loudness = pyloudnorm.Meter(sample_rate).integrated_loudness(x)
    except ValueError:
        raise UserError(f"{out}: the render is too short (under 0.4 s) to measure its loudness; use "
                        f"--normalize peak") from None
    if not math.isfinite(loudness):
        raise UserError(f"{out}: the render is too quiet to measure its loudness; --normalize lufs has "
                        f"nothing to scale")
    return 10.0 ** ((target - loudness) / 20.0)


def _copy_scaled(raw, f, gain: float, clip: bool, chunk: int = 65536) -> int:
    """Copy raw float32 stereo from `raw` into sound file `f`, times `gain`; returns samples clipped."""
    raw.seek(0)
    g = np.float32(gain)
    clipped = 0
    while True:
        data = raw.read(chunk * 8)
        if not data:
            return clipped
        x = np.frombuffer(data, np.float32).reshape(-1, 2) * g
        if clip:
            over = np.abs(x) > 1.0
            if over.any():
                clipped += int(over.sum())
                np.clip(x, -1.0, 1.0, out=x)
        f.write(x)


def _write(engine, events, out: Path, container: str, fmt: str, sample_rate: int, blocksize: int, bar,
           normalize: tuple[str, float] | None = None) -> tuple[_Sink, float, int]:
    """Render `events` through `engine` into `out`, atomically; a write failure is a `UserError`.

    With `normalize`, the render goes to an unnamed float32 temporary file beside `out` first, and
    is written scaled. Returns the sink, the normalization gain (1.0 without) and the samples clipped.
    """
    import soundfile as sf

    from synth.fsutil import atomic_path

    def run(f) -> _Sink:
        sink = _Sink(f, int(getattr(engine, "latency_samples", 0) or 0))
        try:
            render_events(engine, events, sample_rate, blocksize, sink, bar)
            finish = getattr(engine, "finish_prepare", None)
            if finish is not None:
                finish()          # the prefetch's error, if it had one, before the file is kept
        finally:
            sink.close()
        return sink

    gain, clipped = 1.0, 0
    try:
        # atomic_path gives the file the mode the umask asks for (read without changing it).
        with atomic_path(out) as tmp:
            try:
                if normalize is None:
                    with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=2, format=container,
                                      subtype=FORMATS[fmt]) as f:
                        sink = run(f)
                else:
                    with tempfile.TemporaryFile(dir=Path(tmp).parent, prefix=".render-") as raw:
                        sink = run(_RawSink(raw))
                        gain = _normalize_gain(raw, normalize, sink.peak, sample_rate, out)
                        with sf.SoundFile(tmp, "w", samplerate=sample_rate, channels=2, format=container,
                                          subtype=FORMATS[fmt]) as f:
                            clipped = _copy_scaled(raw, f, gain, clip=fmt != "float")
                    sink.peak *= gain
                    if clipped:
                        sink.peak = min(sink.peak, 1.0)
            except OSError as e:
                raise UserError(f"{out}: cannot write ({e.strerror or e}); check free space and permissions") from None
            except sf.LibsndfileError as e:
                raise UserError(f"{out}: cannot write ({e}); check free space and permissions") from None
    except PermissionError:
        raise UserError(f"{out}: permission denied; choose a writable output path") from None
    except FileNotFoundError:
        raise UserError(f"{out}: cannot create a file in {out.parent or '.'}; choose a writable output path") from None
    return sink, gain, clipped


def render_file(input_path, output_path, preset=None, preset_dirs=(), sample_rate: int = 48000,
                fmt: str = "pcm16", knobs=(), program_map=None, blocksize: int = DEFAULT_BLOCKSIZE,
                fx: str | None = None, progress: bool | None = None, drums: str | None = None,
                engine_kw: dict | None = None, gain_db: float | None = None,
                normalize: tuple[str, float] | None = None, report=None) -> RenderResult:
    """Render MIDI file `input_path` to `output_path` (.wav/.flac). Raises `UserError` on bad input.

    `preset`: None (General MIDI: the installed presets the file's programs, banks and channel 10
    need, `synth.routing`), or a name or list of names, routed among themselves by GM family.
    `program_map` {program: name} and `drums` (channel 10's kit) override the routing. `knobs`:
    [(cc, value 0..127)], each a knob of some loaded preset. `gain_db`: master gain change.
    `normalize`: ("peak", dBFS) or ("lufs", LUFS), applied to the whole file before it is written.
    `report`: called with each line of the routing table (and each installed preset skipped)."""
    from synth.midifile import read_midi

    t0 = time.perf_counter()
    inp, out = Path(input_path), Path(output_path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose from {', '.join(sorted(FORMATS))}")
    if not 8000 <= sample_rate <= 192000:
        raise UserError(f"--sample-rate {sample_rate}: choose 8000..192000 Hz")
    container = check_output(out, inp, fmt)
    # mido parses in Python while the engine's ONNX session is created in C++ (without the GIL):
    # overlap the two. A bad MIDI file is reported first, whatever else fails.
    parsed: dict = {}

    def parse() -> None:
        try:
            parsed["events"] = read_midi(inp)
        except BaseException as e:  # noqa: BLE001 - re-raised below in the calling thread
            parsed["error"] = e

    reader = threading.Thread(target=parse, name="midi-reader", daemon=True)
    reader.start()

    def midi_events():
        reader.join()
        if "error" in parsed:
            raise parsed["error"]
        return parsed["events"]

    kw: dict = {}
    try:
        program_map = dict(program_map or {})
        from synth.engine import Engine
        from synth.routing import scan_uses

        router = _router(preset, program_map, drums, preset_dirs, midi_events, report)
        kw = dict(sample_rate=sample_rate, blocksize=blocksize, realtime=False, **engine_routing(Engine, router))
        check_knobs(list(knobs), kw["presets"])
        if gain_db is not None:
            kw["master_gain"] = master_gain(gain_db)
        if fx:
            from synth.fx import parse_fx

            kw["fx"] = parse_fx(fx, sample_rate, chunk=256)
        kw.update(engine_kw or {})
        engine = Engine(**kw)
    except BaseException:
        midi_events()  # a MIDI error wins over the preset/engine error
        if kw.get("fx") is not None:
            kw["fx"].close()
        raise
    try:
        events = midi_events()
        if events.note_count() == 0:
            raise UserError(f"{inp}: the file has no notes; nothing to render")
        if events.end_time > MAX_SECONDS:
            raise UserError(f"{inp}: the file lasts {events.end_time / 3600:.1f} hours, over the {MAX_SECONDS / 3600:.0f}"
                            f"-hour render limit; its tempo map or timing is probably broken")
        table = router.describe(scan_uses(events))
        for line in table[:MAX_TABLE] if report is not None else ():
            report(f"routing: {line}")
        if report is not None and len(table) > MAX_TABLE:
            report(f"routing: ... {len(table) - MAX_TABLE} more (channel, bank, program) routes")
        for cc, v in knobs:
            engine.set_knob(cc, v)   # every preset's knob, as `play` does; no CC reaches a channel
        t_prep = time.perf_counter()
        n_prep = prepare_notes(engine, events)
        t_prep = time.perf_counter() - t_prep
        bar = make_progress(progress, events.end_time)
        try:
            sink, norm_gain, clipped = _write(engine, events, out, container, fmt, sample_rate, blocksize, bar,
                                              normalize)
        finally:
            if bar is not None:
                bar.close()
    finally:
        engine.report()   # what the engine only counted while rendering (NaN blocks, skipped notes)
        engine.close()
        if kw.get("fx") is not None:
            kw["fx"].close()  # frees its pyo server now rather than at garbage collection
    return RenderResult(path=out, sample_rate=sample_rate, frames=sink.frames, notes=events.note_count(),
                        peak=sink.peak, seconds_prepare=t_prep + getattr(engine, "prepare_wait_s", 0.0),
                        seconds_total=time.perf_counter() - t0,
                        notes_prepared=n_prep, routing=table,
                        normalize_gain_db=20 * math.log10(norm_gain) if normalize is not None else None,
                        clipped=clipped)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    sr = parse_int(args.sample_rate, "--sample-rate", 8000, 192000, "choose 8000..192000 Hz (48000 is the default)")
    bs = parse_int(args.blocksize, "--blocksize", 1, MAX_BLOCKSIZE, f"choose 1..{MAX_BLOCKSIZE} frames")
    gain_db = parse_gain(args.gain) if args.gain is not None else None
    normalize = parse_normalize(args.normalize)
    from synth.diskcache import parse_option

    disk_cache = parse_option(args.disk_cache)
    from synth.engine import single_thread_blas

    # The mix's matrix product is memory-bound: a second BLAS thread buys no wall time offline either
    # (docs/decisions-engine.md).
    single_thread_blas()
    res = render_file(args.input, args.output, preset=args.preset, preset_dirs=args.preset_dir,
                      sample_rate=sr, fmt=args.format, knobs=parse_knobs(args.knob),
                      program_map=parse_program_map(args.program_map), blocksize=bs, fx=args.fx,
                      progress=args.progress, drums=args.drums, gain_db=gain_db, normalize=normalize,
                      engine_kw={"disk_cache": disk_cache},
                      report=None if args.quiet else lambda line: print(f"synth render: {line}", file=sys.stderr))
    if not args.quiet:
        dur = res.frames / res.sample_rate
        peak_db = 20 * math.log10(res.peak) if res.peak > 0 else float("-inf")
        norm = ""
        if res.normalize_gain_db is not None:
            norm = f" (normalized {normalize[0]} {normalize[1]:g}: {res.normalize_gain_db:+.1f} dB"
            norm += f", {res.clipped} samples clipped)" if res.clipped else ")"
        print(f"wrote {res.path}: {dur:.2f} s at {res.sample_rate} Hz ({args.format}), {res.notes} notes, "
              f"peak {peak_db:.1f} dBFS{norm}; took {res.seconds_total:.2f} s "
              f"({dur / max(res.seconds_total, 1e-9):.0f}x real time, "
              f"waiting for notes {res.seconds_prepare:.2f} s)")
    return 0
