"""Dataset folder format and loader: round trip, splits, pickling, corrupt folders."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from synth.errors import UserError
from trainer.data import OneShotDataset, content_hash, split_of
from trainer.data.format import BANK, BANK_I16, GM_DRUMS, MANIFEST, DatasetWriter, quantize_i16

SR, N = 8000, 800


def _tone(pitch: int, vel: int) -> np.ndarray:
    t = np.arange(N) / SR
    f = 440.0 * 2 ** ((pitch - 69) / 12)
    return (vel / 127 * 0.5 * np.sin(2 * np.pi * f * t) * np.exp(-3 * t)).astype(np.float32)


def _build(folder, kind="pitched", gain=1.0):
    folder.mkdir()
    w = DatasetWriter(folder, SR, N, kind)
    if kind == "pitched":
        for p in range(48, 60):
            for v in (40, 100):
                w.add(_tone(p, v), pitch=p, velocity=v, source=f"tone:{p}:{v}", duration=0.1)
        w.add(_tone(50, 40), pitch=50, velocity=40, source="dup", duration=0.1)
        w.finalize(gain=gain)
    else:
        for k in (36, 38, 42):
            w.add(_tone(k, 100), pitch=k, velocity=None, source=f"key{k}", duration=0.1, cls=GM_DRUMS[k])
        w.finalize(drum_classes={str(k): v for k, v in GM_DRUMS.items()})
    return folder


def test_round_trip_and_splits(tmp_path):
    root = _build(tmp_path / "ds", gain=0.5)
    ds = OneShotDataset(root)
    assert len(ds) == 24  # the exact duplicate was dropped
    report = json.loads((root / "report.json").read_text())
    assert report["skipped"] == [{"file": "dup", "reason": "exact duplicate of tone:50:40"}]
    assert ds.info["n_notes"] == 24 and ds.info["velocities"] == [40, 100] and ds.info["pitch_range"] == [48, 59]
    assert (root / BANK).stat().st_size == 24 * N * 4
    for i in range(len(ds)):
        item = ds[i]
        note = ds.notes[i]
        want = _tone(note["pitch"], note["velocity"]) * np.float32(0.5)
        np.testing.assert_array_equal(item["audio"], want)
        assert item["audio"].dtype == np.float32 and item["audio"].shape == (N,)
        assert item["velocity"] == pytest.approx(note["velocity"] / 127)
        assert item["cls"] == -1
        assert note["hash"] == content_hash(item["audio"]) and note["split"] == split_of(note["hash"])
    parts = [OneShotDataset(root, s) for s in ("train", "valid", "test")]
    assert sum(len(p) for p in parts) == len(ds)
    assert {n["hash"] for p in parts for n in p.notes} == {n["hash"] for n in ds.notes}
    # Determinism: the same content always lands in the same split, whatever else is in the set.
    assert [split_of(content_hash(_tone(p, 100) * np.float32(0.5))) for p in range(48, 60)] == \
        [next(n["split"] for n in ds.notes if n["pitch"] == p and n["velocity"] == 100) for p in range(48, 60)]
    fractions = np.array([split_of(f"{h:08x}") for h in np.linspace(0, 2**32 - 1, 2000).astype(np.int64)])
    assert abs((fractions == "train").mean() - 0.90) < 0.01 and abs((fractions == "test").mean() - 0.05) < 0.01


def test_pickles_lazily_and_batches(tmp_path):
    ds = OneShotDataset(_build(tmp_path / "ds"), "train")
    _ = ds[0]
    assert ds._bank is not None
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._bank is None and len(pickle.dumps(ds)) < 50_000
    np.testing.assert_array_equal(clone[1]["audio"], ds[1]["audio"])
    np.testing.assert_array_equal(ds.audio_batch([0, 1])[1], ds[1]["audio"])


def test_drum_classes(tmp_path):
    ds = OneShotDataset(_build(tmp_path / "ds", kind="drums"))
    assert ds.info["class_names"] == ["kick", "snare", "hat_closed"]
    assert ds.info["drum_classes"] == {"36": "kick", "38": "snare", "42": "hat_closed"}
    got = {ds[i]["pitch"]: (ds[i]["cls"], ds[i]["velocity"]) for i in range(len(ds))}
    assert got == {36: (0, 1.0), 38: (1, 1.0), 42: (2, 1.0)}


@pytest.mark.parametrize("damage, words", [
    (lambda r: (r / MANIFEST).unlink(), "manifest.json: missing"),
    (lambda r: (r / MANIFEST).write_text('{"format": "neural-synth-dataset", "vers'), "corrupt JSON"),
    (lambda r: (r / MANIFEST).write_text('{"format": "other"}'), "not a neural-synth-dataset"),
    (lambda r: (r / BANK).unlink(), "notes.f32: audio bank missing"),
    (lambda r: open(r / BANK, "rb+").truncate(N * 4 * 3 + 10), "not a whole number"),
    (lambda r: open(r / BANK, "rb+").truncate(N * 4 * 3), "points past"),
])
def test_corrupt_folder_is_a_user_error(tmp_path, damage, words):
    root = _build(tmp_path / "ds")
    damage(root)
    with pytest.raises(UserError, match=words):
        OneShotDataset(root)


def test_torch_dataloader_workers(tmp_path):
    import torch
    ds = OneShotDataset(_build(tmp_path / "ds"))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=False)
    batches = list(loader)
    assert sum(len(b["pitch"]) for b in batches) == len(ds)
    assert batches[0]["audio"].shape == (8, N) and batches[0]["audio"].dtype == torch.float32
    np.testing.assert_array_equal(batches[1]["audio"][0].numpy(), ds[8]["audio"])


# --- 16-bit banks (notes.i16, manifest version 2) and instrument lists -----------------------------

def _build_i16(folder, note_gains=None):
    folder.mkdir()
    w = DatasetWriter(folder, SR, N, "pitched", "i16")
    for k, p in enumerate(range(48, 54)):
        for v in (20, 100):
            w.add(_tone(p, v), pitch=p, velocity=v, source=f"tone:{p}:{v}", duration=0.1, instrument_index=k % 2)
    w.add(np.zeros(N, np.float32), pitch=60, velocity=1, source="silence", duration=0.0, instrument_index=0)
    w.finalize(note_gains=note_gains, instruments=[{"id": "a", "name": "A"}, {"id": "b", "name": "B"}])
    return folder


def test_i16_round_trip(tmp_path):
    gains = [0.5 if i % 2 else 2.0 for i in range(13)]
    root = _build_i16(tmp_path / "ds", gains)
    m = json.loads((root / MANIFEST).read_text())
    assert m["version"] == 2 and m["storage"] == "i16" and not (root / BANK).exists()
    assert (root / BANK_I16).stat().st_size == 13 * N * 2
    ds = OneShotDataset(root)
    assert ds.info["storage"] == "i16" and len(ds) == 13
    for i, note in enumerate(ds.notes):
        item = ds[i]
        want = np.zeros(N, np.float32) if note["source"] == "silence" else \
            _tone(note["pitch"], note["velocity"]) * np.float32(gains[i])
        # Within half a 16-bit step of the note's own peak, quiet velocities included.
        assert np.abs(item["audio"] - want).max() <= 0.5 / 32767 * max(np.abs(want).max(), 1e-30) * 1.01
        assert item["audio"].dtype == np.float32 and note["file"] == BANK_I16
        assert note["hash"] == content_hash(item["audio"])
        np.testing.assert_array_equal(ds.audio_batch([i])[0], item["audio"])
    # pickling and splits work as for float32
    train = OneShotDataset(root, "train")
    clone = pickle.loads(pickle.dumps(train))
    np.testing.assert_array_equal(clone.audio_batch([0, 1]), train.audio_batch([0, 1]))
    assert [i["notes"] for i in ds.info["instruments"]] == [7, 6] and ds.instruments.tolist() == \
        [n["instrument_index"] for n in ds.notes]


def test_quantize_i16_is_exact_at_the_peak_and_deterministic():
    x = _tone(60, 10)
    q, scale = quantize_i16(x)
    assert q.dtype == np.dtype("<i2") and int(np.abs(q).max()) == 32767
    assert np.abs(q.astype(np.float32) * np.float32(scale) - x).max() <= 0.5 * scale * 1.001
    q2, scale2 = quantize_i16(x.copy())
    assert scale2 == scale and q2.tobytes() == q.tobytes()
    assert quantize_i16(np.zeros(8, np.float32))[1] == 0.0


def test_duplicates_are_dropped_within_an_instrument_only(tmp_path):
    (tmp_path / "ds").mkdir()
    w = DatasetWriter(tmp_path / "ds", SR, N, "pitched")
    for inst in (0, 1, 1):
        w.add(_tone(60, 100), pitch=60, velocity=100, source=f"i{inst}", duration=0.1, instrument_index=inst)
    w.finalize(instruments=[{"id": "a"}, {"id": "b"}])
    ds = OneShotDataset(tmp_path / "ds")
    assert [n["instrument_index"] for n in ds.notes] == [0, 1]
    assert json.loads((tmp_path / "ds" / "report.json").read_text())["skipped"] == [
        {"file": "i1", "reason": "exact duplicate of i1"}]


def _edit_manifest(root, fn):
    m = json.loads((root / MANIFEST).read_text())
    fn(m)
    (root / MANIFEST).write_text(json.dumps(m))


@pytest.mark.parametrize("edit, words", [
    (lambda m: m.pop("storage"), "storage None"),
    (lambda m: m.update(version=3), "format version 3"),
    (lambda m: m["notes"][0].pop("scale"), "lacks file/offset/pitch/split/scale"),
    (lambda m: m["notes"][0].update(instrument_index=5), "instrument_index 5"),
    (lambda m: m.update(instruments="x"), "not a list"),
    (lambda m: m["notes"][0].update(file="notes.f32"), "expected notes.i16"),
])
def test_bad_i16_manifest_is_a_user_error(tmp_path, edit, words):
    root = _build_i16(tmp_path / "ds")
    _edit_manifest(root, edit)
    with pytest.raises(UserError, match=words):
        OneShotDataset(root)


def test_truncated_i16_bank(tmp_path):
    root = _build_i16(tmp_path / "ds")
    with open(root / BANK_I16, "rb+") as f:
        f.truncate(N * 2 * 3 + 1)
    with pytest.raises(UserError, match="not a whole number"):
        OneShotDataset(root)
