"""Family presets (issue 20 items 2-3, trainer side): timbre-conditioned training on a multi-instrument
set learns one latent code per instrument (in the checkpoint, resumed exactly), the export writes them
as the preset's `timbres` with knobs along their principal axes, `synth.preset` validates the list,
and a one-instrument run trains exactly as before."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.errors import PresetError
from synth.preset import load_preset_dir, manifest_dict, validate_manifest
from trainer import fit
from trainer.data.format import DatasetWriter
from trainer.testing.fitdata import make_dataset

TINY = {"model": {"ddsp": {"n_harmonics": 8, "n_noise_bands": 4, "hop": 64, "hidden": 32, "ctrl_frames": 8,
                           "ctrl_bands": 4, "noise_seconds": 0.064, "latent_size": 8}},
        "disc": {"ddsp": {"channels": 16, "n_mels": 16, "layers": 2, "resolutions": [[256, 64], [128, 32]]}},
        "train": {"batch": 4, "log_every": 1, "sample_every": 1000, "threads": 1}}
TIMBRES = {"train": {"timbres": True, "timbre_sigma": 0.3}}
# three "instruments": 1/k partials, odd partials only, a bright flat spectrum with a fast decay
MIXES = {"soft": (lambda k: 1.0 / k, 3.0), "hollow": (lambda k: (k % 2) / k, 2.0), "bright": (lambda k: 1.0, 12.0)}


def _tone(kind: str, pitch: int, velocity: int, sr: int, n: int) -> np.ndarray:
    amp, decay = MIXES[kind]
    t = np.arange(n) / sr
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    y = sum(amp(k) * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 9) if k * f0 < 0.45 * sr)
    y = y * np.minimum(1.0, t / 0.003) * np.exp(-decay * t)
    return (0.3 * velocity / 127 * y / np.abs(y).max()).astype(np.float32)


def make_family(folder: Path, kinds=tuple(MIXES), sr: int = 8000, n: int = 2048) -> Path:
    """A multi-instrument set (the manifest fields of `trainer.data.family`): one instrument per kind."""
    folder.mkdir(parents=True, exist_ok=True)
    w = DatasetWriter(folder, sr, n, "pitched")
    insts = []
    for i, kind in enumerate(kinds):
        insts.append({"id": f"synth:0:{i}", "name": kind, "source": "synth.sf2" if i < 2 else "other.sf2",
                      "bank": 0, "program": 5 - i if i < 2 else 0, "gm_kind": "piano", "held_out": False})
        for p in range(48, 73, 3):
            for v in (64, 127):
                w.add(_tone(kind, p, v, sr, n), pitch=p, velocity=v, source=f"{kind}:{p}:{v}", duration=n / sr,
                      instrument_index=i, soundfont=insts[-1]["source"], bank=0, program=insts[-1]["program"],
                      preset=kind)
    w.finalize(source={"type": "soundfonts", "seconds": n / sr, "release": 0.25 * n / sr}, instruments=insts)
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return make_family(tmp_path_factory.mktemp("fam") / "set")


@pytest.fixture(scope="module")
def overlays(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg")
    (d / "tiny.json").write_text(json.dumps(TINY))
    (d / "timbres.json").write_text(json.dumps(TIMBRES))
    return d / "tiny.json", d / "timbres.json"


def _fit(*args) -> int:
    return fit.main([*map(str, args), "--quiet", "--device", "cpu"])


def _state(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def _initial_codes(run: Path) -> torch.Tensor:
    """The codes a run started from: built as `Trainer._build_models` builds them (seeded G, D, then T)."""
    from trainer.models import build_discriminator, build_generator, build_timbres

    cfg = json.loads((run / "config.json").read_text())
    torch.manual_seed(int(cfg["seed"]))
    build_generator(cfg)
    build_discriminator(cfg)
    return build_timbres(cfg).codes.detach().clone()


@pytest.fixture(scope="module")
def trained(family, overlays, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fam"
    assert _fit("--data", family, "--steps", 12, "--config", overlays[0], "--config", overlays[1], "--out", run) == 0
    return run


def test_codes_are_learned_and_checkpointed(trained):
    st = _state(trained)
    assert st["T"]["codes"].shape == st["T_ema"]["codes"].shape == (3, 8)
    init = _initial_codes(trained)
    moved = (st["T"]["codes"] - init).norm(dim=1)
    assert (moved > 1e-3).all(), moved             # every instrument's code moved from its init
    assert not torch.equal(st["T_ema"]["codes"], init)
    # at most timbre_radius * sqrt(Z) from the origin
    assert (st["T"]["codes"].norm(dim=1) <= np.sqrt(8) * 1.0 + 1e-4).all()
    # D judges per instrument: its instrument embeddings (zero at init) have learned something
    assert any(k.startswith("inst.") and v.abs().sum() > 0 for k, v in st["D"].items())
    codes = fit.load_timbres(trained)
    assert codes.shape == (3, 8) and np.array_equal(codes, st["T_ema"]["codes"].numpy())


def test_timbre_resume_is_exact(family, overlays, tmp_path):
    a, b = tmp_path / "straight", tmp_path / "resumed"
    common = ("--config", overlays[0], "--config", overlays[1])
    assert _fit("--data", family, "--steps", 4, "--ckpt-every", 100, *common, "--out", a) == 0
    assert _fit("--data", family, "--steps", 2, *common, "--out", b) == 0
    assert _fit("--resume", b, "--steps", 4) == 0
    sa, sb = _state(a), _state(b)
    for part in ("G", "G_ema", "D", "T", "T_ema"):
        for k in sa[part]:
            assert torch.equal(sa[part][k], sb[part][k]), (part, k)
    assert sa["data_pos"] == sb["data_pos"]


def test_export_writes_the_timbres_and_knobs_between_them(trained, tmp_path):
    from trainer.cli import main as trainer_main

    dest = tmp_path / "presets" / "fam"
    assert trainer_main(["export", str(trained), "--preset", str(dest)]) == 0
    p = load_preset_dir(dest)
    learned = fit.load_timbres(trained)
    assert [t.name for t in p.timbres] == list(MIXES)
    assert [(t.source, t.program) for t in p.timbres] == [("synth.sf2", 5), ("synth.sf2", 4), ("other.sf2", 0)]
    # each code was searched against its instrument's notes and moved only where nearer on its valid notes
    rows = p.training["timbre_fit"]["timbres"]
    codes = np.asarray([t.latent for t in p.timbres], np.float32)
    for row, c, c0 in zip(rows, codes, learned, strict=True):
        assert len(c) == p.latent_size
        if row["moved"]:
            assert row["valid_db"][1] < row["valid_db"][0] and not np.allclose(c, c0)
        else:
            assert np.allclose(c, c0, atol=1e-6)
    # the default: the lowest program of the first source ("hollow", program 4 of synth.sf2)
    assert np.allclose(p.default_latent, codes[1], atol=1e-6)
    # knobs: the codes' principal axes (3 codes span 2), unit length, CC default = offset 0 exactly
    latent = [k for k in p.knobs if k.kind == "latent"]
    assert 1 <= len(latent) <= 2
    c = codes - codes.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    for k in latent:
        d = np.asarray(k.direction)
        assert abs(np.linalg.norm(d) - 1) < 1e-5
        assert np.linalg.norm(d - vt[:2].T @ (vt[:2] @ d)) < 1e-4     # in the span of the codes
        assert abs(k.offset(k.default)) < 1e-9
        proj = (codes - codes[1]) @ d               # the knob's range spans the codes along its axis
        assert k.offset(0) <= proj.min() + 1e-3 and k.offset(127) >= proj.max() - 1e-3
    card_text = (dest / "card.md").read_text()
    assert "## Timbres" in card_text and "learned → refined" in card_text
    assert f"{sum(r['moved'] for r in rows)} of 3 moved" in card_text
    # the ONNX contract is unchanged: a timbre is a latent fed as z
    from synth.inference import GeneratorSession
    audio = GeneratorSession(p, providers="cpu", threads=1).generate(
        np.asarray([t.latent for t in p.timbres], np.float32), np.array([60, 60, 60]), np.full(3, 0.8, np.float32))
    assert audio.shape == (3, p.note_samples) and np.isfinite(audio).all()


def _blend_gen(sr: int, n: int):
    """A generator with a known timbre axis: z[0] blends "soft" (z[0] << 0) into "bright" (z[0] >> 0)."""
    def gen(z, pitch, velocity):
        out = []
        for zz, p, v in zip(np.atleast_2d(z), pitch, velocity, strict=True):
            a = 1 / (1 + np.exp(-4 * float(zz[0])))
            soft, bright = _tone("soft", int(p), int(round(v * 127)), sr, n), _tone("bright", int(p), int(round(v * 127)), sr, n)
            out.append((1 - a) * soft + a * bright)
        return np.asarray(out, np.float32)
    return gen


def test_refined_codes_move_towards_their_instruments_sound(family):
    from trainer.timbre_fit import refine_codes

    codes = np.zeros((3, 4), np.float32)             # every code starts halfway between soft and bright
    new, rec = refine_codes(_blend_gen(8000, 2048), codes, family, 8000, 2048, True, generations=12, notes=6)
    rows = rec["timbres"]
    assert [r["timbre"] for r in rows] == [0, 1, 2] and rec["moved"] == sum(r["moved"] for r in rows)
    soft, bright = rows[0], rows[2]
    assert soft["moved"] and bright["moved"]
    assert new[0, 0] < -0.1 and new[2, 0] > 0.1     # towards the instrument each code belongs to
    for r in (soft, bright):
        assert r["valid_db"][1] < r["valid_db"][0] - 0.5 and r["train_db"][1] < r["train_db"][0]
    for r, c, c0 in zip(rows, new, codes, strict=True):
        assert r["moved"] or np.array_equal(c, c0)     # a code not nearer on valid notes stays as learned
    # no search, no change
    same, rec0 = refine_codes(_blend_gen(8000, 2048), codes, family, 8000, 2048, True, generations=0, notes=6)
    assert np.array_equal(same, codes) and rec0["moved"] == 0


def test_timbre_knobs_span_the_codes():
    from trainer.export import default_timbre, timbre_knobs

    rng = np.random.default_rng(0)
    codes = rng.standard_normal((6, 5))
    codes[:, 0] *= 5.0                             # the main axis: latent dim 0
    knobs, method = timbre_knobs(codes, codes[2], [f"t{i}" for i in range(6)], n_knobs=4)
    assert len(knobs) == 4 and "timbre codes" in method
    assert abs(knobs[0]["direction"][0]) > 0.8
    assert [k["cc"] for k in knobs] == [74, 70, 71, 76]
    for k in knobs:
        lo, hi = k["range"]
        d = np.asarray(k["direction"])
        proj = (codes - codes[2]) @ d
        assert np.isclose(lo, proj.min(), atol=0.05 * (hi - lo)) and np.isclose(hi, proj.max(), atol=0.05 * (hi - lo))
        assert abs(lo + (hi - lo) * k["default"] / 127) < 1e-12
    ts = [{"source": "b.sf2", "program": 3, "bank": 0}, {"source": "a.sf2", "program": 0, "bank": 0},
          {"source": "b.sf2", "program": 1, "bank": 0}]
    assert default_timbre(ts) == 2


def test_measured_axes_follow_the_sound_not_the_latent_spread():
    """Timbre codes spread most along latent dim 0, which the generator ignores; the sound changes
    with dim 3 (brightness). The first measured axis's knob ends sound far further apart than those
    of a knob on the codes' own first principal axis (dim 0), by the features `trainer eval` judges
    knobs by, and no two knobs point within 45 degrees of each other."""
    from trainer.export import _coarse_features, measured_timbre_axes, timbre_knobs

    sr, n = 16000, 8000
    t = np.arange(n) / sr

    def gen(z, p, v):
        f0 = 440.0 * 2.0 ** ((np.asarray(p, np.float64) - 69) / 12)
        tilt = 1.0 + 1.5 * (1 + np.tanh(np.asarray(z, np.float64)[:, 3]))
        out = np.zeros((len(z), n))
        for h in range(1, 12):
            ok = h * f0 < sr / 2
            out += ok[:, None] * (h ** -tilt)[:, None] * np.sin(2 * np.pi * h * f0[:, None] * t)
        return (0.3 * out / np.abs(out).max(axis=1, keepdims=True)).astype(np.float32)

    rng = np.random.default_rng(1)
    codes = rng.standard_normal((6, 5)) * 0.3
    codes[:, 0] = np.linspace(-6, 6, 6)             # the latent's widest spread: not heard
    codes[:, 3] = [-1.5, 1.2, -0.2, 1.5, 0.4, -0.8]  # brightness
    names = [f"t{i}" for i in range(6)]
    axes, notes = measured_timbre_axes(gen, codes.astype(np.float32), codes[2], list(range(48, 73)), 0.8, sr,
                                       n_axes=3)
    assert axes.shape == (3, 5) and len(notes) == 3 and all("dB between its ends" in x for x in notes)
    cos = np.abs(axes @ axes.T)
    assert np.allclose(np.diag(cos), 1.0) and (cos[~np.eye(3, dtype=bool)] <= 0.7 + 1e-9).all()
    heard, method = timbre_knobs(codes, codes[2], names, n_knobs=3, axes=(axes, notes))
    latent, _ = timbre_knobs(codes, codes[2], names, n_knobs=3)
    assert "by measurement" in method and len(heard) == 3

    def span(k):   # loudness-normalised log-mel difference between the knob's two ends, at C4
        d = np.asarray(k["direction"])
        z = np.stack([codes[2] + k["range"][0] * d, codes[2] + k["range"][1] * d]).astype(np.float32)
        fe = _coarse_features(gen(z, np.array([60, 60]), np.full(2, 0.8, np.float32)), sr)
        return float(np.abs(fe[0] - fe[1]).mean())

    assert span(heard[0]) > 2 * span(latent[0]), (span(heard[0]), span(latent[0]))
    for k in heard:
        lo, hi = k["range"]
        proj = (codes - codes[2]) @ np.asarray(k["direction"])
        assert np.isclose(lo, proj.min(), atol=0.05 * (hi - lo)) and np.isclose(hi, proj.max(), atol=0.05 * (hi - lo))


def test_measured_axes_prefer_a_smooth_knob_to_a_jump():
    """Dim 3 switches the sound between two spectra at one point (a big change, all in one CC step);
    dim 1 tilts it gradually (a smaller one). The first knob is the gradual one: eval's smoothness
    bar (no grid step over 60% of the span) would fail the switch."""
    from trainer.export import measured_timbre_axes

    sr, n = 16000, 8000
    t = np.arange(n) / sr

    def gen(z, p, v):
        z = np.asarray(z, np.float64)
        f0 = 440.0 * 2.0 ** ((np.asarray(p, np.float64) - 69) / 12)
        tilt = 1.0 + 0.4 * z[:, 1] + 2.0 * (z[:, 3] > 0.05)
        out = np.zeros((len(z), n))
        for h in range(1, 12):
            ok = h * f0 < sr / 2
            out += ok[:, None] * (h ** -tilt)[:, None] * np.sin(2 * np.pi * h * f0[:, None] * t)
        return (0.3 * out / np.abs(out).max(axis=1, keepdims=True)).astype(np.float32)

    codes = np.zeros((4, 5))
    codes[:, 1] = [-1.5, 1.5, 0.0, 0.0]
    codes[:, 3] = [0.0, 0.0, -1.0, 1.0]
    axes, notes = measured_timbre_axes(gen, codes.astype(np.float32), codes[0], list(range(48, 73)), 0.8, sr,
                                       n_axes=2, pitched=False, velocities=[0.2, 0.6, 1.0])
    assert abs(axes[0][1]) > 0.9, (axes, notes)


def test_preset_validates_timbres(tmp_path):
    from synth.testing.tinymodel import make_tiny_preset

    p = make_tiny_preset(tmp_path, latent_size=8)
    m = manifest_dict(p)
    assert "timbres" not in m                      # a preset without timbres writes none
    good = [{"name": "Grand", "source": "FluidR3_GM.sf2", "bank": 0, "program": 0, "gm_kind": "piano",
             "latent": [0.1] * 8},
            {"name": "Clav", "source": None, "bank": None, "program": None, "gm_kind": None, "latent": [0] * 8}]
    q = validate_manifest({**m, "timbres": good}, p.path)
    assert [t.name for t in q.timbres] == ["Grand", "Clav"] and q.timbres[1].latent == (0.0,) * 8
    assert validate_manifest(manifest_dict(q), p.path) == q          # round trip
    bad = [("not a list", "timbres"), ([{"latent": [0.0] * 8}], "name"), ([{**good[0], "latent": [0.0] * 7}], "7 values"),
           ([{**good[0], "latent": [float("nan")] * 8}], "finite"), ([{**good[0], "program": 200}], "program"),
           ([{**good[0], "bank": True}], "bank"), ([{**good[0], "name": " "}], "empty"), (["x"], "object")]
    for value, msg in bad:
        with pytest.raises(PresetError, match=msg):
            validate_manifest({**copy.deepcopy(m), "timbres": value}, p.path)


def test_one_instrument_runs_are_unchanged(family, overlays, tmp_path):
    from synth.errors import UserError
    from trainer import config as C

    # timbres off on a family: no codes, no instrument condition in D
    run = tmp_path / "off"
    assert _fit("--data", family, "--steps", 1, "--config", overlays[0], "--out", run) == 0
    st = _state(run)
    assert "T" not in st and not any(k.startswith("inst.") for k in st["D"])
    # the new keys at their "off" value hash as absent: run folder names do not move
    cfg = json.loads((run / "config.json").read_text())
    old = copy.deepcopy(cfg)
    for k in ("timbres", "timbre_sigma", "timbre_radius"):
        del old["train"][k]
    assert C.config_hash(cfg) == C.config_hash(old)
    assert C.config_hash({**cfg, "train": {**cfg["train"], "timbres": True}}) != C.config_hash(cfg)
    # timbres need a multi-instrument set
    single = make_dataset(tmp_path / "single", note_samples=2048)
    with pytest.raises(UserError, match="multi-instrument"):
        _fit("--data", single, "--steps", 1, "--config", overlays[0], "--config", overlays[1], "--out", tmp_path / "x")


def test_keys_recipe_trains_timbres_on_both_soundfonts():
    from trainer import config as C

    flags = C.recipe_section("keys", "dataset")
    args = C.cli_args(flags)
    assert args.count("--soundfont") == 2 and args[args.index("--programs") + 1] == "0-7"
    assert flags["out"] == "data/keys"
    info = {"kind": "pitched", "sample_rate": 24000, "note_samples": 96000, "root": "data/keys",
            "instruments": [{"name": "a"}, {"name": "b"}]}
    cfg = C.resolve(C.recipe_overlays("keys", "pitched"), info)
    assert cfg["train"]["timbres"] is True and cfg["train"]["timbre_sigma"] > 0
    assert cfg["train"]["steps"] > 0 and cfg["train"]["minutes"] <= 90
