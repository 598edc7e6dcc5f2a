"""Note cache: memory cap, LRU order, counters, pinning under eviction, nearest-pitch lookup."""

from __future__ import annotations

import numpy as np

from synth.cache import GUARD, NoteCache

SLOT = 1000


def _note(value: float, n: int = SLOT - GUARD) -> np.ndarray:
    return np.full(n, value, np.float32)


def _key(pitch, knob=(64,), vl=100, preset="p"):
    return (preset, knob, pitch, vl)


def test_cap_and_lru_order():
    cache = NoteCache(cache_mb=5 * SLOT * 4 / 2**20, slot_len=SLOT)
    assert cache.n_slots == 5
    for p in range(5):
        assert cache.publish(_key(p), _note(p)) is not None
    assert cache.lookup(_key(0)) is not None   # touch 0: now 1 is the least recently used
    cache.publish(_key(10), _note(10))
    assert _key(1) not in cache and _key(0) in cache and _key(10) in cache
    for p in range(20, 40):
        cache.publish(_key(p), _note(p))
    assert len(cache) == 5 and cache.evictions == 21
    assert cache.used_bytes <= cache.cap_bytes == 5 * SLOT * 4
    # Every surviving note still holds its own samples.
    for p in range(35, 40):
        e = cache.peek(_key(p))
        assert np.all(cache.bank[e.offset:e.offset + e.length] == p)
        assert np.all(cache.bank[e.offset + e.length:e.offset + SLOT] == 0)


def test_hit_miss_counters():
    cache = NoteCache(cache_mb=1, slot_len=SLOT)
    assert cache.lookup(_key(60)) is None
    cache.publish(_key(60), _note(0.5, 10))
    assert cache.lookup(_key(60)).length == 10
    assert cache.lookup(_key(60)) is not None
    s = cache.stats()
    assert (s["hits"], s["misses"], s["entries"]) == (2, 1, 1)
    assert s["hit_rate"] == 2 / 3


def test_pinned_slot_is_never_overwritten():
    cache = NoteCache(cache_mb=2 * SLOT * 4 / 2**20, slot_len=SLOT)
    e = cache.publish(_key(1), _note(1.0))
    assert cache.acquire(e)                      # a voice plays it
    cache.publish(_key(2), _note(2.0))
    cache.publish(_key(3), _note(3.0))           # evicts key 2: key 1, the older, is playing
    assert _key(1) in cache and _key(2) not in cache
    assert cache.discard(_key(1))                # dropped while playing: its slot stays reserved
    cache.publish(_key(4), _note(4.0))
    assert np.all(cache.bank[e.offset:e.offset + e.length] == 1.0)
    assert cache.peek(_key(4)).slot != e.slot
    assert not cache.acquire(e)                  # a stale entry cannot be pinned again
    cache.release(e.slot)
    cache.publish(_key(5), _note(5.0))           # now the slot may be reused
    assert cache.peek(_key(5)).slot == e.slot


def test_playing_notes_are_not_evicted():
    """A full cache evicts the least recently used note that no voice plays: held notes at the LRU's
    front stay cached (once they were all evicted, emptying the index under a small cap)."""
    cache = NoteCache(cache_mb=4 * SLOT * 4 / 2**20, slot_len=SLOT)
    held = [cache.publish(_key(p), _note(p)) for p in range(3)]
    for e in held:
        assert cache.acquire(e)
    cache.publish(_key(3), _note(3.0))
    assert cache.publish(_key(4), _note(4.0)) is not None      # evicts 3, the only one not playing
    assert all(_key(p) in cache for p in range(3)) and _key(3) not in cache
    cache.acquire(cache.peek(_key(4)))
    assert cache.publish(_key(5), _note(5.0)) is None           # all four play: refused, none evicted
    assert len(cache) == 4 and cache.evictions == 1
    assert cache.nearest("p", (64,), 100, 1) is not None


def test_full_of_pinned_notes_refuses():
    cache = NoteCache(cache_mb=1 * SLOT * 4 / 2**20, slot_len=SLOT)
    e = cache.publish(_key(1), _note(1.0))
    cache.acquire(e)
    assert cache.publish(_key(2), _note(2.0)) is None
    assert cache.rejected == 1 and np.all(cache.bank[:SLOT - GUARD] == 1.0)


def test_protect_keeps_the_keyboard_being_filled():
    cache = NoteCache(cache_mb=2 * SLOT * 4 / 2**20, slot_len=SLOT)
    cache.publish(_key(1, knob=(0,)), _note(1.0))
    cache.publish(_key(2, knob=(0,)), _note(2.0))
    assert cache.publish(_key(3, knob=(0,)), _note(3.0), protect=("p", (0,))) is None
    assert cache.publish(_key(3, knob=(9,)), _note(3.0)) is not None


def test_nearest_pitch_layer_and_state():
    cache = NoteCache(cache_mb=1, slot_len=SLOT)
    for p in (48, 60, 72):
        cache.publish(_key(p), _note(p / 100, 20))
    assert cache.nearest("p", (64,), 100, 62).pitch == 60
    assert cache.nearest("p", (64,), 100, 70).pitch == 72
    assert cache.nearest("p", (64,), 100, 10).pitch == 48
    # Other velocity layers are used when the layer has nothing.
    assert cache.nearest("p", (64,), 30, 61, layers=(30, 100)).pitch == 60
    assert cache.nearest("p", (64,), 30, 61) is None
    # A new knob state with nothing cached falls back to recent states, exact pitch first.
    cache.publish(_key(61, knob=(10,)), _note(0.61, 20))
    assert cache.nearest("p", (99,), 100, 61).key == _key(61, knob=(10,))
    assert cache.nearest("q", (64,), 100, 61) is None
    # Drum kits: only the same key will do.
    assert cache.nearest("p", (64,), 100, 50, max_distance=0) is None
    assert cache.nearest("p", (64,), 100, 48, max_distance=0).pitch == 48


def test_silent_entries_take_no_memory():
    cache = NoteCache(cache_mb=1, slot_len=SLOT)
    e = cache.publish(_key(5), None)
    assert e.slot == -1 and cache.used_bytes == 0 and cache.acquire(e)


def test_a_slot_is_populated_once_on_first_use(monkeypatch):
    """Each slot's pages are faulted in with one call before its first note (`_Populate`), only as
    far as the note goes (the rest stays untouched zeros), never again when the slot is reused, and
    the note reads back intact with zeros after it; on Linux 5.14+ the call succeeds."""
    import os
    import re
    import sys

    import synth.cache as C

    release = tuple(int(v) for v in re.findall(r"\d+", os.uname().release)[:2])
    if sys.platform.startswith("linux") and release >= (5, 14):
        probe = C._Populate()
        probe(np.zeros(1 << 16, np.float32))
        assert probe.ok, "madvise(MADV_POPULATE_WRITE) was refused on this Linux"
    calls = []
    real = C._populate
    monkeypatch.setattr(C, "_populate", lambda a: (calls.append((a.ctypes.data, a.size)), real(a)))
    cache = NoteCache(cache_mb=3 * SLOT * 4 / 2**20, slot_len=SLOT)
    lengths = [SLOT - GUARD, 300, SLOT - GUARD, 500, 100, 700, 50]   # later ones reuse longer notes' slots
    for p, n in enumerate(lengths):
        e = cache.publish(_key(p), _note(p + 1, n))
        assert np.array_equal(cache.bank[e.offset:e.offset + e.length], _note(p + 1, n))
        assert not np.any(cache.bank[e.offset + e.length:e.offset + SLOT])
    assert [n for _, n in calls] == lengths[:3]
    assert len({a for a, _ in calls}) == 3


def test_the_bank_stays_on_small_pages():
    """On Linux the bank is advised off transparent huge pages (`_small_pages`): a 2-MB page per note
    written would fault in up to 4 MB for a drum hit. The mapping's VmFlags carry `nh`, and writing a
    short note into a fresh slot of a large bank raises the resident size by about the note, not 2 MB."""
    import sys
    from pathlib import Path

    import pytest

    if not sys.platform.startswith("linux") or not Path("/sys/kernel/mm/transparent_hugepage").is_dir():
        pytest.skip("no transparent huge pages to keep off (not Linux, or a kernel built without them)")

    def mapping_of(addr: int) -> tuple[set, int]:
        flags, rss, inside = set(), 0, False
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= addr < hi
            elif inside and head[0] == "VmFlags:":
                flags = set(head[1:])
            elif inside and head[0] == "Rss:":
                rss = int(head[1]) * 1024
        return flags, rss

    slot = 9 * 48000
    cache = NoteCache(cache_mb=64 * slot * 4 / 2**20, slot_len=slot)
    flags, before = mapping_of(cache.bank.ctypes.data)
    assert "nh" in flags
    e = cache.publish(_key(1), _note(0.5, 48000))        # a 1-s hit in a 9-s slot
    _, after = mapping_of(cache.bank.ctypes.data + e.offset)
    # The growth, not the size: the kernel may merge the bank's mapping with a neighbour of the same
    # flags (an earlier test's bank, still resident), and smaps then reports the two together.
    assert after >= 48000 * 4 and after - before < 48000 * 4 + 64 * 1024
