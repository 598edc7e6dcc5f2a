"""Training configuration: recipes, JSON overlays, CLI overrides, resolution and hashing.

A resolved config is a plain JSON-able dict:
`{"name", "arch", "seed", "data": {dataset facts}, "model": {arch: kwargs}, "disc": {arch: kwargs},
"train": {...}, "run": {device, amp}}`. Models take plain keyword arguments; binding happens only
here and in `trainer.fit`. The run folder's name carries `config_hash(cfg)`, which ignores "run"
(where and how fast it runs does not change what is trained).

Every default lives in a JSON recipe under `trainer/recipes/`; this module reads and layers them. A
config is resolved in layers, each an overlay whose keys must already exist:

    recipes/base.json, with every arch's model/disc kwargs from recipes/arch/*.json
    <- recipes/kind/<dataset kind>.json
    <- --recipe NAME (its includes first) <- --config overlays (in order) <- flags
    then train values still null take the run arch's (recipes/arch/<arch>.json "train"),
    and the dataset facts fill "data".

A recipe file is such an overlay plus four keys of its own: "about" (one line), "include" (parent
recipes, applied first: "base" is always the root, "arch/X" sets the arch, "kind/X" states the
dataset kind it is made for), "dataset" (`python -m trainer dataset` flags, "out" its folder) and
"eval" (`python -m trainer eval` flags).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from synth.errors import UserError

RECIPES = Path(__file__).resolve().parent / "recipes"
META_KEYS = ("about", "include", "dataset", "eval", "refine")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)?$")


# ------------------------------------------------------------------------------------------ recipes
def recipe_names(group: str | None = None) -> list[str]:
    """Names of the checked-in recipes: the presets' ("piano", ...) by default, or a group's ("arch", "kind")."""
    folder = RECIPES / group if group else RECIPES
    names = sorted(p.stem for p in folder.glob("*.json"))
    return [f"{group}/{n}" for n in names] if group else [n for n in names if n != "base"]


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found; {fix}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable JSON {what} ({e}); fix the file") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: a {what} must be a JSON object; fix the file")
    return obj


def recipe_path(name: str) -> Path:
    """The file of recipe `name`: a name under trainer/recipes ("piano", "arch/ddsp") or a path to a .json file."""
    if name.endswith(".json"):
        return Path(name)
    path = RECIPES / f"{name}.json"
    if not _NAME_RE.match(name) or not path.is_file():
        raise UserError(f"unknown recipe {name!r}; known recipes: {', '.join(recipe_names())} "
                        f"(trainer/recipes/), or pass the path of a .json recipe")
    return path


def load_recipe(name: str) -> dict[str, Any]:
    """A recipe file as a dict (checked: the types of its own keys)."""
    path = recipe_path(name)
    r = _read_json(path, "recipe", "pass a recipe name (see `python -m trainer recipe`) or an existing file")
    for key, typ in (("about", str), ("include", list), ("dataset", dict), ("eval", dict), ("refine", dict)):
        if key in r and not isinstance(r[key], typ):
            raise UserError(f"{path}: {key!r} must be a JSON {typ.__name__.replace('str', 'string')}; fix the recipe")
    return r


def _body(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in META_KEYS}


def recipe_overlays(name: str, kind: str | None = None, _chain: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The config overlays recipe `name` stands for, parents first (see the module docstring).

    `kind`: the dataset's kind; a recipe that includes another "kind/X" is refused for it.
    """
    if name in _chain:
        raise UserError(f"recipe {_chain[0]!r}: includes itself through {' -> '.join((*_chain, name))}; fix the recipe")
    if name == "base":
        return []
    group, _, leaf = name.partition("/")
    if group == "arch" and leaf:
        load_recipe(name)
        return [{"arch": leaf}]
    if group == "kind" and leaf:
        load_recipe(name)
        if kind is not None and str(kind) != leaf:
            who = _chain[0] if _chain else name
            raise UserError(f"recipe {who!r} is made for {leaf} datasets (it includes {name}), but this dataset is "
                            f"{kind}; pass a {leaf} dataset or another recipe")
        return []
    r = load_recipe(name)
    out: list[dict[str, Any]] = []
    for parent in r.get("include", []):
        out += recipe_overlays(str(parent), kind, (*_chain, name))
    body = _body(r)
    return [*out, body] if body else out


def recipe_section(name: str, section: str) -> dict[str, Any]:
    """A recipe's "dataset", "eval" or "refine" flags, its includes' first (a key set later wins)."""
    if name == "base" or name.partition("/")[0] in ("arch", "kind"):
        return {}
    r = load_recipe(name)
    out: dict[str, Any] = {}
    for parent in r.get("include", []):
        out.update(recipe_section(str(parent), section))
    out.update(r.get(section, {}))
    return out


def cli_args(flags: dict[str, Any]) -> list[str]:
    """{"program": 0, "drums": true, "out": "data/x"} -> ["--program", "0", "--drums", "--out", "data/x"];
    a list repeats its flag ({"soundfont": [A, B]} -> ["--soundfont", A, "--soundfont", B])."""
    args: list[str] = []
    for k, v in flags.items():
        if isinstance(v, list):
            for item in v:
                args += [f"--{k}", str(item)]
        elif v is True:
            args.append(f"--{k}")
        elif v is not None and v is not False:
            args += [f"--{k}", str(v)]
    return args


# ---------------------------------------------------------------------------------- the layers
def _archs() -> list[str]:
    return [n.split("/", 1)[1] for n in recipe_names("arch")]


def _defaults() -> dict[str, Any]:
    """base.json with every arch's model and disc kwargs: the whole key set of a config."""
    cfg = _body(load_recipe("base"))
    for arch in _archs():
        a = load_recipe(f"arch/{arch}")
        cfg["model"][arch] = a["model"][arch]
        cfg["disc"][arch] = a["disc"][arch]
    return cfg


def _kind_layer(kind: str) -> dict[str, Any]:
    return _body(load_recipe(f"kind/{kind}")) if (RECIPES / "kind" / f"{kind}.json").is_file() else {}


# Read-only views of the recipe files, for code and tests that ask for one layer.
DEFAULTS: dict[str, Any] = _defaults()
ARCH_TRAIN: dict[str, dict[str, Any]] = {a: load_recipe(f"arch/{a}")["train"] for a in _archs()}
KIND_MODEL: dict[str, dict[str, Any]] = {k.split("/")[1]: _kind_layer(k.split("/")[1]).get("model", {})
                                         for k in recipe_names("kind")}
KIND_TRAIN: dict[str, dict[str, Any]] = {k.split("/")[1]: _kind_layer(k.split("/")[1]).get("train", {})
                                         for k in recipe_names("kind")}


# Model keys added after runs had been trained without them. A run config that lacks one predates
# it, and this value (the code's behaviour before the key existed) rebuilds that run's model.
PREDATED: dict[str, dict[str, Any]] = {
    "ddsp": {"noise_ctrl_bands": 0, "noise_decay_stages": 1, "attack_audio_rate": False, "end_stage": False,
             "end_min_seconds": 0.0, "noise_release_tied": False},
    "spectral": {"if_from_bin": False, "harmonic_prior": False, "noise_phase": False},
}
# Model keys that `config_hash` leaves out at this value (added after the hashes were pinned), so
# every config that does not use them keeps its hash and run folder.
_NO = object()
MODEL_ABSENT: dict[str, dict[str, Any]] = {"spectral": {"if_from_bin": False, "harmonic_prior": False,
                                                       "noise_phase": False}}


def with_predated(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of run config `cfg` with the model keys it predates filled in (PREDATED)."""
    out = copy.deepcopy(cfg)
    for arch, keys in PREDATED.items():
        m = (out.get("model") or {}).get(arch)
        if isinstance(m, dict):
            out["model"][arch] = {**keys, **m}
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any], where: str = "config") -> dict[str, Any]:
    """A copy of `base` with `over` merged in; unknown keys are errors (typos must not pass silently)."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if k not in out and where != "config.data":
            raise UserError(f"{where}: unknown key {k!r}; known keys: {', '.join(sorted(out))}")
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "data":
            out[k] = deep_merge(out[k], v, f"{where}.{k}")
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_overlay(spec: str | os.PathLike) -> dict[str, Any]:
    """A JSON overlay (a partial config): a file, or the JSON object itself when `spec` starts with "{"."""
    text = str(spec)
    if text.lstrip().startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"--config {text[:60]!r}: not valid JSON ({e}); quote it in single quotes") from None
        if not isinstance(obj, dict):
            raise UserError(f"--config {text[:60]!r}: an overlay must be a JSON object")
        return obj
    return _read_json(Path(spec), "config overlay", "pass an existing JSON file (or a JSON object) to --config")


def resolve(overlays: list[dict[str, Any]], data_info: dict[str, Any]) -> dict[str, Any]:
    """The resolved config: the layers of the module docstring, `overlays` being everything from --recipe on."""
    cfg = deep_merge(_defaults(), _kind_layer(str(data_info.get("kind"))))
    for o in overlays:
        cfg = deep_merge(cfg, o)
    from trainer.models import ARCHS
    if cfg["arch"] not in ARCHS:
        raise UserError(f"config: unknown arch {cfg['arch']!r}; choose from {', '.join(ARCHS)}")
    from trainer.nn.losses import LOSSES
    if cfg["train"]["loss"] not in LOSSES:
        raise UserError(f"config: unknown loss {cfg['train']['loss']!r}; choose from {', '.join(LOSSES)}")
    for k, v in load_recipe(f"arch/{cfg['arch']}")["train"].items():
        if cfg["train"].get(k) is None:
            cfg["train"][k] = copy.deepcopy(v)
    cfg["data"] = {**data_info, **cfg["data"]}
    if cfg["name"] is None:
        src = Path(str(cfg["data"].get("root", "run"))).name or "run"
        cfg["name"] = f"{src}-{cfg['arch']}"
    return cfg


# Train keys added after runs had been hashed without them, each with the value that means "off" (the
# code behaves as before the key existed). A config whose key holds this value hashes as if the key
# were absent, so adding a key to base.json leaves every existing run folder name where it was; a run
# config that lacks one (an older run) gets it filled in by `with_absent`.
TRAIN_ABSENT: dict[str, Any] = {
    "augment": {"shift_ms": 0.0, "gain_db": 0.0, "time_mask": 0.0, "freq_mask": 0.0, "paired": False},
    "r1_gamma": 0.0, "r1_every": 16, "fm_weight": 0.0, "d_start": 0, "lr_decay_start": 0, "lr_half_life": 0,
    "div_weight": 0.0, "div_target_db": 1.5, "spec_head_ms": 0.0, "mel_weight": 0.0,
    "valid_every": 0, "valid_latents": 4, "valid_metric": "logmel_db", "patience": 0,
    "timbres": False, "timbre_sigma": 0.5, "timbre_radius": 1.0,
}


def with_absent(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of run config `cfg` with the train keys it predates set to their "off" value (TRAIN_ABSENT)."""
    out = copy.deepcopy(cfg)
    if isinstance(out.get("train"), dict):
        out["train"] = {**copy.deepcopy(TRAIN_ABSENT), **out["train"]}
    return out


def config_hash(cfg: dict[str, Any]) -> str:
    """8 hex digits identifying what is trained (everything but the "run" section; train keys at
    their TRAIN_ABSENT value, and model keys at their MODEL_ABSENT value, count as absent)."""
    body = {k: v for k, v in cfg.items() if k != "run"}
    if isinstance(body.get("train"), dict):
        body["train"] = {k: v for k, v in body["train"].items() if k not in TRAIN_ABSENT or v != TRAIN_ABSENT[k]}
    if isinstance(body.get("model"), dict):
        body["model"] = {a: ({k: v for k, v in m.items() if MODEL_ABSENT.get(a, {}).get(k, _NO) != v}
                             if isinstance(m, dict) else m) for a, m in body["model"].items()}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:8]

