"""Note cache: generated notes at the output rate in one preallocated bank, LRU with a memory cap.

Keys are `(preset name, knob-state key, pitch, velocity layer)`; a ringing note's continuation
segments (`synth.ring`) are entries keyed `(note key, segment index)`, outside the pitch index that
`nearest` searches. Every note lives in a fixed-size slot of one flat float32 bank, so the mixer
gathers all voices with one fancy index.

Threads: one writer at a time (the generator worker, or the engine itself offline) holds
`_wlock` while it evicts and copies; the audio thread never takes that lock. It reads through
single dict lookups and immutable tuples, which CPython makes atomic, and pins the slots its voices
play with `acquire`/`release` (a refcount only the reader writes). Eviction removes the entry
first and then looks at the refcount, while `acquire` raises the refcount first and then
re-reads the entry, so a slot can never be overwritten under a playing voice.
"""

from __future__ import annotations

import bisect
import ctypes
import mmap
import sys
import threading
from collections import OrderedDict, deque
from typing import NamedTuple

import numpy as np

GUARD = 2  # zero samples after every note: linear interpolation reads one past the end
LEVEL_HOP = 1024  # samples per cell of a slot's coarse level (peak |x|) table, read by voice stealing
MADV_POPULATE_WRITE = 23   # Linux 5.14+: fault a range in with one call
MADV_NOHUGEPAGE = 15       # Linux: keep a range on 4-KB pages


class _Populate:
    """Fault in a range of a bank with one `madvise(MADV_POPULATE_WRITE)` before the first copy into
    it. Page by page, the first touch of a 9-s slot (1.7 MB) cost 4-6 ms in this VM, against 0.8 ms
    populated (docs/decisions-engine.md, 2026-12-06), and the copy holds the GIL; ctypes releases it.
    Where the call is missing or refused (not Linux, an older kernel), the pages fault as before."""

    def __init__(self):
        self.ok = sys.platform.startswith("linux")
        if self.ok:
            try:
                self._madvise = ctypes.CDLL(None, use_errno=True).madvise
                self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                self._madvise.restype = ctypes.c_int
            except (OSError, AttributeError):
                self.ok = False

    def __call__(self, a: np.ndarray) -> None:
        if self.ok and a.nbytes and not self.advise(a, MADV_POPULATE_WRITE):
            self.ok = False

    def advise(self, a: np.ndarray, advice: int) -> bool:
        """madvise(advice) over the pages of `a`; False where refused or unavailable."""
        if not self.ok or a.nbytes == 0:
            return False
        start = a.ctypes.data
        lo = start - start % mmap.PAGESIZE
        return self._madvise(lo, start + a.nbytes - lo, advice) == 0


_populate = _MADVISE = _Populate()


def _small_pages(a: np.ndarray) -> None:
    """Keep `a` on 4-KB pages. numpy advises huge pages for large arrays, and a slot is not 2-MB
    aligned, so each note written faulted in one or two whole 2-MB pages: a drum hit (a fifth of a
    slot) took 2-4 MB. A warm render of the 5-minute GM piece peaked at 400 MB resident with them and
    219 MB without, and took a third less time (docs/decisions-engine.md, stop 42)."""
    _MADVISE.advise(a, MADV_NOHUGEPAGE)


class NoteEntry(NamedTuple):
    """One cached note. `offset` indexes the flat bank; slot -1 means "silent" (bad model output)."""

    key: tuple
    slot: int
    offset: int
    length: int            # samples at the output rate
    loop_start: float      # loop region [loop_start, loop_end) in samples; loop_end = inf for one-shots
    loop_end: float
    pitch: int


class NoteCache:
    """LRU note cache holding at most `cache_mb` MiB of audio in slots of `slot_len` samples.

    `pad` zeros follow the last slot (the mixer reads whole blocks straight ahead from a slot).
    """

    def __init__(self, cache_mb: float, slot_len: int, pad: int = 0):
        self.slot_len = int(slot_len)
        slot_bytes = self.slot_len * 4
        self.n_slots = max(1, int(cache_mb * 1024 * 1024) // slot_bytes)
        self.cap_bytes = self.n_slots * slot_bytes
        # np.zeros maps untouched pages lazily, so an unused cap costs no memory.
        self.bank = np.zeros(self.n_slots * self.slot_len + int(pad), np.float32)
        _small_pages(self.bank)
        self.refcount = [0] * self.n_slots   # a list: item updates cost a tenth of numpy's
        # Each slot's peak |x| per LEVEL_HOP samples, written with the note: how loud a voice reading
        # the slot is at its position (`VoiceBank.victim` steals the quietest).
        self.levels = np.zeros((self.n_slots, -(-self.slot_len // LEVEL_HOP)), np.float32)
        self._entries: dict[tuple, NoteEntry] = {}
        self._index: dict[tuple, tuple[int, ...]] = {}       # (preset, knobkey, vlayer) -> sorted pitches
        self._recent_states: dict[str, tuple] = {}          # preset -> knob keys, newest first
        self._layer_order: dict[tuple, tuple] = {}          # (layer, layers) -> layers, nearest first
        self._lru: OrderedDict[tuple, None] = OrderedDict()  # writer-side only
        self._touched: deque = deque(maxlen=1 << 16)         # reader → writer LRU hints
        self._free = list(range(self.n_slots - 1, -1, -1))
        self._fresh = bytearray(b"\x01") * self.n_slots     # slots whose pages were never touched
        self._pending: list[int] = []                        # evicted but still playing
        self._wlock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.rejected = 0

    # ---- reader side (audio thread): no locks ---------------------------------------------------
    def peek(self, key: tuple) -> NoteEntry | None:
        """The entry for `key` or None, without touching counters."""
        return self._entries.get(key)

    def lookup(self, key: tuple) -> NoteEntry | None:
        """The entry for `key` or None, counting a hit or a miss."""
        e = self._entries.get(key)
        if e is None:
            self.misses += 1
        else:
            self.hits += 1
            self._touched.append(e.key)   # the cached tuple, not the caller's: the hints keep no copies
        return e

    def acquire(self, entry: NoteEntry) -> bool:
        """Pin `entry`'s slot for a voice; False if it was evicted meanwhile (treat as a miss)."""
        if entry.slot < 0:
            return True
        self.refcount[entry.slot] += 1
        if self._entries.get(entry.key) is not entry:
            self.refcount[entry.slot] -= 1
            return False
        return True

    def release(self, slot: int) -> None:
        """Unpin a slot taken by `acquire`."""
        if slot >= 0:
            self.refcount[slot] -= 1

    def release_many(self, slots: np.ndarray) -> None:
        """`release` for many slots at once (a slot may repeat: two voices on one note)."""
        rc = self.refcount
        for i in range(len(slots)):
            s = slots.item(i)
            if s >= 0:
                rc[s] -= 1

    def nearest(self, preset: str, knobkey: tuple, vlayer: int, pitch: int, layers=(),
                max_distance: int = 127) -> NoteEntry | None:
        """Best cached stand-in for a missing note, at most `max_distance` semitones away (0 for drum
        kits, whose keys are different instruments). Nearest pitch first; among equals, this knob
        state before recent ones, and this velocity layer before the others in `layers`."""
        layers = layers if isinstance(layers, tuple) else tuple(layers)
        vls = self._layer_order.get((vlayer, layers))
        if vls is None:
            vls = (vlayer,) + tuple(sorted((v for v in layers if v != vlayer), key=lambda v: abs(v - vlayer)))
            self._layer_order[(vlayer, layers)] = vls
        best = None
        index = self._index
        si = 0
        for state in (knobkey,) + self._recent_states.get(preset, ())[:4]:
            if si and state == knobkey:
                continue
            for li, vl in enumerate(vls):
                pitches = index.get((preset, state, vl))
                if not pitches:
                    continue
                j = bisect.bisect_left(pitches, pitch)
                for c in (j - 1, j):
                    if 0 <= c < len(pitches):
                        p = pitches[c]
                        score = (abs(p - pitch), si, li)
                        if score[0] <= max_distance and (best is None or score < best[0]):
                            best = (score, (preset, state, p, vl))
                if best is not None and best[0][0] == 0:
                    break   # exact pitch in this state: later layers and states score worse
            if best is not None and best[0][0] == 0:
                break
            si += 1
        if best is None:
            return None
        return self._entries.get(best[1])

    # ---- writer side ------------------------------------------------------------------------------
    def publish(self, key: tuple, audio: np.ndarray | None, loop: tuple[float, float] | None = None,
                protect: tuple | None = None) -> NoteEntry | None:
        """Store note `key` (audio float32[M] at the output rate; None = silent) and return its entry.

        `protect`: a (preset, knobkey) whose notes must not be evicted to make room (a prefill
        must not evict the keyboard it is filling). A full cache evicts the least recently used note
        that no voice plays and `protect` spares; returns None when there is none.
        """
        tail = len(key) == 2               # a continuation segment: (note key, index)
        preset, knobkey, pitch, vlayer = key[0] if tail else key
        with self._wlock:
            old = self._entries.get(key)
            if old is not None:
                return old
            if audio is None:
                entry = NoteEntry(key, -1, 0, 0, 0.0, float("inf"), pitch)
            else:
                slot = self._alloc(protect)
                if slot is None:
                    self.rejected += 1
                    return None
                n = min(len(audio), self.slot_len - GUARD)
                off = slot * self.slot_len
                # Past the note a fresh slot is still untouched zeros: fault in only what is written
                # (a drum hit is a fifth of a 9-s slot); a reused one is zeroed past its new note.
                fresh = self._fresh[slot]
                if fresh:
                    self._fresh[slot] = 0
                    _populate(self.bank[off:off + n])
                self.bank[off:off + n] = audio[:n]
                if not fresh:
                    self.bank[off + n:off + self.slot_len] = 0.0
                self._write_levels(slot, self.bank[off:off + n])
                ls, le = loop if loop is not None else (0.0, float("inf"))
                entry = NoteEntry(key, slot, off, n, float(ls), float(le), pitch)
            self._entries[key] = entry
            self._lru[key] = None
            if tail:
                return entry
            ikey = (preset, knobkey, vlayer)
            pitches = self._index.get(ikey, ())
            if pitch not in pitches:
                self._index[ikey] = tuple(sorted(pitches + (pitch,)))
            recent = self._recent_states.get(preset, ())
            if not recent or recent[0] != knobkey:
                self._recent_states[preset] = (knobkey,) + tuple(k for k in recent if k != knobkey)[:7]
            return entry

    def _write_levels(self, slot: int, x: np.ndarray) -> None:
        """`levels[slot]`: the peak |x| of each LEVEL_HOP samples of the note (0 past its end)."""
        lv = self.levels[slot]
        full = len(x) // LEVEL_HOP
        lv[:] = 0.0
        # max(max x, -min x) per cell: no temporary the size of the note (a fresh one faults in its
        # pages, which this VM's host makes slow; decisions-engine 2026-12-07).
        if full:
            r = x[:full * LEVEL_HOP].reshape(full, LEVEL_HOP)
            np.maximum(r.max(axis=1), np.negative(r.min(axis=1)), out=lv[:full])
        if len(x) > full * LEVEL_HOP:
            t = x[full * LEVEL_HOP:]
            lv[full] = max(t.max(), -t.min())

    def _alloc(self, protect) -> int | None:
        if not self._free and self._pending:
            still = []
            for s in self._pending:
                (self._free if self.refcount[s] == 0 else still).append(s)
            self._pending = still
        if self._free:
            return self._free.pop()
        while self._touched:
            k = self._touched.popleft()
            if k in self._lru:
                self._lru.move_to_end(k)
        # The least recently used entry that no voice plays and no prefill protects. (Evicting a
        # playing one would free nothing until its voices end, and empty the index under a small
        # cap with many notes held.)
        skipped = 0
        while self._lru and skipped <= len(self._lru):
            k = next(iter(self._lru))
            e = self._entries[k]
            if e.slot < 0 or self.refcount[e.slot] > 0 or (protect is not None and (k[0], k[1]) == protect):
                self._lru.move_to_end(k)
                skipped += 1
                continue
            self._evict(k)
            if self.refcount[e.slot] == 0:
                return e.slot
            self._pending.append(e.slot)   # a voice took it between the check and the eviction
        return None

    def _evict(self, k: tuple) -> None:
        # Entry first, refcount after (see the module docstring).
        e = self._entries.pop(k)
        del self._lru[k]
        self.evictions += 1
        if len(k) != 4:
            return e
        ikey = (k[0], k[1], k[3])
        pitches = tuple(p for p in self._index.get(ikey, ()) if p != k[2])
        if pitches:
            self._index[ikey] = pitches
        else:
            self._index.pop(ikey, None)
        return e

    def discard(self, key: tuple) -> bool:
        """Drop one note (its slot is reused once no voice plays it); True if it was cached."""
        with self._wlock:
            if key not in self._entries:
                return False
            e = self._entries[key]
            self._evict(key)
            if e.slot >= 0:
                (self._free if self.refcount[e.slot] == 0 else self._pending).append(e.slot)
            return True

    def clear(self) -> None:
        """Forget everything (slots still pinned by voices stay reserved until released)."""
        with self._wlock:
            for k in list(self._lru):
                e = self._entries[k]
                self._evict(k)
                if e.slot >= 0:
                    (self._free if self.refcount[e.slot] == 0 else self._pending).append(e.slot)

    # ---- stats -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key) -> bool:
        return key in self._entries

    @property
    def used_bytes(self) -> int:
        return (self.n_slots - len(self._free)) * self.slot_len * 4

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses,
                "hit_rate": (self.hits / total) if total else None, "evictions": self.evictions,
                "used_mb": self.used_bytes / 2**20, "cap_mb": self.cap_bytes / 2**20, "rejected": self.rejected}
