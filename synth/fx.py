"""Effects bus: a CC-controlled low-pass filter, chorus and reverb, run by pyo in-process.

pyo runs as a `Server(audio='manual')`: no audio device and no thread of its own. Each internal
chunk is written straight into the server's input buffer (`getInputAddr()`), `process()` computes
one buffer, and the result is read from `getOutputAddr()`; both buffers are interleaved
float32[chunk, 2] views made once, so `process` allocates nothing.

Block-size independence: callers hand over blocks of any length (1 frame or 8193). The bus feeds
pyo in fixed chunks of `chunk` frames through a FIFO, so the output never depends on the caller's
block size; the price is exactly `chunk` frames of delay, reported as `latency_samples`. CC moves
take effect at the first chunk that starts at or after their frame, also regardless of blocks.

pyo and servers: pyo 1.1 allows several servers in one process (at most 256 alive at once) and
attaches new objects to the "current" one, so each bus builds its chain under a module lock right
after `setServer()`, and a 257th open bus is refused with a clear `UserError`, as is anything that
goes wrong while creating or booting a server.

Sends, as on a GM synth: `process(block, sends)` takes the dry mix and the engine's send mix
(reverb send L/R, chorus send L/R: each voice scaled by its channel's CC91/127 and CC93/127) and
writes dry + reverb return + chorus return, then the CC filter over the whole. Both returns are
stereo (a centred mono note comes back wide). Without `sends` the bus sends the block itself at the
GM defaults (see `process`).

Everything is off by default: `EffectsBus(48000)` passes audio through untouched, has zero latency
and never imports pyo.
"""

from __future__ import annotations

import ctypes
import math
import os
import threading

import numpy as np

from synth.errors import UserError

FX_NAMES = ("filter", "chorus", "reverb")
DEFAULTS = {"filter": 1.0, "chorus": 0.5, "reverb": 0.3}
MAX_SERVERS = 256  # pyo's compile-time limit on servers alive at once in one process
GM_REVERB_SEND = 40 / 127   # CC91's GM default: the reverb send of a caller that passes no `sends`
NOSEND_CHORUS_SEND = 48 / 127  # chorus send then (GM's CC93 default is 0, which would mute --fx chorus)
# Reverb return gain per unit of `reverb`: at the default amount (0.3) and the GM default send, the
# wet signal is about 9 dB under the dry one, so a note with its tail is within ~1 dB of the dry level
# (measured by scripts/bench_fx.py; see docs/decisions-engine.md, 2026-12-05).
REVERB_RETURN_PER_AMOUNT = 3.3
REVERB_SWEEP_HZ = (0.6, 0.8)  # rates of the slow delay sweep on the reverb send, left and right
CHORUS_BASES_S = (0.012, 0.015, 0.018)  # tap delays; the right channel uses them in reverse order
CHORUS_RATES_HZ = (0.31, 0.43, 0.57)    # tap LFO rates; the right channel's LFOs lag a quarter cycle
_LOCK = threading.Lock()
_pyo = None
_live = 0  # buses holding a pyo server right now


def _import_pyo():
    """Import pyo quietly: without PYO_GUI_WX=0 it prints a wxPython notice to stdout."""
    global _pyo
    if _pyo is None:
        os.environ["PYO_GUI_WX"] = "0"
        try:
            import pyo
        except ImportError as e:
            raise UserError(f"effects need pyo, which failed to import ({e}); install it with "
                            f"`pip install pyo` or run without --fx") from None
        _pyo = pyo
    return _pyo


def cutoff_hz(value: int, sample_rate: int) -> float:
    """Filter cutoff for a CC value 0..127: exponential from 80 Hz to min(18 kHz, 0.45 * sample_rate)."""
    hi = min(18000.0, 0.45 * sample_rate)
    lo = 80.0
    return lo * (hi / lo) ** (max(0, min(127, value)) / 127.0)


class EffectsBus:
    """Stereo effects after the voice mix: filter -> chorus -> reverb, each optional.

    Args:
      sample_rate: Hz.
      reverb: reverb return level 0..1 (0 = off); the default 0.3 keeps a note's level within ~1 dB.
      chorus: chorus depth 0..5 (0 = off): the taps' delays swing by +-(1 + 2 * chorus) ms (at most 11 ms).
      filter: enable the low-pass filter whose cutoff follows CC `filter_cc`.
      filter_cc: the controller that moves the cutoff (CC 74, "brightness", by default).
      filter_value: initial CC value 0..127 (127 = fully open).
      reverb_size: room size 0..1: decay (to -40 dB) of 0.5 + 2 * size s, delay lines scaled likewise.
      chunk: frames per internal pyo buffer; also the latency in frames when any effect is on.
    """

    def __init__(self, sample_rate: int, reverb: float = 0.0, chorus: float = 0.0, filter: bool = False,
                 filter_cc: int = 74, filter_value: int = 127, reverb_size: float = 0.7, chunk: int = 64):
        if not 8000 <= int(sample_rate) <= 192000:
            raise UserError(f"effects: sample rate {sample_rate} Hz is outside 8000..192000")
        if not 0.0 <= reverb <= 1.0:
            raise UserError(f"effects: reverb amount {reverb} is outside 0..1")
        if not 0.0 <= chorus <= 5.0:
            raise UserError(f"effects: chorus depth {chorus} is outside 0..5")
        if not 0 <= filter_cc <= 127:
            raise UserError(f"effects: filter CC {filter_cc} is outside 0..127")
        if not 16 <= chunk <= 8192:
            raise UserError(f"effects: chunk {chunk} frames is outside 16..8192")
        self.sample_rate = int(sample_rate)
        self.reverb = float(reverb)
        self.chorus = float(chorus)
        self.filter = bool(filter)
        self.filter_cc = int(filter_cc)
        self.chunk = int(chunk)
        self.enabled = self.reverb > 0 or self.chorus > 0 or self.filter
        self.latency_samples = self.chunk if self.enabled else 0
        # Reverb send L, R, chorus send L, R: the columns `process(block, sends)` expects.
        self.send_channels = 4 if (self.reverb > 0 or self.chorus > 0) else 0
        self._ich = 2 + self.send_channels  # pyo input channels: dry L, R, then the sends
        self._rev_gain = np.float32(GM_REVERB_SEND)
        self._cho_gain = np.float32(NOSEND_CHORUS_SEND)
        self._pos = 0          # frames fed so far (absolute input position)
        self._k = 0            # fill level of the current chunk
        self._pending: list[tuple[int, int, int]] = []  # (absolute frame, cc, value), in arrival order
        self._server = None
        if self.enabled:
            self._build(filter_value, reverb_size)

    def _build(self, filter_value: int, reverb_size: float) -> None:
        """Boot this bus's pyo server, build the chain and map its interleaved I/O buffers."""
        global _live
        pyo = _import_pyo()
        with _LOCK:
            if _live >= MAX_SERVERS:
                raise UserError(f"effects: {_live} effects buses are open and pyo allows {MAX_SERVERS} per process; "
                                f"close() the ones you no longer use")
            try:
                s = pyo.Server(sr=self.sample_rate, nchnls=2, ichnls=self._ich, buffersize=self.chunk, duplex=1,
                               audio="manual", midi="portmidi", verbosity=0)
                s.boot()
                s.start()
                s.setServer()  # new pyo objects attach to the current server
                objs = self._chain(pyo, filter_value, reverb_size)
            except Exception as e:  # pyo raises bare Exceptions from its C layer
                raise UserError(f"effects: cannot start the pyo server ({e}); run without --fx") from None
            _live += 1
        self._server, self._objs = s, objs
        c = self.chunk
        ia, oa = int(s.getInputAddr(), 16), int(s.getOutputAddr(), 16)
        if not ia or not oa:
            raise UserError("effects: the pyo server gave no audio buffers; run without --fx")
        self._in = np.ctypeslib.as_array((ctypes.c_float * (c * self._ich)).from_address(ia)).reshape(c, self._ich)
        self._out = np.ctypeslib.as_array((ctypes.c_float * (c * 2)).from_address(oa)).reshape(c, 2)
        self._scratch = np.zeros((c, 2), np.float32)  # the no-`sends` path scales the block here
        # The server fades its master gain in over its first few milliseconds; run that ramp on
        # silence now so the first real chunk is not attenuated.
        self._in[:] = 0.0
        for _ in range(max(2, math.ceil(0.02 * self.sample_rate / self.chunk))):
            s.process()
        self._out[:] = 0.0  # the FIFO's first `chunk` output frames are the reported latency: silence

    def _chain(self, pyo, filter_value: int, reverb_size: float) -> list:
        """dry + stereo reverb(reverb send) + stereo chorus(chorus send), then the CC low-pass.

        pyo computes objects in creation order, so each is made after its inputs: no added delay.
        Returns every object, to keep them alive (and to drop them all on close).
        """
        dry = pyo.Input(chnl=[0, 1])
        objs = [dry]
        parts = [dry]
        self._cut = None
        if self.reverb > 0:
            # STRev: a stereo FDN per input, delay lengths differing between its outputs; inputs
            # placed hard left and right keep a panned voice's side. The send is first swept by a
            # slow +-3 ms delay (20-26 cents of wobble, in the wet only): a steady tone then moves across
            # the room's modes instead of sitting on one, so its level and width vary less with pitch.
            send = pyo.Input(chnl=[2, 3])
            lfo = pyo.Sine(freq=list(REVERB_SWEEP_HZ), phase=[0.0, 0.25], mul=0.003, add=0.004)
            swept = pyo.Delay(send, delay=lfo, maxdelay=0.05)
            rev = pyo.STRev(swept, inpos=[0.0, 1.0], revtime=0.5 + 2.0 * reverb_size,
                            cutoff=min(5000.0, 0.4 * self.sample_rate), bal=1.0, roomSize=0.5 + reverb_size,
                            firstRefGain=-10.0, mul=REVERB_RETURN_PER_AMOUNT * self.reverb)
            ret = pyo.Mix(rev, voices=2)
            objs += [send, lfo, swept, rev, ret]
            parts.append(ret)
        if self.chorus > 0:
            ret, made = self._chorus(pyo)
            objs += made
            parts.append(ret)
        sig = pyo.Mix(parts, voices=2) if len(parts) > 1 else dry
        if sig is not dry:
            objs.append(sig)
        if self.filter:
            self._cut = pyo.SigTo(cutoff_hz(filter_value, self.sample_rate), time=0.02)
            sig = pyo.ButLP(sig, freq=self._cut)
            objs += [self._cut, sig]
        sig.out()
        return objs

    def _chorus(self, pyo):
        """Stereo chorus: per side 3 delay taps swept by slow sine LFOs, summed at unity power.

        The right side takes the tap delays in reverse order and LFOs a quarter cycle later, so a
        centred note's left and right returns decorrelate (pyo's Chorus sweeps both sides alike).
        """
        send = pyo.Input(chnl=[4, 5])
        depth = min(0.011, 0.001 * (1.0 + 2.0 * self.chorus))
        objs, sides = [send], []
        for ch in (0, 1):
            taps = []
            for i, rate in enumerate(CHORUS_RATES_HZ):
                base = CHORUS_BASES_S[-1 - i] if ch else CHORUS_BASES_S[i]
                lfo = pyo.Sine(freq=rate, phase=(i / 3 + 0.25 * ch) % 1.0, mul=depth, add=base)
                taps.append(pyo.Delay(send[ch], delay=lfo, maxdelay=0.05, mul=3 ** -0.5))
                objs += [lfo, taps[-1]]
            sides.append(pyo.Mix(taps, voices=1))
        ret = pyo.Mix(sides, voices=2)
        return ret, objs + sides + [ret]

    def control_change(self, cc: int, value: int, frame: int = 0) -> None:
        """A controller move `frame` frames into the next `process` call (only `filter_cc` matters)."""
        if self.filter and cc == self.filter_cc:
            self._pending.append((self._pos + max(0, int(frame)), int(cc), int(value)))

    def _apply_due(self, chunk_start: int) -> None:
        if not self._pending:
            return
        keep = []
        for f, cc, v in self._pending:
            if f <= chunk_start:
                self._cut.value = cutoff_hz(v, self.sample_rate)
            else:
                keep.append((f, cc, v))
        self._pending = keep

    def process(self, block: np.ndarray, sends: np.ndarray | None = None) -> np.ndarray:
        """Apply the effects to `block` (float32[frames, 2], the dry mix, any frames >= 0) in place.

        `sends` (float32[frames, send_channels]): reverb send L, R, chorus send L, R, i.e. the voice
        mix scaled per channel by CC91/127 and CC93/127. None sends the block itself at the GM
        default reverb send (40/127) and, if the chorus is on, a chorus send of 48/127 (GM's 0 would
        mute a chorus asked for with --fx); `sends` is ignored when `send_channels` is 0. Output lags
        input by `latency_samples` frames and is the same whatever the block sizes. No allocation
        beyond the pending-CC list.
        """
        if not self.enabled:
            return block
        n = block.shape[0]
        s = self.send_channels
        if sends is not None and s and sends.shape != (n, s):
            raise ValueError(f"effects: sends has shape {sends.shape}, expected ({n}, {s})")
        i = 0
        c = self.chunk
        while i < n:
            m = min(c - self._k, n - i)
            k = self._k
            # Write the new input first, then hand back the processed frames queued at the same slots.
            self._in[k:k + m, 0:2] = block[i:i + m]
            if s and sends is None:
                # Scaled in a contiguous scratch: a ufunc writing into the strided columns would
                # allocate an iterator (~2 KB) on every call.
                tmp = self._scratch[:m]
                np.multiply(block[i:i + m], self._rev_gain, out=tmp)
                self._in[k:k + m, 2:4] = tmp
                np.multiply(block[i:i + m], self._cho_gain, out=tmp)
                self._in[k:k + m, 4:6] = tmp
            elif s:
                self._in[k:k + m, 2:6] = sends[i:i + m]
            block[i:i + m] = self._out[k:k + m]
            self._k += m
            i += m
            if self._k == c:
                self._apply_due(self._pos + i - c)
                self._server.process()
                self._k = 0
        self._pos += n
        return block

    def reset(self) -> None:
        """Drop the FIFO contents and pending CCs (the reverb tail keeps ringing inside pyo)."""
        self._k = 0
        self._pending = []
        if self.enabled:
            self._in[:] = 0.0
            self._out[:] = 0.0

    def close(self) -> None:
        """Stop and free the pyo server. Idempotent."""
        global _live
        s, self._server = getattr(self, "_server", None), None
        if s is not None:
            with _LOCK:
                _live -= 1
                # pyo objects hold references to their server: drop them all, or the server's slot
                # (one of 256) is not freed.
                self._objs = []
                self._cut = None
                try:
                    s.stop()
                    s.shutdown()
                except Exception:
                    pass
            self.enabled = False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def parse_fx(spec: str | None, sample_rate: int, chunk: int = 64, filter_cc: int = 74) -> EffectsBus | None:
    """`--fx` value -> EffectsBus or None. Syntax: comma list of names, each optionally `=amount`:
    "reverb", "reverb=0.5,chorus", "filter" (filter: the cutoff follows CC `filter_cc`)."""
    if spec is None or spec.strip() in ("", "none", "off"):
        return None
    kw: dict = {}
    for part in spec.split(","):
        part = part.strip()
        name, _, val = part.partition("=")
        name = name.strip().lower()
        if name not in FX_NAMES:
            raise UserError(f"--fx: unknown effect {name!r} in {spec!r}; choose from {', '.join(FX_NAMES)}")
        try:
            amount = float(val) if val else DEFAULTS[name]
        except ValueError:
            raise UserError(f"--fx: {part!r} needs a number after '=', e.g. reverb=0.3") from None
        if not math.isfinite(amount):
            raise UserError(f"--fx: {part!r} needs a finite number")
        if name == "filter":
            kw["filter"] = True
            kw["filter_value"] = int(round(max(0.0, min(1.0, amount)) * 127))
        else:
            kw[name] = amount
    return EffectsBus(sample_rate, chunk=chunk, filter_cc=filter_cc, **kw)
