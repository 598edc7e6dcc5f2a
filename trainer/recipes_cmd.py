"""`python -m trainer recipe [NAME]`: list the checked-in recipes, or show one.

    python -m trainer recipe                         # every recipe with its one-line "about"
    python -m trainer recipe piano                   # its layers, flags and the commands that rebuild it
    python -m trainer recipe piano --print dataset-args

`--print` writes one field for scripts (`scripts/train_presets.sh`): dataset-args (the `trainer
dataset` flags), eval-args, data (the dataset folder), commands (one line each), overlay (the
recipe's config overlays merged, as JSON). No torch import.
"""

from __future__ import annotations

import argparse
import json
import shlex

from synth.errors import UserError
from trainer import commands
from trainer import config as C

FIELDS = ("dataset-args", "eval-args", "refine-args", "data", "commands", "overlay")


def field(name: str, what: str) -> str:
    """One `--print` field of recipe `name` as text."""
    if what == "dataset-args":
        return shlex.join(C.cli_args(C.recipe_section(name, "dataset")))
    if what == "eval-args":
        return shlex.join(C.cli_args(C.recipe_section(name, "eval")))
    if what == "refine-args":      # empty for a recipe whose preset is not refined
        return shlex.join(C.cli_args({k.replace("_", "-"): v for k, v in C.recipe_section(name, "refine").items()}))
    if what == "data":
        out = C.recipe_section(name, "dataset").get("out")
        if not out:
            raise UserError(f"recipe {name!r}: no dataset folder (\"dataset\": {{\"out\": ...}}) in "
                            f"{C.recipe_path(name)}")
        return str(out)
    if what == "commands":
        return "\n".join(commands.recipe_commands(name))
    merged: dict = {}
    for o in C.recipe_overlays(name):
        merged = _merge(merged, o)
    return json.dumps(merged, indent=1, sort_keys=True)


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def describe(name: str) -> str:
    """A few lines: what the recipe is, its layers, and how to rebuild its preset."""
    r = C.load_recipe(name)
    lines = [f"{name}: {r.get('about', '(no about)')}",
             "layers: " + " <- ".join(["base", *[str(p) for p in r.get("include", []) if p != "base"], name,
                                       "--config overlays", "flags"]),
             "overlay: " + " ".join(field(name, "overlay").split())]
    if C.recipe_section(name, "dataset").get("out"):
        lines += ["commands:", *("  " + c for c in commands.recipe_commands(name))]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m trainer recipe", description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", help="a recipe in trainer/recipes (piano, arch/ddsp, ...) or a .json file")
    ap.add_argument("--print", dest="what", choices=FIELDS, help="print one field (for scripts)")
    a = ap.parse_args(argv)
    if a.name is None:
        if a.what:
            raise UserError("--print needs a recipe NAME")
        for name in [*C.recipe_names(), "base", *C.recipe_names("arch"), *C.recipe_names("kind")]:
            print(f"{name:<14} {C.load_recipe(name).get('about', '')}")
        return 0
    C.load_recipe(a.name)
    print(field(a.name, a.what) if a.what else describe(a.name))
    return 0
