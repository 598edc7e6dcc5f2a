"""The note disk cache (`synth.diskcache`): a warm start plays exactly what a cold one generated, bad
files are regenerated, the store stays under its cap, and a store that cannot be written costs one
warning and nothing else."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

from synth.diskcache import DiskCache, default_root, parse_option
from synth.engine import Engine
from synth.errors import UserError
from synth.testing.tinymodel import make_tiny_preset

SR = 48000


@pytest.fixture(scope="module")
def presets(piano_and_pad):
    return piano_and_pad


def _events():
    ev = []
    for i, p in enumerate((48, 52, 55, 60, 64, 67)):
        ev += [("program_change", 0, i % 2), ("note_on", 0, p, 40 + 15 * i)]
    return ev


def _render(presets, disk, frames: int = SR // 2, background: bool = False) -> tuple[np.ndarray, Engine]:
    """Prepare and render the test phrase offline: one note per key, on both presets in turn."""
    e = Engine(presets=presets, blocksize=512, disk_cache=disk)
    e.prepare(_events(), background=background)
    out = []
    t = 0
    for i, p in enumerate((48, 52, 55, 60, 64, 67)):
        e.program_change(0, i % 2)
        e.note_on(0, p, 40 + 15 * i)
        out.append(e.render(SR // 24).copy())
        t += SR // 24
    out.append(e.render(frames - t).copy())
    e.finish_prepare()
    e.close()
    return np.concatenate(out), e


def _notes(root: Path) -> list[Path]:
    return sorted(root.glob("v*/*/*.note"))


def test_a_warm_render_is_bit_identical_to_a_cold_one(presets, tmp_path):
    ref, e0 = _render(presets, None)
    cold, e1 = _render(presets, tmp_path / "dc")
    warm, e2 = _render(presets, tmp_path / "dc")
    assert e0.worker.disk is None and e1.worker.generated == 6 and e1.worker.disk_hits == 0
    assert len(_notes(tmp_path / "dc")) == 6
    assert e2.worker.generated == 0 and e2.worker.disk_hits == 6
    assert np.abs(ref).max() > 0.01
    assert np.array_equal(ref, cold) and np.array_equal(cold, warm)
    # The loop points came back too (the pad loops; the piano does not).
    loops = {k[0]: (en.loop_start, en.loop_end) for k, en in e2.cache._entries.items()}
    ref_loops = {k[0]: (en.loop_start, en.loop_end) for k, en in e1.cache._entries.items()}
    assert loops == ref_loops and np.isfinite(loops["pad"][1]) and not np.isfinite(loops["piano"][1])


def test_a_warm_background_prepare_reads_the_disk_beside_the_mix(presets, tmp_path, monkeypatch):
    """With every note on disk, the prefetch thread reads them (the render waits only for a note still
    to come), and plays what a cold render generated; a note damaged since `prepare` looked is
    generated in that thread, as on a cold start."""
    from synth.worker import GeneratorWorker

    cold, _ = _render(presets, tmp_path / "dc")
    readers = []
    real = GeneratorWorker._from_disk

    def spy(self, name, keys, protect):
        readers.append(threading.current_thread().name)
        return real(self, name, keys, protect)

    monkeypatch.setattr(GeneratorWorker, "_from_disk", spy)
    warm, e = _render(presets, tmp_path / "dc", background=True)
    assert np.array_equal(cold, warm) and e.worker.generated == 0 and e.worker.disk_hits == 6
    assert readers and set(readers) == {"synth-prefetch"}
    f = _notes(tmp_path / "dc")[0]
    f.write_bytes(f.read_bytes()[:100])               # present, so read ahead; then found damaged
    readers.clear()
    again, e = _render(presets, tmp_path / "dc", background=True)
    assert np.array_equal(cold, again) and e.worker.generated == 1 and e.worker.disk_hits == 5
    assert set(readers) == {"synth-prefetch"}
    _notes(tmp_path / "dc")[0].unlink()               # missing: read here and now, the rest generated after
    readers.clear()
    last, e = _render(presets, tmp_path / "dc", background=True)
    assert np.array_equal(cold, last) and e.worker.generated == 1 and set(readers) == {"MainThread"}


def test_a_knob_state_or_rate_change_is_another_keyboard(presets, tmp_path):
    dc = tmp_path / "dc"
    _render(presets, dc)
    e = Engine(presets=presets, disk_cache=dc)
    e.set_knob(presets[0].knobs[0].cc, 5, preset="piano")
    e.prepare(_events())
    assert e.worker.disk_hits == 3 and e.worker.generated == 3   # the pad's notes are as before
    e = Engine(presets=presets, sample_rate=44100, disk_cache=dc)
    e.prepare(_events())
    assert e.worker.disk_hits == 0


def test_truncated_or_corrupt_files_are_ignored_deleted_and_regenerated(presets, tmp_path):
    dc = tmp_path / "dc"
    cold, _ = _render(presets, dc)
    files = _notes(dc)
    with open(files[0], "r+b") as f:                  # torn: a crash before the data reached the disk
        f.truncate(os.path.getsize(files[0]) // 2)
    raw = bytearray(files[1].read_bytes())           # one flipped sample bit
    raw[200] ^= 0x10
    files[1].write_bytes(bytes(raw))
    files[2].write_bytes(b"")                         # empty
    warm, e = _render(presets, dc)
    assert e.worker.generated == 3 and e.worker.disk_hits == 3 and e.worker.disk.bad == 3
    assert np.array_equal(cold, warm)
    again, e = _render(presets, dc)                  # the regenerated notes were written back
    assert e.worker.disk_hits == 6 and np.array_equal(cold, again)


def test_eviction_keeps_the_store_under_its_cap_least_recently_used_first(tmp_path):
    note = np.linspace(-1, 1, 10_000, dtype=np.float32)       # 40 kB a note
    size = 64 + 4 * len(note)
    d = DiskCache(tmp_path / "dc", cap_bytes=10 * size)
    t = time.time() - 1000
    for i in range(8):
        assert d.store("kb", 40 + i, 127, note, None)
        os.utime(d._path("kb", 40 + i, 127)[0], (t + i, t + i))
    assert d.load("kb", 40, 127, 20_000) is not None           # a hit makes the oldest the newest
    for i in range(8, 12):
        assert d.store("kb", 40 + i, 127, note, None)
    total = sum(p.stat().st_size for p in _notes(tmp_path / "dc"))
    assert total <= 10 * size and d.evicted > 0
    assert d.load("kb", 40, 127, 20_000) is not None and d.load("kb", 41, 127, 20_000) is None
    got, loop = d.load("kb", 51, 127, 20_000)
    assert np.array_equal(got, note) and loop is None
    assert d.load("kb", 51, 127, 100) is None                  # longer than a slot: not ours


def test_an_unwritable_store_costs_one_warning_and_the_render_is_unchanged(presets, tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    ref, _ = _render(presets, None)
    with caplog.at_level(logging.WARNING, logger="synth"):
        out, e = _render(presets, DiskCache(blocker / "dc"))
    assert np.array_equal(ref, out)
    warnings = [r for r in caplog.records if "disk cache" in r.getMessage()]
    assert len(warnings) == 1 and not e.worker.disk.writable


def test_a_file_size_limit_leaves_the_render_working(presets, tmp_path):
    """RLIMIT_FSIZE below one note: every write fails with EFBIG (Python ignores SIGXFSZ); the render
    goes on with one warning and nothing half-written stays behind."""
    code = (
        "import resource, sys, logging, numpy as np\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "from synth.preset import load_preset_dir\n"
        "from synth.engine import Engine\n"
        "p = load_preset_dir(sys.argv[1])\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "e = Engine(presets=[p], disk_cache=sys.argv[2])\n"
        "n = e.prepare([(0, 60, 100), (0, 64, 100)])\n"
        "e.note_on(0, 60, 100)\n"
        "x = e.render(4800)\n"
        "e.close()\n"
        "print('ok', n, float(np.abs(x).max()) > 0.01, e.worker.disk.writable)\n")
    r = subprocess.run([sys.executable, "-c", code, str(presets[0].path), str(tmp_path / "dc")],
                       capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "2", "True", "False"]
    assert r.stderr.count("disk cache") == 1, r.stderr
    assert not [p for p in (tmp_path / "dc").rglob("*") if p.is_file()]


def test_live_start_from_a_warm_store_generates_nothing(presets, tmp_path):
    dc = tmp_path / "dc"
    piano = presets[0]
    e = Engine(presets=[piano], realtime=True, disk_cache=dc)
    assert e.wait_ready(60)
    deadline = time.monotonic() + 30
    while e.worker.disk_pending and time.monotonic() < deadline:
        time.sleep(0.01)
    keys = {k: e.cache.bank[en.offset:en.offset + en.length].copy() for k, en in e.cache._entries.items()}
    e.close()
    n = len(piano.playable_keys()) * len(piano.velocity_layers)
    assert len(keys) == n and len(_notes(dc)) == n
    e = Engine(presets=[piano], realtime=True, disk_cache=dc)
    assert e.wait_ready(60)
    e.close()
    assert e.worker.generated == 0 and e.worker.disk_hits == n
    assert all(np.array_equal(e.cache.bank[en.offset:en.offset + en.length], keys[k])
               for k, en in e.cache._entries.items())


def test_two_processes_share_one_store(presets, tmp_path):
    """Two renders at once into one folder (both write every note; renames are atomic), then a third
    reads them all back."""
    code = ("import sys, numpy as np\n"
            "from synth.preset import load_preset_dir\n"
            "from synth.engine import Engine\n"
            "e = Engine(presets=[load_preset_dir(sys.argv[1])], disk_cache=sys.argv[2])\n"
            "e.prepare([(0, p, 100) for p in range(48, 73)])\n"
            "e.close()\n"
            "print(e.worker.disk_hits + e.worker.generated)\n")
    args = [sys.executable, "-c", code, str(presets[0].path), str(tmp_path / "dc")]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
             for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split() == ["25"], err
    e = Engine(presets=[presets[0]], disk_cache=tmp_path / "dc")
    e.prepare([(0, p, 100) for p in range(48, 73)])
    assert e.worker.disk_hits == 25 and e.worker.disk.bad == 0
    assert not [p for p in (tmp_path / "dc").rglob(".*") if p.is_file()]   # no temporary file left


def test_options(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert parse_option(None) == default_root() == tmp_path / "xdg" / "neural-synth"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/path")      # XDG: a relative value is ignored
    assert default_root() == Path.home() / ".cache" / "neural-synth"
    assert parse_option("off") is None and parse_option(str(tmp_path)) == tmp_path
    (tmp_path / "f").write_text("")
    for bad in ("", str(tmp_path / "f")):
        with pytest.raises(UserError):
            parse_option(bad)
    with pytest.raises(UserError):
        Engine(presets=[make_tiny_preset(tmp_path / "p")], disk_cache=3)


def test_cli_default_is_on_in_the_user_cache_and_off_keeps_nothing(tiny_preset, tmp_path, monkeypatch):
    import mido

    from synth.render import main

    mid = tmp_path / "in.mid"
    mf = mido.MidiFile()
    mf.tracks.append(mido.MidiTrack([mido.Message("note_on", note=60, velocity=100, time=0),
                                     mido.Message("note_off", note=60, velocity=0, time=240)]))
    mf.save(str(mid))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    base = [str(mid), "--preset", "piano", "--preset-dir", str(tiny_preset.path.parent), "-q", "--no-progress"]
    assert main([*base, "-o", str(tmp_path / "a.wav"), "--disk-cache", "off"]) == 0
    assert not (tmp_path / "xdg").exists()
    assert main([*base, "-o", str(tmp_path / "b.wav")]) == 0
    assert len(_notes(tmp_path / "xdg" / "neural-synth")) == 1
    assert main([*base, "-o", str(tmp_path / "c.wav"), "--disk-cache", str(tmp_path / "mine")]) == 0
    assert len(_notes(tmp_path / "mine")) == 1
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes() == (tmp_path / "c.wav").read_bytes()
    from synth.live import build_parser

    assert build_parser().parse_args(["--disk-cache", "off"]).disk_cache == "off"


def test_notes_generated_inside_render_never_touch_the_disk(presets, tmp_path):
    """Offline, a note `prepare` did not cover is generated inside render(), the audio path: no lookup,
    no write (only `prepare` and the live worker thread use the disk)."""
    e = Engine(presets=presets, disk_cache=tmp_path / "dc")
    e.note_on(0, 60, 100)
    assert np.abs(e.render(4800)).max() > 0.01
    e.close()
    assert e.worker.generated == 1 and e.worker.disk.hits + e.worker.disk.misses + e.worker.disk.stored == 0
    assert not (tmp_path / "dc").exists()


def test_a_scratch_read_gives_the_same_note_and_partials_that_outlive_it(tmp_path):
    """`load(scratch=...)` (the worker's: one buffer for every note) returns what a plain load does,
    and the ringing table it returns is a copy: the next load into the scratch leaves it as it was."""
    d = DiskCache(tmp_path / "dc", cap_bytes=1 << 24)
    rng = np.random.default_rng(0)
    notes, tables = [], []
    for i in range(2):
        x = rng.standard_normal(5_000).astype(np.float32)
        t = (100 + i, 40, 0.5 + i, *(rng.standard_normal(7) for _ in range(4)))
        assert d.store("kb", 60 + i, 127, x, (10.0, 4000.0), t)
        notes.append(x)
        tables.append(t)
    scratch = bytearray(d.scratch_size(6_000))
    x0, loop0, p0 = d.load("kb", 60, 127, 6_000, ring=True, scratch=scratch)
    plain = d.load("kb", 60, 127, 6_000, ring=True)
    assert np.array_equal(x0, notes[0]) and loop0 == plain[1] == (10.0, 4000.0)
    kept = [np.array(v) for v in p0[3:]]
    x1, _, p1 = d.load("kb", 61, 127, 6_000, ring=True, scratch=scratch)
    assert np.array_equal(x1, notes[1]) and not np.array_equal(x0, notes[0])    # x0 was a view
    assert p0[:3] == tables[0][:3] and p1[:3] == tables[1][:3]
    for a, b, c in zip(p0[3:], kept, tables[0][3:], strict=True):
        assert np.array_equal(a, b) and np.allclose(a, c)
