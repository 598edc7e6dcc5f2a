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


class VoiceBank:
    """`capacity` voice rows mixing from `bank` (flat float32, notes in slots of `slot_len`).

    Frames per `mix` call are at most `max_frames`.
    """

    def __init__(self, capacity: int, bank: np.ndarray, slot_len: int, max_frames: int):
        self.capacity = n = int(capacity)
        self.bank = bank
        self.slot_len = int(slot_len)
        self.max_frames = int(max_frames)
        self.active = np.zeros(n, bool)
        self.ghost = np.zeros(n, bool)        # fading out after a steal / crossfade; not a playing note
        self.held = np.zeros(n, bool)         # key down
        self.sustained = np.zeros(n, bool)    # key up, held by the sustain pedal
        self.released = np.zeros(n, bool)     # in its release envelope
        self.chan = np.zeros(n, np.int64)
        self.note = np.zeros(n, np.int64)
        self.preset = np.zeros(n, np.int64)
        self.order = np.zeros(n, np.int64)    # start serial: smaller is older
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
        size = n * self.max_frames
        self._i = np.empty(size, np.int64)
        self._p = np.empty(size, np.float64)
        self._w = np.empty(size, np.float64)
        self._s0 = np.empty(size, np.float32)
        self._s1 = np.empty(size, np.float32)
        self._o = np.empty((2, self.max_frames), np.float64)
        self._ar = np.arange(self.max_frames, dtype=np.int64)

    # ---- per-voice state (called at event times) -----------------------------------------------
    def pos_at(self, v: int, t: int) -> float:
        """Read position of voice `v` at time `t`, wrapped into its loop."""
        p = self.seg_pos[v] + self.rate[v] * float(t - self.seg_t[v])
        le = self.loop_e[v]
        if p >= le:
            ls = self.loop_s[v]
            p = ls + math.fmod(p - ls, le - ls)
        return float(p)

    def env_at(self, v: int, t: int) -> float:
        return float(min(1.0, max(0.0, self.env0[v] + self.slope[v] * float(t - self.env_t[v]))))

    def _end_of_note(self, v: int) -> int:
        if math.isfinite(self.loop_e[v]):
            return NEVER
        remaining = self.length[v] - self.seg_pos[v]
        return int(self.seg_t[v] + max(0, math.ceil(remaining / self.rate[v])))

    def _env_end(self, v: int) -> int:
        s = self.slope[v]
        if s >= 0:
            return NEVER if self.env0[v] > 0 or s > 0 else int(self.env_t[v])
        return int(self.env_t[v] + math.ceil(self.env0[v] / -s))

    def _update_end(self, v: int) -> None:
        self.end_t[v] = min(self._end_of_note(v), self._env_end(v))

    def start(self, v: int, t: int, entry, chan: int, note: int, preset: int, base_rate: float, bend: float,
              gain_l: float, gain_r: float, pos: float = 0.0, env0: float = 1.0, slope: float = 0.0) -> None:
        """Start voice row `v` at time `t` playing cache `entry` (acquired by the caller)."""
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
        self._update_end(v)

    def set_bend(self, v: int, t: int, bend: float) -> None:
        """New pitch-bend factor for voice `v` from time `t` on (a new position segment)."""
        p = self.pos_at(v, t)
        self.seg_pos[v] = p
        self.seg_t[v] = t
        self.rate[v] = self.base_rate[v] * bend
        self._update_end(v)

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
        self.ramp(v, t, seconds, sample_rate)

    def fade_out(self, v: int, t: int, seconds: float, sample_rate: int) -> None:
        """Turn `v` into a ghost that fades out quickly (steals, all-sound-off, crossfades)."""
        self.ghost[v] = True
        self.held[v] = False
        self.sustained[v] = False
        self.released[v] = True
        self.ramp(v, t, seconds, sample_rate)

    def dead(self, t: int) -> np.ndarray:
        """Indices of active voices that are silent for good at time `t`."""
        return np.flatnonzero(self.active & (self.end_t <= t))

    # ---- mixing ---------------------------------------------------------------------------------
    def mix(self, t: int, out: np.ndarray) -> None:
        """Mix all active voices for frames [t, t + F) into `out` float32[F, 2] (overwritten)."""
        f = out.shape[0]
        idx = np.flatnonzero(self.active)
        nv = len(idx)
        if nv == 0:
            out[:] = 0.0
            return
        n = nv * f
        ar = self._ar[None, :f]
        ii = self._i[:n].reshape(nv, f)
        pp = self._p[:n].reshape(nv, f)
        ww = self._w[:n].reshape(nv, f)
        s0 = self._s0[:n].reshape(nv, f)
        rate = self.rate[idx]
        seg_pos = self.seg_pos[idx]
        loop_e = self.loop_e[idx]
        looped = np.isfinite(loop_e)
        any_loop = bool(looped.any())
        limit = self.slot_len - 2
        np.add((t - self.seg_t[idx])[:, None], ar, out=ii)
        if np.all(rate == 1.0) and np.all(seg_pos == np.floor(seg_pos)):
            # Common case offline: no bend or transposition, so positions are integers.
            ii += seg_pos.astype(np.int64)[:, None]
            if any_loop:
                ls = self.loop_s[idx].astype(np.int64)
                le = np.where(looped, loop_e, 0).astype(np.int64)
                span = np.maximum(le - ls, 1)[:, None]
                wrapped = ls[:, None] + np.mod(ii - ls[:, None], span)
                np.copyto(ii, wrapped, where=looped[:, None] & (ii >= le[:, None]))
            np.minimum(ii, limit, out=ii)
            ii += self.off[idx][:, None]
            np.take(self.bank, ii, out=s0, mode="clip")
            np.copyto(ww, s0)
        else:
            np.multiply(ii, rate[:, None], out=pp)
            pp += seg_pos[:, None]
            if any_loop:
                ls = self.loop_s[idx][:, None]
                np.subtract(pp, ls, out=ww)
                np.fmod(ww, (loop_e[:, None] - ls), out=ww)
                ww += ls
                np.copyto(pp, ww, where=pp >= loop_e[:, None])
            np.floor(pp, out=ww)
            np.copyto(ii, ww, casting="unsafe")
            pp -= ww                                  # fractional part
            np.minimum(ii, limit, out=ii)
            ii += self.off[idx][:, None]
            s1 = self._s1[:n].reshape(nv, f)
            np.take(self.bank, ii, out=s0, mode="clip")
            ii += 1
            np.take(self.bank, ii, out=s1, mode="clip")
            np.subtract(s1, s0, out=ww)
            ww *= pp
            ww += s0
        slope = self.slope[idx]
        env0 = self.env0[idx]
        gain = self.gain[:, idx]
        if np.any(slope != 0.0):
            np.add((t - self.env_t[idx])[:, None], ar, out=ii)
            np.multiply(ii, slope[:, None], out=pp)
            pp += env0[:, None]
            np.clip(pp, 0.0, 1.0, out=pp)
            ww *= pp
        else:
            gain = gain * np.clip(env0, 0.0, 1.0)
        o = self._o[:, :f]
        np.matmul(gain, ww, out=o)
        out[:] = o.T
