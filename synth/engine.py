"""`Engine`: MIDI events → stereo float32 blocks. Live playing and offline rendering drive this one object.

    engine = Engine(sample_rate=48000, blocksize=128, presets=[piano], realtime=False)
    engine.note_on(0, 60, 100, frame=17)     # frame: offset inside the next render() call
    block = engine.render(128)               # float32[128, 2] in [-1, 1]

Channels are 0..15 (9 is MIDI channel 10, the drum channel). Events whose frame lies beyond the
next `render` call carry over to later calls, so a host may post events ahead of time.

Offline (`realtime=False`) a note missing from the cache is generated synchronously (use
`prepare` to generate everything a file needs in one batch first), so the output is deterministic
and the same at any block size. Live (`realtime=True`) a generator thread prefills the keyboard,
`render` never runs the model and never waits: a miss plays the nearest cached pitch, resampled,
and crossfades to the exact note when the worker publishes it.

Signal chain per block: voices (vectorised mix) → NaN/Inf guard → effects bus (`fx.process`) →
soft limiter (never beyond ±1.0).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import weakref
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

from synth.cache import GUARD, NoteCache
from synth.errors import UserError
from synth.latent import LatentMapper
from synth.preset import Preset
from synth.voices import VoiceBank
from synth.worker import GeneratorWorker, ceil_resampled

log = logging.getLogger("synth")

DRUM_CHANNEL = 9
DEFAULT_MASTER_GAIN = 0.5   # `master_gain`'s default; `--gain DB` scales it
STEAL_FADE_S = 0.005       # a stolen voice fades this fast: short, but no click
SOUND_OFF_FADE_S = 0.005
XFADE_S = 0.02             # fallback → exact note crossfade
MIN_RELEASE_S = 0.002
LIMIT_KNEE = 0.9           # the soft limiter is linear below this and bends smoothly into ±1.0
BEND_SEMITONES = 2.0
MAX_SPLITS = 8             # live: a block is cut at most this many times by events (a flood's bound)
_VOICE_CCS = frozenset((64, 120, 121, 123))   # CCs that act on playing voices at their frame


def single_thread_blas() -> int:
    """Make numpy's BLAS run on the calling thread only, process-wide: `python -m synth` (live) and
    `python -m synth render` call it at start (not the engine: in a process that also trains, it
    would slow torch). The mix ends in one matrix product, which OpenBLAS splits over helper threads
    of normal priority above ~262k multiply-adds; the audio thread would wait for them. Returns the
    number of BLAS libraries limited (0 without threadpoolctl). Why: docs/decisions-engine.md."""
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:   # an optional nicety, not a reason to refuse to play
        return 0
    threadpool_limits(1, user_api="blas")
    return sum(1 for lib in threadpool_info() if lib.get("user_api") == "blas")


def _touches_voices(kind: str, args: tuple) -> bool:
    """True for events that change playing voices at their frame (the mix must be cut there)."""
    return kind in ("on", "off", "bend") or (kind == "cc" and args[1] in _VOICE_CCS)


def _extremes(x: np.ndarray) -> tuple[float, float]:
    """(max, min) of `x`, NaN when it holds one: argmax/argmin, which allocate no reduction buffers."""
    if not x.size:
        return 0.0, 0.0
    flat = x.reshape(-1)
    return flat.item(flat.argmax()), flat.item(flat.argmin())


def soft_limit(x: np.ndarray, knee: float = LIMIT_KNEE, work: np.ndarray | None = None,
               over: np.ndarray | None = None, extremes: tuple[float, float] | None = None) -> None:
    """Soft-clip `x` (float32, C-contiguous) in place: identity below `knee`, tanh into ±1.0 above;
    never beyond ±1.0. `work` (float32) and `over` (bool), at least x.size long, are work buffers
    (allocated when not given); `extremes`: x's (max, min) when the caller has them."""
    if not x.flags.c_contiguous:
        y = np.ascontiguousarray(x)
        soft_limit(y, knee)
        x[...] = y
        return
    hi, lo = _extremes(x) if extremes is None else extremes
    if max(hi, -lo, 0.0) <= knee:
        return
    flat = x.reshape(-1)
    n = flat.size
    a = np.empty(n, np.float32) if work is None else work[:n]
    big = np.empty(n, bool) if over is None else over[:n]
    room = 1.0 - knee
    np.greater(np.abs(flat, out=a), knee, out=big)
    # knee + room * tanh((|x| - knee) / room), with the sign of x, on every sample (elementwise the
    # same float32 operations as on the samples above the knee alone); kept only above it.
    np.subtract(a, knee, out=a)
    np.divide(a, room, out=a)
    np.tanh(a, out=a)
    np.multiply(room, a, out=a)
    np.add(knee, a, out=a)
    np.copysign(a, flat, out=a)
    np.copyto(flat, a, where=big)
    np.minimum(np.maximum(flat, -1.0, out=flat), 1.0, out=flat)   # np.clip's values, at less cost


class Engine:
    """Stereo synthesizer engine over one or more presets (see the module docstring).

    `presets`: loaded `Preset`s; program change selects among them (program p → presets[p], or
    `set_program_map`), channel 9 plays the first drum preset when one is loaded.
    `polyphony`: playing voices at most; beyond it the engine steals (released voices first, then
    the oldest) with a 5 ms fade. `cache_mb`: the note cache's cap. `master_gain`: linear.
    `knob_map`: {cc: knob index or name} overriding the presets' CC assignment. `fx`: an object
    with `process(block float32[F, 2])` working in place (e.g. `synth.fx.EffectsBus`), applied
    before the limiter. `providers`: ONNX Runtime providers ("auto": TensorRT → CUDA → CPU).
    `threads`: ONNX intra-op threads (default: all cores offline, all but one live).
    `program_map`: {program: preset name}, as `set_program_map`.
    """

    def __init__(self, sample_rate: int = 48000, blocksize: int = 128, presets: Iterable[Preset] = (),
                 realtime: bool = False, polyphony: int = 256, cache_mb: float = 1024,
                 master_gain: float = DEFAULT_MASTER_GAIN,
                 knob_map: Mapping[int, int | str] | None = None, fx=None, providers="auto",
                 threads: int | None = None, max_chunk: int = 8192, pan_spread: float = 0.6,
                 program_map: Mapping[int, str] | None = None):
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 384000:
            raise UserError(f"sample rate {sample_rate!r} Hz is not supported; use an integer 8000..384000 (e.g. 48000)")
        if not isinstance(blocksize, int) or not 1 <= blocksize <= 1 << 16:
            raise UserError(f"block size {blocksize!r} is not supported; use 1..65536 frames (e.g. 128)")
        if not isinstance(polyphony, int) or not 1 <= polyphony <= 4096:
            raise UserError(f"polyphony {polyphony!r} is not supported; use 1..4096")
        if not cache_mb > 0:
            raise UserError(f"cache size {cache_mb!r} MB must be positive")
        self.presets: list[Preset] = list(presets)
        if not self.presets:
            raise UserError("the engine needs at least one preset; pass --preset NAME (see `python -m synth presets`)")
        names = [p.name for p in self.presets]
        if len(set(names)) != len(names):
            raise UserError(f"preset names must be distinct, got {names}")
        self.sample_rate = sample_rate
        self.blocksize = blocksize
        self.realtime = bool(realtime)
        self.polyphony = polyphony
        self.master_gain = float(master_gain)
        self.fx = fx
        # The effects bus hears CCs too (its filter cutoff follows one), at their frame in the block.
        self._fx_cc = getattr(fx, "control_change", None)
        self.pan_spread = float(pan_spread)
        self._index = {p.name: i for i, p in enumerate(self.presets)}
        self.mappers = {p.name: LatentMapper(p, knob_map) for p in self.presets}
        self.knobs: dict[str, tuple] = {p.name: self.mappers[p.name].default_key for p in self.presets}
        for cc, target in (knob_map or {}).items():
            if all(m.knob_for_cc(cc) is None for m in self.mappers.values()):
                known = "; ".join(f"{p.name}: " + ", ".join(f"{i}={k.name}" for i, k in enumerate(p.knobs))
                                  for p in self.presets)
                raise UserError(f"knob map {cc}={target!r}: no loaded preset has that knob (knobs: {known})")
        self._layers = [GeneratorWorker.layers(p) for p in self.presets]
        # Velocity → the nearest generated layer (ties to the louder one), per preset.
        self._vlayer = [[min(ls, key=lambda v, vel=vel: (abs(v - vel), -v)) for vel in range(128)]
                        for ls in self._layers]
        self._gain = [10.0 ** (p.gain_db / 20.0) for p in self.presets]
        self._release_s = [max(MIN_RELEASE_S, p.release_seconds) for p in self.presets]
        self._release_arr = np.array(self._release_s, np.float64)   # per preset, for release_rows
        pitched = [i for i, p in enumerate(self.presets) if not p.is_drums]
        drums = [i for i, p in enumerate(self.presets) if p.is_drums]
        self._default_preset = pitched[0] if pitched else 0
        self._drum_preset = drums[0] if drums else None
        self._program_map: dict[int, int] | None = None
        self._chan_preset = [self._default_preset] * 16
        if self._drum_preset is not None:
            self._chan_preset[DRUM_CHANNEL] = self._drum_preset
        self._sustain = [False] * 16
        self._bend = [1.0] * 16
        # Note-on path lookups (a 256-note chord must start within one 128-frame block live).
        self._pan_table = [self._pan_calc(n) for n in range(128)]
        self._vgain_memo: dict[tuple, float] = {}
        if program_map:
            self.set_program_map(program_map)

        slot_len = max(ceil_resampled(p.note_samples, p.sample_rate, sample_rate) for p in self.presets) + GUARD
        self.max_chunk = max(64, int(max_chunk))
        self.cache = NoteCache(cache_mb, slot_len, pad=self.max_chunk)
        self.voices = VoiceBank(polyphony + max(32, polyphony // 4), self.cache.bank, slot_len, self.max_chunk)
        if threads is None:
            # Live, one core stays free for the audio callback.
            cores = os.cpu_count() or 1
            threads = max(1, cores - 1) if self.realtime else cores
        self.worker = GeneratorWorker(self.presets, self.mappers, self.cache, sample_rate, providers=providers,
                                      threads=threads)
        self.providers = {n: s.provider for n, s in self.worker.sessions.items()}

        self.now = 0                      # absolute time of the next sample to render
        self._events: deque = deque()     # appended by any thread, drained by render()
        self._carry: list = []
        self._seq = itertools.count()
        self._pending_xfade: dict[int, tuple] = {}   # voice row -> (exact key, exact base rate)
        self._pending_start: dict[tuple, tuple] = {}  # (chan, note) -> note-on waiting for its first note
        # chan * 128 + note -> 1 when a voice may be held by that key: set when a voice starts, cleared
        # by the note-off that releases them all. A note-off for a key no voice holds (most of a MIDI
        # flood's) then costs one lookup instead of a scan of every voice.
        self._maybe_held = bytearray(16 * 128)
        self.fallbacks = 0
        self.steals = 0
        # What the render thread counts and `report` logs (render() never logs): NaN/Inf blocks,
        # program changes with no preset mapped, notes skipped offline (the cache full); the counts
        # already logged, and the last program change and note skipped.
        self.nan_blocks = 0
        self._ignored_programs = 0
        self._skipped_notes = 0
        self._reported = (0, 0, 0)
        self._last_ignored = (0, 0)
        self._last_skipped = (0, 0)
        self._limit_work = np.empty(0, np.float32)   # soft_limit's work buffers, grown to the largest block
        self._limit_over = np.empty(0, bool)
        self._closed = False
        if self.realtime:
            self.worker.start()
            # An engine dropped without close() must not leave its generator thread behind.
            weakref.finalize(self, self.worker.request_stop)
            order = [self._default_preset] + [i for i in range(len(self.presets)) if i != self._default_preset]
            for i in order:
                p = self.presets[i]
                self.worker.prefill(p.name, self.mappers[p.name].split(self.knobs[p.name])[0])

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the generator thread (live mode). The engine can still render cached notes."""
        if not self._closed:
            self._closed = True
            self.worker.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Live mode: block until the worker has no prefill or miss pending (start-up, tests)."""
        if not self.realtime:
            return True
        return self.worker.wait_idle(timeout)

    @property
    def latency_samples(self) -> int:
        """Algorithmic latency in samples: the engine has no look-ahead; an effects bus may add some."""
        return int(getattr(self.fx, "latency_samples", 0) or 0)

    # ---- events (any thread; applied at their frame inside the next render) ----------------------
    def _post(self, frame: int, kind: str, *args) -> None:
        self._events.append((max(0, int(frame)), next(self._seq), kind, args))

    def note_on(self, channel: int, note: int, velocity: int, frame: int = 0) -> None:
        """Key down (velocity 1..127; 0 means note-off) at `frame` of the next render()."""
        if velocity <= 0:
            self._post(frame, "off", channel & 15, note & 127)
        else:
            self._post(frame, "on", channel & 15, note & 127, min(127, int(velocity)))

    def note_off(self, channel: int, note: int, frame: int = 0) -> None:
        self._post(frame, "off", channel & 15, note & 127)

    def control_change(self, channel: int, cc: int, value: int, frame: int = 0) -> None:
        """CC 64 sustain, 120 all-sound-off, 121 reset, 123 all-notes-off; knob CCs move the latent."""
        self._post(frame, "cc", channel & 15, cc & 127, min(127, max(0, int(value))))

    def program_change(self, channel: int, program: int, frame: int = 0) -> None:
        self._post(frame, "prog", channel & 15, program & 127)

    def pitch_bend(self, channel: int, value: int, frame: int = 0) -> None:
        """Pitch bend -8192..8191 → ±2 semitones on every voice of the channel."""
        self._post(frame, "bend", channel & 15, min(8191, max(-8192, int(value))))

    def set_knob(self, cc: int, value: int, preset: str | None = None) -> None:
        """Set knob `cc` to `value` (0..127) at once for `preset` (default: every loaded preset)."""
        for p in self.presets:
            if preset is None or p.name == preset:
                self._set_knobkey(p.name, self.mappers[p.name].with_cc(self.knobs[p.name], cc, value))

    def set_program_map(self, mapping: Mapping[int, str]) -> None:
        """Map MIDI programs to loaded preset names ({0: "piano", 48: "strings"}); others are ignored."""
        m = {}
        for prog, name in mapping.items():
            if name not in self._index:
                raise UserError(f"program map: preset {name!r} is not loaded (loaded: {', '.join(self._index)})")
            if not 0 <= int(prog) <= 127:
                raise UserError(f"program map: program {prog!r} must be 0..127")
            m[int(prog)] = self._index[name]
        self._program_map = m

    def select_preset(self, channel: int, name: str) -> None:
        """Play preset `name` on `channel` from now on."""
        if name not in self._index:
            raise UserError(f"preset {name!r} is not loaded (loaded: {', '.join(self._index)})")
        self._chan_preset[channel & 15] = self._index[name]

    def panic(self) -> None:
        """Silence everything within 5 ms: all voices fade, pedals and bends reset, queued events dropped."""
        self._events.clear()
        self._carry = []
        self._pending_start.clear()
        v = self.voices
        v.fade_out_rows(np.flatnonzero(v.active), self.now, SOUND_OFF_FADE_S, self.sample_rate)
        self._pending_xfade.clear()
        self._sustain = [False] * 16
        self._bend = [1.0] * 16

    # ---- note keys -----------------------------------------------------------------------------
    def _note_key(self, pi: int, knobkey: tuple, note: int, velocity: int):
        """(cache key, base rate) for `note` at `velocity` on preset `pi`, or None if it has no sound.
        `knobkey` is the preset's knob state; a tune knob moves from the cache key into the rate."""
        p = self.presets[pi]
        knobkey, tune = self.mappers[p.name].split(knobkey)
        if p.is_drums:
            if note not in p.drum_classes:
                return None
            mkey, base = note, tune
        else:
            lo, hi = p.pitch_range
            mkey = min(hi, max(lo, note))
            base = 2.0 ** ((note - mkey) / 12.0) * tune
        return (p.name, knobkey, mkey, self._vlayer[pi][velocity]), base

    def _velocity_gain(self, pi: int, velocity: int, vlayer: int) -> float:
        g = self._vgain_memo.get((pi, velocity, vlayer))
        if g is None:
            g = self._vgain_memo[(pi, velocity, vlayer)] = self._velocity_gain_calc(pi, velocity, vlayer)
        return g * self.master_gain   # outside the memo: master_gain is a public attribute

    def _velocity_gain_calc(self, pi: int, velocity: int, vlayer: int) -> float:
        p = self.presets[pi]
        g = (velocity / 127.0) ** p.velocity_curve
        if p.velocity_conditioned:
            # The model already plays the layer's loudness; bridge the gap to the exact velocity.
            g /= (vlayer / 127.0) ** p.velocity_curve
        return g * self._gain[pi]

    def _pan(self, pi: int, note: int) -> tuple[float, float]:
        """Constant-power pan spread by pitch (low notes left, high right, as seen from the player)."""
        return self._pan_table[note]

    def _pan_calc(self, note: int) -> tuple[float, float]:
        pos = 0.5 + self.pan_spread * (note - 64) / 128.0
        theta = min(1.0, max(0.0, pos)) * (math.pi / 2)
        return math.cos(theta), math.sin(theta)

    def prepare(self, events) -> int:
        """Generate, in batches, every note a list of future events needs (offline rendering).

        `events`: a `synth.midifile.MidiEvents` (columns `kind`, `channel`, `a`, `b`), or an iterable
        of `(channel, note, velocity)` note-ons, or of `(kind, channel, a[, b])` with kind "note_on",
        "control_change" or "program_change" (other kinds are skipped). They are simulated in order
        from the current channel programs and knob states, after any events already posted.
        Returns the number of notes generated.
        """
        chan = list(self._chan_preset)
        knobs = dict(self.knobs)
        keys = []

        def simulate(kind, ch, a, b):
            ch &= 15
            if kind == "note_on":
                if b > 0:
                    pi = chan[ch]
                    k = self._note_key(pi, knobs[self.presets[pi].name], a & 127, min(127, int(b)))
                    if k is not None:
                        keys.append(k[0])
            elif kind == "control_change":
                name = self.presets[chan[ch]].name
                knobs[name] = self.mappers[name].with_cc(knobs[name], a, b)
            elif kind == "program_change":
                pi = self._program_target(ch, a & 127)
                if pi is not None:
                    chan[ch] = pi

        posted = sorted(list(self._carry) + list(self._events), key=lambda e: (e[0], e[1]))
        names = {"on": "note_on", "cc": "control_change", "prog": "program_change"}
        for _, _, kind, args in posted:
            if kind in names:
                simulate(names[kind], *args, *((0,) * (3 - len(args))))
        if hasattr(events, "kind") and hasattr(events, "channel"):
            # Column form (synth.midifile.MidiEvents): 0 note-on, 2 control change, 3 program change.
            col_kinds = {0: "note_on", 2: "control_change", 3: "program_change"}
            for kd, ch, a, b in zip(np.asarray(events.kind).tolist(), np.asarray(events.channel).tolist(),
                                    np.asarray(events.a).tolist(), np.asarray(events.b).tolist(), strict=True):
                if kd in col_kinds:
                    simulate(col_kinds[kd], ch, a, b)
        else:
            for ev in events:
                if not ev:
                    continue
                if isinstance(ev[0], str):
                    simulate(ev[0], ev[1], ev[2] if len(ev) > 2 else 0, ev[3] if len(ev) > 3 else 0)
                else:
                    simulate("note_on", ev[0], ev[1], ev[2])
        n_new = len({k for k in keys if self.cache.peek(k) is None})
        if n_new > self.cache.n_slots:
            log.warning("prepare: %d notes exceed the note cache (%d slots); some will be generated twice. "
                        "Raise cache_mb.", n_new, self.cache.n_slots)
        return self.worker.generate_now(keys)

    def _program_target(self, ch: int, program: int) -> int | None:
        if ch == DRUM_CHANNEL and self._drum_preset is not None:
            return None
        if self._program_map is not None:
            return self._program_map.get(program)
        return program if program < len(self.presets) else None

    # ---- event application (render thread) -----------------------------------------------------
    def _set_knobkey(self, name: str, key: tuple, settle: bool = False) -> None:
        old = self.knobs[name]
        if key != old:
            self.knobs[name] = key
            split = self.mappers[name].split
            cache_key = split(key)[0]
            if self.realtime and not self._closed and cache_key != split(old)[0]:
                # A CC move waits for the knob to settle before the keyboard is prefilled (worker.py).
                # A tune move changes no note: the voices only play them at another rate.
                self.worker.prefill(name, cache_key, settle)

    def _apply_ahead(self, kind: str, args: tuple, t: int) -> bool:
        """Apply a note-on or note-off at time `t`, later in the block than the mix has reached, if
        the result is the one a mix cut at `t` would give; False (nothing done) otherwise.

        Voices are functions of absolute time, and the mixer keeps a voice silent before its start
        and sums voices in start order, so most note events need no cut: a note-on whose note is
        cached, with a voice row free and no voice to steal; a note-off whose voices hold a constant
        full level (their release ramp from `t`, clipped to 1, is that level before `t`). Steals,
        misses, pedals, bends and sound-off mix up to their frame first. The output is the same at
        any block size.
        """
        if kind == "on":
            return self._note_on(args[0], args[1], args[2], at=t)
        if kind == "off":
            return self._note_off(args[0], args[1], at=t)
        return False

    def _apply(self, kind: str, args: tuple) -> None:
        if kind == "on":
            self._note_on(*args)
        elif kind == "off":
            self._note_off(*args)
        elif kind == "cc":
            self._cc(*args)
        elif kind == "bend":
            ch, value = args
            bend = 2.0 ** (BEND_SEMITONES * value / 8192.0 / 12.0)
            self._bend[ch] = bend
            v = self.voices
            v.set_bend_rows(v.select(ch), self.now, bend)
        elif kind == "prog":
            ch, program = args
            pi = self._program_target(ch, program)
            if pi is None:
                self._ignored_programs += 1      # logged by `report`, from another thread
                self._last_ignored = (program, ch)
            else:
                self._chan_preset[ch] = pi

    def _free(self, i: int) -> None:
        self.cache.release(int(self.voices.slot[i]))
        self.voices.free_row(i)
        self._pending_xfade.pop(i, None)

    def _reap(self) -> None:
        rows = self.voices.dead(self.now)
        if len(rows) == 1:
            self._free(int(rows[0]))
        elif len(rows):
            # Many voices end together (a released cluster): unpin and free them in one step.
            v = self.voices
            self.cache.release_many(v.slots_of(rows))
            v.free_rows(rows)
            if self._pending_xfade:
                for i in range(len(rows)):
                    self._pending_xfade.pop(rows.item(i), None)

    def _alloc_voice(self) -> int:
        """A free voice row, stealing if `polyphony` voices play (released first, then the oldest)."""
        v = self.voices
        if self.now >= v.next_end:
            self._reap()
        if v.n_live >= self.polyphony:
            victim = v.victim()
            v.fade_out(victim, self.now, STEAL_FADE_S, self.sample_rate)
            self._pending_xfade.pop(victim, None)
            self.steals += 1
        row = v.take_row()
        if row is not None:
            return row
        # Every row is busy with fading ghosts: cut the oldest one (rare: many steals inside 5 ms).
        self._free(v.oldest_ghost())
        return v.take_row()

    def _start(self, pi: int, entry, ch: int, note: int, velocity: int, base: float, pos: float = 0.0,
               env0: float = 1.0, slope: float = 0.0, at: int | None = None) -> int:
        i = self._alloc_voice()
        g = self._velocity_gain(pi, velocity, entry.key[3])
        pl, pr = self._pan(pi, note)
        self.voices.start(i, self.now if at is None else at, entry, ch, note, pi, base, self._bend[ch], g * pl,
                          g * pr, pos, env0, slope)
        self._maybe_held[ch * 128 + note] = 1
        return i

    def _note_on(self, ch: int, note: int, velocity: int, at: int | None = None) -> bool:
        """Start `note`, at time `at` when given (see `_apply_ahead`: then False, with nothing done,
        unless the note is cached and a voice row is free with no steal needed)."""
        pi = self._chan_preset[ch]
        p = self.presets[pi]
        nk = self._note_key(pi, self.knobs[p.name], note, velocity)
        if nk is None:
            return True
        key, base = nk
        if at is not None:
            e = self.cache.peek(key)
            v = self.voices
            if e is None or (e.slot >= 0 and (v.n_live >= self.polyphony or not v.n_free)):
                return False
        entry = self.cache.lookup(key)
        if entry is not None and not self.cache.acquire(entry):
            entry = None
        if entry is None and not self.realtime:
            self.worker.defer_warnings = True    # render() never logs: `report` does
            try:
                self.worker.generate_now([key])
            finally:
                self.worker.defer_warnings = False
            entry = self.cache.peek(key)
            if entry is not None and not self.cache.acquire(entry):
                entry = None
            if entry is None:
                self._skipped_notes += 1         # logged by `report`
                self._last_skipped = (note, pi)
                return True
        if entry is not None:
            if entry.slot >= 0:
                self._start(pi, entry, ch, note, velocity, base, at=at)
            return True
        # Live miss: ask the worker, and play the best stand-in now.
        self.worker.request(key)
        fb = self.cache.nearest(p.name, key[1], key[3], key[2], self._layers[pi], 0 if p.is_drums else 127)
        if fb is not None and fb.slot >= 0 and self.cache.acquire(fb):
            fb_base = base * 2.0 ** ((key[2] - fb.pitch) / 12.0)
            i = self._start(pi, fb, ch, note, velocity, fb_base, at=at)
            self._pending_xfade[i] = (key, base, velocity)
            self.fallbacks += 1
        else:
            self._pending_start[(ch, note)] = (key, base, velocity, pi)
        return True

    def _note_off(self, ch: int, note: int, at: int | None = None) -> bool:
        """Release `note`, at time `at` when given (see `_apply_ahead`: then False, with nothing
        done, unless every voice it releases holds a constant full level)."""
        k = ch * 128 + note
        if not self._maybe_held[k]:
            if self._pending_start:
                self._pending_start.pop((ch, note), None)
            return True
        v = self.voices
        rows = v.select(ch, note, where=v.held)
        if at is None:
            at = self.now
        elif not self._sustain[ch] and len(rows) and ((v.slope[rows] != 0.0).any() or (v.env0[rows] != 1.0).any()):
            return False
        if self._pending_start:
            self._pending_start.pop((ch, note), None)
        self._maybe_held[k] = 0
        for i in rows:
            i = int(i)
            pi = int(v.preset[i])
            if self.presets[pi].is_drums:
                continue  # drum hits play out, as on any GM kit
            if self._sustain[ch]:
                v.sustain(i)
            else:
                v.release(i, at, self._release_s[pi], self.sample_rate)
        return True

    def _release_rows(self, rows: np.ndarray) -> None:
        v = self.voices
        v.release_rows(rows, self.now, v.per_preset(self._release_arr, rows), self.sample_rate)

    def _cc(self, ch: int, cc: int, value: int) -> None:
        v = self.voices
        if cc == 64:
            on = value >= 64
            if self._sustain[ch] and not on:
                # Pedal up: every voice it held releases at once, in one vectorised step.
                self._release_rows(v.select(ch, where=v.sustained))
            self._sustain[ch] = on
        elif cc == 120:
            rows = v.select(ch)
            v.fade_out_rows(rows, self.now, SOUND_OFF_FADE_S, self.sample_rate)
            if self._pending_xfade:
                for i in range(len(rows)):
                    self._pending_xfade.pop(rows.item(i), None)
            self._pending_start = {k: e for k, e in self._pending_start.items() if k[0] != ch}
        elif cc == 123:
            self._release_rows(v.select(ch, unless=(v.ghost, v.released)))
            self._pending_start = {k: e for k, e in self._pending_start.items() if k[0] != ch}
        elif cc == 121:
            self._cc(ch, 64, 0)
            self._apply("bend", (ch, 0))
        else:
            name = self.presets[self._chan_preset[ch]].name
            self._set_knobkey(name, self.mappers[name].with_cc(self.knobs[name], cc, value), settle=True)

    def _check_pending(self, frames: int) -> None:
        """Live: swap fallbacks for exact notes the worker has published since the last block.

        At most one swap per 8 frames of block, and only while a free voice row is left for the
        crossfade: a prefill chunk can publish the exact notes of a whole cluster at once, and 256
        crossfades in one block would cost milliseconds (and cut fading voices). The others keep
        their stand-in a block or two longer.
        """
        v = self.voices
        budget = max(8, frames // 8)
        for i, (key, base, vel) in list(self._pending_xfade.items()):
            e = self.cache.peek(key)
            if e is None:
                continue
            if budget <= 0 or not v.n_free:
                break
            budget -= 1
            del self._pending_xfade[i]
            if not v.active[i] or v.ghost[i]:
                continue
            if e.slot < 0:
                v.fade_out(i, self.now, SOUND_OFF_FADE_S, self.sample_rate)
                continue
            if v.released[i] or not self.cache.acquire(e):
                continue  # already fading out: let the stand-in finish its release
            pos = v.pos_at(i, self.now) * base / v.base_rate[i]
            if pos >= e.loop_end:
                pos = e.loop_start + math.fmod(pos - e.loop_start, e.loop_end - e.loop_start)
            ch, note, pi = int(v.chan[i]), int(v.note[i]), int(v.preset[i])
            held, sustained = bool(v.held[i]), bool(v.sustained[i])
            v.fade_out(i, self.now, XFADE_S, self.sample_rate)
            j = self._start(pi, e, ch, note, vel, base, pos=pos, env0=0.0, slope=1.0 / (XFADE_S * self.sample_rate))
            if sustained:
                v.sustain(j)
            elif not held:
                v.held[j] = False
        for (ch, note), (key, base, vel, pi) in list(self._pending_start.items()):
            e = self.cache.peek(key)
            if e is None:
                continue
            if budget <= 0:
                break
            budget -= 1
            del self._pending_start[(ch, note)]
            if e.slot >= 0 and self.cache.acquire(e):
                self._start(pi, e, ch, note, vel, base)

    # ---- rendering -----------------------------------------------------------------------------
    def render(self, frames: int, out: np.ndarray | None = None) -> np.ndarray:
        """Render the next `frames` frames → float32[frames, 2] in [-1, 1] at `sample_rate`.

        `out`: optional float32[frames, 2], C-contiguous, to write into (the audio callback's buffer).
        Events are applied at their exact frames.

        Real time: it never logs (what goes wrong is counted; `report` logs it, from another thread),
        and in steady state (notes cached, `out` given, no block longer than an earlier one) no
        allocation it makes exceeds 1 KB: small Python objects, numpy scalars and views, never an
        array. tests/test_realtime_alloc.py holds this at 256 voices in 128- and 512-frame blocks with
        note-ons, note-offs, steals, bends and pedal moves in every block; render's traced memory
        rises at most 16 KB while it runs and does not grow from block to block.
        """
        if out is None:
            out = np.empty((frames, 2), np.float32)
        if self.realtime and (self._pending_xfade or self._pending_start):
            self._check_pending(frames)
        evs = self._carry
        while self._events:
            evs.append(self._events.popleft())
        self._carry = []
        if evs:
            evs.sort()    # by (frame, serial): the serial is unique, so nothing past it is compared
        cur = 0
        grid = self._split_grid(evs, frames) if self.realtime and len(evs) > MAX_SPLITS else 0
        skip = self._superseded(evs, frames, grid) if grid > 1 else ()
        for n, ev in enumerate(evs):
            f = ev[0]
            if f >= frames:
                self._carry.append((f - frames,) + ev[1:])
                continue
            kind, args = ev[2], ev[3]
            if not _touches_voices(kind, args):
                # Knob CCs and program changes change no voice at their frame, so the mix is not cut
                # there (the same samples either way: voices are functions of absolute time).
                if n not in skip:
                    self._apply(kind, args)
                if kind == "cc" and self._fx_cc is not None:
                    self._fx_cc(args[1], args[2], f)
                continue
            if grid > 1:
                f -= f % grid
            if f > cur:
                # A note-on or note-off that can take effect at its own frame without a cut (see
                # `_apply_ahead`) does; anything else mixes up to its frame first.
                if n not in skip and self._apply_ahead(kind, args, self.now + (f - cur)):
                    continue
                self._mix(out[cur:f])
                cur = f
            if n not in skip:
                self._apply(kind, args)
            if kind == "cc" and self._fx_cc is not None:
                self._fx_cc(args[1], args[2], ev[0])
        if cur < frames:
            self._mix(out[cur:frames])
        self._reap()
        if out.size > len(self._limit_work):
            self._limit_work = np.empty(out.size, np.float32)
            self._limit_over = np.empty(out.size, bool)
        extremes = self._nan_guard(out)
        if self.fx is not None:
            self.fx.process(out)
            extremes = self._nan_guard(out)
        soft_limit(out, work=self._limit_work, over=self._limit_over, extremes=extremes)
        return out

    @staticmethod
    def _split_grid(evs: list, frames: int) -> int:
        """Live: how finely this block may be cut at events. 1 (every event at its exact frame) while
        at most MAX_SPLITS distinct frames carry voice events; else a grid of frames / MAX_SPLITS, so a
        MIDI flood costs at most MAX_SPLITS mixes per block (each costs the same whatever its length)."""
        seen = set()
        for ev in evs:
            if ev[0] < frames and _touches_voices(ev[2], ev[3]):
                seen.add(ev[0])
        return 1 if len(seen) <= MAX_SPLITS else -(-frames // MAX_SPLITS)

    @staticmethod
    def _superseded(evs: list, frames: int, grid: int) -> set:
        """Events of a flooded block (grid > 1) whose effect a later one replaces before anything can
        hear the difference: a pitch bend followed by another on the same channel at the same grid
        frame (both re-segment the voices at one time), and a knob CC followed by the same CC on the
        same channel with no note-on or program change between (only the last knob state is played)."""
        skip = set()
        last_bend: dict = {}
        last_cc: dict = {}
        for n, ev in enumerate(evs):
            f, kind, args = ev[0], ev[2], ev[3]
            if f >= frames:
                continue
            if kind == "bend":
                k = (args[0], f - f % grid)
                if k in last_bend:
                    skip.add(last_bend[k])
                last_bend[k] = n
            elif kind == "cc" and args[1] not in _VOICE_CCS:
                k = (args[0], args[1])
                if k in last_cc:
                    skip.add(last_cc[k])
                last_cc[k] = n
            elif kind in ("on", "prog"):
                last_cc.clear()
        return skip

    def _nan_guard(self, out: np.ndarray) -> tuple[float, float] | None:
        """Replace NaN/Inf in `out` by silence, and count the block (`report` logs the count).
        Returns out's (max, min) when `out` is C-contiguous and was finite."""
        if not out.flags.c_contiguous:
            if not np.isfinite(out).all():
                self.nan_blocks += 1
                np.nan_to_num(out, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            return None
        hi, lo = _extremes(out)
        if math.isfinite(hi) and math.isfinite(lo):
            return hi, lo
        self.nan_blocks += 1
        flat = out.reshape(-1)
        bad = self._limit_over[:flat.size]
        np.copyto(flat, 0.0, where=np.logical_not(np.isfinite(flat, out=bad), out=bad))
        return None

    def report(self) -> int:
        """Log what `render` only counted since the last call: NaN/Inf blocks replaced by silence,
        notes skipped for a full cache, program changes with no preset, and (offline) the generator's
        warnings about notes generated inside render. Call it from another thread than the audio
        callback: once per status line live, after rendering offline. Returns the messages logged."""
        logged = len(self.worker.deferred)
        while self.worker.deferred:
            msg, args = self.worker.deferred.pop(0)
            log.warning(msg, *args)
        counts = (self.nan_blocks, self._skipped_notes, self._ignored_programs)
        nan, skipped, ignored = (now - then for now, then in zip(counts, self._reported, strict=True))
        self._reported = counts
        if nan > 0:
            log.warning("NaN/Inf in the mix: %d block(s) replaced by silence (%d so far)", nan, counts[0])
        if skipped > 0:
            note, pi = self._last_skipped
            log.warning("%d note(s) could not be cached (cache full) and were skipped, the last note %d of preset "
                        "%s; raise cache_mb", skipped, note, self.presets[pi].name)
        if ignored > 0:
            program, ch = self._last_ignored
            log.debug("%d program change(s) with no preset mapped were ignored, the last program %d on channel %d",
                      ignored, program, ch + 1)
        return logged + (nan > 0) + (skipped > 0) + (ignored > 0)

    def _mix(self, out: np.ndarray) -> None:
        n = out.shape[0]
        s = 0
        v = self.voices
        while s < n:
            self._reap()
            e = min(n, s + v.frames_for(int(np.count_nonzero(v.active))))
            v.mix(self.now, out[s:e])
            self.now += e - s
            s = e

    # ---- status --------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters for status lines and benchmarks (cheap; safe from another thread)."""
        v = self.voices
        active = v.active.copy()
        c = self.cache.stats()
        return {"voices": int(np.count_nonzero(active & ~v.ghost)), "fading": int(np.count_nonzero(active & v.ghost)),
                "cache_hits": c["hits"], "cache_misses": c["misses"], "cache_hit_rate": c["hit_rate"],
                "cache_entries": c["entries"], "cache_mb": c["used_mb"], "cache_cap_mb": c["cap_mb"],
                "cache_evictions": c["evictions"], "fallbacks": self.fallbacks, "steals": self.steals,
                "nan_blocks": self.nan_blocks, "bad_notes": self.worker.bad_notes,
                "worker_pending": self.worker.pending, "worker_errors": self.worker.errors,
                "misses_dropped": self.worker.misses_dropped, "misses_stale": self.worker.misses_stale,
                "generated": self.worker.generated, "last_miss_ms": self.worker.last_miss_ms,
                "last_prefill_s": self.worker.last_prefill_s, "providers": dict(self.providers),
                "time_s": self.now / self.sample_rate}
