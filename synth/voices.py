"""Voices as arrays (one row per voice) and the vectorised mixer.

Every quantity a voice plays is a pure function of absolute sample time `t` and the voice's current
segment, set at event times only:

    read position  pos(t) = seg_pos + rate · (t − seg_t)       (wrapped into the loop, if any)
    envelope       env(t) = clip(env0 + slope · (t − env_t), 0, 1) · rel(t)
    release        rel(t) = exp(−decay · max(0, t − rel_t)), 0 once it is RELEASE_END_DB down

so the output does not depend on how the timeline is cut into blocks. A block is summed in float64
by the compiled kernel `synth/_mixc.c`: voices reading straight ahead (with a constant level or a
tabled release) go from the note bank into the sum in one pass; numpy makes the other voices' rows
first (interpolated when pitch-bent or transposed, or with a ramp). Where the kernel was not built,
numpy gathers every row and sums them with one matrix product (the same samples up to float64
rounding; each path is block-size independent on its own). No Python loop runs per sample.

Allocation: every array the mixer and the vectorised event methods work in is allocated here, once.
They allocate nothing above 1 KB, only views, numpy scalars and small Python objects
(tests/test_realtime_alloc.py: 256 voices). Two numpy habits shape the code: a ufunc that
broadcasts allocates buffers of 64 KB or more (per-voice values are spread over [voices, frames]
with `np.copyto` first), and one that works in place on a one-element array allocates ~1 KB (work
vectors are never written over their inputs). History of the design: docs/decisions-engine.md.
"""

from __future__ import annotations

import ctypes
import math
import os

import numpy as np


def _load_kernel(release_gil: bool = False):
    """`mix_packed` of the compiled mixer, or None (not built, or NEURAL_SYNTH_NUMPY_MIX=1).

    Live, the call keeps the GIL (`ctypes.PyDLL`): the audio callback must never wait to take it
    back from a worker. Offline (`release_gil`), the GIL is let go through the call (`ctypes.CDLL`),
    so the background prepare's Python runs beside the mix on the other core."""
    if os.environ.get("NEURAL_SYNTH_NUMPY_MIX") == "1":
        return None
    try:
        from synth import _mixc
        fn = (ctypes.CDLL if release_gil else ctypes.PyDLL)(_mixc.__file__).mix_packed
    except (ImportError, OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_void_p,)
    fn.restype = None
    return fn


_KERNEL = _load_kernel()
_KERNEL_NOGIL = _load_kernel(release_gil=True)

NEVER = np.iinfo(np.int64).max // 4
_EMPTY = np.zeros(0, np.int64)
ROW_COPY_FRAMES = 768     # mixes this long gather straight-ahead voices a row at a time
_SUSTAINED = 1 << 44      # steal-priority tiers above the start serial
_HELD = 2 << 44
RELEASE_END_DB = 100.0    # a release ends (its voice is freed) this far down: SF2's releaseVolEnv span
_LN_END = RELEASE_END_DB / 20.0 * math.log(10.0)   # ... as a natural-log fall


class VoiceBank:
    """`capacity` voice rows mixing from `bank` (flat float32, notes in slots of `slot_len`, followed
    by at least `max_frames` zeros).

    One `mix` call covers at most `max_frames` frames and `budget` voice-frames
    (`frames_for(voices)` says how many frames fit).
    """

    def __init__(self, capacity: int, bank: np.ndarray, slot_len: int, max_frames: int, budget: int = 1 << 19):
        self.capacity = n = int(capacity)
        self.bank = bank
        self.slot_len = int(slot_len)
        self.max_frames = int(max_frames)
        self.budget = max(int(budget), n)
        if len(bank) < self.max_frames + self.slot_len:
            raise ValueError("the note bank needs max_frames zeros after its last slot")
        self.active = np.zeros(n, bool)
        self.ghost = np.zeros(n, bool)        # fading out after a steal / crossfade; not a playing note
        self.held = np.zeros(n, bool)         # key down
        self.sustained = np.zeros(n, bool)    # key up, held by the sustain pedal
        self.released = np.zeros(n, bool)     # in its release envelope
        self.chan = np.zeros(n, np.int64)
        self.note = np.zeros(n, np.int64)
        self.preset = np.zeros(n, np.int64)
        self.order = np.zeros(n, np.int64)    # start serial: smaller is older
        # Steal priority, kept current at event times so choosing a victim is one argmin:
        # released < sustained < held, then oldest first; free rows and ghosts never win.
        self.steal_key = np.full(n, NEVER, np.int64)
        # Within a tier the quietest goes first (`victim`): the note cache's level table
        # (`set_levels`), each candidate's level at the last ranking (inf: none), and what it was for.
        self._levels: np.ndarray | None = None
        self._level_hop, self._steal_lv = 1, np.full(n, np.inf)
        self._steal_at, self._steal_gen = (-1, -1, -1), 0    # (t, tier, _steal_gen); gen: bumped when voices change tier
        self._sf, self._si, self._sb = np.zeros((8, n)), np.zeros((5, n + 1), np.int64), np.zeros((3, n), bool)
        self._s32, self._one = np.zeros(n, np.float32), np.zeros(1)   # (`_one`: `_in_place`'s scratch element)
        self.ghost_key = np.full(n, NEVER, np.int64)   # start serial of ghosts, NEVER for the rest
        self.slot = np.full(n, -1, np.int64)
        self.off = np.zeros(n, np.int64)
        self.length = np.zeros(n, np.int64)
        self.loop_s = np.zeros(n, np.float64)
        self.loop_e = np.full(n, np.inf)
        self.seg_t = np.zeros(n, np.int64)
        self.seg_pos = np.zeros(n, np.float64)
        self.base_rate = np.ones(n, np.float64)
        self.rate = np.ones(n, np.float64)
        self.env_t = np.zeros(n, np.int64)
        self.env0 = np.zeros(n, np.float64)
        self.slope = np.zeros(n, np.float64)
        self.rel_t = np.zeros(n, np.int64)         # a released voice: its release time,
        self.decay = np.zeros(n, np.float64)       # ... and fall per sample (natural log; 0: none)
        self.end_t = np.full(n, NEVER, np.int64)   # NEVER for free rows
        self.gain = np.zeros((2, n), np.float64)    # left, right: vgain · channel gain · pan
        self.vgain = np.zeros(n, np.float64)        # the note's own gain (velocity, preset, master)
        self.kpos = np.full(n, 0.5)                 # the note's pan position 0..1 before the channel's pan
        self.send = np.zeros((2, n), np.float64)    # reverb and chorus send levels 0..1
        self.sost = np.zeros(n, bool)               # latched by the sostenuto pedal (CC66)
        # Ringing notes (synth.ring): the note key whose continuation a row chains into at the end of
        # its entry, the segment it chains into next (-1: none), the rows that will chain, and a lower
        # bound on when the next chain is due (`chain_dirty`: recompute it, after a bend).
        self.ring_key: list = [None] * n
        self.ring_seg = np.full(n, -1, np.int64)
        self.ringing: set[int] = set()
        self.next_chain = NEVER
        self.chain_dirty = False
        self._serial = 0
        self.next_end = NEVER   # no active voice ends before this time (a lower bound)
        self.n_live = 0         # active voices that are not ghosts
        self.latest_start = 0   # the latest start time given to `start` (a voice may start ahead)
        self._free = np.arange(n - 1, -1, -1, dtype=np.int64)   # a stack of free rows, lowest on top
        self.n_free = n
        # The active rows in start order, as the mix sums them: appended by `start`, compacted (rows
        # since freed dropped) by the next mix after a voice starts or stops (`_set_gen`).
        self._ord = np.zeros(2 * n, np.int64)
        self._ord_ser = np.zeros(2 * n, np.int64)   # the start serial each entry was appended with
        self._ord2 = np.zeros(2 * n, np.int64)
        self._ord_ser2 = np.zeros(2 * n, np.int64)
        self._n_ord = 0
        self._set_gen = 0
        self._ord_gen = 0
        # Work vectors (float64, int64, bool rows), one pool per group of methods so that none
        # overwrites another's: the mix (m), the gather and interpolation (g), the envelopes (n),
        # end times (e), the vectorised event methods (v); `_nonzero` and `_compact` own theirs.
        # Operations on them never write over an input: numpy allocates ~1 KB for an in-place
        # operation on a one-element array.
        self._mf, self._mi, self._mb = np.zeros((7, n)), np.zeros((3, n + 1), np.int64), np.zeros((4, n), bool)
        self._gf, self._gi, self._gb = np.zeros((5, n)), np.zeros((4, n + 1), np.int64), np.zeros((1, n), bool)
        self._nf, self._ni, self._nb = np.zeros((6, n)), np.zeros((5, n + 1), np.int64), np.zeros((3, n), bool)
        self._ef, self._ei, self._eb = np.zeros((5, n)), np.zeros((6, n + 1), np.int64), np.zeros((3, n), bool)
        self._vf, self._vi, self._vb = np.zeros((7, n)), np.zeros((7, n + 1), np.int64), np.zeros((3, n), bool)
        self._nz = np.zeros((2, 2 * n), np.int64)
        self._nz_b = np.zeros(2 * n, bool)
        self._cpi, self._cpb = np.zeros((2, 2 * n + 1), np.int64), np.zeros((2, 2 * n), bool)
        self._rows = np.zeros((3, n + 1), np.int64)     # rows handed to the engine: dead, select, slots
        self._gains = np.zeros((3, 2 * n))              # the mix's [2, voices] gains (contiguous)
        size = self.budget
        self._i = np.empty(size, np.int64)
        self._ig = np.empty(size, np.int64)            # the straight-ahead voices' sample indices,
        self._g_src = np.zeros(n, np.int64)             # ... their first (src), and the shape, kept
        self._g_shape = (0, 0)                          # from one mix to the next (`_gather`),
        self._g_base = 0                                # and where in the bank they count from
        # `_voice_params`: what the mix reads per voice, kept while no voice changes (`_par_gen`).
        self._cf, self._cb = np.zeros((6, n)), np.zeros((3, n), bool)
        self._par_gen = 0
        self._params_key = self._gains_key = None
        self._loops = False
        self._p = np.empty(size, np.float64)
        self._w = np.empty(size, np.float64)
        self._x = np.empty(size, np.float64)            # per-voice values spread over [voices, frames]
        self._e = np.empty(size + self.max_frames, np.float64)   # envelopes (+ a row of ones)
        self._m = np.empty(size, bool)
        self._s0 = np.empty(size, np.float32)
        self._s1 = np.empty(size, np.float32)
        self._fr = np.empty(size, np.float32)
        self._o = np.empty((2, self.max_frames), np.float64)
        self._sg = np.zeros((4, n))                     # the send buses' gains, like `_gains`
        self._os = np.empty((4, self.max_frames), np.float64)
        self._init_kernel(n)
        # Touch every page of the work buffers now: the first mix with many voices would otherwise
        # fault them in on the audio thread (docs/decisions-engine.md).
        for b in (self._i, self._ig, self._p, self._w, self._x, self._e, self._m, self._s0, self._s1, self._fr, self._o):
            b.fill(0)
        self._ar = np.arange(max(self.max_frames, 2 * n + 1), dtype=np.int64)
        self._arf = np.arange(self.max_frames, dtype=np.float64)
        # Release factors precomputed per preset (`set_release_table`): the decay each preset's
        # releases use (0: none), where its u = 0 sits in `_rt`, and the concatenated tables.
        # (`_rt_m`: its last u = span, where a mix may start.)
        self._rt_k, self._rt_o, self._rt_m = np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._set_rt(np.zeros(0))

    def _init_kernel(self, n: int) -> None:
        """Work arrays of the compiled mixer (`_mix_kernel`), allocated once: its per-row inputs (mode,
        src, z0, z1, tab, rs, seam, loop length; env0), gains, sums (and a scratch row), the outputs it
        writes (copied into `out` and `sends`), and its packed arguments. `use_kernel`: whether mixes go
        through it (tests turn it off to compare with numpy's sum)."""
        self.use_kernel = _KERNEL is not None
        self.release_gil = False      # offline only (the engine sets it): see `_load_kernel`
        self._ki, self._kf, self._kg = np.zeros((8, n), np.int64), np.zeros(n), np.zeros((6, n))
        self._kwi, self._kwf, self._kwb = np.zeros((9, n + 1), np.int64), np.zeros((4, n)), np.zeros((6, n), bool)
        self._ka = np.empty((7, self.max_frames))
        self._ko, self._ks = np.empty((self.max_frames, 2), np.float32), np.empty((self.max_frames, 4), np.float32)
        ki, rs = self._ki, self._ki.strides[0]
        self._kargs = np.array([0, 0, self.bank.ctypes.data, self._w.ctypes.data, 0]
                               + [ki.ctypes.data + j * rs for j in range(6)]
                               + [self._kf.ctypes.data, 0, 0, self._kg.ctypes.data, n, 2, self._ka.ctypes.data,
                                  self.max_frames, self._ko.ctypes.data, self._ks.ctypes.data]
                               + [ki.ctypes.data + j * rs for j in (6, 7)], np.int64)
        self._kargs_at = self._kargs.ctypes.data     # [12, 13]: `_rt`'s address and length, set with it
        for b in (self._ka, self._ko, self._ks):     # touched now, not on the audio thread
            b.fill(0)

    # ---- work-buffer helpers ---------------------------------------------------------------------
    def _nonzero(self, mask: np.ndarray, out: np.ndarray) -> np.ndarray:
        """`np.flatnonzero(mask)`: a new array when it is small (64 indices at most: 512 bytes, cheaper),
        else written into `out` (int64, at least len(mask) + 1 long) and a view of it."""
        m = len(mask)
        if np.count_nonzero(mask) <= 64:
            return mask.nonzero()[0]
        c, d = self._nz[0, :m], self._nz[1, :m]
        np.copyto(c, mask)
        np.add.accumulate(c, out=c)
        k = c.item(m - 1)
        if k:
            np.subtract(c, 1, out=d)
            nb = self._nz_b[:m]
            np.logical_not(mask, out=nb)
            np.copyto(d, m, where=nb)        # unselected elements go to the spare slot out[m]
            out[d] = self._ar[:m]
        return out[:k]

    def _partition(self, mask: np.ndarray, n_true: int, out: np.ndarray) -> np.ndarray:
        """Destinations of a stable partition of `mask`'s elements: True ones to 0..n_true-1, False
        ones from n_true on, each in their order (into `out`, int64[len(mask)])."""
        m = len(mask)
        c, d = self._nz[0, :m], self._nz[1, :m]
        np.copyto(c, mask)
        np.add.accumulate(c, out=c)          # c[i]: True elements up to and including i
        np.add(self._ar[:m], n_true, out=d)
        np.subtract(d, c, out=out)           # a False one: n_true + the False ones before it
        np.subtract(c, 1, out=d)
        np.copyto(out, d, where=mask)
        return out

    def _since(self, times: np.ndarray, rows: np.ndarray, t: int, out: np.ndarray, tmp: np.ndarray,
               itmp: np.ndarray) -> np.ndarray:
        """float(t − times[rows]) into `out`: exact, as the int64 difference it stands for (times are
        integers below 2**53). `tmp`, `itmp`: float64 and int64 work vectors."""
        np.copyto(tmp, times.take(rows, out=itmp, mode="clip"))
        return np.subtract(t, tmp, out=out)

    def _positions(self, rows: np.ndarray, rate: np.ndarray, t: int, out: np.ndarray, tmp: np.ndarray,
                   tmp2: np.ndarray, itmp: np.ndarray) -> np.ndarray:
        """Read positions of `rows` at time `t`, unwrapped: seg_pos + rate · (t − seg_t), into `out`
        (`rate`: theirs; `tmp`, `tmp2`, `itmp`: work vectors)."""
        dt = self._since(self.seg_t, rows, t, tmp2, tmp, itmp)
        np.multiply(rate, dt, out=tmp)
        return np.add(self.seg_pos.take(rows, out=tmp2, mode="clip"), tmp, out=out)

    def _wrap(self, rows: np.ndarray, p: np.ndarray, loop_e: np.ndarray, where: np.ndarray, w: np.ndarray) -> None:
        """Wrap the positions `p` of `rows` into their loop where `where` (p >= loop_e), as `pos_at`
        does: ls + fmod(p − ls, loop_e − ls). `w`: float64[4, len(rows)] of work vectors."""
        ls = self.loop_s.take(rows, out=w[0], mode="clip")
        np.subtract(p, ls, out=w[1])
        np.subtract(loop_e, ls, out=w[2])
        np.fmod(w[1], w[2], out=w[3])
        np.copyto(p, np.add(ls, w[3], out=w[1]), where=where)

    def _in_place(self, op, a: np.ndarray, b) -> None:
        """op(a, b, out=a). numpy allocates ~1.1 KB for an operation in place on a one-element array,
        so one element (a one-frame mix of one voice) goes through a scratch element instead."""
        if a.size != 1:
            op(a, b, out=a)
            return
        o = self._one.view(a.dtype)[:1].reshape(a.shape)
        op(a, b, out=o)
        np.copyto(a, o)

    def _spread(self, values: np.ndarray, k: int, f: int) -> np.ndarray:
        """`values` (float64 or int64 [k]) repeated along [k, f] in `_x` (a broadcast operand that
        costs no allocation)."""
        x = self._x[:k * f].reshape(k, f) if values.dtype == np.float64 else \
            self._x.view(np.int64)[:k * f].reshape(k, f)
        np.copyto(x, values[:, None])
        return x

    def set_release_table(self, preset: int, seconds: float, sample_rate: int) -> None:
        """Precompute the release factor exp(−decay · u), u = 0 .. its end, of preset index `preset`'s
        releases (`release` with these `seconds`), so that the mix reads it instead of computing an
        exp per sample: the same float32 arithmetic as `_exp32`, so the same samples. Called at set-up,
        never from the audio thread (it allocates); releases of other lengths keep the exp."""
        k = _LN_END / max(1.0, seconds * sample_rate)
        pad = self.max_frames
        span = math.ceil(_LN_END / k)
        u = np.arange(-pad, span + pad, dtype=np.float64)
        g = np.multiply(np.maximum(u, 0.0), -k)
        tab = np.exp(g.astype(np.float32)).astype(np.float64)
        m = max(len(self._rt_k), preset + 1)
        rk, ro, rm = np.zeros(m), np.zeros(m, np.int64), np.zeros(m, np.int64)
        n = len(self._rt_k)
        rk[:n], ro[:n], rm[:n] = self._rt_k, self._rt_o, self._rt_m
        rk[preset], ro[preset], rm[preset] = k, len(self._rt) + pad, len(self._rt) + pad + span
        self._rt_k, self._rt_o, self._rt_m = rk, ro, rm
        self._set_rt(np.concatenate([self._rt, tab]))

    def _set_rt(self, rt: np.ndarray) -> None:
        self._rt = rt
        self._kargs[12], self._kargs[13] = rt.ctypes.data, len(rt)

    # ---- per-voice state (called at event times) -----------------------------------------------
    def pos_at(self, v: int, t: int) -> float:
        """Read position of voice `v` at time `t`, wrapped into its loop (same arithmetic as `mix`)."""
        p = self.seg_pos.item(v) + self.rate.item(v) * float(t - self.seg_t.item(v))
        le = self.loop_e.item(v)
        if p >= le:
            ls = self.loop_s.item(v)
            p = ls + math.fmod(p - ls, le - ls)
        return p

    def env_at(self, v: int, t: int) -> float:
        """Envelope of voice `v` at time `t` (the mix's arithmetic: `_exp32`, as `_env_now` uses)."""
        e = min(1.0, max(0.0, self.env0.item(v) + self.slope.item(v) * float(t - self.env_t.item(v))))
        k = self.decay.item(v)
        if k > 0.0:
            d = float(t - self.rel_t.item(v))
            if d >= math.ceil(_LN_END / k):
                return 0.0
            if d > 0.0:
                e *= float(np.exp(np.float32(d * -k)))
        return e

    def _end_of_note(self, v: int) -> int:
        # .item() reads Python scalars: numpy scalar arithmetic costs ~10x more per operation.
        if self.loop_e.item(v) != math.inf:
            return NEVER
        remaining = self.length.item(v) - self.seg_pos.item(v)
        return self.seg_t.item(v) + max(0, math.ceil(remaining / self.rate.item(v)))

    def _env_end(self, v: int) -> int:
        """When voice `v`'s envelope reaches 0 for good: its linear ramp's end, or its release's,
        RELEASE_END_DB down (NEVER when neither comes)."""
        s = self.slope.item(v)
        if s >= 0:
            end = NEVER if self.env0.item(v) > 0 or s > 0 else self.env_t.item(v)
        else:
            end = self.env_t.item(v) + math.ceil(self.env0.item(v) / -s)
        k = self.decay.item(v)
        if k > 0.0:
            end = min(end, self.rel_t.item(v) + math.ceil(_LN_END / k))
        return end

    def _update_end(self, v: int) -> None:
        end = min(self._end_of_note(v), self._env_end(v))
        self.end_t[v] = end
        if end < self.next_end:
            self.next_end = end

    def _update_end_rows(self, rows: np.ndarray) -> None:
        """`_update_end` for many rows at once, from their current segment and envelope arrays (the
        same arithmetic; integer times stay int64, since NEVER is not exact as a float)."""
        k = len(rows)
        fv, iv, bv = self._ef, self._ei, self._eb
        end = iv[0, :k]
        end.fill(NEVER)
        one = np.equal(self.loop_e.take(rows, out=fv[0, :k], mode="clip"), np.inf, out=bv[0, :k])
        if np.count_nonzero(one):
            pos = self._nonzero(one, iv[1])
            n = len(pos)
            r = rows.take(pos, out=iv[2, :n], mode="clip")
            a, b = fv[0, :n], fv[1, :n]
            np.copyto(a, self.length.take(r, out=iv[3, :n], mode="clip"))
            np.subtract(a, self.seg_pos.take(r, out=fv[2, :n], mode="clip"), out=b)   # samples left
            np.divide(b, self.rate.take(r, out=fv[2, :n], mode="clip"), out=a)
            np.maximum(0.0, np.ceil(a, out=b), out=a)
            v = iv[3, :n]
            np.copyto(v, a, casting="unsafe")
            end[pos] = np.add(self.seg_t.take(r, out=iv[4, :n], mode="clip"), v, out=iv[5, :n])
        s = self.slope.take(rows, out=fv[3, :k], mode="clip")
        e0 = self.env0.take(rows, out=fv[4, :k], mode="clip")
        down = np.less(s, 0.0, out=bv[0, :k])
        if np.count_nonzero(down):
            pos = self._nonzero(down, iv[1])
            n = len(pos)
            q, neg = fv[0, :n], fv[1, :n]
            np.negative(s.take(pos, out=fv[2, :n], mode="clip"), out=neg)
            np.divide(e0.take(pos, out=q, mode="clip"), neg, out=fv[2, :n])
            v = iv[2, :n]
            np.copyto(v, np.ceil(fv[2, :n], out=q), casting="unsafe")                   # ramp samples left
            w = np.add(self.env_t.take(rows.take(pos, out=iv[3, :n], mode="clip"), out=iv[4, :n], mode="clip"),
                       v, out=iv[5, :n])
            end[pos] = np.minimum(end.take(pos, out=iv[3, :n], mode="clip"), w, out=v)
        zero = np.logical_and(np.equal(s, 0.0, out=bv[0, :k]), np.less_equal(e0, 0.0, out=bv[1, :k]), out=bv[2, :k])
        if np.count_nonzero(zero):
            np.copyto(end, np.minimum(end, self.env_t.take(rows, out=iv[1, :k], mode="clip"), out=iv[2, :k]),
                      where=zero)
        kd = self.decay.take(rows, out=fv[3, :k], mode="clip")
        rel = np.greater(kd, 0.0, out=bv[0, :k])
        if np.count_nonzero(rel):
            pos = self._nonzero(rel, iv[1])
            n = len(pos)
            q = np.divide(_LN_END, kd.take(pos, out=fv[0, :n], mode="clip"), out=fv[1, :n])
            v = iv[2, :n]
            np.copyto(v, np.ceil(q, out=fv[2, :n]), casting="unsafe")                  # release samples left
            w = np.add(self.rel_t.take(rows.take(pos, out=iv[3, :n], mode="clip"), out=iv[4, :n], mode="clip"),
                       v, out=iv[5, :n])
            end[pos] = np.minimum(end.take(pos, out=iv[3, :n], mode="clip"), w, out=v)
        self.end_t[rows] = end
        self.next_end = min(self.next_end, end.item(end.argmin()))

    def start(self, v: int, t: int, entry, chan: int, note: int, preset: int, base_rate: float, bend: float,
              gain_l: float, gain_r: float, pos: float = 0.0, env0: float = 1.0, slope: float = 0.0) -> None:
        """Start voice row `v` (from `take_row`) at time `t` playing cache `entry` (acquired by the caller)."""
        self.n_live += 1
        self._set_gen += 1
        if t > self.latest_start:
            self.latest_start = t
        self.active[v] = True
        self.ghost[v] = False
        self.held[v] = True
        self.sustained[v] = False
        self.released[v] = False
        self.chan[v] = chan
        self.note[v] = note
        self.preset[v] = preset
        self._serial += 1
        self.order[v] = self._serial
        self.steal_key[v] = _HELD + self._serial
        self._steal_lv[v] = math.inf
        self.slot[v] = entry.slot
        self.off[v] = entry.offset
        self.length[v] = entry.length
        self.loop_s[v] = entry.loop_start
        self.loop_e[v] = entry.loop_end
        self.seg_t[v] = t
        self.seg_pos[v] = pos
        self.base_rate[v] = base_rate
        self.rate[v] = base_rate * bend
        self.env_t[v] = t
        self.env0[v] = env0
        self.slope[v] = slope
        self.gain[0, v] = gain_l
        self.gain[1, v] = gain_r
        self.sost[v] = False
        if self.ring_seg.item(v) >= 0:
            self.ring_seg[v] = -1
            self.ring_key[v] = None
            self.ringing.discard(v)
        # _update_end from the arguments (Python floats) rather than re-reading the arrays: the
        # same arithmetic, at a fraction of the cost, on the note-on path.
        if entry.loop_end != math.inf:
            end = NEVER
        else:
            end = t + max(0, math.ceil((entry.length - pos) / (base_rate * bend)))
        if slope < 0:
            end = min(end, t + math.ceil(env0 / -slope))
        elif slope == 0 and env0 <= 0:
            end = t
        self.end_t[v] = end
        if end < self.next_end:
            self.next_end = end
        m = self._n_ord
        if m == len(self._ord):
            self._compact()
            m = self._n_ord
        self._ord[m] = v
        self._ord_ser[m] = self._serial
        self._n_ord = m + 1

    def set_bend(self, v: int, t: int, bend: float) -> None:
        """New pitch-bend factor for voice `v` from time `t` on (a new position segment)."""
        p = self.pos_at(v, t)
        self._par_gen += 1
        if self.ringing:
            self.chain_dirty = True
        self.seg_pos[v] = p
        self.seg_t[v] = t
        self.rate[v] = self.base_rate[v] * bend
        self._update_end(v)

    def set_bend_rows(self, rows: np.ndarray, t: int, bend: float) -> None:
        """`set_bend` for many rows at once (a bend moves every voice of its channel): the same
        arithmetic, vectorised, so the positions match the one-row path exactly."""
        k = len(rows)
        if not k:
            return
        fv, iv, bv = self._vf, self._vi, self._vb
        p = self._positions(rows, self.rate.take(rows, out=fv[0, :k], mode="clip"), t, fv[1, :k], fv[2, :k],
                            fv[3, :k], iv[0, :k])
        le = self.loop_e.take(rows, out=fv[0, :k], mode="clip")
        wrap = np.greater_equal(p, le, out=bv[0, :k])
        if np.count_nonzero(wrap):
            self._wrap(rows, p, le, wrap, fv[2:6, :k])
        rate = np.multiply(self.base_rate.take(rows, out=fv[0, :k], mode="clip"), bend, out=fv[2, :k])
        self._par_gen += 1
        if self.ringing:
            self.chain_dirty = True
        self.seg_pos[rows] = p
        self.seg_t[rows] = t
        self.rate[rows] = rate
        self._update_end_rows(rows)

    def set_gain_rows(self, rows: np.ndarray, chan_gain: float, pan_offset: float, sends=(0.0, 0.0)) -> None:
        """New channel gain, pan and sends for voices `rows` (a CC7/CC10/CC11/CC91/CC93 move) from the
        mix's next sample: gain = vgain · chan_gain, panned constant-power at clip(kpos + pan_offset)."""
        k = len(rows)
        if not k:
            return
        fv = self._vf
        g = np.multiply(self.vgain.take(rows, out=fv[0, :k], mode="clip"), chan_gain, out=fv[1, :k])
        th = np.add(self.kpos.take(rows, out=fv[2, :k], mode="clip"), pan_offset, out=fv[3, :k])
        th = np.multiply(np.clip(th, 0.0, 1.0, out=fv[2, :k]), math.pi / 2, out=fv[3, :k])
        self._par_gen += 1
        self.gain[0, rows] = np.multiply(g, np.cos(th, out=fv[4, :k]), out=fv[5, :k])
        self.gain[1, rows] = np.multiply(g, np.sin(th, out=fv[4, :k]), out=fv[6, :k])
        self.send[0, rows] = sends[0]
        self.send[1, rows] = sends[1]

    def ramp(self, v: int, t: int, seconds_to_zero: float, sample_rate: int) -> None:
        """Fade voice `v` linearly from its current level at time `t` (full scale per `seconds_to_zero`)."""
        e = self.env_at(v, t)
        self._par_gen += 1
        self.env0[v] = e
        self.env_t[v] = t
        self.slope[v] = -1.0 / max(1.0, seconds_to_zero * sample_rate)
        self.decay[v] = 0.0        # the ramp takes over from a release, at the level it had reached
        self._update_end(v)

    def release(self, v: int, t: int, seconds: float, sample_rate: int) -> None:
        """Key up (or pedal up) for voice `v` at time `t`: from its level then, its envelope falls
        linearly in dB, RELEASE_END_DB in `seconds` (SF2 releaseVolEnv), and the voice ends there. A
        ramp under way (a crossfade in) goes on under it; a second release goes on from the level the
        first has reached."""
        self.held[v] = False
        self.sustained[v] = False
        self.released[v] = True
        if not self.ghost[v]:
            self.steal_key[v] = self.order[v]
        self._steal_gen += 1
        self._par_gen += 1
        if self.decay.item(v) > 0.0:
            self.env0[v] = self.env_at(v, t)
            self.env_t[v] = t
            self.slope[v] = 0.0
        self.rel_t[v] = t
        self.decay[v] = _LN_END / max(1.0, seconds * sample_rate)
        self._update_end(v)

    def _env_now(self, rows: np.ndarray, t: int, out: np.ndarray) -> np.ndarray:
        """`env_at` for many rows, into `out` (float64[len(rows)]; works in rows 3-6 of `_vf`, 0 of
        `_vi`, 0-2 of `_vb`)."""
        k = len(rows)
        fv, bv = self._vf, self._vb
        a, b = fv[4, :k], fv[5, :k]
        dt = self._since(self.env_t, rows, t, b, a, self._vi[0, :k])
        np.multiply(self.slope.take(rows, out=a, mode="clip"), dt, out=out)
        np.add(self.env0.take(rows, out=a, mode="clip"), out, out=b)
        np.clip(b, 0.0, 1.0, out=out)
        kd = self.decay.take(rows, out=fv[3, :k], mode="clip")
        if kd.item(kd.argmax()) > 0.0:
            # Released rows: times exp(−decay · (t − rel_t)) after their release, 0 from its end on.
            c = fv[6, :k]
            d = self._since(self.rel_t, rows, t, a, b, self._vi[0, :k])
            rel = np.greater(kd, 0.0, out=bv[2, :k])
            np.ceil(np.divide(_LN_END, np.maximum(kd, 1e-300, out=c), out=b), out=c)   # (used where rel)
            ended = np.logical_and(np.greater_equal(d, c, out=bv[0, :k]), rel, out=bv[1, :k])
            np.multiply(np.maximum(d, 0.0, out=b), np.negative(kd, out=c), out=a)
            np.multiply(out, self._exp32(a, self._fr[:k], self._s1[:k]), out=c)   # (the mix's: idle now)
            np.copyto(out, c)
            np.copyto(out, 0.0, where=ended)
        return out

    def release_rows(self, rows: np.ndarray, t: int, seconds, sample_rate: int) -> None:
        """`release` for many rows at once (pedal up, all-notes-off over a held cluster): the same
        arithmetic, vectorised; `seconds` gives each row's release time (or all rows' one)."""
        k = len(rows)
        if not k:
            return
        fv, iv, bv = self._vf, self._vi, self._vb
        self.held[rows] = False
        self.sustained[rows] = False
        self.released[rows] = True
        live = np.logical_not(self.ghost.take(rows, out=bv[0, :k], mode="clip"), out=bv[1, :k])
        key = self.steal_key.take(rows, out=iv[1, :k], mode="clip")
        np.copyto(key, self.order.take(rows, out=iv[2, :k], mode="clip"), where=live)
        self.steal_key[rows] = key
        self._steal_gen += 1
        self._par_gen += 1
        a, b = fv[1, :k], fv[2, :k]
        np.copyto(a, seconds)           # (first: `seconds` may be a view of fv[6], `per_preset`'s)
        np.maximum(1.0, np.multiply(a, sample_rate, out=b), out=a)
        decay = np.divide(_LN_END, a, out=b)
        again = np.greater(self.decay.take(rows, out=fv[0, :k], mode="clip"), 0.0, out=bv[0, :k])
        if np.count_nonzero(again):
            # Released before: frozen at the level reached (as `release`), the new release from there.
            pos = self._nonzero(again, iv[3])
            r = rows.take(pos, out=iv[4, :len(pos)], mode="clip")
            self.env0[r] = self._env_now(r, t, fv[0, :len(pos)])
            self.env_t[r] = t
            self.slope[r] = 0.0
        self.rel_t[rows] = t
        self.decay[rows] = decay
        self._update_end_rows(rows)

    def sustain(self, v: int) -> None:
        """Key up with the pedal down: voice `v` keeps playing, held by the pedal."""
        self.held[v] = False
        self.sustained[v] = True
        if not self.ghost[v] and not self.released[v]:
            self.steal_key[v] = _SUSTAINED + self.order[v]
            self._steal_gen += 1

    def oldest_ghost(self) -> int:
        """The oldest fading ghost (only meaningful when one exists)."""
        return int(self.ghost_key.argmin())   # the method skips np.argmin's Python wrapper

    def set_levels(self, levels: np.ndarray, hop: int) -> None:
        """The note cache's level table (`NoteCache.levels`: peak |x| per `hop` samples of each slot)."""
        self._levels, self._level_hop = levels, int(hop)

    def victim(self, t: int | None = None, take: bool = True) -> int:
        """The voice to steal: released ones first, then sustained, then held. Within a tier, the
        quietest at time `t` (gain × envelope × its note's level where it reads), the oldest among
        equals; without `t` or a level table, the oldest. Steals at one time (a chord) rank the tier
        once and take the next quietest each time: a few µs a steal on the note-on path.
        `take=False` only looks: the next call at `t` gives the same voice."""
        k = self.steal_key.item(self.steal_key.argmin())
        if t is None or self._levels is None or k >= NEVER:
            return int(self.steal_key.argmin())
        tier = k // _SUSTAINED
        lv = self._steal_lv
        if self._steal_at != (t, tier, self._steal_gen):
            self._rank(t, tier)
        v = int(lv.argmin())
        if lv.item(v) == math.inf:       # the ranked rows are all taken: rank the tier again
            self._rank(t, tier)
            v = int(lv.argmin())
        if take:
            lv[v] = math.inf
        return v

    def _rank(self, t: int, tier: int) -> None:
        """`_steal_lv`: the level at `t` of each voice in steal tier `tier` (inf for the others),
        plus 1e-12 × its age rank, so that among equal levels the oldest is taken first. (No
        operation writes over its input: numpy allocates for those.)"""
        lo = tier * _SUSTAINED
        fv, iv, bv = self._sf, self._si, self._sb
        key = self.steal_key
        m = np.logical_and(np.greater_equal(key, lo, out=bv[0]), np.less(key, lo + _SUSTAINED, out=bv[1]), out=bv[2])
        rows = self._nonzero(m, iv[0])
        k = len(rows)
        f = [fv[i, :k] for i in range(8)]
        np.abs(self.gain[0].take(rows, out=f[0], mode="clip"), out=f[1])
        np.abs(self.gain[1].take(rows, out=f[0], mode="clip"), out=f[2])
        np.maximum(f[1], f[2], out=f[0])
        np.multiply(f[0], self._env_now(rows, t, f[1]), out=f[7])              # gain × envelope
        p = self._positions(rows, self.rate.take(rows, out=f[2], mode="clip"), t, f[3], f[4], f[5], iv[1, :k])
        le = self.loop_e.take(rows, out=f[2], mode="clip")
        looped = np.greater_equal(p, le, out=bv[0, :k])
        if np.count_nonzero(looped):
            self._wrap(rows, p, le, looped, self._vf[3:7, :k])
        cols = self._levels.shape[1]
        np.floor_divide(p, self._level_hop, out=f[4])
        np.minimum(f[4], cols - 1, out=f[5])
        np.maximum(f[5], 0.0, out=f[4])
        np.copyto(iv[1, :k], f[4], casting="unsafe")                            # the level cell
        slots = self.slot.take(rows, out=iv[2, :k], mode="clip")
        np.multiply(slots, cols, out=iv[3, :k])
        np.add(iv[3, :k], iv[1, :k], out=iv[4, :k])
        np.copyto(f[2], self._levels.reshape(-1).take(iv[4, :k], out=self._s32[:k], mode="clip"))
        np.copyto(f[2], 0.0, where=np.less(slots, 0, out=bv[1, :k]))            # silent notes (slot -1)
        np.multiply(f[7], f[2], out=f[6])
        o = self.order.take(rows, out=iv[1, :k], mode="clip")
        np.subtract(o, o.item(o.argmin()), out=iv[3, :k])
        np.copyto(f[3], iv[3, :k])
        np.multiply(f[3], 1e-12 / (iv[3, :k].item(iv[3, :k].argmax()) + 1), out=f[4])
        np.add(f[6], f[4], out=f[0])
        self._steal_lv.fill(math.inf)
        self._steal_lv.put(rows, f[0])
        self._steal_at = (t, tier, self._steal_gen)

    def fade_out(self, v: int, t: int, seconds: float, sample_rate: int) -> None:
        """Turn `v` into a ghost that fades out quickly (steals, all-sound-off, crossfades)."""
        if not self.ghost[v]:
            self.n_live -= 1
        self.ghost[v] = True
        self.steal_key[v] = NEVER
        self._steal_lv[v] = math.inf
        self.ghost_key[v] = self.order[v]
        self.held[v] = False
        self.sustained[v] = False
        self.released[v] = True
        self.ramp(v, t, seconds, sample_rate)

    def fade_out_rows(self, rows: np.ndarray, t: int, seconds: float, sample_rate: int) -> None:
        """`fade_out` for many rows at once (all-sound-off, panic): the same arithmetic, vectorised."""
        k = len(rows)
        if not k:
            return
        self.n_live -= k - int(np.count_nonzero(self.ghost.take(rows, out=self._vb[0, :k], mode="clip")))
        e = self._env_now(rows, t, self._vf[0, :k])
        slope = -1.0 / max(1.0, seconds * sample_rate)
        self._par_gen += 1
        self.ghost[rows] = True
        self.steal_key[rows] = NEVER
        self._steal_lv.put(rows, math.inf)
        self.ghost_key[rows] = self.order.take(rows, out=self._vi[1, :k], mode="clip")
        self.held[rows] = False
        self.sustained[rows] = False
        self.released[rows] = True
        self.env0[rows] = e
        self.env_t[rows] = t
        self.slope[rows] = slope
        self.decay[rows] = 0.0
        self._update_end_rows(rows)

    def take_row(self) -> int | None:
        """A free row for `start`, or None when every row is busy."""
        if not self.n_free:
            return None
        self.n_free -= 1
        v = self._free.item(self.n_free)
        self.decay[v] = 0.0        # not released (`start` sets the rest of the envelope)
        return v

    def free_row(self, v: int) -> None:
        """Stop voice `v` at once and return its row (the caller releases its cache slot)."""
        if not self.ghost[v]:
            self.n_live -= 1
        self.active[v] = False
        self.steal_key[v] = NEVER
        self._steal_lv[v] = math.inf
        self.ghost_key[v] = NEVER
        self.end_t[v] = NEVER
        self.slot[v] = -1
        if self.ringing:
            self.ringing.discard(v)
        self._free[self.n_free] = v
        self.n_free += 1
        self._set_gen += 1

    def free_rows(self, rows: np.ndarray) -> None:
        """`free_row` for many rows at once, in order (a 256-voice cluster ending in one block)."""
        k = len(rows)
        if not k:
            return
        self.n_live -= k - int(np.count_nonzero(self.ghost.take(rows, out=self._vb[0, :k], mode="clip")))
        self.active[rows] = False
        self.steal_key[rows] = NEVER
        self._steal_lv.put(rows, math.inf)
        self.ghost_key[rows] = NEVER
        self.end_t[rows] = NEVER
        self.slot[rows] = -1
        if self.ringing:
            for i in range(k):
                self.ringing.discard(rows.item(i))
        self._free[self.n_free:self.n_free + k] = rows
        self.n_free += k
        self._set_gen += 1

    def frames_for(self, voices: int) -> int:
        """Frames one `mix` call may cover with `voices` active voices."""
        return max(1, min(self.max_frames, self.budget // max(1, voices)))

    def dead(self, t: int) -> np.ndarray:
        """Rows of active voices that are silent for good at time `t` (updates `next_end`): a view of
        a work buffer, valid until the next call."""
        if t < self.next_end:
            return _EMPTY
        over = np.less_equal(self.end_t, t, out=self._vb[1])    # free rows end at NEVER
        gone = self._nonzero(over, self._rows[0])
        rest = self._vi[6, :self.capacity]
        np.copyto(rest, self.end_t)
        np.copyto(rest, NEVER, where=over)
        self.next_end = rest.item(rest.argmin())
        return gone

    def select(self, chan: int, note: int | None = None, where: np.ndarray | None = None,
               unless: tuple[np.ndarray, ...] = ()) -> np.ndarray:
        """Rows of the active voices on `chan` (playing `note`; with `where` set; with none of
        `unless` set), in row order: a view of a work buffer, valid until the next call."""
        b, c = self._vb[1], self._vb[2]
        np.equal(self.chan, chan, out=b)
        np.logical_and(b, self.active, out=b)
        if note is not None:
            np.logical_and(b, np.equal(self.note, note, out=c), out=b)
        if where is not None:
            np.logical_and(b, where, out=b)
        for flag in unless:
            np.logical_and(b, np.logical_not(flag, out=c), out=b)
        return self._nonzero(b, self._rows[1])

    def slots_of(self, rows: np.ndarray) -> np.ndarray:
        """The cache slots of `rows`: a view of a work buffer, valid until the next call."""
        return self.slot.take(rows, out=self._rows[2, :len(rows)], mode="clip")

    def per_preset(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`values[preset]` for each of `rows` (`values`: float64, one per preset): a view of a work
        buffer, valid until the next call."""
        k = len(rows)
        return values.take(self.preset.take(rows, out=self._vi[5, :k], mode="clip"), out=self._vf[6, :k], mode="clip")

    def _start_order(self) -> np.ndarray:
        """The active rows in start order: a view of `_ord`, kept until a voice starts or stops."""
        if self._ord_gen != self._set_gen:
            self._compact()
            self._ord_gen = self._set_gen
        return self._ord[:self._n_ord]

    def _compact(self) -> None:
        """Drop the entries of `_ord` whose row has stopped (or stopped and started another note)."""
        m = self._n_ord
        rows, ser = self._ord[:m], self._ord_ser[:m]
        keep, act = self._cpb[0, :m], self._cpb[1, :m]
        np.equal(self.order.take(rows, out=self._cpi[0, :m], mode="clip"), ser, out=keep)
        np.logical_and(keep, self.active.take(rows, out=act, mode="clip"), out=keep)
        k = int(np.count_nonzero(keep))
        if k < m:
            pos = self._nonzero(keep, self._cpi[1])
            rows.take(pos, out=self._ord2[:k], mode="clip")
            ser.take(pos, out=self._ord_ser2[:k], mode="clip")
            self._ord, self._ord2 = self._ord2, self._ord
            self._ord_ser, self._ord_ser2 = self._ord_ser2, self._ord_ser
        self._n_ord = k

    # ---- mixing ---------------------------------------------------------------------------------
    def mix(self, t: int, out: np.ndarray, sends: np.ndarray | None = None) -> None:
        """Mix all active voices for frames [t, t + F) into `out` float32[F, 2] (overwritten), and,
        when `sends` float32[F, 4] is given, the reverb (columns 0-1) and chorus (2-3) send buses.

        F <= frames_for(active voices). Voices reading straight ahead get one index per sample into
        the bank; the others (bent, transposed, crossing a loop seam) get fractional positions and
        linear interpolation. Both give the same samples for a voice that qualifies for either.

        A voice whose start time `seg_t` is after `t` (started ahead by the engine, at a frame later
        in the block) is silent until then. The voices are summed in start order, whatever their rows
        or envelopes: a voice started ahead, or released ahead, adds exact zeros or the same samples
        at the same place in the sum as it would from a mix cut at its frame, so the output does not
        depend on where the engine cut.

        Allocation: none above 1 KB, only views, numpy scalars and index arrays of 64 entries at
        most; every array it works in is the bank's, allocated once (tests/test_realtime_alloc.py
        holds it at 256 voices in 128- and 512-frame blocks, and one voice in one-frame mixes).
        numpy allocates ~1.1 KB for an operation in place on one element, so the envelope and
        interpolation steps take a one-frame mix of one voice through a scratch element (`_in_place`).
        """
        f = out.shape[0]
        idx = self._start_order()
        nv = len(idx)
        if nv == 0:
            out[:] = 0.0
            if sends is not None:
                sends[:] = 0.0
            return
        fv, iv, bv = self._mf, self._mi, self._mb
        cf, cb = self._voice_params(idx)
        rate, loop_e, ramp = cf[0, :nv], cf[1, :nv], cb[1, :nv]
        # The read positions at t: seg_pos + rate · (t − seg_t), as `pos_at`.
        np.multiply(rate, np.subtract(t, cf[3, :nv], out=fv[3, :nv]), out=fv[4, :nv])
        p0 = np.add(cf[2, :nv], fv[4, :nv], out=fv[2, :nv])
        a, b, c = bv[0, :nv], bv[1, :nv], bv[2, :nv]
        if self._loops:
            looped = np.greater_equal(p0, loop_e, out=a)
            if np.count_nonzero(looped):
                self._wrap(idx, p0, loop_e, looped, fv[3:7, :nv])
        # Straight ahead: rate 1, on a whole sample, and not crossing the loop seam in this block (the
        # kernel jumps back at the seam itself when the loop points are whole samples).
        simple = np.logical_and(cb[0, :nv], np.equal(p0, np.floor(p0, out=fv[3, :nv]), out=a), out=b)
        if self._loops:
            inside = np.less_equal(np.add(p0, f, out=fv[3, :nv]), loop_e, out=a)
            if self.use_kernel:
                inside = np.logical_or(inside, cb[2, :nv], out=a)
            simple = np.logical_and(b, inside, out=c)
        nf = int(np.count_nonzero(simple))
        if nf == nv:
            order, ramp_o, p_o = idx, ramp, p0
        else:
            # Rows of ww: the straight-ahead voices, then the interpolated ones, each in start order.
            dest = self._partition(simple, nf, iv[1, :nv])
            order, ramp_o, p_o = iv[2, :nv], bv[3, :nv], fv[4, :nv]
            order[dest] = idx
            ramp_o[dest] = ramp
            p_o[dest] = p0
        ww = self._w[:nv * f].reshape(nv, f)
        if self.use_kernel:
            self._mix_kernel(t, order, ramp_o, p_o, nf, ww, cf[4, :nv] if nf == nv else None, out, sends)
            return
        if nf:
            self._gather(order[:nf], p_o[:nf], ww[:nf], f)
        if nf < nv:
            self._mix_slow(t, order[nf:], ww[nf:], f)
        ramping = int(np.count_nonzero(ramp_o))
        gain = self._mix_gains(order, ramp_o, ramping, cf[4, :nv] if nf == nv else None)
        if ramping:
            self._apply_envelopes(t, order, self._nonzero(ramp_o, iv[0]), ww, f)
        if nf < nv and self.latest_start > t:
            self._silence_before_start(t, order[nf:], ww[nf:], f)
        o = self._o[:, :f]
        np.matmul(gain, ww, out=o)
        # One channel at a time: the same values as out[:] = o.T, in a seventh of the time.
        out[:, 0] = o[0]
        out[:, 1] = o[1]
        if sends is not None:
            self._mix_sends(order, gain, ww, sends)

    def _mix_kernel(self, t: int, order: np.ndarray, ramp: np.ndarray, pos: np.ndarray, nf: int, ww: np.ndarray,
                    env0: np.ndarray | None, out: np.ndarray, sends: np.ndarray | None) -> None:
        """The rest of `mix` through `synth/_mixc.c`: rows `order[:nf]` read straight ahead from `pos`,
        the others interpolated into ww by numpy; each straight row is summed from the bank unless it
        ramps otherwise than by a tabled release (then numpy makes its row, with `_apply_envelopes`)."""
        nv, f = ww.shape
        if nf < nv:
            self._mix_slow(t, order[nf:], ww[nf:], f)
        ramping = int(np.count_nonzero(ramp))
        gain = self._mix_gains(order, ramp, ramping, env0)
        ki = self._ki
        mode, src, z0, z1, tab = ki[0, :nv], ki[1, :nv], ki[2, :nv], ki[3, :nv], ki[4, :nv]
        mode.fill(0)
        tab.fill(0)
        if nf:
            mode[:nf] = 1
            start = self._kwi[0, :nf]
            np.copyto(start, pos[:nf], casting="unsafe")
            np.add(self.off.take(order[:nf], out=self._kwi[1, :nf], mode="clip"), start, out=src[:nf])
            np.subtract(self.slot_len, start, out=z1[:nf])
            np.negative(start, out=z0[:nf])          # silent before its frame (started ahead) ...
            self._seams(order[:nf], pos[:nf], f, ki[6, :nf], ki[7, :nf], z1[:nf])
        if ramping:                                  # ... and after its slot's end (z1)
            self._kernel_envelopes(t, order, self._nonzero(ramp, self._mi[0]), nf, ww, f)
        if nf < nv and self.latest_start > t:
            self._silence_before_start(t, order[nf:], ww[nf:], f)
        kg = self._kg
        nout = 2
        np.copyto(kg[:2, :nv], gain)
        if sends is not None:
            self._send_gains(order, gain, kg[2:6, :nv])
            nout = 6
        a = self._kargs       # `mix_rows`'s arguments, the addresses set once (`.ctypes` allocates)
        a[0], a[1], a[4], a[16] = nv, f, f, nout
        (_KERNEL_NOGIL if self.release_gil else _KERNEL)(self._kargs_at)
        out[:] = self._ko[:f]
        if sends is not None:
            sends[:] = self._ks[:f]

    def _seams(self, rows: np.ndarray, start: np.ndarray, f: int, seam: np.ndarray, length: np.ndarray,
               z1: np.ndarray) -> None:
        """The kernel's loop jumps for straight voices `rows` at whole positions `start` (float64): the
        frame of the loop end (`seam`; past the block when it is not reached) and the loop length. A
        voice that reaches it is not cut at its slot's end (z1): it never gets there."""
        if not self._loops:
            seam.fill(NEVER)
            return
        k = len(rows)
        fw = self._kwf
        le = self.loop_e.take(rows, out=fw[0, :k], mode="clip")
        d = np.minimum(np.subtract(le, start, out=fw[1, :k]), NEVER, out=fw[1, :k])
        np.copyto(seam, d, casting="unsafe")
        span = np.subtract(le, self.loop_s.take(rows, out=fw[2, :k], mode="clip"), out=fw[2, :k])
        np.copyto(length, np.minimum(span, NEVER, out=fw[2, :k]), casting="unsafe")
        np.copyto(z1, NEVER, where=np.less(d, f, out=self._kwb[0, :k]))

    def _kernel_envelopes(self, t: int, order: np.ndarray, rr: np.ndarray, nf: int, ww: np.ndarray, f: int) -> None:
        """Envelopes of the ramping rows `rr` for `_mix_kernel`: a straight row in a tabled release is
        left to the kernel (its table start, env0 and end); every other one gets its row from numpy
        (gathered, if straight) and its envelope from `_apply_envelopes`, as in numpy's mix."""
        k = len(rr)
        fv, iv, bv = self._kwf, self._kwi, self._kwb
        oe = order.take(rr, out=iv[0, :k], mode="clip")
        kc = np.less(rr, nf, out=bv[0, :k])
        if len(self._rt_k):
            pre = self.preset.take(oe, out=iv[1, :k], mode="clip")
            same = np.equal(self.decay.take(oe, out=fv[0, :k], mode="clip"),
                            self._rt_k.take(pre, out=fv[1, :k], mode="clip"), out=bv[1, :k])
            flat = np.equal(self.slope.take(oe, out=fv[0, :k], mode="clip"), 0.0, out=bv[2, :k])
            kc = np.logical_and(kc, np.logical_and(same, flat, out=bv[3, :k]), out=bv[4, :k])
        else:
            kc.fill(False)
        m = int(np.count_nonzero(kc))
        ki = self._ki
        if m:
            at = self._nonzero(kc, iv[2])
            rows = rr.take(at, out=iv[3, :m], mode="clip")
            vs = oe.take(at, out=iv[4, :m], mode="clip")
            pre = self.preset.take(vs, out=iv[5, :m], mode="clip")
            ki[4][rows] = 1
            # rs = min(table offset + max(t - rel_t, -max_frames), table end), as `_tabled_releases`
            u0 = np.subtract(t, self.rel_t.take(vs, out=iv[1, :m], mode="clip"), out=iv[6, :m])
            u1 = np.add(self._rt_o.take(pre, out=iv[1, :m], mode="clip"),
                        np.maximum(u0, -self.max_frames, out=iv[7, :m]), out=iv[8, :m])
            ki[5][rows] = np.minimum(u1, self._rt_m.take(pre, out=iv[1, :m], mode="clip"), out=iv[6, :m])
            self._kf[rows] = self.env0.take(vs, out=fv[2, :m], mode="clip")
            left = np.subtract(self.end_t.take(vs, out=iv[1, :m], mode="clip"), t, out=iv[7, :m])
            ki[3][rows] = np.minimum(ki[3].take(rows, out=iv[8, :m], mode="clip"), left, out=iv[6, :m])
        if m == k:
            return
        rest = self._nonzero(np.logical_not(kc, out=bv[5, :k]), iv[2])
        rows = rr.take(rest, out=iv[3, :k - m], mode="clip")
        for j in range(k - m):
            r = rows.item(j)
            if r < nf:                               # straight, ramping otherwise: numpy's row
                ki[0, r] = 0
                lo, hi = max(0, ki.item(2, r)), min(f, ki.item(3, r))
                ww[r] = 0.0
                a, seam, length = ki.item(1, r), ki.item(6, r), ki.item(7, r)
                while lo < hi:                       # in runs between the loop jumps, as the kernel reads
                    back = 0 if lo < seam else ((lo - seam) // length + 1) * length
                    end = min(hi, seam + back) if back or seam < hi else hi
                    ww[r, lo:end] = self.bank[a - back + lo:a - back + end]
                    lo = end
        self._apply_envelopes(t, order, rows, ww, f)

    def _mix_sends(self, order: np.ndarray, gain: np.ndarray, ww: np.ndarray, sends: np.ndarray) -> None:
        """The send buses: the mix's gains times each voice's reverb and chorus send levels."""
        nv, f = ww.shape
        sg = self._send_gains(order, gain, self._sg[:, :nv])
        o = self._os[:, :f]
        np.matmul(sg, ww, out=o)
        for c in range(4):
            sends[:, c] = o[c]

    def _send_gains(self, order: np.ndarray, gain: np.ndarray, out: np.ndarray) -> np.ndarray:
        """[4, voices]: the mix's [2, voices] gains times each voice's reverb, then chorus, send level."""
        lv = self._mf[6, :len(order)]
        for b in range(2):
            self.send[b].take(order, out=lv, mode="clip")
            np.multiply(gain, lv, out=out[2 * b:2 * b + 2])
        return out

    def _voice_params(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The per-voice values the mix reads, for the active voices in start order (rows of `_cf`:
        rate, loop end, seg_pos, float(seg_t), env0; of `_cb`: rate == 1, ramping, and, with loops,
        loop points on whole samples), gathered again only after a voice started, stopped, or changed
        segment or envelope (`_par_gen`)."""
        key = (self._set_gen, self._par_gen)
        if key != self._params_key:
            self._params_key = key
            k = len(idx)
            cf, cb = self._cf, self._cb
            self.rate.take(idx, out=cf[0, :k], mode="clip")
            self.loop_e.take(idx, out=cf[1, :k], mode="clip")
            self.seg_pos.take(idx, out=cf[2, :k], mode="clip")
            np.copyto(cf[3, :k], self.seg_t.take(idx, out=self._mi[0, :k], mode="clip"))
            self.env0.take(idx, out=cf[4, :k], mode="clip")
            np.equal(cf[0, :k], 1.0, out=cb[0, :k])
            # Ramping: a linear ramp under way, or a release (its envelope changes every sample).
            ramp = np.not_equal(self.slope.take(idx, out=cf[5, :k], mode="clip"), 0.0, out=self._mb[0, :k])
            rel = np.greater(self.decay.take(idx, out=cf[5, :k], mode="clip"), 0.0, out=self._mb[1, :k])
            np.logical_or(ramp, rel, out=cb[1, :k])
            self._loops = cf[1, :k].item(cf[1, :k].argmin()) < math.inf
            if self._loops:       # loop points on whole samples: the kernel may jump at the seam
                ls = self.loop_s.take(idx, out=cf[5, :k], mode="clip")
                whole = np.equal(ls, np.floor(ls, out=self._mf[6, :k]), out=self._mb[0, :k])
                le = np.floor(cf[1, :k], out=self._mf[6, :k])
                np.logical_and(whole, np.equal(le, cf[1, :k], out=self._mb[1, :k]), out=cb[2, :k])
        return self._cf, self._cb

    def _mix_gains(self, order: np.ndarray, ramp: np.ndarray, ramping: int, env0: np.ndarray | None) -> np.ndarray:
        """The [2, voices] gains of the mix's rows: a voice without a ramp has a constant envelope
        (env0, within [0, 1]) folded in; a ramping one gets its envelope in ww, and gains times 1.0
        (the same values). `env0`: the voices' in `order` when the caller has them (then the result
        is kept until the voice parameters change)."""
        nv = len(order)
        g = self._gains[:, :2 * nv].reshape(3, 2, nv)
        if env0 is not None and self._gains_key == self._params_key:
            return g[2]
        e0 = self._mf[5, :nv]
        if env0 is None:
            self.env0.take(order, out=e0, mode="clip")
        else:
            np.copyto(e0, env0)
        if ramping:
            np.copyto(e0, 1.0, where=ramp)
        np.copyto(g[1], e0)
        np.multiply(self.gain.take(order, axis=1, out=g[0], mode="clip"), g[1], out=g[2])
        self._gains_key = self._params_key if env0 is not None else None
        return g[2]

    def _gather(self, rows: np.ndarray, pos: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Samples of straight-ahead voices `rows` at integer positions `pos` for f frames into ww
        float64[len(rows), f]: one take of an index per sample (numpy gathers rows of an overlapping
        window of the bank only into a new array)."""
        k = len(rows)
        gi = self._gi
        start = gi[0, :k]
        np.copyto(start, pos, casting="unsafe")
        offs = self.off.take(rows, out=gi[1, :k], mode="clip")
        src = np.add(offs, start, out=gi[2, :k])
        if f >= ROW_COPY_FRAMES:
            # Long rows: one slice copy per voice costs less than an index per sample.
            bank = self.bank
            for r in range(k):
                a = src.item(r)
                if a >= 0:
                    ww[r] = bank[a:a + f]
            self._fix_rows(ww, start, offs, f)
            self._g_shape = (0, 0)
            return
        ii = self._ig[:k * f].reshape(k, f)
        # Index row r is src[r] + (0 .. f-1). When every row moved by the same c since the last
        # gather (block to block: the same voices, f frames on), the last matrix serves, into the
        # bank from c samples further on.
        moved = np.subtract(src, self._g_src[:k], out=gi[3, :k]) if self._g_shape == (k, f) else None
        c = moved.item(moved.argmin()) if moved is not None else None
        if c is not None and c == moved.item(moved.argmax()) and self._g_base + c >= 0:
            self._g_base += c          # the same indices, into the bank from c samples further on
        else:
            # (Only from matrices of indices >= 0: a negative one, a voice started ahead in the
            # first slot, is clipped to the start of the bank, not of the part taken from.)
            np.copyto(ii, self._ar[:f])
            np.add(ii, self._spread(src, k, f), out=ii)
            self._g_shape = (k, f) if src.item(src.argmin()) >= 0 else (0, 0)
            self._g_base = 0
        np.copyto(self._g_src[:k], src)
        samples = self._s0[:k * f].reshape(k, f)
        (self.bank[self._g_base:] if self._g_base else self.bank).take(ii, out=samples, mode="clip")
        self._fix_rows(samples, start, offs, f)
        np.copyto(ww, samples)

    def _fix_rows(self, rows: np.ndarray, start: np.ndarray, offs: np.ndarray, f: int) -> None:
        """Straight-ahead rows just gathered, fixed where reading straight on is wrong: a voice
        started ahead (start < 0: the engine starts voices ahead only at position 0) is silent until
        its frame, then reads its slot from the beginning; a note running off its slot in this block
        reads zeros, not the next slot."""
        k = len(start)
        if start.item(start.argmin()) < 0:
            ahead = self._nonzero(np.less(start, 0, out=self._gb[0, :k]), self._gi[3])
            for i in range(len(ahead)):
                r = ahead.item(i)
                s, o = min(f, -start.item(r)), offs.item(r)
                rows[r, :s] = 0.0
                rows[r, s:] = self.bank[o:o + f - s]
        if start.item(start.argmax()) + f > self.slot_len:
            late = self._nonzero(np.greater(start, self.slot_len - f, out=self._gb[0, :k]), self._gi[3])
            for i in range(len(late)):
                r = late.item(i)
                rows[r, max(0, self.slot_len - start.item(r)):] = 0.0

    def _silence_before_start(self, t: int, rows: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Interpolated voices started ahead are silent until their frame (the straight-ahead ones
        were made so in `_fix_rows`)."""
        k = len(rows)
        lead = np.subtract(self.seg_t.take(rows, out=self._gi[0, :k], mode="clip"), t, out=self._gi[1, :k])
        if lead.item(lead.argmax()) > 0:
            ahead = self._nonzero(np.greater(lead, 0, out=self._gb[0, :k]), self._gi[3])
            for i in range(len(ahead)):
                r = ahead.item(i)
                ww[r, :min(f, lead.item(r))] = 0.0

    def _apply_envelopes(self, t: int, order: np.ndarray, rr: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Multiply rows `rr` of ww (voices `order[rr]`, whose envelope ramps) by their envelope."""
        k = len(rr)
        fv, iv, bv = self._nf, self._ni, self._nb
        oe = order.take(rr, out=iv[0, :k], mode="clip")
        if self._tabled(oe, k):
            self._tabled_releases(t, oe, rr, ww, f)
            self._end_releases(t, oe, rr, ww, f)
            return
        # env(t + n) = (float(t − env_t) + n) · slope + env0: float(t - env_t + n) is exact (integers
        # below 2**53), as the int64 sum it replaces was.
        base = self._since(self.env_t, oe, t, fv[0, :k], fv[5, :k], iv[1, :k])
        slope = self.slope.take(oe, out=fv[1, :k], mode="clip")
        env0 = self.env0.take(oe, out=fv[2, :k], mode="clip")
        first, last, a = fv[3, :k], fv[4, :k], fv[5, :k]           # the ramps' ends: env at n = 0, f - 1
        np.add(np.multiply(base, slope, out=a), env0, out=first)
        np.add(np.multiply(np.add(base, f - 1.0, out=last), slope, out=a), env0, out=last)
        if first.item(first.argmax()) >= 1.0:
            # A ramp up (a crossfade in) that has reached full level stays there: from now on the
            # voice is constant, and costs no envelope (the same samples: x * 1.0 is x).
            full = np.logical_and(np.greater_equal(first, 1.0, out=bv[0, :k]), np.greater(slope, 0.0, out=bv[1, :k]),
                                  out=bv[2, :k])
            if np.count_nonzero(full):
                pos = self._nonzero(full, iv[1])
                rows = oe.take(pos, out=iv[2, :len(pos)], mode="clip")
                self.env0[rows] = 1.0
                self.slope[rows] = 0.0
                self.env_t[rows] = t
                self._par_gen += 1
        # A ramp is linear, so its ends bound it: clip only when one leaves [0, 1].
        lo = min(first.item(first.argmin()), last.item(last.argmin()))
        hi = max(first.item(first.argmax()), last.item(last.argmax()))
        clip = lo < 0.0 or hi > 1.0
        # Released voices: times exp(−decay · max(0, float(t − rel_t) + n)), exact in its argument as
        # the ramp is; a voice without a release has decay 0, a factor of exactly 1.0 (`release`).
        negk = np.negative(self.decay.take(oe, out=fv[4, :k], mode="clip"), out=fv[3, :k])
        rel, ahead = None, False
        if negk.item(negk.argmin()) < 0.0:
            rel = self._since(self.rel_t, oe, t, fv[4, :k], fv[5, :k], iv[1, :k])
            ahead = rel.item(rel.argmin()) < 0.0      # a release later in this block: max(0, ·) is needed
        if f >= ROW_COPY_FRAMES:
            # Long rows: row by row, without the [ramps, frames] spreads (fewer passes over memory).
            e, g = self._e[:f], self._p[:f]
            for i in range(k):
                np.add(self._arf[:f], base.item(i), out=e)
                np.multiply(e, slope.item(i), out=e)
                np.add(e, env0.item(i), out=e)
                if clip:
                    np.minimum(np.maximum(e, 0.0, out=e), 1.0, out=e)
                if rel is not None and negk.item(i) < 0.0:
                    np.add(self._arf[:f], rel.item(i), out=g)
                    if ahead:
                        np.maximum(g, 0.0, out=g)
                    np.multiply(g, negk.item(i), out=g)
                    np.multiply(e, self._exp32(g, self._fr[:f], self._s1[:f]), out=e)
                row = ww[rr.item(i)]
                np.multiply(row, e, out=row)
        else:
            env = self._e[:k * f].reshape(k, f)
            ip = self._in_place
            np.copyto(env, self._arf[:f])
            ip(np.add, env, self._spread(base, k, f))
            ip(np.multiply, env, self._spread(slope, k, f))
            ip(np.add, env, self._spread(env0, k, f))
            if clip:
                ip(np.maximum, env, 0.0)       # np.clip's values, at less cost
                ip(np.minimum, env, 1.0)
            if rel is not None:
                g = self._p[:k * f].reshape(k, f)
                np.copyto(g, self._arf[:f])
                ip(np.add, g, self._spread(rel, k, f))
                if ahead:
                    ip(np.maximum, g, 0.0)
                ip(np.multiply, g, self._spread(negk, k, f))
                fac = self._exp32(g, self._fr[:k * f].reshape(k, f), self._s1[:k * f].reshape(k, f))
                ip(np.multiply, env, fac)
            self._env_rows(ww, rr, env, f)
        if rel is not None:
            self._end_releases(t, oe, rr, ww, f)

    def _tabled(self, oe: np.ndarray, k: int) -> bool:
        """Whether voices `oe` are all releases at a constant level whose factor has a table: no
        linear ramp (slope 0), and each one's decay that of its preset's table (`set_release_table`).
        Leaves their presets in `_ni[2]` and decays in `_nf[4]`."""
        if not len(self._rt_k):
            return False
        fv, iv, bv = self._nf, self._ni, self._nb
        slope = self.slope.take(oe, out=fv[1, :k], mode="clip")
        if slope.item(slope.argmin()) != 0.0 or slope.item(slope.argmax()) != 0.0:
            return False
        kd = self.decay.take(oe, out=fv[4, :k], mode="clip")
        pk = self._rt_k.take(self.preset.take(oe, out=iv[2, :k], mode="clip"), out=fv[5, :k], mode="clip")
        return not np.count_nonzero(np.not_equal(kd, pk, out=bv[0, :k]))

    def _tabled_releases(self, t: int, oe: np.ndarray, rr: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Rows `rr` of ww (voices `oe`, `_tabled`) times env0 · exp(−decay · max(0, t + n − rel_t)),
        read from their tables: the values `_apply_envelopes` would compute, at a third of the passes."""
        k = len(oe)
        fv, iv = self._nf, self._ni
        offs = self._rt_o.take(iv[2, :k], out=iv[3, :k], mode="clip")
        last = self._rt_m.take(iv[2, :k], out=iv[4, :k], mode="clip")
        u0 = np.subtract(t, self.rel_t.take(oe, out=iv[1, :k], mode="clip"), out=iv[2, :k])
        # u = t - rel_t: below 0 (a release later in this render call, perhaps beyond this mix) the
        # table's lead of ones, at most max_frames of them: further ahead is ones all the same. A
        # live voice's u stays under its span (it is freed there): the clamp only keeps reads inside.
        ahead = np.maximum(u0, -self.max_frames, out=iv[1, :k])
        start = np.minimum(np.add(offs, ahead, out=iv[2, :k]), last, out=iv[1, :k])
        env0 = self.env0.take(oe, out=fv[2, :k], mode="clip")
        rt = self._rt
        if f >= ROW_COPY_FRAMES:
            e = self._e[:f]
            for i in range(k):
                a = start.item(i)
                np.multiply(rt[a:a + f], env0.item(i), out=e)
                row = ww[rr.item(i)]
                np.multiply(row, e, out=row)
            return
        idx = self._i[:k * f].reshape(k, f)
        np.copyto(idx, self._ar[:f])
        self._in_place(np.add, idx, self._spread(start, k, f))
        env = self._e[:k * f].reshape(k, f)
        rt.take(idx, out=env, mode="clip")
        self._in_place(np.multiply, env, self._spread(env0, k, f))
        self._env_rows(ww, rr, env, f)

    @staticmethod
    def _exp32(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """exp(x) in place of float64 `x`, computed in float32 (`a`, `b`: work arrays of x's shape):
        numpy's float32 exp runs in SIMD, 2.5x faster than its float64 one here, and a release's factor
        needs no more than float32's precision (the notes are float32). The same values wherever an
        element sits in the array."""
        np.copyto(a, x, casting="same_kind")
        np.copyto(x, np.exp(a, out=b))
        return x

    def _end_releases(self, t: int, oe: np.ndarray, rr: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Rows `rr` of ww (voices `oe`) that end inside this block are silent from their end on, as
        they are once freed: a release's exp never reaches 0 by itself (a ramp or a note end does)."""
        k = len(oe)
        iv = self._ni
        left = np.subtract(self.end_t.take(oe, out=iv[1, :k], mode="clip"), t, out=iv[2, :k])
        if left.item(left.argmin()) < f:
            ending = self._nonzero(np.less(left, f, out=self._nb[0, :k]), iv[3])
            for j in range(len(ending)):
                i = ending.item(j)
                ww[rr.item(i), max(0, left.item(i)):] = 0.0

    def _env_rows(self, ww: np.ndarray, rr: np.ndarray, env: np.ndarray, f: int) -> None:
        """ww[rr] *= env, in place: one slice when the rows are consecutive, else run by run of
        consecutive rows (~2 us of calls each), else, with many runs, every row times a gathered
        [voices, frames] envelope that is 1.0 for the constant rows (x * 1.0 is x; ~0.5 ns a sample)."""
        k = len(rr)
        a, b = rr.item(0), rr.item(k - 1)
        if b - a + 1 == k:
            self._in_place(np.multiply, ww[a:b + 1], env)
            return
        iv, bv = self._ni, self._nb
        brk = np.not_equal(np.subtract(rr[1:], rr[:-1], out=iv[1, :k - 1]), 1, out=bv[0, :k - 1])
        nv = len(ww)
        if (int(np.count_nonzero(brk)) + 1) * 4096 <= nv * f:
            cut = self._nonzero(brk, iv[2])      # run i + 1 starts at rr[cut[i] + 1]
            s = 0
            for j in range(len(cut) + 1):
                e = cut.item(j) + 1 if j < len(cut) else k
                r = rr.item(s)
                np.multiply(ww[r:r + e - s], env[s:e], out=ww[r:r + e - s])
                s = e
            return
        pool = self._e[:(k + 1) * f].reshape(k + 1, f)
        pool[k] = 1.0
        sel = iv[3, :nv]
        sel.fill(k)
        sel[rr] = self._ar[:k]
        full = self._x[:nv * f].reshape(nv, f)
        pool.take(sel, axis=0, out=full, mode="clip")
        np.multiply(ww, full, out=ww)

    def _mix_slow(self, t: int, rows: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Samples of voices `rows` for frames [t, t + f) into ww float64[len(rows), f], interpolated.

        Integer sample counts are exact in float64, so pos = seg_pos + rate * n is computed the same
        way whatever the block boundaries. Casts between int and float are numpy's slowest loops,
        hence only one (the final index).
        """
        nv = len(rows)
        n = nv * f
        fv, iv, bv = self._gf, self._gi, self._gb
        pp = self._p[:n].reshape(nv, f)
        base = self._since(self.seg_t, rows, t, fv[0, :nv], fv[1, :nv], iv[0, :nv])
        ip = self._in_place
        np.copyto(pp, self._arf[:f])
        ip(np.add, pp, self._spread(base, nv, f))
        ip(np.multiply, pp, self._spread(self.rate.take(rows, out=fv[1, :nv], mode="clip"), nv, f))
        ip(np.add, pp, self._spread(self.seg_pos.take(rows, out=fv[1, :nv], mode="clip"), nv, f))
        loop_e = self.loop_e.take(rows, out=fv[2, :nv], mode="clip")
        if loop_e.item(loop_e.argmin()) < math.inf:
            ls = self.loop_s.take(rows, out=fv[3, :nv], mode="clip")
            np.subtract(pp, self._spread(ls, nv, f), out=ww)
            ip(np.fmod, ww, self._spread(np.subtract(loop_e, ls, out=fv[4, :nv]), nv, f))
            ip(np.add, ww, self._spread(ls, nv, f))
            past = np.greater_equal(pp, self._spread(loop_e, nv, f), out=self._m[:n].reshape(nv, f))
            np.copyto(pp, ww, where=past)
        np.floor(pp, out=ww)
        fr = self._fr[:n].reshape(nv, f)
        np.copyto(fr, np.subtract(pp, ww, out=self._x[:n].reshape(nv, f)), casting="same_kind")
        # Past its slot's last sample a voice reads the zero guard. Positions only grow inside a block,
        # so only rows whose last index is past it need the (per-sample) clamp.
        top = self.slot_len - 2
        over = np.greater(ww[:, f - 1], top, out=bv[0, :nv])
        if np.count_nonzero(over):
            late = self._nonzero(over, iv[3])
            for i in range(len(late)):
                r = late.item(i)
                np.minimum(ww[r], top, out=ww[r])
        ii = self._i[:n].reshape(nv, f)
        np.copyto(ii, ww, casting="unsafe")
        ip(np.add, ii, self._spread(self.off.take(rows, out=iv[1, :nv], mode="clip"), nv, f))
        s0 = self._s0[:n].reshape(nv, f)
        s1 = self._s1[:n].reshape(nv, f)
        self.bank.take(ii, out=s0, mode="clip")
        ip(np.add, ii, 1)
        self.bank.take(ii, out=s1, mode="clip")
        ip(np.subtract, s1, s0)
        ip(np.multiply, s1, fr)
        ip(np.add, s1, s0)
        np.copyto(ww, s1)                       # the float32 sum, widened: as before
