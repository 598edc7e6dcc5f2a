"""Multi-instrument sets (issue 20 item 1): several SoundFonts x programs, 16-bit banks, held-out
SoundFonts, bad input, sample folders with a subfolder per instrument, and the old one-program
command still writing byte for byte what the code before this change wrote."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from synth.errors import UserError
from trainer.cli import main as trainer_main
from trainer.data import OneShotDataset, content_hash
from trainer.data.family import parse_programs
from trainer.data.format import balance_splits
from trainer.data.soundfont import DEFAULT_SOUNDFONT, fluidsynth_version

# fluidsynth, fluid-soundfont-gm, musescore-general-soundfont and timgm6mb-soundfont are system
# dependencies (scripts/system_deps.sh): no skip without them.
MUSESCORE = "/usr/share/sounds/sf3/MuseScore_General.sf3"
TIMGM = "/usr/share/sounds/sf2/TimGM6mb.sf2"
SR = 16000
SMALL = ("--pitches", "48,72", "--velocities", "60,127", "--seconds", "0.5", "--release", "0.2",
         "--sample-rate", str(SR))


def run(*argv: str) -> int:
    return trainer_main(["dataset", "--quiet", *argv])


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """FluidR3 + MuseScore General, programs 0 and 4: 4 instruments x 2 keys x 2 velocities, 16-bit by default."""
    out = tmp_path_factory.mktemp("fam") / "keys"
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", MUSESCORE, "--programs", "0,4", "--out", str(out),
               *SMALL) == 0
    return out


def test_family_instruments_and_note_fields(family, capsys):
    m = json.loads((family / "manifest.json").read_text())
    assert m["version"] == 2 and m["storage"] == "i16" and (family / "notes.i16").exists()
    assert not (family / "notes.f32").exists()
    got = [(i["index"], i["id"], i["name"], i["source"], i["bank"], i["program"], i["gm_kind"], i["notes"])
           for i in m["instruments"]]
    assert got == [(0, "FluidR3_GM:0:0", "Yamaha Grand Piano", "FluidR3_GM.sf2", 0, 0, "piano", 4),
                   (1, "FluidR3_GM:0:4", "Rhodes EP", "FluidR3_GM.sf2", 0, 4, "piano", 4),
                   (2, "MuseScore_General_Full:0:0", "Grand Piano", "MuseScore_General_Full.sf3", 0, 0, "piano", 4),
                   (3, "MuseScore_General_Full:0:4", "Tine Electric Piano", "MuseScore_General_Full.sf3", 0, 4,
                    "piano", 4)]
    assert all(i["held_out"] is False and i["pitch_range"] == [48, 72] for i in m["instruments"])
    ds = OneShotDataset(family)
    assert len(ds) == 16 and ds.info["instruments"] == m["instruments"] and ds.info["storage"] == "i16"
    assert np.bincount(ds.instruments).tolist() == [4, 4, 4, 4]
    for i, n in enumerate(ds.notes):
        inst = m["instruments"][n["instrument_index"]]
        assert (n["soundfont"], n["bank"], n["program"], n["preset"]) == (inst["source"], inst["bank"],
                                                                           inst["program"], inst["name"])
        assert "/" not in n["soundfont"] and n["file"] == "notes.i16"
        item = ds[i]
        assert item["instrument"] == n["instrument_index"] and item["audio"].dtype == np.float32
        assert content_hash(item["audio"]) == n["hash"]  # the hash is of what the loader returns
    # Every instrument in every split (4 notes each: train, valid and test).
    for inst in m["instruments"]:
        assert all(inst["splits"][s] >= 1 for s in ("train", "valid", "test")), inst
        assert sum(inst["splits"].values()) == inst["notes"]
    for split in ("train", "valid", "test"):
        assert sorted(set(OneShotDataset(family, split).instruments.tolist())) == [0, 1, 2, 3]
    # Per-instrument gain: each instrument's loudest note at -1 dBFS.
    for k in range(4):
        peak = np.abs(ds.audio_batch(np.flatnonzero(ds.instruments == k))).max()
        assert 20 * np.log10(peak) == pytest.approx(-1.0, abs=0.01)


def test_family_f32_notes_equal_the_one_program_set(family, tmp_path):
    """An instrument of a family is the one-program set of the same keys: bit for bit as float32,
    and within half a 16-bit step of its own peak as int16."""
    one, fam32 = tmp_path / "one", tmp_path / "fam32"
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--program", "4", "--out", str(one), *SMALL) == 0
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--programs", "4", "--storage", "f32", "--out", str(fam32),
               *SMALL) == 0
    legacy, f32, i16 = OneShotDataset(one), OneShotDataset(fam32), OneShotDataset(family)
    assert "instruments" not in legacy.info and legacy.instrument_list[0]["name"] == "Rhodes EP"
    assert json.loads((fam32 / "manifest.json").read_text())["version"] == 1
    np.testing.assert_array_equal(f32.audio_batch(np.arange(4)), legacy.audio_batch(np.arange(4)))
    assert [n["hash"] for n in f32.notes] == [n["hash"] for n in legacy.notes]
    q = i16.audio_batch(np.flatnonzero(i16.instruments == 1))
    x = legacy.audio_batch(np.arange(4))
    err = np.abs(q - x).max(axis=1) / np.abs(x).max(axis=1)
    assert err.max() <= 0.5 / 32767 * 1.01


def test_held_out_soundfont_is_refused(tmp_path, capsys):
    out = tmp_path / "x"
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", TIMGM, "--programs", "0", "--out", str(out),
               *SMALL) == 2
    err = capsys.readouterr().err
    assert "held out" in err and "--allow-held-out" in err and err.count("\n") == 1
    renamed = tmp_path / "bank.sf2"  # a renamed copy is still TimGM6mb (its INFO bank name says so)
    shutil.copyfile(TIMGM, renamed)
    assert run("--soundfont", str(renamed), "--programs", "0", "--out", str(out), *SMALL) == 2
    assert "held out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.sf2"]
    assert run("--soundfont", TIMGM, "--programs", "0", "--allow-held-out", "--out", str(out), "--pitches", "60",
               "--velocities", "100", "--seconds", "0.5", "--release", "0.1", "--sample-rate", str(SR)) == 0
    inst = OneShotDataset(out).info["instruments"]
    assert [(i["source"], i["held_out"]) for i in inst] == [("TimGM6mb.sf2", True)]
    # The one-program form is no family: capture renders TimGM6mb with it.
    assert run("--soundfont", TIMGM, "--program", "0", "--out", str(tmp_path / "one"), "--pitches", "60",
               "--velocities", "100", "--seconds", "0.5", "--release", "0.1", "--sample-rate", str(SR)) == 0


def _fake_sf2(path: Path) -> None:
    """Valid preset headers (program 0 'Grand') but no instrument data: FluidSynth cannot play it."""
    def chunk(cid: bytes, body: bytes) -> bytes:
        return cid + struct.pack("<I", len(body)) + body + b"\0" * (len(body) % 2)

    phdr = b"".join(struct.pack("<20sHHHIII", name, 0, 0, 0, 0, 0, 0) for name in (b"Grand", b"EOP"))
    body = (b"sfbk" + chunk(b"LIST", b"INFO" + chunk(b"ifil", struct.pack("<HH", 2, 1)))
            + chunk(b"LIST", b"sdta" + chunk(b"smpl", b"\0" * 64)) + chunk(b"LIST", b"pdta" + chunk(b"phdr", phdr)))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("case, words", [
    ("unknown program", "no program 4 in bank 9"),
    ("missing file", "SoundFont not found"),
    ("same file twice", "the same SoundFont as"),
    ("bad programs", "is not a program or range"),
    ("fails while rendering", "fake.sf2"),
    ("one program, fails while rendering", "FluidSynth cannot load this SoundFont"),
])
def test_bad_family_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, words):
    out = tmp_path / "set"
    args = {"unknown program": ("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", MUSESCORE, "--programs", "0,9:4"),
            "missing file": ("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", str(tmp_path / "nope.sf2")),
            "same file twice": ("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", "/usr/share/sounds/sf2/../sf2/"
                                "FluidR3_GM.sf2"),
            "bad programs": ("--programs", "0-x"),
            "fails while rendering": ("--soundfont", DEFAULT_SOUNDFONT, "--soundfont", str(tmp_path / "fake.sf2"),
                                      "--programs", "0"),
            # FluidSynth exits 0 (and would play its default SoundFont) when one does not load: an error.
            "one program, fails while rendering": ("--soundfont", str(tmp_path / "fake.sf2"), "--program", "0")}[case]
    if "fails while rendering" in case:
        _fake_sf2(tmp_path / "fake.sf2")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run(*args, "--out", str(out), *SMALL) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no set, no temporary folder


def test_failed_family_keeps_the_old_set(family, tmp_path, capsys):
    out = tmp_path / "set"
    shutil.copytree(family, out)
    before = (out / "manifest.json").read_bytes()
    assert run("--soundfont", DEFAULT_SOUNDFONT, "--programs", "9:4", "--out", str(out), "--force", *SMALL) == 2
    assert (out / "manifest.json").read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_parse_programs():
    assert parse_programs("0-7,16", 0) == [(0, p) for p in range(8)] + [(0, 16)]
    assert parse_programs("4, 8:4, 4,8:0-1", 0) == [(0, 4), (8, 4), (8, 0), (8, 1)]
    assert parse_programs("3", 8) == [(8, 3)]
    for bad in ("", "x", "7-3", "0-128", "129:0", "1:2:3"):
        with pytest.raises(UserError, match="--programs"):
            parse_programs(bad, 0)


def test_balance_splits_gives_every_instrument_each_split():
    def note(inst: int, u: float) -> dict:
        h = f"{int(u * 2**32):08x}" + "0" * 8
        return {"instrument_index": inst, "hash": h, "source": f"{inst}:{u}",
                "split": "train" if u < 0.9 else "valid" if u < 0.95 else "test"}

    a = [note(0, u) for u in (0.1, 0.5, 0.8, 0.85)]       # all train: 0.85 -> test, 0.8 -> valid
    b = [note(1, 0.97)]                                    # one note, in test: it must train
    c = [note(2, u) for u in (0.2, 0.3, 0.92, 0.96)]      # already in every split: untouched
    moved = balance_splits(a + b + c)
    assert [(n["source"], n["split"]) for n in moved] == [("0:0.85", "test"), ("0:0.8", "valid"), ("1:0.97", "train")]
    assert [n["split"] for n in c] == ["train", "train", "valid", "test"] and not any("split_moved" in n for n in c)
    assert [n["split"] for n in a] == ["train", "train", "valid", "test"]


# --- the one-program command writes what the code before issue 20 wrote ---------------------------

# sha256 of the files that /tmp/base (the tree before this change) wrote for these commands, with
# --out spelled OUT in manifest.json; FluidSynth 2.3.1 and Debian's fluid-soundfont-gm 3.1.
PINNED_RENDERER = "FluidSynth runtime version 2.3.1"
PINNED = {
    "program": (("--soundfont", DEFAULT_SOUNDFONT, "--program", "4", "--pitches", "40,64,88", "--velocities",
                 "60,127", "--seconds", "0.5", "--release", "0.2", "--sample-rate", "16000"),
                {"notes.f32": "a3eb92d2d272255d17cbded22d27f2193eee94e2201a77d569a4de60e38f5d57",
                 "report.json": "08ab201f8034136da4c7ab7db9b14e0cc457a3fa8e588d2fe32d71034960cad9",
                 "manifest.json": "28b9cdb76b96abbb52627289b826f6a91586d17ec6e3bbf8b807c544b1aea0d1"}),
    "drums": (("--drums", "--pitches", "36,38,42", "--velocities", "100", "--seconds", "0.5", "--release", "0.1",
               "--sample-rate", "16000"),
              {"notes.f32": "a7127da997ac64868d4e90c958fe57b9587d805211a087f21d30dc7d92f2ac6d",
               "report.json": "e185405031f9430df556acb32980c1ac3d943ef1fd6877cdcf1cdf85881d874c",
               "manifest.json": "ebfaf8e56475917a29f98d52de178a1e0a19fdcc20163f9a0fb7f01f5501dc17"}),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_one_program_command_is_byte_identical_to_the_old_code(tmp_path, name, capsys):
    if fluidsynth_version() != PINNED_RENDERER:
        pytest.skip(f"hashes pinned with {PINNED_RENDERER}, this machine has {fluidsynth_version()}")
    argv, want = PINNED[name]
    out = tmp_path / "OUT"
    assert trainer_main(["dataset", "--quiet", *argv, "--out", str(out)]) == 0
    got = {f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in ("notes.f32", "report.json")}
    got["manifest.json"] = hashlib.sha256((out / "manifest.json").read_text().replace(str(out), "OUT")
                                          .encode()).hexdigest()
    assert got == want
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.f32", "report.json"]


# --- sample folder: one subfolder per instrument ----------------------------------------------------

def _tone(f0: float, seconds: float = 0.4) -> np.ndarray:
    t = np.arange(int(SR * seconds)) / SR
    return sum(0.3 / k * np.sin(2 * np.pi * f0 * k * t) for k in range(1, 5)) * np.exp(-3 * t)


def test_folder_by_subfolder(tmp_path, capsys):
    src, out = tmp_path / "keys", tmp_path / "ds"
    for sub, f0 in (("rhodes", 1.0), ("wurli", 1.01)):
        (src / sub).mkdir(parents=True)
        for name, hz in (("C4", 261.63), ("A4", 440.0)):
            sf.write(src / sub / f"{sub}_{name}.wav", _tone(hz * f0), SR)
    (src / "broken").mkdir()
    (src / "broken" / "x_C4.wav").write_bytes(b"")
    sf.write(src / "loose_C4.wav", _tone(261.63), SR)
    assert run("--from-folder", str(src), "--by-subfolder", "--out", str(out), "--seconds", "0.5",
               "--sample-rate", str(SR)) == 0
    assert "2 instruments, 4 notes" in capsys.readouterr().out
    ds = OneShotDataset(out)
    assert [(i["index"], i["name"], i["source"], i["notes"]) for i in ds.info["instruments"]] == [
        (0, "rhodes", "keys/rhodes", 2), (1, "wurli", "keys/wurli", 2)]
    assert {(n["instrument_folder"], n["instrument_index"]) for n in ds.notes} == {("rhodes", 0), ("wurli", 1)}
    report = json.loads((out / "report.json").read_text())
    assert {s["file"] for s in report["skipped"]} == {"loose_C4.wav", "broken/x_C4.wav"}
    assert any(w["file"] == "broken" and "not an instrument" in w["message"] for w in report["warnings"])
    for inst in ds.info["instruments"]:  # two notes: train and test
        assert inst["splits"]["train"] >= 1 and inst["splits"]["test"] >= 1


def test_soundfont_only_flags_refused_elsewhere(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    for flags, words in ((("--programs", "0-7"), "--programs applies to SoundFont renders"),
                         (("--key-step", "2"), "--key-step applies to SoundFont renders")):
        assert run("--from-folder", str(tmp_path / "s"), *flags, "--out", str(tmp_path / "o")) == 2
        assert words in capsys.readouterr().err
    assert run("--by-subfolder", "--out", str(tmp_path / "o")) == 2
    assert "--by-subfolder applies to --from-folder" in capsys.readouterr().err
