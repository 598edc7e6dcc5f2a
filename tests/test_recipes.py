"""Recipes (trainer/recipes/*.json): they resolve exactly as the config code before them did, the
shipped presets' recipes resolve to the configs those presets were trained with, model defaults agree
with them, and every shipped preset records commands that rebuild it from a fresh clone."""

from __future__ import annotations

import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from synth.errors import UserError
from trainer import commands as CM
from trainer import config as C
from trainer.testing.fitdata import TINY_MODELS

ROOT = Path(__file__).resolve().parent.parent
PRESETS = ("piano", "drums", "marimba", "strings")

TINY = TINY_MODELS
P = {"sample_rate": 24000, "note_samples": 96000, "kind": "pitched", "pitch_range": [21, 108], "root": "/data/piano",
     "hold_seconds": 3.0}
D = {**P, "kind": "drums", "key_hz": {"36": 60.5}, "drum_classes": {"36": "kick"}}
# config_hash of each case as the code before the recipes (config.py's DEFAULTS, KIND_*, ARCH_TRAIN); the
# pitched cases moved once, on purpose, when kind/pitched took R1, the diversity floor and validation (2026-12-06)
# resolved it: the same inputs must keep their config, hence their run folder's name.
BEFORE = {
    "pitched": ([], P, "f9df724b"),
    "drums": ([], D, "a4103585"),
    "no-kind": ([], {"sample_rate": 16000, "note_samples": 64000}, "970b4306"),
    "spectral": ([{"arch": "spectral"}], P, "f91ebec6"),
    "wavegan-gp": ([{"arch": "wavegan", "train": {"loss": "wgan-gp"}}], D, "9a04be02"),
    "null-lr": ([{"train": {"lr_g": None, "betas": None}}], P, "f9df724b"),
    "tiny": ([TINY, {"arch": "spectral"}], P, "15046a85"),
    "kit-override": ([{"model": {"ddsp": {"noise_decay_stages": 1}}, "train": {"adv_weight": 1.0}}], D, "0c9ec725"),
    "data-over": ([{"data": {"root": "/elsewhere/x", "extra": 1}, "name": "n", "seed": 3}], P, "efda9c36"),
    "enc": ([{"train": {"encoder": True, "spec_floor_db": -60.0}}, {"arch": "ddsp", "train": {"steps": 5}}], P,
            "8e2ea48b"),
}
# How each shipped preset was trained: the fit overlay its card recorded before the recipes, and
# what the code it was trained with did that today's defaults no longer do (git log of
# trainer/config.py; docs/decisions-trainer.md, 2026-12-05). Hash: resolved by the old code.
TRAINED = {
    # retrained 2026-12-06 (issues 19 and 21, stops 33-34): 9-s notes, 7,000 steps with R1 and the diversity
    # floor; export takes the best step
    "piano": ({"arch": "ddsp", "name": "piano",
               "train": {"steps": 7000, "minutes": 600.0, "adv_weight": 0.3, "valid_every": 500, "r1_gamma": 1.0,
                         "div_weight": 1.0, "div_target_db": 1.5}}, {}, "d52b4b90"),
    "drums": ({"arch": "ddsp", "name": "drums", "train": {"steps": 100000, "minutes": 12.0}},
              {"model": {"ddsp": {"noise_release_tied": False}}}, "9d738000"),
    # marimba and strings retrained 2026-12-07 (issue 21, stop 35) with kind/pitched's defaults, 6,000 steps
    "marimba": ({"arch": "ddsp", "name": "marimba", "train": {"steps": 6000, "minutes": 600.0}}, {}, "beb7a0c1"),
    "strings": ({"arch": "ddsp", "name": "strings", "train": {"steps": 6000, "minutes": 600.0}}, {}, "465916ad"),
}


def _manifest(name: str) -> dict:
    return json.loads((ROOT / "presets" / name / "preset.json").read_text())


def _facts(name: str, root: str | None = None) -> dict:
    """The dataset facts a run of this preset's set records (from its manifest)."""
    d = _manifest(name)["training"]["data"]
    f = {k: d[k] for k in ("kind", "sample_rate", "note_samples", "pitch_range", "velocities", "n_notes")}
    f["root"] = root or d["root"]
    f["hold_seconds"] = d["source seconds"] - d["source release"]
    return f


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_resolution_is_unchanged_for_the_same_inputs(case):
    overlays, facts, want = BEFORE[case]
    assert C.config_hash(C.resolve(overlays, facts)) == want


@pytest.mark.parametrize("name", PRESETS)
def test_preset_recipes_resolve_to_the_configs_the_presets_were_trained_with(name):
    recorded, then, want = TRAINED[name]
    facts = _facts(name)
    cfg = C.resolve(C.recipe_overlays(name, facts["kind"]), facts)
    assert cfg == C.resolve([recorded, then], facts)
    assert C.config_hash(cfg) == want
    # flags and --config still apply on top of a recipe
    over = C.resolve([*C.recipe_overlays(name, facts["kind"]), {"train": {"batch": 3}}], facts)
    assert over["train"]["batch"] == 3 and over["name"] == name


def test_layers_are_the_recipe_files():
    assert C.DEFAULTS == C._defaults()
    assert set(C.ARCH_TRAIN) == {"ddsp", "spectral", "wavegan"}
    from trainer.models import ARCHS
    assert sorted(ARCHS) == sorted(a.split("/")[1] for a in C.recipe_names("arch"))
    for name in [*C.recipe_names(), "base", *C.recipe_names("arch"), *C.recipe_names("kind")]:
        r = C.load_recipe(name)
        assert isinstance(r.get("about"), str) and 0 < len(r["about"]) <= 300, name
    for name in C.recipe_names():
        assert C.recipe_section(name, "dataset")["out"] == f"data/{name}"


def test_unknown_recipe_is_one_line_naming_the_known_ones(capsys):
    from trainer.cli import main
    assert main(["fit", "--recipe", "pianno"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown recipe 'pianno'" in err and "piano" in err and "drums" in err
    with pytest.raises(UserError, match="made for pitched datasets"):
        C.recipe_overlays("piano", "drums")


def test_recipe_files_and_inline_overlays(tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"about": "piano, shorter", "include": ["piano"], "train": {"minutes": 5.0}}))
    cfg = C.resolve(C.recipe_overlays(str(mine), "pitched"), _facts("piano"))
    assert cfg["train"]["minutes"] == 5.0 and cfg["name"] == "piano"
    assert C.recipe_section(str(mine), "dataset")["program"] == 0
    assert C.load_overlay('{"train": {"adv_weight": 0.5}}') == {"train": {"adv_weight": 0.5}}
    loop = tmp_path / "loop.json"
    loop.write_text(json.dumps({"include": [str(loop)]}))
    with pytest.raises(UserError, match="includes itself"):
        C.recipe_overlays(str(loop))


def _signature_defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _plain(v):
    return [_plain(x) for x in v] if isinstance(v, (list, tuple)) else v


@pytest.mark.parametrize("arch", ["ddsp", "spectral", "wavegan"])
def test_model_defaults_equal_base_and_arch_recipes(arch):
    """Constructor defaults are the recipe's values, so a model built with no kwargs is the recipe's."""
    import torch

    from trainer.models.ddsp import DDSPGenerator, MultiResSpecDiscriminator
    from trainer.models.spectral import SpectralDiscriminator, SpectralGenerator
    from trainer.models.wavegan import WaveGANDiscriminator, WaveGANGenerator

    cls = {"ddsp": (DDSPGenerator, MultiResSpecDiscriminator), "spectral": (SpectralGenerator, SpectralDiscriminator),
           "wavegan": (WaveGANGenerator, WaveGANDiscriminator)}[arch]
    for c, section in zip(cls, ("model", "disc"), strict=True):
        defaults = _signature_defaults(c)
        for k, v in C.DEFAULTS[section][arch].items():
            assert k in defaults, (c.__name__, k)
            assert _plain(defaults[k]) == v, (c.__name__, k, defaults[k], v)
    n = lambda m: sum(p.numel() for p in m.parameters())   # noqa: E731
    torch.manual_seed(0)
    data = {"sample_rate": 8000, "note_samples": 4096}
    assert n(cls[0](**data)) == n(cls[0](**data, **C.DEFAULTS["model"][arch]))


def _reproduce_section(card: str) -> list[str]:
    block = card.split("Reproduce:\n\n```sh\n", 1)[1]
    return block.split("```", 1)[0].strip().splitlines()


@pytest.mark.parametrize("name", PRESETS)
def test_shipped_presets_record_commands_that_rebuild_them(name):
    m = _manifest(name)
    t = m["training"]
    cmds = t["commands"]
    assert t["data"]["root"] == f"data/{name}"
    for c in cmds:
        assert not re.search(r"/work/|/tmp/|/home/|<\(|\$\(|`", c), c
        assert shlex.join(shlex.split(c)) == c
    assert cmds[1].startswith(f"python -m trainer fit --recipe {name} --data data/{name} --out runs/")
    card = (ROOT / "presets" / name / "card.md").read_text()
    assert _reproduce_section(card) == cmds
    assert f"- root: data/{name}\n" in card
    # what `trainer export` writes for this run today is the same text
    argv = shlex.split(cmds[2])
    info = {**_facts(name, root=str(ROOT / "data" / name)), "source": {"command": shlex.split(cmds[0])}}
    cfg = C.resolve(C.recipe_overlays(name, info["kind"]), info)
    assert CM.reproduce(cfg, info, argv[4], argv, cwd=ROOT) == cmds[:3]
    # then `trainer refine`, where the recipe has a "refine" section, as `trainer recipe NAME` lists it
    assert cmds[3:] == [c for c in CM.recipe_commands(name) if c.startswith("python -m trainer refine ")]
    from trainer.card import render_card
    rendered = render_card(m, ROOT / "presets" / name)
    assert _reproduce_section(rendered) == cmds


def test_an_old_run_config_is_recorded_as_its_recipe():
    """A run config from before a model key existed (the drums' lacked the tied noise release) is
    matched with the key's old value: `--recipe drums`, nothing inline."""
    facts = {**_facts("drums", root=str(ROOT / "data" / "drums"))}
    cfg = C.resolve(C.recipe_overlays("drums", "drums"), facts)
    del cfg["model"]["ddsp"]["noise_release_tied"]
    assert CM.fit_command(cfg, facts, "runs/drums") == \
        "python -m trainer fit --recipe drums --data data/drums --out runs/drums"
    other = C.resolve([{"train": {"batch": 4, "adv_weight": 0.7}}], facts)
    cmd = CM.fit_command(other, facts, str(ROOT / "runs" / "x"))
    assert "--recipe" not in cmd and "--batch 4" in cmd and cmd.endswith("--out runs/x")
    overlay = json.loads(shlex.split(cmd)[shlex.split(cmd).index("--config") + 1])
    assert overlay == {"train": {"adv_weight": 0.7}}


def test_train_presets_takes_flags_and_budgets_from_the_recipes():
    """The script names no dataset flag or budget of its own; the recipe's dataset flags are the ones
    the shipped preset's dataset was built with."""
    from trainer.data.cli import build_parser
    from trainer.data.soundfont import DEFAULT_SOUNDFONT

    script = (ROOT / "scripts" / "train_presets.sh").read_text()
    for flag in ("--program", "--pitches", "--seconds", "--drums", "--steps", "PIANO_MINUTES", "DRUMS_MINUTES"):
        assert flag not in script, flag
    assert "--recipe" in script and "--print dataset-args" in script
    parser = build_parser()
    for name in PRESETS:
        out = subprocess.run([sys.executable, "-m", "trainer", "recipe", name, "--print", "dataset-args"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        recorded = shlex.split(_manifest(name)["training"]["commands"][0])[4:]
        a, b = vars(parser.parse_args(shlex.split(out))), vars(parser.parse_args(recorded))
        for ns in (a, b):
            ns["soundfont"] = ns["soundfont"] or DEFAULT_SOUNDFONT
            ns.pop("quiet")
        assert a == b, name


def test_docs_name_no_machine_paths():
    for path in [*ROOT.glob("docs/arch_comparison-*.json"), *ROOT.glob("presets/*/preset.json"),
                 *ROOT.glob("presets/*/card.md")]:
        assert "/work/main" not in path.read_text(), path


def test_recipe_command_lists_and_shows_without_torch():
    code = ("import sys\nfrom trainer.recipes_cmd import main\nmain([])\nmain(['piano'])\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("False")
    assert "python -m trainer fit --recipe piano --data data/piano --out runs/piano" in out
    assert all(n in out for n in ("arch/ddsp", "kind/drums", "marimba"))
