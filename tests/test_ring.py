"""Ringing notes (issue 19): the partial analysis, chunked synthesis, and notes that ring while held."""

from __future__ import annotations

import numpy as np
import pytest

from synth import ring
from synth.engine import Engine
from synth.testing.drive import check_rows, drive
from synth.testing.tinymodel import make_tiny_preset

SR = 16000


def _ringing(d, name: str, seconds: float, release: float):
    """A tiny preset whose training data let the key go `release` s before the note's end."""
    p = make_tiny_preset(d, name, note_seconds=seconds, release_seconds=0.05)
    p.training["data"] = {"source seconds": seconds, "source release": release}
    return p


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    d = tmp_path_factory.mktemp("ring")
    return {"long": _ringing(d, "long", 4.0, 1.0), "short": _ringing(d, "short", 1.5, 0.3),
            "plain": make_tiny_preset(d, "plain", note_seconds=1.5)}


def _synthetic(rate=48000, seconds=4.0):
    t = np.arange(int(seconds * rate)) / rate
    parts = [(0.5, 110.0, 3.0, 0.1), (0.3, 220.5, 5.0, 1.0), (0.2, 331.0, 8.0, 2.0), (0.1, 447.0, 12.0, 3.0)]
    x = sum(a * np.exp(-d / ring._DB_NP * t) * np.cos(2 * np.pi * f * t + p) for a, f, d, p in parts)
    return x.astype(np.float32), parts


def _db(x: np.ndarray, w: int) -> np.ndarray:
    m = x[:len(x) // w * w, 0].astype(np.float64).reshape(-1, w)
    r = np.sqrt(np.mean(m ** 2, axis=1))
    return 20 * np.log10(r / r.max() + 1e-12)


def test_analyse_recovers_damped_partials(monkeypatch):
    monkeypatch.setattr(ring, "DECAY_PULL", 0.0)
    rate = 48000
    x, parts = _synthetic(rate)
    tab = ring.analyse(x, rate, 3.0)
    assert tab.size == len(parts)
    hz = tab.omega * rate / (2 * np.pi)
    db_s = tab.alpha * rate * ring._DB_NP
    for (_, f, d, _), got_f, got_d in zip(parts, hz, db_s, strict=True):
        assert abs(got_f - f) < 0.01
        assert abs(got_d - d) < 0.05
    # The continuation matches the signal it continues: within -40 dB of its level.
    direct = x[tab.s0:tab.s0 + 4800].astype(np.float64)
    assert np.max(np.abs(ring.span(tab, 0, 4800) - direct)) < 0.01 * np.max(np.abs(direct))


def test_chunk_is_direct_synthesis():
    x, _ = _synthetic()
    tab = ring.analyse(x, 48000, 3.0)
    for j in (0, 1, 7, 40):
        k = np.arange(j * ring.CHUNK, (j + 1) * ring.CHUNK)
        direct = (tab.amp[:, None] * np.exp(-tab.alpha[:, None] * k)
                  * np.cos(tab.omega[:, None] * k + tab.phase[:, None])).sum(axis=0)
        np.testing.assert_allclose(ring.chunk(tab, j), direct, atol=1e-6)    # float32 synthesis
        part = ring.span(tab, j * ring.CHUNK + 5, (j + 1) * ring.CHUNK)
        np.testing.assert_allclose(part, ring.chunk(tab, j)[5:], atol=1e-7)
    assert 5.0 < ring.tail_seconds(tab) < ring.MAX_TAIL_S


def test_only_pitched_oneshots_with_a_note_off_ring(presets, tmp_path):
    assert ring.ring_off(presets["long"]) == pytest.approx(3.0)
    assert ring.ring_off(presets["plain"]) is None
    loop = make_tiny_preset(tmp_path, "loop", sustain_mode="loop", note_seconds=2.0)
    loop.training["data"] = {"source seconds": 2.0, "source release": 0.5}
    assert ring.ring_off(loop) is None


def test_held_note_rings_past_its_generated_length_and_releases(presets):
    total = 9 * SR
    with Engine(sample_rate=SR, presets=[presets["long"]], cache_mb=64) as e:
        x = drive(e, [(0, "note_on", (0, 45, 100)), (6 * SR, "note_off", (0, 45))], total, 512)
        assert e.chains >= 1 and e.tail_misses == 0
    db = _db(x, SR // 10)
    assert db[55] > -60.0                        # still sounding at 5.5 s (the note is 4 s long)
    assert np.max(-np.diff(db[:60])) <= 6.0       # no cliff before key-up
    assert db[63] < db[59] - 20.0                 # the release after key-up
    assert np.all(x[int(6.5 * SR):] == 0.0)


def test_plain_presets_do_not_ring(presets):
    with Engine(sample_rate=SR, presets=[presets["plain"]], cache_mb=64) as e:
        x = drive(e, [(0, "note_on", (0, 45, 100))], 2 * SR, 512)
        assert e.chains == 0
    assert np.all(x[int(1.51 * SR):] == 0.0)


SCRIPT = [
    (0, "control_change", (0, 64, 127)), (1600, "note_on", (0, 50, 90)), (8000, "note_off", (0, 50)),
    (0, "note_on", (0, 45, 100)), (3200, "note_on", (0, 57, 80)), (32000, "note_off", (0, 57)),
    (4800, "note_on", (1, 52, 100)), (28800, "pitch_bend", (1, 3000)), (36800, "pitch_bend", (1, -2000)),
    (41600, "control_change", (0, 64, 0)), (48000, "note_off", (0, 45)), (51200, "note_off", (1, 52)),
    (52000, "note_on", (0, 45, 60)),
]


def test_ringing_is_block_size_independent(presets):
    """Holds, the pedal, a release and bends while notes ring on in their continuation."""
    total = 60000
    outs = {}
    for bs in (1, 64, 1000):
        with Engine(sample_rate=SR, presets=[presets["short"]], cache_mb=64) as e:
            outs[bs] = drive(e, SCRIPT, total, bs)
            assert e.chains >= 4 and e.tail_misses == 0
    assert np.max(np.abs(outs[1000])) > 0.01
    np.testing.assert_array_equal(outs[64], outs[1000])
    np.testing.assert_array_equal(outs[1], outs[1000])


def test_segments_in_cache_stay_bounded(presets):
    """A 20-s held note: its continuation passes through the cache a couple of segments at a time."""
    with Engine(sample_rate=SR, presets=[presets["long"]], cache_mb=64) as e:
        e.note_on(0, 40, 127)
        most = 0
        for _ in range(20 * SR // 1024):
            e.render(1024)
            most = max(most, sum(1 for k in e.cache._entries if len(k) == 2))
        assert e.chains >= 2
    assert 1 <= most <= 2


def test_live_ringing_matches_offline(presets):
    """Live, the worker makes each segment ahead of the voice; the output is the offline one."""
    outs = {}
    for rt in (False, True):
        with Engine(sample_rate=SR, presets=[presets["long"]], realtime=rt, cache_mb=256) as e:
            assert e.wait_ready(60)
            e.note_on(0, 45, 100)
            blocks = []
            for _ in range(8 * SR // 256):
                blocks.append(e.render(256).copy())
                if rt:
                    e.worker.wait_idle(10)
            outs[rt] = np.concatenate(blocks)
            assert e.tail_misses == 0 and e.chains >= 1
            most = sum(1 for k in e.cache._entries if len(k) == 2)
            assert most <= 3
    np.testing.assert_array_equal(outs[True], outs[False])


def test_restrike_under_the_pedal_lets_the_old_note_ring(presets):
    with Engine(sample_rate=SR, presets=[presets["long"]], cache_mb=64) as e:
        drive(e, [(0, "control_change", (0, 64, 127)), (0, "note_on", (0, 45, 100)),
                  (800, "note_off", (0, 45)), (5 * SR, "note_on", (0, 45, 100))], 5 * SR + 100, 512)
        v = e.voices
        rows = v.select(0, 45)
        assert len(rows) == 2 and v.sustained[rows].sum() == 1 and v.held[rows].sum() == 1


@pytest.mark.parametrize("bend", [0, 3000])
def test_seams_are_seamless(presets, bend):
    """No click where a voice chains into the next segment, straight ahead or bent (interpolated)."""
    with Engine(sample_rate=SR, presets=[presets["short"]], cache_mb=64) as e:
        x = drive(e, [(0, "note_on", (0, 45, 100)), (800, "pitch_bend", (0, bend))], 3 * SR, 256)[:, 0]
        assert e.chains >= 2
    x = x.astype(np.float64)
    assert _click_ratio(x).max() < 5
    # The measure hears a click: a step of 5% of the local RMS (-26 dB) at the seam.
    seam = int(round((1.5 - 0.3 - ring.LEAD_S + ring.XFADE_S) * SR))
    y = x.copy()
    y[seam:] += 0.05 * np.sqrt(np.mean(x[seam - 256:seam + 256] ** 2))
    assert _click_ratio(y).max() > 5


def _click_ratio(x: np.ndarray) -> np.ndarray:
    """Per 1,024-sample window after the first 0.5 s: its largest second difference over its median,
    each relative to the local RMS (512 samples). Against the neighbourhood, not the whole note: late
    in a tail a slow high partial can be all that is left, whose second difference is large for its
    level everywhere, not at a seam."""
    level = np.sqrt(np.convolve(x ** 2, np.ones(512) / 512, "same"))[1:-1]
    jump = np.abs(np.diff(x, 2))[SR // 2:] / (level[SR // 2:] + 1e-9)
    w = jump[:len(jump) // 1024 * 1024].reshape(-1, 1024)
    return w.max(axis=1) / np.median(w, axis=1)


def test_steals_and_sound_off_in_the_continuation(presets):
    """Steals (a chained pair goes together), all-sound-off and panic while notes ring on."""
    ev = [(0, "control_change", (0, 64, 127))]
    ev += [(800 * i, "note_on", (0, 40 + i, 100)) for i in range(4)]
    ev += [(30000 + 997 * i, "note_on", (0, 60 + i, 90)) for i in range(4)]
    ev += [(40000, "control_change", (0, 120, 0)), (41000, "note_on", (0, 45, 100)),
           (56000, "pitch_bend", (0, 500))]
    with Engine(sample_rate=SR, presets=[presets["short"]], cache_mb=64, polyphony=3) as e:
        for pos in range(0, 60000, 500):
            for f, name, args in ev:
                if pos <= f < pos + 500:
                    getattr(e, name)(*args, frame=f - pos)
            e.render(500)
            check_rows(e)
        assert e.chains >= 2 and e.steals >= 1
        e.panic()
        e.render(1000)
        check_rows(e)
        assert not np.any(e.voices.active)


def test_a_warm_disk_cache_keeps_the_partials_and_plays_the_same(presets, tmp_path, monkeypatch):
    """The disk cache stores a ringing note's partial table beside its head: a warm start lays out
    the continuation without analysing the note (nor loading the model), and plays the cold start's
    samples exactly."""
    script = [(0, "note_on", (0, 45, 100)), (0, "note_on", (0, 52, 70)), (SR * 5, "note_off", (0, 45))]
    outs = []
    for disk in (None, tmp_path / "dc", tmp_path / "dc"):
        if len(outs) == 2:
            monkeypatch.setattr(ring, "analyse", lambda *a: pytest.fail("analysed a stored note"))
        with Engine(sample_rate=SR, presets=[presets["short"]], cache_mb=64, disk_cache=disk) as e:
            e.prepare([(ev[1], *ev[2]) for ev in script if ev[1] == "note_on"])
            if len(outs) == 2:
                assert e.worker.disk_hits == 2 and e.worker.generated == 0
                assert e.worker.sessions["short"]._session is None     # the graph never loaded
            outs.append(drive(e, script, SR * 6, 512))
            assert e.chains >= 2 and e.tail_misses == 0
    assert np.max(np.abs(outs[0])) > 0.01
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[1], outs[2])


def test_a_span_is_the_same_with_its_table_made_or_not():
    """`span` makes the synthesis table of the partials still audible alone when the whole one is not
    made yet (a note's head): bit for bit the rows of the whole table."""
    rng = np.random.default_rng(3)
    n = 300
    amp = 10.0 ** rng.uniform(-9, 0, n)                # many partials under PRUNE_DB re the peak
    tab = ring.PartialTable(rng.uniform(0.01, 3.0, n), rng.uniform(1e-6, 1e-3, n), amp,
                            rng.uniform(0, 2 * np.pi, n), 48000, 0, 1.0)
    assert not tab._w
    fresh = [ring.span(tab, a, b) for a, b in ((0, 4800), (5000, 9000))]
    assert not tab._w                                   # not kept: the whole table is not made
    tab.w(ring.CHUNK)
    for (a, b), x in zip(((0, 4800), (5000, 9000)), fresh, strict=True):
        assert np.array_equal(x, ring.span(tab, a, b))
    live = amp >= 10.0 ** (ring.PRUNE_DB / 20.0)
    assert 0 < live.sum() < n
    both = np.concatenate([live, live])
    assert np.array_equal(ring._w_rows(tab.alpha[live], tab.omega[live], ring.CHUNK), tab.w(ring.CHUNK)[both])
