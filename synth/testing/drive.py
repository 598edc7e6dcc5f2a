"""Drive an `Engine` through a script of timed events, block by block (shared by the engine tests)."""

from __future__ import annotations

import numpy as np


def drive(engine, events, total: int, bs: int) -> np.ndarray:
    """Render `total` frames in blocks of `bs`, posting (abs frame, method, args) at their offsets."""
    out = np.zeros((total, 2), np.float32)
    events = sorted(events, key=lambda e: e[0])
    i = 0
    for pos in range(0, total, bs):
        n = min(bs, total - pos)
        while i < len(events) and events[i][0] < pos + n:
            f, name, args = events[i]
            getattr(engine, name)(*args, frame=f - pos)
            i += 1
        engine.render(n, out=out[pos:pos + n])
    return out


def check_rows(engine) -> None:
    """Assert that the engine's voice bookkeeping agrees with its voice arrays: live count, free
    rows, cache slot references, and ringing chains that point at live rows."""
    v = engine.voices
    assert v.n_live == np.count_nonzero(v.active & ~v.ghost)
    assert sorted(v._free[:v.n_free].tolist()) == np.flatnonzero(~v.active).tolist()
    held = [s for s in v.slot[v.active].tolist() if s >= 0]
    for slot in set(held):
        assert engine.cache.refcount[slot] == held.count(slot)
    assert all(v.active[j] for j in engine._ahead) and all(v.active[i] for i in engine._behind)
