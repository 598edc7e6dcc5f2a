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
      reverb: Freeverb wet/dry balance 0..1 (0 = off).
      chorus: Chorus depth 0..5 (0 = off).
      filter: enable the low-pass filter whose cutoff follows CC `filter_cc`.
      filter_cc: the controller that moves the cutoff (CC 74, "brightness", by default).
      filter_value: initial CC value 0..127 (127 = fully open).
      reverb_size: Freeverb room size 0..1.
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
        self._pos = 0          # frames fed so far (absolute input position)
        self._k = 0            # fill level of the current chunk
        self._pending: list[tuple[int, int, int]] = []  # (absolute frame, cc, value), in arrival order
        self._server = None
        if self.enabled:
            self._build(filter_value, reverb_size)

    def _build(self, filter_value: int, reverb_size: float) -> None:
        global _live
        pyo = _import_pyo()
        with _LOCK:
            if _live >= MAX_SERVERS:
                raise UserError(f"effects: {_live} effects buses are open and pyo allows {MAX_SERVERS} per process; "
                                f"close() the ones you no longer use")
            try:
                s = pyo.Server(sr=self.sample_rate, nchnls=2, ichnls=2, buffersize=self.chunk, duplex=1,
                               audio="manual", midi="portmidi", verbosity=0)
                s.boot()
                s.start()
                s.setServer()  # new pyo objects attach to the current server
                src = pyo.Input(chnl=[0, 1])
                objs = [src]
                sig = src
                self._cut = None
                if self.filter:
                    self._cut = pyo.SigTo(cutoff_hz(filter_value, self.sample_rate), time=0.02)
                    sig = pyo.ButLP(sig, freq=self._cut)
                    objs += [self._cut, sig]
                if self.chorus > 0:
                    sig = pyo.Chorus(sig, depth=self.chorus, feedback=0.25, bal=0.5)
                    objs.append(sig)
                if self.reverb > 0:
                    sig = pyo.Freeverb(sig, size=reverb_size, damp=0.5, bal=self.reverb)
                    objs.append(sig)
                sig.out()
            except Exception as e:  # pyo raises bare Exceptions from its C layer
                raise UserError(f"effects: cannot start the pyo server ({e}); run without --fx") from None
            _live += 1
        self._server, self._objs = s, objs
        n = self.chunk * 2
        ia, oa = int(s.getInputAddr(), 16), int(s.getOutputAddr(), 16)
        if not ia or not oa:
            raise UserError("effects: the pyo server gave no audio buffers; run without --fx")
        self._in = np.ctypeslib.as_array((ctypes.c_float * n).from_address(ia)).reshape(self.chunk, 2)
        self._out = np.ctypeslib.as_array((ctypes.c_float * n).from_address(oa)).reshape(self.chunk, 2)
        # The server fades its master gain in over its first few milliseconds; run that ramp on
        # silence now so the first real chunk is not attenuated.
        self._in[:] = 0.0
        for _ in range(max(2, math.ceil(0.02 * self.sample_rate / self.chunk))):
            s.process()
        self._out[:] = 0.0  # the FIFO's first `chunk` output frames are the reported latency: silence

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

    def process(self, block: np.ndarray) -> np.ndarray:
        """Apply the effects to `block` (float32[frames, 2], any frames >= 0) in place and return it.

        Output lags input by `latency_samples` frames. No allocation beyond the pending-CC list.
        """
        if not self.enabled:
            return block
        n = block.shape[0]
        i = 0
        c = self.chunk
        while i < n:
            m = min(c - self._k, n - i)
            k = self._k
            # Write the new input first, then hand back the processed frames queued at the same slots.
            self._in[k:k + m] = block[i:i + m]
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
