"""Voices as arrays (one row per voice) and the vectorised mixer.

Every quantity a voice plays is a pure function of absolute sample time `t` and the voice's current
segment, set at event times only:

    read position  pos(t) = seg_pos + rate · (t − seg_t)       (wrapped into the loop, if any)
    envelope       env(t) = clip(env0 + slope · (t − env_t), 0, 1)

so the output does not depend on how the timeline is cut into blocks. A block is mixed with one
gather of [voices, frames] from the cache's flat note bank (two, with linear interpolation, when a
voice is pitch-bent or transposed) and one matrix product with the per-voice [2] gains, in float64.
No Python loop runs per sample or per voice while mixing.

The arrays and work buffers are allocated once; mixing allocates only a few [voices]-sized arrays.
"""

from __future__ import annotations

import math

import numpy as np

NEVER = np.iinfo(np.int64).max // 4
_EMPTY = np.zeros(0, np.int64)
_SUSTAINED = 1 << 44      # steal-priority tiers above the start serial
_HELD = 2 << 44


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
        # Row r of this view is bank[r : r + max_frames]: a voice reading straight ahead (no bend, no
        # loop seam) is one row, so a block of such voices is a single fancy-indexed row copy.
        self._win = np.lib.stride_tricks.as_strided(bank, shape=(len(bank) - self.max_frames + 1, self.max_frames),
                                                    strides=(bank.itemsize, bank.itemsize), writeable=False)
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
        self.end_t = np.zeros(n, np.int64)
        self.gain = np.zeros((2, n), np.float64)
        self._serial = 0
        self.next_end = NEVER   # no active voice ends before this time (a lower bound)
        self.n_live = 0         # active voices that are not ghosts
        self.latest_start = 0   # the latest start time given to `start` (a voice may start ahead)
        self._set_gen = 0       # bumped when a voice starts or stops: the mix's start order is cached
        self._sorted = (-1, _EMPTY)
        self._free = list(range(n - 1, -1, -1))   # free rows, lowest on top
        size = self.budget
        self._i = np.empty(size, np.int64)
        self._p = np.empty(size, np.float64)
        self._w = np.empty(size, np.float64)
        self._s0 = np.empty(size, np.float32)
        self._s1 = np.empty(size, np.float32)
        self._fr = np.empty(size, np.float32)
        self._o = np.empty((2, self.max_frames), np.float64)
        # Touch every page of the work buffers now: the first mix with many voices would otherwise
        # fault them in on the audio thread (measured: 6.5 ms of CPU for the first 320-voice
        # 512-frame mix against 1.6 ms for the next; a 154% callback in a 60-s bench session).
        for b in (self._i, self._p, self._w, self._s0, self._s1, self._fr, self._o):
            b.fill(0)
        self._ar = np.arange(self.max_frames, dtype=np.int64)
        self._arf = np.arange(self.max_frames, dtype=np.float64)

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
        return min(1.0, max(0.0, self.env0.item(v) + self.slope.item(v) * float(t - self.env_t.item(v))))

    def _end_of_note(self, v: int) -> int:
        # .item() reads Python scalars: numpy scalar arithmetic costs ~10x more per operation.
        if self.loop_e.item(v) != math.inf:
            return NEVER
        remaining = self.length.item(v) - self.seg_pos.item(v)
        return self.seg_t.item(v) + max(0, math.ceil(remaining / self.rate.item(v)))

    def _env_end(self, v: int) -> int:
        s = self.slope.item(v)
        if s >= 0:
            return NEVER if self.env0.item(v) > 0 or s > 0 else self.env_t.item(v)
        return self.env_t.item(v) + math.ceil(self.env0.item(v) / -s)

    def _update_end(self, v: int) -> None:
        end = min(self._end_of_note(v), self._env_end(v))
        self.end_t[v] = end
        if end < self.next_end:
            self.next_end = end

    def _update_end_rows(self, rows: np.ndarray) -> None:
        """`_update_end` for many rows at once, from their current segment and envelope arrays (the
        same arithmetic; integer times stay int64, since NEVER is not exact as a float)."""
        end = np.full(len(rows), NEVER, np.int64)
        one = self.loop_e[rows] == np.inf
        if one.any():
            r = rows[one]
            rem = self.length[r] - self.seg_pos[r]
            end[one] = self.seg_t[r] + np.maximum(0.0, np.ceil(rem / self.rate[r])).astype(np.int64)
        s, e0, et = self.slope[rows], self.env0[rows], self.env_t[rows]
        down = s < 0
        if down.any():
            end[down] = np.minimum(end[down], et[down] + np.ceil(e0[down] / -s[down]).astype(np.int64))
        zero = (s == 0) & (e0 <= 0)
        if zero.any():
            end[zero] = np.minimum(end[zero], et[zero])
        self.end_t[rows] = end
        self.next_end = min(self.next_end, int(end.min()))

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

    def set_bend(self, v: int, t: int, bend: float) -> None:
        """New pitch-bend factor for voice `v` from time `t` on (a new position segment)."""
        p = self.pos_at(v, t)
        self.seg_pos[v] = p
        self.seg_t[v] = t
        self.rate[v] = self.base_rate[v] * bend
        self._update_end(v)

    def set_bend_rows(self, rows: np.ndarray, t: int, bend: float) -> None:
        """`set_bend` for many rows at once (a bend moves every voice of its channel): the same
        arithmetic, vectorised, so the positions match the one-row path exactly."""
        if len(rows) == 0:
            return
        p = self.seg_pos[rows] + self.rate[rows] * (t - self.seg_t[rows]).astype(np.float64)
        le = self.loop_e[rows]
        wrap = p >= le
        if wrap.any():
            ls = self.loop_s[rows]
            p = np.where(wrap, ls + np.fmod(p - ls, np.where(wrap, le - ls, 1.0)), p)
        rate = self.base_rate[rows] * bend
        self.seg_pos[rows] = p
        self.seg_t[rows] = t
        self.rate[rows] = rate
        self._update_end_rows(rows)

    def ramp(self, v: int, t: int, seconds_to_zero: float, sample_rate: int) -> None:
        """Fade voice `v` linearly from its current level at time `t` (full scale per `seconds_to_zero`)."""
        e = self.env_at(v, t)
        self.env0[v] = e
        self.env_t[v] = t
        self.slope[v] = -1.0 / max(1.0, seconds_to_zero * sample_rate)
        self._update_end(v)

    def release(self, v: int, t: int, seconds: float, sample_rate: int) -> None:
        self.held[v] = False
        self.sustained[v] = False
        self.released[v] = True
        if not self.ghost[v]:
            self.steal_key[v] = self.order[v]
        self.ramp(v, t, seconds, sample_rate)

    def release_rows(self, rows: np.ndarray, t: int, seconds: np.ndarray, sample_rate: int) -> None:
        """`release` for many rows at once (pedal up, all-notes-off over a held cluster): the same
        arithmetic, vectorised; `seconds` gives each row's release time."""
        if len(rows) == 0:
            return
        self.held[rows] = False
        self.sustained[rows] = False
        self.released[rows] = True
        live = rows[~self.ghost[rows]]
        self.steal_key[live] = self.order[live]
        e = np.clip(self.env0[rows] + self.slope[rows] * (t - self.env_t[rows]).astype(np.float64), 0.0, 1.0)
        self.env0[rows] = e
        self.env_t[rows] = t
        self.slope[rows] = -1.0 / np.maximum(1.0, np.asarray(seconds, np.float64) * sample_rate)
        self._update_end_rows(rows)

    def sustain(self, v: int) -> None:
        """Key up with the pedal down: voice `v` keeps playing, held by the pedal."""
        self.held[v] = False
        self.sustained[v] = True
        if not self.ghost[v] and not self.released[v]:
            self.steal_key[v] = _SUSTAINED + self.order[v]

    def oldest_ghost(self) -> int:
        """The oldest fading ghost (only meaningful when one exists)."""
        return int(self.ghost_key.argmin())   # the method skips np.argmin's Python wrapper

    def victim(self) -> int:
        """The voice to steal: a released one first, then a sustained one, then the oldest held one."""
        return int(self.steal_key.argmin())

    def fade_out(self, v: int, t: int, seconds: float, sample_rate: int) -> None:
        """Turn `v` into a ghost that fades out quickly (steals, all-sound-off, crossfades)."""
        if not self.ghost[v]:
            self.n_live -= 1
        self.ghost[v] = True
        self.steal_key[v] = NEVER
        self.ghost_key[v] = self.order[v]
        self.held[v] = False
        self.sustained[v] = False
        self.released[v] = True
        self.ramp(v, t, seconds, sample_rate)

    def fade_out_rows(self, rows: np.ndarray, t: int, seconds: float, sample_rate: int) -> None:
        """`fade_out` for many rows at once (all-sound-off, panic): the same arithmetic, vectorised."""
        if len(rows) == 0:
            return
        self.n_live -= int(np.count_nonzero(~self.ghost[rows]))
        e = np.clip(self.env0[rows] + self.slope[rows] * (t - self.env_t[rows]).astype(np.float64), 0.0, 1.0)
        slope = -1.0 / max(1.0, seconds * sample_rate)
        self.ghost[rows] = True
        self.steal_key[rows] = NEVER
        self.ghost_key[rows] = self.order[rows]
        self.held[rows] = False
        self.sustained[rows] = False
        self.released[rows] = True
        self.env0[rows] = e
        self.env_t[rows] = t
        self.slope[rows] = slope
        self._update_end_rows(rows)

    def take_row(self) -> int | None:
        """A free row for `start`, or None when every row is busy."""
        return self._free.pop() if self._free else None

    def free_row(self, v: int) -> None:
        """Stop voice `v` at once and return its row (the caller releases its cache slot)."""
        if not self.ghost[v]:
            self.n_live -= 1
        self.active[v] = False
        self.steal_key[v] = NEVER
        self.ghost_key[v] = NEVER
        self.slot[v] = -1
        self._free.append(v)
        self._set_gen += 1

    def free_rows(self, rows: np.ndarray) -> None:
        """`free_row` for many rows at once, in order (a 256-voice cluster ending in one block)."""
        if len(rows) == 0:
            return
        self.n_live -= int(np.count_nonzero(~self.ghost[rows]))
        self.active[rows] = False
        self.steal_key[rows] = NEVER
        self.ghost_key[rows] = NEVER
        self.slot[rows] = -1
        self._free.extend(rows.tolist())
        self._set_gen += 1

    def frames_for(self, voices: int) -> int:
        """Frames one `mix` call may cover with `voices` active voices."""
        return max(1, min(self.max_frames, self.budget // max(1, voices)))

    def dead(self, t: int) -> np.ndarray:
        """Indices of active voices that are silent for good at time `t` (updates `next_end`)."""
        if t < self.next_end:
            return _EMPTY
        gone = np.flatnonzero(self.active & (self.end_t <= t))
        still = self.end_t[self.active & (self.end_t > t)]
        self.next_end = int(still.min()) if len(still) else NEVER
        return gone

    # ---- mixing ---------------------------------------------------------------------------------
    def mix(self, t: int, out: np.ndarray) -> None:
        """Mix all active voices for frames [t, t + F) into `out` float32[F, 2] (overwritten).

        F <= frames_for(active voices). Voices reading straight ahead are copied as rows of the
        bank; the others (bent, transposed, crossing a loop seam) get an index per sample and linear
        interpolation. Both give the same samples for a voice that qualifies for either.

        A voice whose start time `seg_t` is after `t` (started ahead by the engine, at a frame later
        in the block) is silent until then. The voices are summed in start order (`order`), whatever
        their rows or envelopes: a voice started ahead, or released ahead, adds exact zeros or the
        same samples at the same place in the sum as it would from a mix cut at its frame, so the
        output does not depend on where the engine cut.
        """
        f = out.shape[0]
        gen, idx = self._sorted
        if gen != self._set_gen:
            idx = np.flatnonzero(self.active)
            if len(idx) > 1:
                idx = idx[self.order[idx].argsort()]
            self._sorted = (self._set_gen, idx)
        nv = len(idx)
        if nv == 0:
            out[:] = 0.0
            return
        rate = self.rate[idx]
        loop_e = self.loop_e[idx]
        p0 = self.seg_pos[idx] + rate * (t - self.seg_t[idx])
        looped = p0 >= loop_e
        if looped.any():
            ls = self.loop_s[idx]
            p0 = np.where(looped, ls + np.fmod(p0 - ls, loop_e - ls), p0)
        simple = (rate == 1.0) & (p0 == np.floor(p0)) & (p0 + f <= loop_e)
        ramp = self.slope[idx] != 0.0
        # Rows of ww: the straight-ahead voices, then the interpolated ones, each in start order.
        if simple.all():
            fast, slow, order, ramp_o = idx, _EMPTY, idx, ramp
        else:
            fast, slow = idx[simple], idx[~simple]
            order = np.concatenate((fast, slow))
            ramp_o = np.concatenate((ramp[simple], ramp[~simple]))
        nf = len(fast)
        n = nv * f
        ww = self._w[:n].reshape(nv, f)
        rr = np.flatnonzero(ramp_o)            # rows with an envelope ramp (fast ones first)
        k = len(rr)
        kf = int(np.count_nonzero(rr < nf))
        # Ramping fast rows spread between constant ones (a released voice sits in start order), in
        # more runs than `_env_rows` multiplies one by one: they are gathered apart and scattered
        # into place once multiplied by their envelope, which costs what one contiguous range of
        # them would (a fancy-indexed multiply in place takes 2x).
        cut = (np.flatnonzero(np.diff(rr) != 1) + 1).tolist() if k > 1 and int(rr[-1]) - int(rr[0]) + 1 != k else []
        split = False
        if 0 < kf < nf and cut and cut[0] < kf:
            split = (1 + sum(1 for c in cut if c < kf)) * 4096 > kf * f
        rows_r = None
        if nf:
            start = p0[simple].astype(np.int64) if len(slow) else p0.astype(np.int64)
            offs = self.off[fast]
            src = offs + start
            if split:
                cf = np.flatnonzero(~ramp_o[:nf])
                rows = self._win[src[cf], :f]
                self._fix_rows(rows, start[cf], offs[cf], f)
                ww[cf] = rows
                rf = rr[:kf]
                rows_r = self._win[src[rf], :f]
                self._fix_rows(rows_r, start[rf], offs[rf], f)
            else:
                rows = self._win[src, :f]
                self._fix_rows(rows, start, offs, f)
                np.copyto(ww[:nf], rows)
        if len(slow):
            self._mix_slow(t, slow, ww[nf:], f)
        # env0 is always within [0, 1]; a voice without a ramp has a constant envelope, folded into its gains.
        gain = self.gain[:, order] * self.env0[order]
        if k:
            oe = order[rr]
            # float(t - env_t + n) is exact (integers < 2**53), as the int64 sum it replaces was.
            env = self._p[:k * f].reshape(k, f)
            np.add((t - self.env_t[oe]).astype(np.float64)[:, None], self._arf[None, :f], out=env)
            env *= self.slope[oe][:, None]
            env += self.env0[oe][:, None]
            ends = env[:, ::f - 1] if f > 1 else env
            if ends[:, 0].max() >= 1.0:
                # A ramp up (a crossfade in) that has reached full level stays there: from now on the
                # voice is constant, and costs no envelope (the same samples: x * 1.0 is x).
                full = oe[(ends[:, 0] >= 1.0) & (self.slope[oe] > 0.0)]
                if len(full):
                    self.env0[full] = 1.0
                    self.slope[full] = 0.0
                    self.env_t[full] = t
            if ends.min() < 0.0 or ends.max() > 1.0:
                # A ramp is linear, so its ends bound it: clip only when one leaves [0, 1].
                np.clip(env, 0.0, 1.0, out=env)
            if rows_r is not None:
                np.multiply(rows_r, env[:kf], out=env[:kf])
                ww[rr[:kf]] = env[:kf]
                self._env_rows(ww, rr[kf:], env[kf:], f)
            else:
                self._env_rows(ww, rr, env, f, cut)
            gain[:, rr] = self.gain[:, oe]
        if len(slow) and self.latest_start > t:
            # Interpolated voices started ahead are silent until their frame (the straight-ahead
            # ones were made so in `_fix_rows`).
            lead = self.seg_t[slow] - t
            for r in np.flatnonzero(lead > 0).tolist():
                ww[nf + r, :min(f, int(lead[r]))] = 0.0
        o = self._o[:, :f]
        np.matmul(gain, ww, out=o)
        # One channel at a time: the same values as out[:] = o.T, in a seventh of the time.
        out[:, 0] = o[0]
        out[:, 1] = o[1]

    def _fix_rows(self, rows: np.ndarray, start: np.ndarray, offs: np.ndarray, f: int) -> None:
        """Straight-ahead rows just gathered from the bank window, fixed where the window is wrong:
        a voice started ahead (start < 0: the engine starts voices ahead only at position 0) is
        silent until its frame, then reads its slot from the beginning; a note running off its slot
        in this block reads zeros, not the next slot."""
        if not len(start):
            return
        if start.min() < 0:
            for r in np.flatnonzero(start < 0).tolist():
                s = min(f, -int(start[r]))
                rows[r, :s] = 0.0
                rows[r, s:] = self.bank[int(offs[r]):int(offs[r]) + f - s]
        if start.max() + f > self.slot_len:
            for r in np.flatnonzero(start + f > self.slot_len).tolist():
                rows[r, max(0, self.slot_len - int(start[r])):] = 0.0

    @staticmethod
    def _env_rows(ww: np.ndarray, rr: np.ndarray, env: np.ndarray, f: int, cut: list | None = None) -> None:
        """ww[rr] *= env, in place: one slice when the rows are consecutive, else runs of consecutive
        rows when they are long enough (each costs ~1.5 us of calls), else a fancy-indexed multiply.
        `cut`: where runs of rr start (not counting 0), when the caller knows."""
        k = len(rr)
        if not k:
            return
        if int(rr[-1]) - int(rr[0]) + 1 == k:
            ww[int(rr[0]):int(rr[-1]) + 1] *= env
            return
        if cut is None:
            cut = (np.flatnonzero(np.diff(rr) != 1) + 1).tolist()
        if (len(cut) + 1) * 4096 <= k * f:
            for a, b in zip([0, *cut], [*cut, k], strict=True):
                r = int(rr[a])
                ww[r:r + b - a] *= env[a:b]
        else:
            ww[rr] *= env

    def _mix_slow(self, t: int, rows: np.ndarray, ww: np.ndarray, f: int) -> None:
        """Samples of voices `rows` for frames [t, t + f) into ww float64[len(rows), f], interpolated.

        Integer sample counts are exact in float64, so pos = seg_pos + rate * n is computed the same
        way whatever the block boundaries. Casts between int and float are numpy's slowest loops,
        hence only one (the final index).
        """
        nv = len(rows)
        n = nv * f
        ii = self._i[:n].reshape(nv, f)
        pp = self._p[:n].reshape(nv, f)
        s0 = self._s0[:n].reshape(nv, f)
        s1 = self._s1[:n].reshape(nv, f)
        np.add((t - self.seg_t[rows]).astype(np.float64)[:, None], self._arf[None, :f], out=pp)
        pp *= self.rate[rows][:, None]
        pp += self.seg_pos[rows][:, None]
        loop_e = self.loop_e[rows]
        if np.isfinite(loop_e).any():
            ls = self.loop_s[rows][:, None]
            np.subtract(pp, ls, out=ww)
            np.fmod(ww, loop_e[:, None] - ls, out=ww)
            ww += ls
            np.copyto(pp, ww, where=pp >= loop_e[:, None])
        np.floor(pp, out=ww)
        fr = self._fr[:n].reshape(nv, f)
        np.subtract(pp, ww, out=fr, casting="same_kind")   # fractional part, float32 like the samples
        # Past its slot's last sample a voice reads the zero guard. Positions only grow inside a block,
        # so only rows whose last index is past it need the (per-sample) clamp.
        top = self.slot_len - 2
        for r in np.flatnonzero(ww[:, f - 1] > top):
            np.minimum(ww[r], top, out=ww[r])
        np.copyto(ii, ww, casting="unsafe")
        ii += self.off[rows][:, None]
        np.take(self.bank, ii, out=s0, mode="clip")
        ii += 1
        np.take(self.bank, ii, out=s1, mode="clip")
        s1 -= s0
        s1 *= fr
        np.add(s1, s0, out=ww)
