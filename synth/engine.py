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

from synth.cache import GUARD, LEVEL_HOP, NoteCache
from synth.channels import Channels, soft_velocity
from synth.errors import UserError
from synth.latent import MORPH_CC, MORPH_TARGET_CC, LatentMapper
from synth.preset import RELEASE_DB, Preset
from synth.routing import RESET_STYLES, bank_select
from synth.voices import NEVER, RELEASE_END_DB, VoiceBank
from synth.worker import GeneratorWorker, ceil_resampled

log = logging.getLogger("synth")

DRUM_CHANNEL = 9
# `master_gain`'s default (`--gain DB` scales it), chosen by scripts/bench_level.py: the most solo
# piano pieces inside -20..-14 LUFS with the limiter far inside its bar (why: docs/decisions-engine.md,
# 2026-12-05, 2026-12-07 and 2026-12-08).
DEFAULT_MASTER_GAIN = 1.89
STEAL_FADE_S = 0.005       # a stolen voice fades this fast: short, but no click
SOUND_OFF_FADE_S = 0.005
XFADE_S = 0.02             # fallback → exact note crossfade
TAIL_LEAD_S = 1.0          # live: a ringing note's first segment is asked for this long before its seam
MIN_RELEASE_S = 0.002      # a preset's release_seconds, at least
LIMIT_GATHER_LIVE = 64      # live, the limiter bends at most this many samples alone (`soft_limit`)
LIMIT_KNEE = 0.9           # the soft limiter is linear below this and bends smoothly into ±1.0
MAX_SPLITS = 8             # live: a block is cut at most this many times by events (a flood's bound)
# CCs that act on playing voices at their frame; and CCs whose order matters (never superseded).
_VOICE_CCS = frozenset((6, 7, 10, 11, 38, 64, 66, 91, 93, 120, 121, 123))
_GAIN_CCS = frozenset((7, 10, 11, 91, 93))
_ORDERED_CCS = frozenset((0, 6, 32, 38, 98, 99, 100, 101))


def release_span(release_seconds: float) -> float:
    """Seconds a preset's release lasts: it falls linearly in dB, RELEASE_DB in `release_seconds` (at
    least MIN_RELEASE_S), and its voice ends RELEASE_END_DB down. The same number is the release's SF2
    releaseVolEnv and SFZ ampeg_release (100 dB in that time), which `synth.bake` writes."""
    return max(MIN_RELEASE_S, release_seconds) * (RELEASE_END_DB / RELEASE_DB)


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


def _checked_args(sample_rate, blocksize, polyphony, cache_mb, presets) -> list[Preset]:
    """The engine's arguments checked (a one-line `UserError` each); returns the presets as a list."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or not 8000 <= sample_rate <= 384000:
        raise UserError(f"sample rate {sample_rate!r} Hz is not supported; use an integer 8000..384000 (e.g. 48000)")
    if not isinstance(blocksize, int) or not 1 <= blocksize <= 1 << 16:
        raise UserError(f"block size {blocksize!r} is not supported; use 1..65536 frames (e.g. 128)")
    if not isinstance(polyphony, int) or not 1 <= polyphony <= 4096:
        raise UserError(f"polyphony {polyphony!r} is not supported; use 1..4096")
    if not cache_mb > 0:
        raise UserError(f"cache size {cache_mb!r} MB must be positive")
    presets = list(presets)
    if not presets:
        raise UserError("the engine needs at least one preset; pass --preset NAME (see `python -m synth presets`)")
    names = [p.name for p in presets]
    if len(set(names)) != len(names):
        raise UserError(f"preset names must be distinct, got {names}")
    return presets


def _touches_voices(kind: str, args: tuple) -> bool:
    """True for events that change playing voices at their frame (the mix must be cut there)."""
    return kind in ("on", "off", "bend", "reset") or (kind == "cc" and args[1] in _VOICE_CCS)


def _extremes(x: np.ndarray) -> tuple[float, float]:
    """(max, min) of `x`, NaN when it holds one: argmax/argmin, which allocate no reduction buffers."""
    if not x.size:
        return 0.0, 0.0
    flat = x.reshape(-1)
    return flat.item(flat.argmax()), flat.item(flat.argmin())


def soft_limit(x: np.ndarray, knee: float = LIMIT_KNEE, work: np.ndarray | None = None,
               over: np.ndarray | None = None, extremes: tuple[float, float] | None = None,
               gather: int | None = None) -> None:
    """Soft-clip `x` (float32, C-contiguous) in place: identity below `knee`, tanh into ±1.0 above;
    never beyond ±1.0. `work` (float32) and `over` (bool), at least x.size long, are work buffers
    (allocated when not given); `extremes`: x's (max, min) when the caller has them. Up to `gather`
    samples over the knee (default half the block) are bent alone; gathering them allocates 8 bytes
    each, so the audio callback passes 64. The samples are the same either way."""
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
    np.greater(np.abs(flat, out=a), knee, out=big)
    k = int(np.count_nonzero(big))
    if k <= min(n // 2, n if gather is None else gather):
        # The few samples above the knee alone (a loud block has a handful): gathered into the work
        # buffer's first k, their signs into the next k, and put back in place.
        v, sign = a[:k], a[k:2 * k]
        np.compress(big, flat, out=sign)
        np.abs(sign, out=v)
        _knee_curve(v, sign, knee)
        np.place(flat, big, v)
        return
    _knee_curve(a, flat, knee)
    np.copyto(flat, a, where=big)


def _knee_curve(a: np.ndarray, sign: np.ndarray, knee: float) -> None:
    """a (= |x|, float32, above `knee`) <- knee + room * tanh((a - knee) / room), with the sign of
    `sign`, within [-1, 1]: the same float32 operations on every sample, whichever samples are given."""
    room = 1.0 - knee
    np.subtract(a, knee, out=a)
    np.divide(a, room, out=a)
    np.tanh(a, out=a)
    np.multiply(room, a, out=a)
    np.add(knee, a, out=a)
    np.copysign(a, sign, out=a)
    np.minimum(np.maximum(a, -1.0, out=a), 1.0, out=a)   # np.clip's values, at less cost


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
    `program_map`: {program: preset name}, as `set_program_map`. `router`: a `synth.routing.Router`
    over `presets` (General MIDI routing: program and bank → preset and timbre, with fallbacks);
    without one, program p selects presets[p]. `disk_cache`: a folder (or `synth.diskcache.DiskCache`)
    that keeps generated notes across runs; None (the default) keeps none.

    Per channel (`synth.channels`): bank select, CC7/CC11 gain, CC10 pan, CC91/CC93 sends, CC64/66/67
    pedals, RPN 0 bend range, CC121, and the knob CCs: a knob moved on one channel changes the notes
    struck after it on that channel only; notes already sounding play on unchanged.
    """

    def __init__(self, sample_rate: int = 48000, blocksize: int = 128, presets: Iterable[Preset] = (),
                 realtime: bool = False, polyphony: int = 256, cache_mb: float = 1024,
                 master_gain: float = DEFAULT_MASTER_GAIN,
                 knob_map: Mapping[int, int | str] | None = None, fx=None, providers="auto",
                 threads: int | None = None, max_chunk: int = 8192, pan_spread: float = 0.6,
                 program_map: Mapping[int, str] | None = None, router=None, disk_cache=None):
        self.presets: list[Preset] = _checked_args(sample_rate, blocksize, polyphony, cache_mb, presets)
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
        self._release_s = [release_span(p.release_seconds) for p in self.presets]   # to RELEASE_END_DB down
        self._release_arr = np.array(self._release_s, np.float64)   # per preset, for release_rows
        pitched = [i for i, p in enumerate(self.presets) if not p.is_drums]
        drums = [i for i, p in enumerate(self.presets) if p.is_drums]
        self._default_preset = pitched[0] if pitched else 0
        self._drum_preset = drums[0] if drums else None
        self._program_map: dict[int, int] | None = None
        self.router = router
        self._bank_style = "gs"                  # how CC0/CC32 select banks (synth.routing.bank_select)
        self.channels = Channels()
        self._knob_ccs = frozenset(cc for m in self.mappers.values() for cc in m.cc_to_knob)
        self._knob_init: dict[str, dict[int, int]] = {p.name: {} for p in self.presets}
        self._morph = [(None, 0)] * 16           # per channel: (morph target program, amount)
        self._transposed: dict[int, tuple] = {}  # preset -> (count, last note) of notes out of range
        self._reported_transposed: set[int] = set()
        # Note-on path lookups (a 256-note chord must start within one 128-frame block live).
        self._pan_table = [self._pan_calc(n) for n in range(128)]
        self._kpos = [self._pan_pos(n) for n in range(128)]
        self._reset_channels()
        self._vgain_memo: dict[tuple, float] = {}
        if program_map:
            self.set_program_map(program_map)

        slot_len = max(ceil_resampled(p.note_samples, p.sample_rate, sample_rate) for p in self.presets) + GUARD
        self.max_chunk = max(64, int(max_chunk))
        self.cache = NoteCache(cache_mb, slot_len, pad=self.max_chunk)
        self.voices = VoiceBank(polyphony + max(32, polyphony // 4), self.cache.bank, slot_len, self.max_chunk)
        self.voices.set_levels(self.cache.levels, LEVEL_HOP)
        self.voices.release_gil = not self.realtime
        for pi, p in enumerate(self.presets):
            if not p.is_drums:                 # (a kit's hits play out: no release to read)
                self.voices.set_release_table(pi, self._release_s[pi], self.sample_rate)
        if threads is None:
            # Live, one core stays free for the audio callback.
            cores = os.cpu_count() or 1
            threads = max(1, cores - 1) if self.realtime else cores
        self.worker = GeneratorWorker(self.presets, self.mappers, self.cache, sample_rate, providers=providers,
                                      threads=threads, disk_cache=disk_cache, offline=not self.realtime)

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
        # Ringing notes (synth.ring): presets whose notes ring on; chained rows not yet at their start
        # (row -> (the row it continues, note key, segment)) and the reverse; chains made, and chains
        # whose segment was missing (live: not made in time; the voice faded out).
        self._rings = [self.worker.ring_off.get(p.name) is not None for p in self.presets]
        self._ahead: dict[int, tuple] = {}
        self._unasked: set[int] = set()           # live: ringing rows whose segment 0 is not asked for yet
        self._tail_lead = int(TAIL_LEAD_S * sample_rate)
        self._behind: dict[int, int] = {}
        self.chains = 0
        self.tail_misses = 0
        self._reported_tail_misses = 0
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
        self._send_ch = int(getattr(fx, "send_channels", 0) or 0)   # the effects bus's send buses
        self._sends = np.zeros((0, max(1, self._send_ch)), np.float32)
        self._limit_over = np.empty(0, bool)
        self._closed = False
        if self.realtime:
            self._start_worker()

    def _start_worker(self) -> None:
        """Live: start the generator thread and prefill every preset's keyboard (the default first),
        then the channels' own knob states."""
        self.worker.start()
        # An engine dropped without close() must not leave its generator thread behind.
        weakref.finalize(self, self.worker.request_stop)
        order = [self._default_preset] + [i for i in range(len(self.presets)) if i != self._default_preset]
        for i in order:
            p = self.presets[i]
            self.worker.prefill(p.name, self.mappers[p.name].split(self.knobs[p.name])[0])
        for key in dict.fromkeys((self.presets[pi].name, self._chan_key[ch])
                                 for ch, pi in enumerate(self._chan_preset) if pi >= 0):
            if key[1] != self.knobs[key[0]]:
                self.worker.prefill(key[0], self.mappers[key[0]].split(key[1])[0])

    @property
    def providers(self) -> dict[str, str]:
        """Each preset's ONNX Runtime provider: the one it loaded on, or, for a graph not loaded yet,
        the one it is expected to load on."""
        return {n: s.provider for n, s in self.worker.sessions.items()}

    # ---- lifecycle ------------------------------------------------------------------------------
    def finish_prepare(self) -> None:
        """After rendering what a `prepare(background=True)` planned: join its thread and raise its error."""
        self.worker.finish_prefetch()

    @property
    def prepare_wait_s(self) -> float:
        """Seconds `render` has waited for notes a background `prepare` was still generating."""
        return self.worker.prefetch_wait_s

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
        """Pitch bend -8192..8191 → ± the channel's bend range (RPN 0; 2 semitones by default)."""
        self._post(frame, "bend", channel & 15, min(8191, max(-8192, int(value))))

    def system_reset(self, frame: int = 0, kind: int = 1) -> None:
        """A reset SysEx (`kind` as synth.midifile's SYSRESET: 1 GM, 2 GM2, 3 GS, 4 XG): notes
        released, every channel back to its power-on state, bank select read as that standard does."""
        self._post(frame, "reset", int(kind))

    def set_knob(self, cc: int, value: int, preset: str | None = None) -> None:
        """Set knob `cc` to `value` (0..127) at once for `preset` (default: every loaded preset), on
        every channel: the channels' own moves of that CC are forgotten."""
        for p in self.presets:
            if (preset is None or p.name == preset) and self.mappers[p.name].knob_for_cc(cc) is not None:
                self._knob_init[p.name][cc] = min(127, max(0, int(value)))
                self.knobs[p.name] = self.mappers[p.name].with_cc(self.knobs[p.name], cc, value)
                for ch in range(16):
                    if self._chan_preset[ch] == self._index[p.name]:
                        self.channels.knob_cc[ch].pop(cc, None)
                        self._update_channel(ch)

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
        """Play preset `name` (a family preset: its default timbre) on `channel` from now on."""
        if name not in self._index:
            raise UserError(f"preset {name!r} is not loaded (loaded: {', '.join(self._index)})")
        self._chan_preset[channel & 15] = self._index[name]
        self._chan_timbre[channel & 15] = None
        self._update_channel(channel & 15)

    def channel_state(self, channel: int) -> tuple[str | None, tuple | None]:
        """(preset name, knob state) that `channel` plays now; (None, None) when it is silent."""
        pi = self._chan_preset[channel & 15]
        return (self.presets[pi].name, self._chan_key[channel & 15]) if pi >= 0 else (None, None)

    def panic(self) -> None:
        """Silence everything within 5 ms: all voices fade, pedals and bends reset, queued events dropped."""
        self._events.clear()
        self._carry = []
        self._pending_start.clear()
        v = self.voices
        v.fade_out_rows(np.flatnonzero(v.active), self.now, SOUND_OFF_FADE_S, self.sample_rate)
        self._pending_xfade.clear()
        c = self.channels
        for ch in range(16):
            c.sustain[ch] = c.sostenuto[ch] = c.soft[ch] = False
            c.bend_value[ch] = 0
        v.sost[:] = False
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
            if mkey != note:
                n, _ = self._transposed.get(pi, (0, 0))
                self._transposed[pi] = (n + 1, note)      # logged once per preset by `report`
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

    def _pan(self, ch: int, note: int) -> tuple[float, float]:
        """Constant-power pan: spread by pitch (low notes left, high right, as seen from the player),
        then moved by the channel's CC10."""
        off = self._chan_pan[ch]
        if off == 0.0:
            return self._pan_table[note]
        theta = min(1.0, max(0.0, self._kpos[note] + off)) * (math.pi / 2)
        return math.cos(theta), math.sin(theta)

    def _pan_pos(self, note: int) -> float:
        return 0.5 + self.pan_spread * (note - 64) / 128.0

    def _pan_calc(self, note: int) -> tuple[float, float]:
        theta = min(1.0, max(0.0, self._pan_pos(note))) * (math.pi / 2)
        return math.cos(theta), math.sin(theta)

    def prepare(self, events, background: bool = False) -> int:
        """Generate, in batches, every note a list of future events needs (offline rendering).
        `background`: generate them in the worker's prefetch thread while `render` runs, which waits
        for a note still to come (`GeneratorWorker.prefetch`); returns how many notes were not in memory.

        `events`: a `synth.midifile.MidiEvents` (columns `kind`, `channel`, `a`, `b`), or an iterable
        of `(channel, note, velocity)` note-ons, or of `(kind, channel, a[, b])` with kind "note_on",
        "control_change", "program_change" or "reset" (other kinds are skipped). They are simulated in
        order from the channels' current state, after any events already posted.
        Returns the number of notes generated.
        """
        sim = _Simulation(self)
        posted = sorted(list(self._carry) + list(self._events), key=lambda e: (e[0], e[1]))
        names = {"on": "note_on", "cc": "control_change", "prog": "program_change", "reset": "reset"}
        for _, _, kind, args in posted:
            if kind in names:
                sim.event(names[kind], *args, *((0,) * (3 - len(args))))
        if hasattr(events, "kind") and hasattr(events, "channel"):
            # Column form (synth.midifile.MidiEvents): 0 note-on, 2 control change, 3 program change, 5 reset.
            col_kinds = {0: "note_on", 2: "control_change", 3: "program_change", 5: "reset"}
            for kd, ch, a, b in zip(np.asarray(events.kind).tolist(), np.asarray(events.channel).tolist(),
                                    np.asarray(events.a).tolist(), np.asarray(events.b).tolist(), strict=True):
                if kd in col_kinds:
                    sim.event(col_kinds[kd], ch, a, b)
        else:
            for ev in events:
                if not ev:
                    continue
                if isinstance(ev[0], str):
                    sim.event(ev[0], ev[1], ev[2] if len(ev) > 2 else 0, ev[3] if len(ev) > 3 else 0)
                else:
                    sim.event("note_on", ev[0], ev[1], ev[2])
        keys = sim.keys
        n_new = len({k for k in keys if self.cache.peek(k) is None})
        if n_new > self.cache.n_slots:
            log.warning("prepare: %d notes exceed the note cache (%d slots); some will be generated twice. "
                        "Raise cache_mb.", n_new, self.cache.n_slots)
        if background:
            return self.worker.prefetch(keys)
        return self.worker.generate_now(keys)

    # ---- channels: routing and knob state ------------------------------------------------------
    def _route(self, ch: int, program: int, msb: int = 0, lsb: int = 0) -> tuple[int, int | None] | None:
        """(preset index, timbre index or None) that `program` in bank (msb, lsb) plays on `ch`."""
        if self.router is not None:
            r = self.router.resolve(ch, bank_select(self._bank_style, msb, lsb), lsb, program)
            return None if r is None else (r.preset, r.timbre)
        if ch == DRUM_CHANNEL and self._drum_preset is not None:
            return None
        if self._program_map is not None:
            pi = self._program_map.get(program)
        else:
            pi = program if program < len(self.presets) else None
        if pi is None:
            return None
        return pi, (self._family_timbre(pi, program, msb) if self.presets[pi].timbres else None)

    def _family_timbre(self, pi: int, program: int, msb: int) -> int | None:
        """Family preset `pi`'s timbre at GM `program`: bank MSB n picks its n-th source (in manifest
        order; an absent one the first); None (the default timbre) when no timbre has that program."""
        ts = self.presets[pi].timbres
        sources = list(dict.fromkeys(t.source for t in ts))
        src = sources[msb] if msb < len(sources) else sources[0]
        cands = [i for i, t in enumerate(ts) if t.program == program]
        return next((i for i in cands if ts[i].source == src), cands[0] if cands else None)

    def _timbre_for(self, pi: int, program: int | None, current: int) -> int:
        """The timbre of family preset `pi` at GM `program`, from `current`'s source when it has one."""
        ts = self.presets[pi].timbres
        cands = [i for i, t in enumerate(ts) if t.program == program]
        if not cands:
            return current
        same = [i for i in cands if ts[i].source == ts[current].source]
        return (same or cands)[0]

    def _key_for(self, pi: int, timbre: int | None, morph: tuple, knob_cc: Mapping[int, int]) -> tuple:
        """The knob state a channel plays: preset defaults ← `set_knob` ← the channel's knob CCs,
        and for a family preset its timbre and morph (target program, amount)."""
        name = self.presets[pi].name
        m = self.mappers[name]
        key = m.default_key
        for cc, v in self._knob_init[name].items():
            key = m.with_cc(key, cc, v)
        for cc, v in knob_cc.items():
            key = m.with_cc(key, cc, v)
        if len(m.timbres):
            ta = m.default_key[-3] if timbre is None else timbre
            target, amount = morph
            tb = ta if target is None else self._timbre_for(pi, target, ta)
            key = m.with_timbre(key, ta, tb, amount)
        return key

    def _update_channel(self, ch: int, settle: bool = False) -> None:
        """Recompute channel `ch`'s knob state; live, prefill the keyboard of a new state (a CC move
        waits for the knob to settle first, worker.py; a tune move needs no new notes)."""
        pi = self._chan_preset[ch]
        if pi < 0:
            return
        name = self.presets[pi].name
        old = self._chan_key[ch]
        key = self._key_for(pi, self._chan_timbre[ch], self._morph[ch], self.channels.knob_cc[ch])
        if key == old:
            return
        self._chan_key[ch] = key
        self.knobs[name] = key
        split = self.mappers[name].split
        if self.realtime and not self._closed and (old is None or split(key)[0] != split(old)[0]):
            self.worker.prefill(name, split(key)[0], settle)

    def _power_on(self) -> tuple[list, list, list]:
        """The channels' power-on (preset, timbre, knob state): program 0 routed, channel 10 the kit."""
        presets, timbres, keys = [], [], []
        for ch in range(16):
            r = self._route(ch, 0) if self.router is not None else None
            if ch == DRUM_CHANNEL and self._drum_preset is not None and self.router is None:
                r = (self._drum_preset, None)
            if r is None and self.router is not None:
                r = (-1, None)          # GM routing found nothing for this channel (10, no kit): silent
            pi, t = r if r is not None else (self._default_preset, None)
            presets.append(pi)
            timbres.append(t)
            keys.append(self._key_for(pi, t, (None, 0), {}) if pi >= 0 else None)
        return presets, timbres, keys

    def _reset_channels(self) -> None:
        """Every channel to GM power-on: default routes, controllers, knobs (`synth.channels`)."""
        self.channels.reset_all()
        self._chan_preset, self._chan_timbre, self._chan_key = self._power_on()
        self._morph = [(None, 0)] * 16
        self._bend = [1.0] * 16
        self._chan_gain = [self.channels.gain(ch) for ch in range(16)]
        self._chan_pan = [self.channels.pan_offset(ch) for ch in range(16)]

    # ---- event application (render thread) -----------------------------------------------------
    def _apply_ahead(self, kind: str, args: tuple, t: int) -> bool:
        """Apply a note-on or note-off at time `t`, later in the block than the mix has reached, if
        the result is the one a mix cut at `t` would give; False (nothing done) otherwise.

        Voices are functions of absolute time, and the mixer keeps a voice silent before its start
        and sums voices in start order, so most note events need no cut: a note-on whose note is
        cached, with a voice row free and no voice to steal; a note-off whose voices hold a constant
        full level (their release from `t` multiplies them by exactly 1 before `t`). Steals,
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
            self.channels.bend_value[ch] = value
            self._apply_bend(ch)
        elif kind == "prog":
            ch, program = args
            c = self.channels
            c.program[ch] = program
            r = self._route(ch, program, c.bank_msb[ch], c.bank_lsb[ch])
            if r is None:
                self._ignored_programs += 1      # logged by `report`, from another thread
                self._last_ignored = (program, ch)
            else:
                self._chan_preset[ch], self._chan_timbre[ch] = r
                self._update_channel(ch)
        elif kind == "reset":
            v = self.voices
            self._bank_style = RESET_STYLES.get(args[0], "gs")
            for ch in range(16):
                self._cc(ch, 123, 0)
                self._pedals_up(ch)
            v.sost[:] = False
            self._reset_channels()
            for ch in range(16):
                self._apply_bend(ch)
                self._regain(ch)

    def _apply_bend(self, ch: int) -> None:
        bend = self.channels.bend_factor(ch)
        if bend != self._bend[ch]:
            self._bend[ch] = bend
            v = self.voices
            v.set_bend_rows(v.select(ch), self.now, bend)
            if self._ahead:
                self._unchain_ahead(ch)

    def _regain(self, ch: int) -> None:
        """Channel `ch`'s gain, pan and sends changed: its voices take them from now on."""
        c = self.channels
        self._chan_gain[ch] = c.gain(ch)
        self._chan_pan[ch] = c.pan_offset(ch)
        v = self.voices
        v.set_gain_rows(v.select(ch), self._chan_gain[ch], self._chan_pan[ch], c.sends(ch))

    def _free(self, i: int) -> None:
        self.cache.release(int(self.voices.slot[i]))
        self.voices.free_row(i)
        self._pending_xfade.pop(i, None)
        if self._ahead or self._behind:
            self._unlink(i)

    def _unlink(self, i: int) -> None:
        """Row `i` stops: forget its chain links."""
        j = self._behind.pop(i, None)
        if j is not None:
            self._ahead.pop(j, None)
        a = self._ahead.pop(i, None)
        if a is not None:
            self._behind.pop(a[0], None)

    def _reap(self) -> None:
        if self.voices.ringing:
            self._chain(self.now + 1)     # a row whose seam is now chains before it is freed
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
            if self._ahead or self._behind:
                for i in range(len(rows)):
                    self._unlink(rows.item(i))

    def _alloc_voice(self) -> int:
        """A free voice row, stealing if `polyphony` voices play (released first, then sustained, then
        held; the quietest first within each: `VoiceBank.victim`)."""
        v = self.voices
        if self.now >= v.next_end:
            self._reap()
        if v.n_live >= self.polyphony:
            victim = v.victim(self.now)
            v.fade_out(victim, self.now, STEAL_FADE_S, self.sample_rate)
            self._pending_xfade.pop(victim, None)
            self.steals += 1
            partner = self._behind.get(victim, self._ahead.get(victim, (None,))[0])
            if partner is not None and not v.ghost[partner]:
                v.fade_out(partner, self.now, STEAL_FADE_S, self.sample_rate)   # a chained pair goes together
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
        pl, pr = self._pan(ch, note)
        cg = self._chan_gain[ch]
        v = self.voices
        v.start(i, self.now if at is None else at, entry, ch, note, pi, base, self._bend[ch], g * cg * pl,
                g * cg * pr, pos, env0, slope)
        v.vgain[i] = g
        v.kpos[i] = self._kpos[note]
        if self._send_ch:
            v.send[0, i], v.send[1, i] = self.channels.sends(ch)
        self._maybe_held[ch * 128 + note] = 1
        if self._rings[pi] and len(entry.key) == 4:
            if self.realtime:
                self._unasked.add(i)     # segment 0 is asked for TAIL_LEAD_S before the seam (`_chain`)
            self._ring(i, entry.key, 0)
        return i

    # ---- ringing notes (synth.ring) ------------------------------------------------------------
    def _ring(self, i: int, key: tuple, k: int) -> None:
        """Row `i` chains into segment `k` of note `key`'s continuation at the end of its entry."""
        v = self.voices
        v.ring_key[i] = key
        v.ring_seg[i] = k
        v.ringing.add(i)
        ts = v._end_of_note(i)
        if i in self._unasked:
            ts -= self._tail_lead
        if ts < v.next_chain:
            v.next_chain = ts

    def _chain(self, until: int) -> None:
        """Chain every ringing row whose read position crosses the end of its entry before `until`
        into a new row playing the next segment from that exact sample (`_chain_row`). Rows chained
        earlier whose start has come lose their link back."""
        v = self.voices
        if self._ahead:
            for j in [j for j in self._ahead if v.seg_t.item(j) <= self.now]:
                self._behind.pop(self._ahead.pop(j)[0], None)
        if not v.ringing or (not v.chain_dirty and until <= v.next_chain):
            return
        v.chain_dirty = False
        while True:
            due, nxt = [], NEVER
            for i in v.ringing:
                ts = v._end_of_note(i)
                if self._unasked and i in self._unasked:
                    # Live: the worker makes segment 0 only for notes still sounding this near the seam.
                    if ts - self._tail_lead < until:
                        self._unasked.discard(i)
                        if not v.ghost[i]:
                            self.worker.request_tail(v.ring_key[i], 0)
                    elif ts - self._tail_lead < nxt:
                        nxt = ts - self._tail_lead
                        continue
                if ts < until:
                    due.append((ts, v.order.item(i), i))
                elif ts < nxt:
                    nxt = ts
            v.next_chain = nxt
            if not due:
                return
            for ts, order, i in sorted(due):   # in time order, then start order: the same at any block size
                if v.order.item(i) == order and i in v.ringing:   # (not freed for a row meanwhile)
                    self._chain_row(i, ts)

    def _chain_row(self, i: int, ts: int) -> None:
        """Continue row `i` at time `ts` (where its entry ends) with a new row reading the next
        segment from the same position: the same gains, note, flags, envelope and release."""
        v = self.voices
        key, k = v.ring_key[i], v.ring_seg.item(i)
        v.ring_seg[i] = -1
        v.ringing.discard(i)
        self._unasked.discard(i)
        if v.ghost[i] or v._env_end(i) <= ts:
            return                              # faded out or released to silence before the seam
        plan = self.worker.plans.get(key)
        e = self.cache.peek((key, k))
        if e is None and not self.realtime:
            self.worker.defer_warnings = True
            try:
                e = self.worker.tail_now(key, k)
            finally:
                self.worker.defer_warnings = False
            plan = self.worker.plans.get(key)
        if e is None and plan is not None and k >= plan.n_segs:
            return                              # the continuation is over
        j = None
        if e is not None and e.slot >= 0 and self.cache.acquire(e):
            j = v.take_row()
            if j is None and v.ghost_key.item(v.oldest_ghost()) != NEVER:
                self._free(v.oldest_ghost())
                j = v.take_row()
            if j is None:
                self.cache.release(e.slot)
        if j is None:
            # Missing (live: not made in time), or no row: the voice fades out at the seam.
            self.tail_misses += 1
            fade = int(STEAL_FADE_S * self.sample_rate)
            v.fade_out(i, max(self.now, ts - fade), STEAL_FADE_S, self.sample_rate)
            return
        self._unasked.discard(j)
        self._copy_row(i, j, ts, e)
        self.chains += 1
        self._ahead[j] = (i, key, k)
        self._behind[i] = j
        self._pending_xfade.pop(i, None)
        if plan is None or k + 1 < plan.n_segs:
            self._ring(j, key, k + 1)
        if self.realtime:
            self.worker.request_tail(key, k + 1 if plan is None or k + 1 < plan.n_segs else None, entered=k)
        elif k >= 1 and not any(v.ring_key[r] == key and v.ring_seg.item(r) <= k - 1 for r in v.ringing):
            self.worker.tail_done(key, k - 1)    # (spared while a voice of the same note is to play it)

    def _copy_row(self, i: int, j: int, ts: int, e) -> None:
        """Start row `j` at `ts` on entry `e` where row `i`'s read position leaves its entry, with
        `i`'s state: a release under way goes on seamlessly."""
        v = self.voices
        rate = v.rate.item(i)
        pos = max(0.0, v.seg_pos.item(i) + rate * float(ts - v.seg_t.item(i)) - v.length.item(i))
        if rate != 1.0 or pos != math.floor(pos):
            # Interpolated: `i`'s last sample, between its entry's last sample and the zero after it,
            # lacks fr·(the next segment's first); `j` adds it from one sample before, reading the
            # zero guard before its slot there.
            ts, pos = ts - 1, pos - rate
        ch, pi = int(v.chan[i]), int(v.preset[i])
        v.start(j, ts, e, ch, int(v.note[i]), pi, v.base_rate.item(i), rate / v.base_rate.item(i),
                v.gain.item(0, i), v.gain.item(1, i), pos, v.env0.item(i), v.slope.item(i))
        v.rate[j] = rate
        v.env_t[j] = v.env_t.item(i)
        v.rel_t[j] = v.rel_t.item(i)
        v.decay[j] = v.decay.item(i)
        for flag in (v.held, v.sustained, v.released, v.sost):
            flag[j] = flag[i]
        v.steal_key[j] = v.steal_key.item(i)
        v.vgain[j] = v.vgain.item(i)
        v.kpos[j] = v.kpos.item(i)
        v.send[0, j], v.send[1, j] = v.send.item(0, i), v.send.item(1, i)
        v._par_gen += 1
        v._update_end(j)

    def _unchain_ahead(self, ch: int) -> None:
        """A bend on `ch`: rows chained ahead (not yet at their start) are dropped, and the rows they
        continue chain again from their new positions (the seam moved)."""
        v = self.voices
        rows = sorted((j for j in self._ahead if v.chan.item(j) == ch and v.seg_t.item(j) > self.now),
                      key=lambda j: -v.seg_t.item(j))       # the latest first: a chain of chains unwinds
        for j in rows:
            i, key, k = self._ahead[j]
            self._free(j)
            if v.active[i] and not v.ghost[i]:
                self._ring(i, key, k)
                v.chain_dirty = True

    def _note_on(self, ch: int, note: int, velocity: int, at: int | None = None) -> bool:
        """Start `note`, at time `at` when given (see `_apply_ahead`: then False, with nothing done,
        unless the note is cached and a voice row is free with no steal needed)."""
        pi = self._chan_preset[ch]
        if pi < 0:
            return True                 # a silent channel (GM routing found no preset)
        p = self.presets[pi]
        if self.channels.soft[ch]:
            velocity = self.channels.velocity(ch, velocity)
        nk = self._note_key(pi, self._chan_key[ch], note, velocity)
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
        c = self.channels
        if at is None:
            at = self.now
        elif c.sostenuto[ch] or (not c.sustain[ch] and len(rows) and (
                (v.slope[rows] != 0.0).any() or (v.env0[rows] != 1.0).any())):
            return False
        if self._pending_start:
            self._pending_start.pop((ch, note), None)
        self._maybe_held[k] = 0
        for i in rows:
            i = int(i)
            pi = int(v.preset[i])
            if self.presets[pi].is_drums:
                continue  # drum hits play out, as on any GM kit
            if c.sustain[ch] or (c.sostenuto[ch] and v.sost[i]):
                v.sustain(i)
            else:
                v.release(i, at, self._release_s[pi], self.sample_rate)
        return True

    def _release_rows(self, rows: np.ndarray) -> None:
        v = self.voices
        v.release_rows(rows, self.now, v.per_preset(self._release_arr, rows), self.sample_rate)

    def _cc(self, ch: int, cc: int, value: int) -> None:
        v = self.voices
        c = self.channels
        if cc == 64:
            self._sustain_pedal(ch, value >= 64)
        elif cc == 66:
            self._sostenuto_pedal(ch, value >= 64)
        elif cc == 67:
            c.soft[ch] = value >= 64
        elif cc in _GAIN_CCS:
            if cc == 7:
                c.volume[ch] = value
            elif cc == 11:
                c.expression[ch] = value
            elif cc == 10:
                c.pan[ch] = value
            elif cc == 91:
                c.reverb[ch] = value
            else:
                c.chorus[ch] = value
            self._regain(ch)
        elif cc == 0:
            c.bank_msb[ch] = value       # takes effect at the next program change, as GM asks
        elif cc == 32:
            c.bank_lsb[ch] = value
        elif cc in (6, 38, 98, 99, 100, 101):
            if c.data_entry(ch, cc, value):
                self._apply_bend(ch)
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
            self._pedals_up(ch)
            c.reset_controllers(ch)
            self._apply_bend(ch)
            self._regain(ch)
        elif cc == MORPH_CC or cc == MORPH_TARGET_CC:
            target, amount = self._morph[ch]
            self._morph[ch] = (value, amount) if cc == MORPH_TARGET_CC else (target, value)
            self._update_channel(ch, settle=True)
        elif cc in self._knob_ccs:
            c.knob_cc[ch][cc] = value
            self._update_channel(ch, settle=True)

    def _sustain_pedal(self, ch: int, on: bool) -> None:
        c = self.channels
        if c.sustain[ch] and not on:
            # Pedal up: every voice it held releases at once, in one vectorised step; voices the
            # sostenuto pedal latched stay while it is down.
            v = self.voices
            self._release_rows(v.select(ch, where=v.sustained, unless=(v.sost,) if c.sostenuto[ch] else ()))
        c.sustain[ch] = on

    def _sostenuto_pedal(self, ch: int, on: bool) -> None:
        """CC66 down latches the notes whose keys are down now; up releases those already let go
        (unless the sustain pedal holds them) and unlatches the rest."""
        c = self.channels
        v = self.voices
        if on and not c.sostenuto[ch]:
            v.sost[v.select(ch, where=v.held)] = True
        elif c.sostenuto[ch] and not on:
            rows = v.select(ch, where=v.sost).copy()
            v.sost[rows] = False
            if not c.sustain[ch]:
                self._release_rows(rows[v.sustained[rows]])
        c.sostenuto[ch] = on

    def _pedals_up(self, ch: int) -> None:
        self._sostenuto_pedal(ch, False)
        self._sustain_pedal(ch, False)
        self.channels.soft[ch] = False

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
        sends = None
        if self._send_ch:
            if frames > len(self._sends):
                self._sends = np.zeros((frames, self._send_ch), np.float32)
            sends = self._sends[:frames]
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
                self._mix(out[cur:f], None if sends is None else sends[cur:f])
                cur = f
            if n not in skip:
                self._apply(kind, args)
            if kind == "cc" and self._fx_cc is not None:
                self._fx_cc(args[1], args[2], ev[0])
        if cur < frames:
            self._mix(out[cur:frames], None if sends is None else sends[cur:frames])
        self._reap()
        if out.size > len(self._limit_work):
            self._limit_work = np.empty(out.size, np.float32)
            self._limit_over = np.empty(out.size, bool)
        nan0 = self.nan_blocks
        extremes = self._nan_guard(out)
        if self.fx is not None:
            if sends is not None:
                if self.nan_blocks != nan0:
                    sends.fill(0.0)      # what broke the dry mix must not ring on in the reverb
                self.fx.process(out, sends)
            else:
                self.fx.process(out)
            extremes = self._nan_guard(out)
        soft_limit(out, work=self._limit_work, over=self._limit_over, extremes=extremes,
                   gather=LIMIT_GATHER_LIVE if self.realtime else None)
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
            elif kind == "cc" and args[1] not in _VOICE_CCS and args[1] not in _ORDERED_CCS:
                k = (args[0], args[1])
                if k in last_cc:
                    skip.add(last_cc[k])
                last_cc[k] = n
            elif kind in ("on", "prog", "reset"):
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
        for pi, (_count, note) in list(self._transposed.items()):
            if pi not in self._reported_transposed:
                self._reported_transposed.add(pi)
                lo, hi = self.presets[pi].pitch_range
                log.warning("preset %s plays notes %d-%d; note %d (and any other outside) is played transposed from "
                         "the nearest one", self.presets[pi].name, lo, hi, note)
        if self.tail_misses > self._reported_tail_misses:
            log.warning("%d ringing note(s) faded out: their continuation was not made in time (%d so far)",
                        self.tail_misses - self._reported_tail_misses, self.tail_misses)
            self._reported_tail_misses = self.tail_misses
        if ignored > 0:
            program, ch = self._last_ignored
            log.debug("%d program change(s) with no preset mapped were ignored, the last program %d on channel %d",
                      ignored, program, ch + 1)
        return logged + (nan > 0) + (skipped > 0) + (ignored > 0)

    def _mix(self, out: np.ndarray, sends: np.ndarray | None = None) -> None:
        n = out.shape[0]
        s = 0
        v = self.voices
        if v.ringing:
            self._chain(self.now + n + 1)     # (+ 1: an interpolated row chains one sample early)
        while s < n:
            self._reap()
            e = min(n, s + v.frames_for(int(np.count_nonzero(v.active))))
            if sends is None:
                v.mix(self.now, out[s:e])
            else:
                v.mix(self.now, out[s:e], sends[s:e])
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
                "ring_chains": self.chains, "tail_misses": self.tail_misses,
                "tails_made": self.worker.tails_made,
                "worker_pending": self.worker.pending, "worker_errors": self.worker.errors,
                "misses_dropped": self.worker.misses_dropped, "misses_stale": self.worker.misses_stale,
                "generated": self.worker.generated, "last_miss_ms": self.worker.last_miss_ms,
                "last_prefill_s": self.worker.last_prefill_s, "providers": dict(self.providers),
                "time_s": self.now / self.sample_rate}


class _Simulation:
    """What `Engine.prepare` needs of a file: the cache keys its note-ons will ask for, following
    program changes (with bank select), knob and morph CCs and the soft pedal per channel."""

    def __init__(self, engine: Engine):
        self.e = engine
        c = engine.channels
        self.chan = list(engine._chan_preset)
        self.timbre = list(engine._chan_timbre)
        self.morph = list(engine._morph)
        self.kcc = [dict(d) for d in c.knob_cc]
        self.bank = [[m, ll] for m, ll in zip(c.bank_msb, c.bank_lsb, strict=True)]
        self.soft = list(c.soft)
        self.key = list(engine._chan_key)
        self.keys: list = []

    def _rekey(self, ch: int) -> None:
        if self.chan[ch] >= 0:
            self.key[ch] = self.e._key_for(self.chan[ch], self.timbre[ch], self.morph[ch], self.kcc[ch])

    def event(self, kind: str, ch: int, a: int, b: int) -> None:
        e = self.e
        ch &= 15
        if kind == "note_on":
            if b > 0 and self.chan[ch] >= 0:
                vel = min(127, int(b))
                if self.soft[ch]:
                    vel = soft_velocity(vel)
                k = e._note_key(self.chan[ch], self.key[ch], a & 127, vel)
                if k is not None:
                    self.keys.append(k[0])
        elif kind == "control_change":
            if a in (0, 32):
                self.bank[ch][a // 32] = b
            elif a == 67 or a == 121:
                self.soft[ch] = a == 67 and b >= 64
            elif a in (MORPH_CC, MORPH_TARGET_CC):
                t, m = self.morph[ch]
                self.morph[ch] = (b, m) if a == MORPH_TARGET_CC else (t, b)
                self._rekey(ch)
            elif a in e._knob_ccs:
                self.kcc[ch][a] = b
                self._rekey(ch)
        elif kind == "program_change":
            r = e._route(ch, a & 127, *self.bank[ch])
            if r is not None:
                self.chan[ch], self.timbre[ch] = r
                self._rekey(ch)
        elif kind == "reset":
            self.chan, self.timbre, self.key = e._power_on()
            self.morph = [(None, 0)] * 16
            self.kcc = [{} for _ in range(16)]
            self.bank = [[0, 0] for _ in range(16)]
            self.soft = [False] * 16
