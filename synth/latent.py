"""Knob state (CC values) → latent vector, and the cache key of a knob state.

    latent = default + Σ_k (lo_k + (hi_k − lo_k)·cc_k/127) · direction_k

The knob state is the tuple of the knobs' CC values (integers 0..127, in the preset's knob order).
CC values are already quantised, so the same state always yields the same latent (and the same
notes), and moving a knob back to an earlier position hits the note cache.

Engine knobs (`kind` "tune" and "decay", see `synth.preset`) do not move the latent. "decay" shapes
the cached notes (the worker fades each note it caches: `decay_envelope`), so it is part of the cache
key; "tune" only changes the rate the voices play at, so `split` takes it out of the cache key: a
tune move plays the cached notes faster or slower at once and generates nothing.

Family presets (manifest `timbres`) add three entries to the state: the channel's timbre, a morph
target timbre and the morph amount (CC value 0..127). Their latent is the morph between the two
timbres' points, moved by the knobs relative to their defaults, so a program change plays its
timbre exactly and the knobs move away from it along the family's main axes:

    latent = lerp(timbre_a, timbre_b, morph/127) + Σ_k (offset_k(cc_k) − offset_k(default_k)) · direction_k

Family presets keep their loudness under the knobs and the morph (`level_gain`). A straight line
between two timbres' latents is not a straight line in loudness: halfway from a grand to a Rhodes the
generator can play 3-4 dB under both. And a knob is for timbre, not volume. So the worker scales a
state's notes so that their level is the straight dB line between the morph's two ends (knobs at
their defaults), measured on the generator once per state.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from synth.errors import UserError
from synth.preset import Preset

# The CCs a player expects on a keyboard's knobs; presets put their knobs on these. Not CC1: GM
# files move the mod wheel for vibrato, and a knob there would regenerate keyboards mid-piece.
DEFAULT_KNOB_CCS = (70, 74, 71, 76)
MORPH_CC = 16            # General Purpose 1: morph amount toward the target timbre (family presets)
MORPH_TARGET_CC = 17     # General Purpose 2: the target timbre, by GM program number

KnobKey = tuple[int, ...]

LEVEL_KEYS = (36, 48, 60, 72, 84)     # where a family state's level is measured (clipped to the range)
LEVEL_GAIN_LIMIT_DB = 12.0


def note_levels_db(audio: np.ndarray, sr: int) -> np.ndarray:
    """float64[B]: each note's level in dB, the mean power of its 10-ms frames within 30 dB of its
    loudest (so a long quiet tail does not decide how loud a note sounds). Note by note: the worker
    calls it beside the audio thread, and one numpy reduction over a batch would hold the GIL for
    milliseconds."""
    a = np.atleast_2d(audio)
    hop = max(1, sr // 100)
    f = a.shape[1] // hop
    out = np.empty(len(a))
    for i, x in enumerate(a):
        power = np.square(x[:f * hop].reshape(f, hop), dtype=np.float64).mean(axis=1) + 1e-20
        keep = power >= power.max() * 1e-3
        out[i] = 10 * np.log10(power[keep].mean())
    return out


def level_gain(mapper: LatentMapper, key: KnobKey, generate) -> float:
    """Linear gain for the notes of family knob state `key` (1 for other presets): the gain that puts
    the state's level on the straight dB line between its morph's two ends with the knobs at their
    defaults, so that the morph moves evenly in loudness and the knobs keep it. 1 where the state
    is a timbre itself; within ±LEVEL_GAIN_LIMIT_DB. Levels: the mean of `note_levels_db` over
    LEVEL_KEYS at the middle velocity layer. `generate(z, pitch, velocity)` is the preset's
    generator (`GeneratorSession.generate`); it runs on at most 4 x 5 notes."""
    if not len(mapper.timbres):
        return 1.0
    n = len(mapper.default_key) - 3
    ta, tb, m = key[-3:]
    plain = mapper.default_key[:n] + key[n:]                 # the knobs at their defaults
    ends = [mapper.with_timbre(plain, None, None, x) for x in (0, 127)]
    morphing = ta != tb and 0 < m < 127
    knobbed = not np.array_equal(mapper.latent(key), mapper.latent(plain))
    if not (morphing or knobbed):
        return 1.0
    states = (ends if morphing else [plain]) + [key]
    p = mapper.preset
    lo, hi = p.pitch_range
    keys = np.unique(np.clip(LEVEL_KEYS, lo, hi)).astype(np.int64)
    layers = p.velocity_layers
    vel = np.float32(layers[len(layers) // 2] / 127.0 if p.velocity_conditioned else 1.0)
    zs = np.asarray([mapper.latent(s) for s in states], np.float32)
    audio = generate(np.repeat(zs, len(keys), 0), np.tile(keys, len(zs)), np.full(len(zs) * len(keys), vel, np.float32))
    lev = note_levels_db(audio, p.sample_rate).reshape(len(zs), len(keys)).mean(axis=1)
    want = lev[0] + (lev[1] - lev[0]) * m / 127.0 if morphing else lev[0]
    return float(10 ** (np.clip(want - lev[-1], -LEVEL_GAIN_LIMIT_DB, LEVEL_GAIN_LIMIT_DB) / 20))


class LatentMapper:
    """Maps CC numbers to a preset's knobs and knob states to latents.

    `knob_map`: optional {cc: knob index or knob name} overriding the preset's own CC assignment;
    a knob named here answers only to its new CC. Names/indices the preset lacks are ignored, so
    one map can serve several presets (`strict=True` raises instead).
    """

    def __init__(self, preset: Preset, knob_map: Mapping[int, int | str] | None = None, strict: bool = False):
        self.preset = preset
        knobs = preset.knobs
        cc_to_knob = {k.cc: i for i, k in enumerate(knobs)}
        if knob_map:
            names = {k.name: i for i, k in enumerate(knobs)}
            overrides: dict[int, int] = {}
            for cc, target in knob_map.items():
                if isinstance(cc, bool) or not isinstance(cc, int) or not 0 <= cc <= 127:
                    raise UserError(f"knob map: CC {cc!r} must be an integer 0..127")
                if isinstance(target, str) and not target.isdigit():
                    idx = names.get(target)
                else:
                    idx = int(target)
                    idx = idx if 0 <= idx < len(knobs) else None
                if idx is None:
                    if strict:
                        known = ", ".join(f"{i}={k.name}" for i, k in enumerate(knobs)) or "none"
                        raise UserError(f"knob map: preset {preset.name!r} has no knob {target!r} (knobs: {known})")
                    continue
                overrides[cc] = idx
            moved = set(overrides.values())
            cc_to_knob = {cc: i for cc, i in cc_to_knob.items() if i not in moved}
            cc_to_knob.update(overrides)
        self.cc_to_knob: dict[int, int] = cc_to_knob
        self.default_key: KnobKey = tuple(int(k.default) for k in knobs)
        self._default = np.asarray(preset.default_latent, np.float64)
        self._latent_idx = [i for i, k in enumerate(knobs) if k.kind == "latent"]
        lat = [knobs[i] for i in self._latent_idx]
        self._dirs = np.asarray([k.direction for k in lat], np.float64).reshape(len(lat), preset.latent_size)
        self._lo = np.asarray([k.range[0] for k in lat], np.float64)
        self._hi = np.asarray([k.range[1] for k in lat], np.float64)
        self._n = len(knobs)
        self.timbres = np.asarray([t.latent for t in preset.timbres], np.float64).reshape(-1, preset.latent_size)
        if len(self.timbres):
            t0 = int(np.argmin(np.linalg.norm(self.timbres - self._default, axis=1)))
            self.default_key = self.default_key + (t0, t0, 0)
            self._zero = np.asarray([k.offset(k.default) for k in lat], np.float64)
        kinds = [k.kind for k in knobs]
        self.tune_index = kinds.index("tune") if "tune" in kinds else None
        self.decay_index = kinds.index("decay") if "decay" in kinds else None
        self._tune_range = knobs[self.tune_index].range if self.tune_index is not None else (0.0, 0.0)
        self._decay_range = knobs[self.decay_index].range if self.decay_index is not None else (1.0, 1.0)
        self._split_memo: tuple | None = None
        self._env_memo: tuple | None = None

    def knob_for_cc(self, cc: int) -> int | None:
        """Knob index controlled by `cc`, or None."""
        return self.cc_to_knob.get(cc)

    def with_cc(self, key: KnobKey, cc: int, value: int) -> KnobKey:
        """The knob state after CC `cc` moves to `value` (0..127); unchanged if `cc` is no knob."""
        i = self.cc_to_knob.get(cc)
        if i is None:
            return key
        v = min(127, max(0, int(value)))
        if key[i] == v:
            return key
        return key[:i] + (v,) + key[i + 1:]

    def latent(self, key: KnobKey) -> np.ndarray:
        """float32[Z] latent for knob state `key` (CC values 0..127 in knob order)."""
        if len(key) != len(self.default_key):
            raise ValueError(f"knob state has {len(key)} values, preset {self.preset.name!r} has {self._n} knobs"
                             + (" and a timbre, a morph target and a morph amount" if len(self.timbres) else ""))
        base = self._default
        if len(self.timbres):
            ta, tb, m = key[self._n:]
            base = self.timbres[ta] + (self.timbres[tb] - self.timbres[ta]) * (m / 127.0)
        if not self._latent_idx:
            return base.astype(np.float32)
        cc = np.asarray([key[i] for i in self._latent_idx], np.float64) / 127.0
        offs = self._lo + (self._hi - self._lo) * cc
        if len(self.timbres):
            offs = offs - self._zero
        return (base + offs @ self._dirs).astype(np.float32)

    def with_timbre(self, key: KnobKey, timbre: int | None, target: int | None = None,
                    morph: int | None = None) -> KnobKey:
        """The state with the timbre (and the morph target and amount) replaced; family presets only."""
        if not len(self.timbres):
            return key
        ta, tb, m = key[self._n:]
        ta = ta if timbre is None else int(timbre)
        tb = tb if target is None else int(target)
        m = m if morph is None else min(127, max(0, int(morph)))
        return key[:self._n] + (ta, tb, m)

    def split(self, key: KnobKey) -> tuple[KnobKey, float]:
        """(cache key, playback rate factor) of knob state `key`: the tune knob leaves the cache key
        (its entry is set to 64) and becomes the rate 2 ** (semitones / 12). Called per note-on, so
        the last answer is remembered."""
        memo = self._split_memo
        if memo is not None and memo[0] is key:
            return memo[1], memo[2]
        i = self.tune_index
        if i is None:
            out = (key, 1.0)
        else:
            lo, hi = self._tune_range
            out = (key[:i] + (64,) + key[i + 1:], 2.0 ** ((lo + (hi - lo) * key[i] / 127.0) / 12.0))
        self._split_memo = (key, out[0], out[1])
        return out

    def decay_seconds(self, key: KnobKey) -> float | None:
        """T60 of the decay knob in state `key`, or None (no decay knob, or at 127: notes as generated)."""
        i = self.decay_index
        if i is None or key[i] >= 127:
            return None
        lo, hi = self._decay_range
        return lo * (hi / lo) ** (key[i] / 126.0)

    def decay_envelope(self, key: KnobKey, n: int, sample_rate: int) -> np.ndarray | None:
        """float32[n] gain that the decay knob applies to a cached note (None: unchanged): 1 for the
        first 5 ms (the attack stays whole), then -60 dB per T60, exponentially."""
        t60 = self.decay_seconds(key)
        if t60 is None:
            return None
        memo = self._env_memo   # a prefill asks once per note of the same knob state
        if memo is not None and memo[0] == (t60, n, sample_rate):
            return memo[1]
        t = np.maximum(0.0, np.arange(n, dtype=np.float64) / sample_rate - 0.005)
        env = np.power(10.0, -3.0 * t / t60).astype(np.float32)
        env.flags.writeable = False
        self._env_memo = ((t60, n, sample_rate), env)
        return env
