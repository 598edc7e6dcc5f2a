"""`synth bake`: SoundFont 2 and SFZ output, proven by real players (FluidSynth, sfzlint) and parsers.

Tiny ONNX presets (synth/testing/tinymodel.py) keep these fast: 1-s notes at 16 kHz, 25 keys. The SoundFont
is read back three ways: FluidSynth plays it (pitch, level, loops, release, velocity zones),
`trainer.data.soundfont.read_presets` lists its presets, and `read_sf2` below walks its RIFF chunks.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pytest
import soundfile as sf

from synth import __version__
from synth.bake import ENV_DB
from synth.cli import main as cli_main
from synth.engine import release_span
from synth.testing.tinymodel import make_tiny_preset
from synth.voices import RELEASE_END_DB

ROOT = Path(__file__).resolve().parent.parent
FLUID = shutil.which("fluidsynth")
RATE = 48000
FLUID_GAIN = 0.2 / math.sqrt(2)   # FluidSynth, measured: a voice of amplitude 1 sums to this in power over L, R (synth.gain 0.2)
NO_KIT = "No preset found on channel 9 [bank=128 prog=0]"   # FluidSynth's only line for a bank without a kit


@pytest.fixture(scope="module")
def presets(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bake") / "presets"
    make_tiny_preset(d, "piano", pitch_range=(48, 72))
    make_tiny_preset(d, "strings", sustain_mode="loop", pitch_range=(48, 72), release_seconds=0.1, seed=3)
    make_tiny_preset(d, "marimba", pitch_range=(60, 72), seed=5)
    make_tiny_preset(d, "drums", kind="drums")
    make_tiny_preset(d, "organ", velocity_conditioned=False, pitch_range=(48, 60))
    return d


def bake(presets: Path, out: Path, *args: str) -> None:
    """`synth bake` of the preset named by `out`'s stem (piano for any other name), or `--all`."""
    which = [] if "--all" in args else ["--preset", out.stem if out.stem in ("strings", "drums", "organ") else "piano"]
    rc = cli_main(["bake", "--preset-dir", str(presets), *which, "-o", str(out), "-q", *args])
    assert rc == 0


# ---- reading a SoundFont back ---------------------------------------------------------------------------
def read_sf2(path: Path) -> dict:
    """The chunks of a SoundFont: INFO texts, sample point counts, and the pdta records as tuples."""
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"sfbk" and struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    out: dict = {"info": {}}
    pos = 12
    while pos < len(data):
        cid, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        assert cid == b"LIST"
        kind, sub, end = data[pos + 8:pos + 12], pos + 12, pos + 8 + size
        while sub < end:
            sid, ssize = data[sub:sub + 4].decode(), struct.unpack_from("<I", data, sub + 4)[0]
            body = data[sub + 8:sub + 8 + ssize]
            if kind == b"INFO":
                out["info"][sid] = body if sid == "ifil" else body.rstrip(b"\0").decode()
            elif kind == b"sdta":
                out[sid] = body
            else:
                fmt = {"phdr": "<20sHHHIII", "pbag": "<HH", "pmod": "<HHhHH", "pgen": "<HH", "inst": "<20sH",
                       "ibag": "<HH", "imod": "<HHhHH", "igen": "<HH", "shdr": "<20sIIIIIBbHH"}[sid]
                out[sid] = list(struct.iter_unpack(fmt, body))
            sub += 8 + ssize + (ssize & 1)
        pos = end + (size & 1)
    return out


def zones(sf: dict, level: str, first: int, last: int) -> list[dict]:
    """Zones first..last-1 of the preset ('p') or instrument ('i') level: {op: amount, 'mods': [...]}."""
    bags, gens, mods = sf[f"{level}bag"], sf[f"{level}gen"], sf[f"{level}mod"]
    out = []
    for b in range(first, last):
        z: dict = {"mods": mods[bags[b][1]:bags[b + 1][1]]}
        for op, amount in gens[bags[b][0]:bags[b + 1][0]]:
            z[op] = amount
        out.append(z)
    return out


def lohi(amount: int) -> tuple[int, int]:
    return amount & 0xFF, amount >> 8


def signed(amount: int) -> int:
    return amount - 65536 if amount >= 32768 else amount


# ---- playing it ------------------------------------------------------------------------------------------
def midi_file(path: Path, notes: list[tuple[float, float, int, int, int]], program: dict | None = None) -> None:
    """notes: (on s, off s, channel, key, velocity), 960 ticks a second."""
    ev = [(0, 0, mido.Message("program_change", channel=ch, program=pg)) for ch, pg in (program or {}).items()]
    for on, off, ch, key, vel in notes:
        ev += [(round(on * 960), 1, mido.Message("note_on", channel=ch, note=key, velocity=vel)),
               (round(off * 960), 0, mido.Message("note_off", channel=ch, note=key))]
    ev.sort(key=lambda e: (e[0], e[1]))
    mf = mido.MidiFile(type=0, ticks_per_beat=480)
    tr = mido.MidiTrack()
    mf.tracks.append(tr)
    tr.append(mido.MetaMessage("set_tempo", tempo=500_000, time=0))
    last = 0
    for t, _, m in ev:
        tr.append(m.copy(time=t - last))
        last = t
    mf.save(str(path))


def fluid(sf2: Path, mid: Path, tmp: Path) -> tuple[np.ndarray, list[str]]:
    """`fluidsynth -ni -R 0 -C 0 -F out.wav -r 48000 sf2 mid` (float samples): (audio [N, 2], stderr lines)."""
    wav = tmp / "fluid.wav"
    r = subprocess.run([FLUID, "-ni", "-R", "0", "-C", "0", "-O", "float", "-F", str(wav), "-r", str(RATE), str(sf2),
                        str(mid)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    x, sr = sf.read(str(wav), dtype="float64", always_2d=True)
    assert sr == RATE
    return x, [ln for ln in r.stderr.splitlines() if ln.strip()]


def level_db(x: np.ndarray, t0: float, t1: float) -> float:
    """RMS of sqrt(L^2 + R^2) over t0..t1 s, dB (pan-independent under a constant-power pan law)."""
    seg = x[int(t0 * RATE):int(t1 * RATE)]
    return 10 * math.log10(np.mean(np.sum(seg ** 2, axis=1)) + 1e-30)


def f0_hz(x: np.ndarray, t0: float, t1: float) -> float:
    """The strongest spectral peak of the mono sum over t0..t1 s, parabolically interpolated."""
    seg = x[int(t0 * RATE):int(t1 * RATE)].sum(axis=1)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 8 * len(seg)))
    i = int(np.argmax(spec[1:])) + 1
    a, b, c = np.log(spec[i - 1:i + 2] + 1e-30)
    return (i + 0.5 * (a - c) / (a - 2 * b + c)) * RATE / (8 * len(seg))


def engine_note(preset_dir: Path, name: str, key: int, layer: int, knobs=()) -> np.ndarray:
    """The engine's note for (key, layer): the generator at the knob state, as the bake makes it."""
    from synth.inference import GeneratorSession
    from synth.latent import LatentMapper
    from synth.preset import find_preset

    p = find_preset(name, [preset_dir])
    m = LatentMapper(p)
    kk = m.default_key
    for cc, v in knobs:
        kk = m.with_cc(kk, cc, v)
    sess = GeneratorSession(p, threads=1, warmup=False)
    return sess.generate(m.latent(kk)[None], np.array([key], np.int64), np.array([layer / 127], np.float32))[0]


# ---- structure -------------------------------------------------------------------------------------------
def test_sf2_structure_read_back(presets, tmp_path):
    """The bank reads back as written: presets (trainer's parser), samples with their root keys, key
    and velocity zones covering 0..127 x 1..127, the default velocity modulators overridden, provenance."""
    from synth.bake import plan_layers
    from synth.preset import find_preset
    from trainer.data.soundfont import read_presets

    out = tmp_path / "piano.sf2"
    bake(presets, out, "--knob", "74=0.25")
    assert [(p.name, p.program, p.bank) for p in read_presets(out)] == [("piano", 0, 0)]
    s = read_sf2(out)
    assert struct.unpack("<HH", s["info"]["ifil"]) == (2, 4)        # 24 bits by default: SoundFont 2.04
    assert s["info"]["ISFT"] == f"neural-synth {__version__}" and s["info"]["INAM"] == "neural-synth piano"
    icmt = s["info"]["ICMT"]
    assert f"neural-synth {__version__}" in icmt and "74=32(brightness)" in icmt and "70=64(colour)" in icmt
    assert "layers 32 64 96 127" in icmt and "engine settings:" in icmt
    assert len(s["sm24"]) == len(s["smpl"]) // 2
    p = find_preset("piano", [presets])
    layers = plan_layers(p)
    keys = list(range(48, 73))
    shdr = s["shdr"][:-1]
    assert len(shdr) == len(keys) * len(layers)
    assert sorted(h[6] for h in shdr) == sorted(keys * len(layers))            # originalPitch = the key
    assert {h[5] for h in shdr} == {16000} and {h[7] for h in shdr} == {0}   # rate, pitch correction
    assert all(h[2] - h[1] == 16000 for h in shdr)                           # one-shot: the whole 1-s note
    inst = zones(s, "i", 0, s["inst"][1][1])
    glob, local = inst[0], inst[1:]
    # releaseVolEnv: the engine's release, 100 dB in 10/3 x release_seconds (30 dB in release_seconds)
    assert 53 not in glob and signed(glob[38]) == round(1200 * math.log2(release_span(0.05)))
    assert ENV_DB == RELEASE_END_DB and math.isclose(release_span(0.05), 0.05 * 100 / 30)
    assert sorted((m[0], m[1], m[2], m[3]) for m in glob["mods"]) == sorted(
        [(0x0502, 48, 0, 0), (0x0102, 8, 0, 0), (0x0102, 8, 0, 0x0C02)])      # SF2.04 8.4.2 defaults, amount 0
    for la in layers:
        spans = sorted(lohi(z[43]) for z in local if lohi(z[44]) == (la.lo, la.hi))
        assert spans[0][0] == 0 and spans[-1][1] == 127 and len(spans) == len(keys)
        assert all(a[1] + 1 == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(z[58] == shdr[z[53]][6] and 54 not in z for z in local)       # root key; no loop
    assert [signed(z[17]) for z in local[:1]] == [round(500 * (0.6 * (48 - 64) / 64))]
    pz = zones(s, "p", 0, len(s["pbag"]) - 1)
    assert sorted(lohi(z[44]) for z in pz) == [(v, v) for v in range(1, 128)]   # one zone per velocity
    tops = {la.hi for la in layers}
    assert all((not z["mods"]) == (lohi(z[44])[0] in tops) for z in pz)


def test_gm_routing_table():
    from synth import gm

    assert len(gm.PROGRAMS) == 128 and len(gm.FAMILIES) == 16
    assert gm.PROGRAMS[0] == "Acoustic Grand Piano" and gm.PROGRAMS[12] == "Marimba" and gm.PROGRAMS[127] == "Gunshot"
    assert gm.family_of(48) == 6 and gm.FAMILIES[gm.family_of(12)] == "Chromatic Percussion"
    assert list(gm.group_programs(48)) == list(range(40, 56)) and list(gm.group_programs(3)) == list(range(8))
    with pytest.raises(ValueError):
        gm.family_of(128)


def test_gm_bank_routes_families_and_plays_clean(presets, tmp_path, monkeypatch):
    """`bake --all`: piano 0-7, marimba 8-15, strings 40-55, the kit on bank 128; the unconditioned
    organ has a GM program too (16-23). FluidSynth loads it without a word and each program plays its
    preset (strings loop, the others stop with their 1-s sample)."""
    from trainer.data.soundfont import read_presets

    monkeypatch.setattr("synth.preset.REPO_PRESETS", tmp_path / "none")   # only the test's presets installed

    out = tmp_path / "gm.sf2"
    bake(presets, out, "--all")
    slots = {(p.bank, p.program): p.name for p in read_presets(out)}
    assert {k for k in slots if k[0] == 0} == {(0, p) for p in [*range(16), *range(16, 24), *range(40, 56)]}
    assert slots[(128, 0)] == "Standard Kit" and slots[(0, 12)] == "Marimba" and slots[(0, 48)] == "String Ensemble 1"
    s = read_sf2(out)
    names = [i[0].rstrip(b"\0").decode() for i in s["inst"][:-1]]
    assert sorted(names) == ["drums", "marimba", "organ", "piano", "strings"]
    phdr = {(h[2], h[1]): h for h in s["phdr"][:-1]}
    bag_of = {(b, p): phdr[(b, p)][3] for b, p in phdr}
    inst_of = lambda bank, prog: names[s["pgen"][s["pbag"][bag_of[(bank, prog)]][0] + 1][1]]  # noqa: E731
    assert inst_of(0, 0) == inst_of(0, 7) == "piano" and inst_of(0, 40) == inst_of(0, 55) == "strings"
    assert inst_of(0, 8) == "marimba" and inst_of(128, 0) == "drums"
    mid = tmp_path / "gm.mid"
    for prog, holds in ((48, True), (0, False), (12, False), (20, False)):
        midi_file(mid, [(0.1, 2.5, 0, 60, 100)], {0: prog})
        x, err = fluid(out, mid, tmp_path)
        assert err == []
        assert (level_db(x, 2.0, 2.4) > level_db(x, 0.3, 0.7) - 3) == holds, prog   # only strings loop
        assert level_db(x, 0.3, 0.7) > -60
    midi_file(mid, [(0.1, 0.2, 9, 38, 100)])
    x, _ = fluid(out, mid, tmp_path)
    assert level_db(x, 0.1, 0.3) > -60


# ---- FluidSynth round trips ------------------------------------------------------------------------------
def test_fluidsynth_plays_pitch_and_baked_level_at_every_velocity(presets, tmp_path):
    """Each note comes out at its key's pitch, and at the engine's level: the layer's note at its own
    velocity, the bridge gain (v/layer)^curve between layers, with no second velocity curve from
    SoundFont's defaults (they would take 24 dB off velocity 32)."""
    from synth.bake import bridge_gain, plan_layers
    from synth.preset import find_preset

    out = tmp_path / "piano.sf2"
    knobs = [(74, 0)]                     # the tiny model's fundamental alone: its spectral peak is the pitch
    bake(presets, out, "--knob", "74=0")
    p = find_preset("piano", [presets])
    layers = plan_layers(p)
    cases = [(48, 127), (60, 32), (60, 64), (60, 96), (60, 127), (67, 48), (72, 80), (72, 112), (55, 1), (40, 100),
             (90, 127)]
    mid = tmp_path / "n.mid"
    midi_file(mid, [(0.5 + 1.5 * i, 1.3 + 1.5 * i, 0, k, v) for i, (k, v) in enumerate(cases)])
    x, err = fluid(out, mid, tmp_path)
    assert err == [f"fluidsynth: warning: {NO_KIT}"], err
    for i, (key, vel) in enumerate(cases):
        t0 = 0.5 + 1.5 * i + 0.05
        want_hz = 440 * 2 ** ((key - 69) / 12)
        assert abs(1200 * math.log2(f0_hz(x, t0, t0 + 0.25) / want_hz)) < 5, (key, vel)
        if not 48 <= key <= 72:
            continue              # played from the nearest key, transposed: the same pitch rule, another length
        layer = min((la.velocity for la in layers), key=lambda v: (abs(v - vel), -v))
        src = engine_note(presets, "piano", key, layer, knobs)
        n = src[int(0.05 * 16000):int(0.55 * 16000)]
        want = 20 * math.log10(np.sqrt(np.mean(n.astype(np.float64) ** 2)) * FLUID_GAIN * bridge_gain(p, vel, layer))
        assert level_db(x, t0, t0 + 0.5) == pytest.approx(want, abs=0.3), (key, vel)


def test_loop_mode_sustains_while_held_and_releases(presets, tmp_path):
    """A loop-mode preset's 1-s note holds for 3 s at a steady level (the engine's loop, sampleModes 1)
    and falls after the key is released; a one-shot preset stops where its sample ends."""
    for name in ("strings", "piano"):
        out = tmp_path / f"{name}.sf2"
        bake(presets, out)
        s = read_sf2(out)
        loops = [z for z in zones(s, "i", 1, len(s["ibag"]) - 1)]
        assert all((z.get(54) == 1) == (name == "strings") for z in loops)
        mid = tmp_path / "held.mid"
        midi_file(mid, [(0.2, 3.2, 0, 60, 127)])
        x, _ = fluid(out, mid, tmp_path)
        early, late = level_db(x, 0.5, 0.9), level_db(x, 2.6, 3.1)
        if name == "strings":
            assert abs(late - early) < 1.5
            assert level_db(x, 3.5, 3.8) < early - 25                 # released (0.1 s preset release)
            for h in s["shdr"][:-1]:
                assert h[1] < h[3] < h[4] <= h[2] - 8                # loop inside the sample, 8 guard points
        else:
            assert late < early - 60


def test_drum_kit_on_bank_128_plays_out(presets, tmp_path):
    """A kit bakes to bank 128 (GM channel 10) and 0:0; its hits play out after an early note-off."""
    from trainer.data.soundfont import read_presets

    out = tmp_path / "drums.sf2"
    bake(presets, out)
    assert sorted((p.bank, p.program) for p in read_presets(out)) == [(0, 0), (128, 0)]
    mid = tmp_path / "d.mid"
    midi_file(mid, [(0.2, 0.25, 9, 38, 127), (1.5, 1.55, 9, 61, 127)])
    x, err = fluid(out, mid, tmp_path)
    assert err == []
    # The hit rings on past its note-off at its own decay (29 dB/s here), not a release's.
    assert level_db(x, 0.5, 0.7) > level_db(x, 0.22, 0.25) - 16
    assert level_db(x, 1.6, 1.9) < -100                                     # key 61 is no kit key: silence


def test_16_and_24_bits_play_alike(presets, tmp_path):
    bake(presets, tmp_path / "p16.sf2", "--bits", "16")
    bake(presets, tmp_path / "p24.sf2")
    s16, s24 = read_sf2(tmp_path / "p16.sf2"), read_sf2(tmp_path / "p24.sf2")
    assert "sm24" not in s16 and struct.unpack("<HH", s16["info"]["ifil"]) == (2, 1)
    hi16, hi24 = (np.frombuffer(x["smpl"], "<i2").astype(int) for x in (s16, s24))
    assert np.abs(hi16 - hi24).max() <= 1                                  # the same samples, to 1 LSB
    mid = tmp_path / "n.mid"
    midi_file(mid, [(0.2, 1.0, 0, 60, 100)])
    a, _ = fluid(tmp_path / "p16.sf2", mid, tmp_path)
    b, _ = fluid(tmp_path / "p24.sf2", mid, tmp_path)
    assert level_db(a - b, 0.2, 1.0) < level_db(b, 0.2, 1.0) - 80           # the low byte: -96 dB and below


def test_loop_tail_keeps_decaying_past_the_cap(presets, tmp_path):
    """--max-seconds 0.5 --loop-tail: half the samples, and a held note keeps falling at its own rate
    (the tiny piano decays 29 dB/s) past the cap instead of stopping."""
    out = tmp_path / "tail.sf2"
    bake(presets, out, "--max-seconds", "0.5", "--loop-tail")
    s = read_sf2(out)
    assert all(h[2] - h[1] <= 8000 + 8 and h[3] < h[4] for h in s["shdr"][:-1])
    local = zones(s, "i", 1, len(s["ibag"]) - 1)
    assert all(z[54] == 1 and 35 in z and 36 in z for z in local)
    mid = tmp_path / "held.mid"
    midi_file(mid, [(0.1, 2.1, 0, 60, 127)])
    x, _ = fluid(out, mid, tmp_path)
    rates = [(level_db(x, a, a + 0.1) - level_db(x, a + 0.4, a + 0.5)) / 0.4 for a in (0.2, 0.7, 1.2)]
    assert all(20 < r < 38 for r in rates), rates


# ---- SFZ ---------------------------------------------------------------------------------------------------
SFZLINT = Path(sys.executable).with_name("sfzlint")


@pytest.mark.parametrize("name", ["strings", "drums"])
def test_sfz_lints_clean_with_the_same_regions(presets, tmp_path, name):
    from synth.bake import plan_layers
    from synth.preset import find_preset

    out = tmp_path / f"{name}.sfz"
    bake(presets, out)
    r = subprocess.run([str(SFZLINT), str(out)], capture_output=True, text=True, timeout=120)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if ":E " in ln or ":W " in ln]
    assert problems == [], problems
    text = out.read_text()
    p = find_preset(name, [presets])
    layers = plan_layers(p)
    regions = [ln for ln in text.splitlines() if ln.startswith("<region>")]
    assert len(regions) == len(p.playable_keys()) * len(layers)
    for la in layers:
        assert f"<group> lovel={la.lo} hivel={la.hi} amp_veltrack=100 " in text
        assert f"amp_velcurve_{la.hi}=1.000000" in text
    folder = tmp_path / f"{name}-samples"
    files = sorted(folder.iterdir())
    assert len(files) == len(regions) and f"default_path={folder.name}/" in text
    info = sf.info(str(files[0]))
    assert info.format == "FLAC" and info.subtype == "PCM_24" and info.samplerate == 16000
    if name == "strings":
        assert all("loop_mode=loop_continuous" in r for r in regions)
        first = dict(kv.split("=") for kv in regions[0].split()[1:])
        n = sf.info(str(folder / first["sample"])).frames
        assert 0 < int(first["loop_start"]) < int(first["loop_end"]) < n - 1
        assert "ampeg_release=0.3333" in text                   # 10/3 x 0.1 s
    else:
        assert "loop_mode=one_shot" in text and "lokey=38 hikey=38 pitch_keycenter=38" in text


# ---- options ---------------------------------------------------------------------------------------------
def test_velocity_layers_option(presets, tmp_path):
    from synth.bake import plan_layers
    from synth.preset import find_preset

    out = tmp_path / "p.sf2"
    bake(presets, out, "--velocity-layers", "2", "--bits", "16")
    assert len(read_sf2(out)["shdr"]) - 1 == 25 * 2
    assert [(la.velocity, la.lo, la.hi) for la in plan_layers(find_preset("piano", [presets]), 2)] == [
        (64, 1, 95), (127, 96, 127)]
    organ = find_preset("organ", [presets])
    assert [(la.velocity, la.lo, la.hi) for la in plan_layers(organ, 5)] == [(127, 1, 127)]


def test_timbre_of_a_family_preset(tmp_path, capfd):
    """--timbre NAME uses the timbre's latent point from the manifest's `timbres` list."""
    d = tmp_path / "presets"
    make_tiny_preset(d, "family", pitch_range=(60, 62))
    mf = d / "family" / "preset.json"
    m = json.loads(mf.read_text())
    m["timbres"] = [{"name": "dark", "program": 0, "latent": [-3.0] * 8}, {"name": "bright", "program": 1,
                                                                       "latent": [3.0] * 8}]
    mf.write_text(json.dumps(m))
    for t in ("dark", "bright"):
        assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(tmp_path / f"{t}.sf2"),
                         "--timbre", t, "-q"]) == 0
    a, b = (read_sf2(tmp_path / f"{t}.sf2") for t in ("dark", "bright"))
    assert a["smpl"] != b["smpl"] and "timbre dark" in a["info"]["ICMT"] and a["info"]["INAM"].endswith("family/dark")
    assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(tmp_path / "x.sf2"),
                     "--timbre", "loud"]) == 2
    err = capfd.readouterr().err
    assert "has no timbre 'loud'; its timbres: dark, bright" in err and str(mf) in err


def family_preset(d: Path, name: str = "family") -> tuple[Path, np.ndarray]:
    """A tiny preset with three timbres: grand at program 0 (latent -3w: the fundamental), rhodes at 4
    (+3w: mostly the 2nd harmonic), harpsi at 6 (0: half and half); w is the model's timbre direction
    (its brightness knob's), the sound following sigmoid(z . w). Returns (manifest, w)."""
    make_tiny_preset(d, name, pitch_range=(60, 62))
    mf = d / name / "preset.json"
    m = json.loads(mf.read_text())
    w = np.asarray(m["knobs"][0]["direction"])
    m["timbres"] = [{"name": n, "source": "test.sf2", "bank": 0, "program": prog, "gm_kind": None,
                     "latent": (a * w).tolist()} for n, prog, a in (("grand", 0, -3.0), ("rhodes", 4, 3.0),
                                                                    ("harpsi", 6, 0.0))]
    mf.write_text(json.dumps(m))
    return mf, w


def harmonic2_db(x: np.ndarray, rate: int, f0: float) -> float:
    """2nd harmonic over the fundamental, dB: the spectral peaks within 3% of f0 and 2 f0."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), 4 * len(x)))
    hz = np.fft.rfftfreq(4 * len(x), 1 / rate)
    peak = lambda f: spec[(hz > 0.97 * f) & (hz < 1.03 * f)].max()  # noqa: E731
    return 20 * math.log10(peak(2 * f0) / peak(f0))


def test_family_preset_bakes_each_timbre_at_its_program(tmp_path, capfd):
    """A family preset without --timbre: one SF2 preset per timbre at bank 0 and the timbre's program,
    named after it, each generated at its latent; FluidSynth's program 4 has the engine's 2nd-harmonic
    ratio at that timbre (and program 0 its own, 50 dB away). SFZ: one file per timbre, one sample folder."""
    from synth.inference import GeneratorSession
    from synth.latent import LatentMapper
    from synth.preset import find_preset
    from trainer.data.soundfont import read_presets

    d = tmp_path / "presets"
    _, w = family_preset(d)
    out = tmp_path / "family.sf2"
    assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(out), "-q"]) == 0
    assert {(q.bank, q.program): q.name for q in read_presets(out)} == {(0, 0): "grand", (0, 4): "rhodes",
                                                                       (0, 6): "harpsi"}
    s = read_sf2(out)
    assert [i[0].rstrip(b"\0").decode() for i in s["inst"][:-1]] == ["family/grand", "family/rhodes", "family/harpsi"]
    assert len(s["shdr"]) - 1 == 3 * 3 * 4 and all(f"timbre {t}" in s["info"]["ICMT"] for t in ("grand", "rhodes"))
    one = tmp_path / "rhodes.sf2"
    assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(one), "-q", "--timbre",
                     "rhodes"]) == 0
    assert [(q.bank, q.program, q.name) for q in read_presets(one)] == [(0, 0, "family/rhodes")]
    assert 2.9 < out.stat().st_size / one.stat().st_size < 3.1      # size grows with the timbre count

    p = find_preset("family", [d])
    m = LatentMapper(p)
    sess = GeneratorSession(p, threads=1, warmup=False)
    f0 = 440 * 2 ** ((60 - 69) / 12)
    want = {}
    for t in p.timbres:
        z = (m.latent(m.default_key) - np.asarray(p.default_latent) + np.asarray(t.latent)).astype(np.float32)
        note = sess.generate(z[None], np.array([60], np.int64), np.array([1.0], np.float32))[0]
        want[t.program] = harmonic2_db(note[int(0.05 * 16000):int(0.35 * 16000)].astype(np.float64), 16000, f0)
    assert want[4] - want[0] > 40 and abs(want[6]) < 3
    mid = tmp_path / "t.mid"
    midi_file(mid, [(0.1, 0.9, 0, 60, 127), (1.5, 2.3, 1, 60, 127)], {0: 4, 1: 0})
    x, err = fluid(out, mid, tmp_path)
    assert err == [f"fluidsynth: warning: {NO_KIT}"], err
    got = {prog: harmonic2_db(x[int(t0 * RATE):int((t0 + 0.3) * RATE)].sum(axis=1), RATE, f0)
           for prog, t0 in ((4, 0.15), (0, 1.55))}
    assert got[4] == pytest.approx(want[4], abs=1.0) and got[0] == pytest.approx(want[0], abs=1.0), (got, want)

    assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(tmp_path / "fam.sfz"),
                     "-q"]) == 0
    sfz = sorted(q.name for q in tmp_path.glob("fam*.sfz"))
    assert sfz == ["fam-grand.sfz", "fam-harpsi.sfz", "fam-rhodes.sfz"] and not (tmp_path / "fam.sfz").exists()
    assert len(list((tmp_path / "fam-samples").iterdir())) == 36
    text = (tmp_path / "fam-rhodes.sfz").read_text()
    assert "sample=family-rhodes-060-v127.flac" in text and "family-grand" not in text
    capfd.readouterr()
    assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(tmp_path / "x.sf2"),
                     "--timbre", "organ"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no timbre 'organ'; its timbres: grand, rhodes, harpsi" in err[0], err
    assert not (tmp_path / "x.sf2").exists()


def test_family_knob_bake_keeps_the_engines_level(tmp_path):
    """A family timbre baked with a knob turned plays at the engine's level for that knob state: the
    engine holds a family's level under its knobs (`synth.latent.level_gain`), and so does the bank."""
    from synth.engine import Engine
    from synth.inference import GeneratorSession
    from synth.latent import LatentMapper, level_gain
    from synth.preset import find_preset

    d = tmp_path / "presets"
    family_preset(d)
    p = find_preset("family", [d])
    m = LatentMapper(p)
    cc = p.knobs[0].cc
    state = m.with_cc(m.with_timbre(m.default_key, 2, 2, 0), cc, 127)
    g_db = 20 * math.log10(level_gain(m, state, GeneratorSession(p, threads=1, warmup=False).generate))
    assert abs(g_db) > 1.0, g_db                    # the knob moves the raw level: a real test
    mid = tmp_path / "k.mid"
    midi_file(mid, [(0.1, 0.9, 0, 60, 127)], {0: 0})

    def db(a):
        return 10 * math.log10(float(np.mean(np.square(a, dtype=np.float64))))

    def baked(*knob):
        out = tmp_path / "k.sf2"
        assert cli_main(["bake", "--preset", "family", "--preset-dir", str(d), "-o", str(out), "-q", "--timbre",
                         "harpsi", *knob]) == 0
        return db(fluid(out, mid, tmp_path)[0][int(0.15 * RATE):int(0.45 * RATE)])

    def engine(v):
        with Engine(sample_rate=RATE, presets=[p], program_map={6: "family"}) as e:
            e.program_change(0, 6)
            e.control_change(0, cc, v)
            e.render(int(0.1 * RATE))
            e.note_on(0, 60, 127)
            return db(e.render(int(0.4 * RATE))[int(0.05 * RATE):int(0.35 * RATE)])
    # the knob's change of level, baked and in the engine (the default: the knob's default CC)
    assert baked("--knob", f"{cc}=127") - baked() == pytest.approx(engine(127) - engine(p.knobs[0].default), abs=0.3)


def test_gm_bank_places_family_timbres(tmp_path, capfd, monkeypatch):
    """`bake --all` with a piano and a family preset: the family's timbres take programs 4 and 6 from
    the piano's family routing; at program 0 the piano stays the default and the grand timbre goes to
    bank 1."""
    from synth import gm
    from trainer.data.soundfont import read_presets

    monkeypatch.setattr("synth.preset.REPO_PRESETS", tmp_path / "none")   # only the test's presets installed

    d = tmp_path / "presets"
    make_tiny_preset(d, "piano", pitch_range=(60, 61))
    family_preset(d)
    out = tmp_path / "gm.sf2"
    assert cli_main(["bake", "--all", "--preset-dir", str(d), "-o", str(out), "-q"]) == 0
    slots = {(q.bank, q.program): q.name for q in read_presets(out) if q.program < 8 and q.bank < 128}
    assert slots == {(0, 0): "Acoustic Grand Pian", (1, 0): "grand", (0, 4): "rhodes", (0, 6): "harpsi",
                     **{(0, k): gm.PROGRAMS[k][:19] for k in (1, 2, 3, 5, 7)}}   # names: 19 chars and a NUL
    s = read_sf2(out)
    names = [i[0].rstrip(b"\0").decode() for i in s["inst"][:-1]]
    assert {"family/grand", "family/harpsi", "family/rhodes", "piano"} <= set(names)
    phdr = {(h[2], h[1]): h[3] for h in s["phdr"][:-1]}
    inst_of = lambda bank, prog: names[s["pgen"][s["pbag"][phdr[(bank, prog)]][0] + 1][1]]  # noqa: E731
    assert inst_of(0, 0) == inst_of(0, 5) == "piano" and inst_of(1, 0) == "family/grand"
    assert inst_of(0, 4) == "family/rhodes" and inst_of(0, 6) == "family/harpsi"
    assert "family" not in capfd.readouterr().err


def test_timbre_bank_rule():
    """The first timbre of a program gets bank 0; a later one its own source bank when free (1..127),
    else the lowest free bank; a reserved slot (--all: piano at 0:0) is skipped; a timbre without a
    program takes the preset's own (by name: "epiano" -> 4)."""
    from types import SimpleNamespace

    from synth.bake import place_timbres
    from synth.preset import Timbre

    def fam(name, *timbres):
        return SimpleNamespace(name=name, is_drums=False, training={}, timbres=tuple(
            Timbre(name=f"{name}{i}", latent=(0.0,), bank=b, program=prog) for i, (b, prog) in enumerate(timbres)))

    a = fam("epiano", (0, 4), (8, 4), (8, 4), (None, 4), (None, None), (0, 0))
    b = fam("keys", (0, 4), (3, 0))
    got = [(bank, prog, t.name) for bank, prog, _, t in place_timbres([a, b], reserved={(0, 0)})]
    assert got == [(0, 4, "epiano0"), (8, 4, "epiano1"), (1, 4, "epiano2"), (2, 4, "epiano3"), (3, 4, "epiano4"),
                   (1, 0, "epiano5"), (4, 4, "keys0"), (3, 0, "keys1")]


# ---- bad input -------------------------------------------------------------------------------------------
BAD = {
    "unknown_preset": (["--preset", "harpsichord"], "unknown preset 'harpsichord'; known presets: "),
    "preset_as_path": (["--preset", "../x"], "not a preset name"),
    "no_timbres": (["--preset", "piano", "--timbre", "warm"], "has no timbres"),
    "timbre_with_all": (["--all", "--timbre", "warm"], "use it with --preset, not --all"),
    "knob_value_range": (["--preset", "piano", "--knob", "74=128"], "a CC value must be 0..127"),
    "knob_fraction_range": (["--preset", "piano", "--knob", "74=1.5"], "a fractional value must be 0..1"),
    "knob_not_on_preset": (["--preset", "piano", "--knob", "20=5"], "has no knob on CC 20"),
    "knob_syntax": (["--preset", "piano", "--knob", "74"], "expected CC=VALUE"),
    # issue 19 item 6: one knob parser for render, play and bake
    "knob_sustain": (["--preset", "piano", "--knob", "64=127"], "has no knob on CC 64 (CC 64 is the sustain pedal)"),
    "knob_lists_the_knobs": (["--preset", "piano", "--knob", "20=5"], "its knobs: CC 74 brightness, CC 70 colour"),
    "knob_exponent": (["--preset", "piano", "--knob", "74=1e-1"], "expected CC=VALUE"),
    "knob_percent_range": (["--preset", "piano", "--knob", "74=101%"], "a percentage must be 0..100%"),
    "layers_range": (["--preset", "piano", "--velocity-layers", "0"], "--velocity-layers 0: out of range 1..127"),
    "max_seconds": (["--preset", "piano", "--max-seconds", "soon"], "--max-seconds 'soon'"),
    "sample_rate": (["--preset", "piano", "--sample-rate", "7"], "--sample-rate 7: out of range"),
    "bits": (["--preset", "piano", "--bits", "8"], "invalid choice: '8'"),
    "bad_suffix": (["--preset", "piano", "-o", "{tmp}/out.wav"], "use .sf2 or .sfz"),
    "folder_missing": (["--preset", "piano", "-o", "{tmp}/no/such/out.sf2"], "does not exist"),
    "output_is_folder": (["--preset", "piano", "-o", "{tmp}"], "is a folder"),
    "unwritable": (["--preset", "piano", "-o", "/proc/neural-synth-bake.sf2"], "/proc/neural-synth-bake.sf2: cannot"),
    "all_to_sfz": (["--all", "-o", "{tmp}/gm.sfz"], "holds one instrument"),
    "samples_folder_is_a_file": (["--preset", "piano", "-o", "{tmp}/out.sfz"], "is in the way of the sample folder"),
    "no_preset_flag": ([], "one of the arguments --preset --all is required"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_with_one_line_and_nothing_written(presets, tmp_path, capfd, case):
    args, expect = BAD[case]
    out = tmp_path / "out.sf2"
    out.write_bytes(b"an earlier bake")                  # must survive a failed bake untouched
    (tmp_path / "out-samples").write_bytes(b"")          # a file where an SFZ bake puts its sample folder
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = ["bake", "--preset-dir", str(presets), *args]
    if "-o" not in args:
        argv += ["-o", str(out)]
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = cli_main(argv)
    err = capfd.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert expect in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert out.read_bytes() == b"an earlier bake"


def _limit_file_size(limit: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)    # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


@pytest.mark.parametrize("suffix", [".sf2", ".sfz"])
def test_full_disk_mid_write_leaves_nothing(presets, tmp_path, suffix):
    """A real short write (RLIMIT_FSIZE in the child: EFBIG once a file passes 1 MB) ends the bake with
    one line naming the file, exit 2, no traceback, and no temporary or half-written file."""
    out = tmp_path / f"piano{suffix}"
    out.write_bytes(b"an earlier bake")
    env = dict(os.environ, PYO_GUI_WX="0")
    r = subprocess.run([sys.executable, "-m", "synth", "bake", "--preset", "piano", "--preset-dir", str(presets),
                        "-o", str(out), "--max-seconds", "1"] + (["--velocity-layers", "4"] if suffix == ".sfz" else []),
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
                       preexec_fn=_limit_file_size(1 << 20 if suffix == ".sf2" else 1 << 14))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert str(out) in lines[0] and "File too large" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert out.read_bytes() == b"an earlier bake"


def test_help_lists_bake(capsys):
    assert cli_main(["--help"]) == 0
    assert "bake" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        cli_main(["bake", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--velocity-layers" in out and "--loop-tail" in out and "--timbre" in out


# ---- the shipped piano -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_shipped_piano_through_fluidsynth_matches_synth_render(tmp_path):
    """The real piano: FluidSynth playing its bank against `synth render` of the same notes (held part,
    at the preset's rate, aligned): log-mel distance under 2 dB, every note within 50 cents."""
    from synth.preset import REPO_PRESETS

    assert (REPO_PRESETS / "piano" / "preset.json").exists(), "the repo ships presets/piano"
    sys.path.insert(0, str(ROOT / "scripts"))
    import bench_bake as bb

    out = tmp_path / "piano.sf2"
    assert cli_main(["bake", "--preset", "piano", "-o", str(out), "-q"]) == 0
    notes = bb.notes_midi(tmp_path / "n.mid", [45, 60, 84], [25, 62, 127])
    err = bb.fluid(out, tmp_path / "n.mid", tmp_path / "fs.wav")
    assert err.strip() == f"fluidsynth: warning: {NO_KIT}"
    bb.synth_render(tmp_path / "n.mid", tmp_path / "ours.wav", "--preset", "piano")
    f = bb.note_figures(bb._read_mono(tmp_path / "fs.wav"), bb._read_mono(tmp_path / "ours.wav"), notes, 24000)
    assert np.mean(f["lmd_held"]) < 2.0, f["lmd_held"]
    assert np.max(np.abs(f["level_diff"])) < 0.5
    assert f["acc"] == f["acc_engine"]
