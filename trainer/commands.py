"""Reproducible command lines: what a preset records so that a fresh clone can rebuild it.

Commands are POSIX shell lines run from the repository root: paths inside the checkout are
written relative to it, a fit names its recipe (`--recipe piano`) and puts what no recipe or flag
covers in an inline `--config '{...}'` overlay (no `<(...)`, no machine paths).
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from synth.errors import UserError
from trainer import config as C

REPO = Path(__file__).resolve().parent.parent
DATASET_PATH_OPTS = ("--soundfont", "--from-folder", "--nsynth", "--out")
EXPORT_PATH_OPTS = ("--preset", "--data")
# fit flags for config values, in the order they are written
FIT_FLAGS = {("seed",): "--seed", ("name",): "--name", ("train", "loss"): "--loss",
             ("train", "spectral_weight"): "--spectral-weight", ("train", "steps"): "--steps",
             ("train", "minutes"): "--minutes", ("train", "batch"): "--batch"}


def repo_relative(path: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """`path` relative to the repository root when it lies inside it, else unchanged.

    A relative `path` is taken relative to `cwd` (unchanged when `cwd` is None: a recorded command
    whose working folder is unknown).
    """
    p = Path(path)
    if not p.is_absolute():
        if cwd is None:
            return str(path)
        p = Path(cwd) / p
    try:
        rel = p.resolve().relative_to(REPO)
    except (ValueError, OSError):
        return str(path)
    return rel.as_posix() or "."


def command_line(argv: list[str], path_opts: tuple[str, ...] = (), positional_paths: bool = False,
                 cwd: str | os.PathLike | None = None) -> str:
    """`argv` as one POSIX shell line, with the values of `path_opts` (and positional arguments when
    `positional_paths`) made relative to the repository root (see `repo_relative`)."""
    out: list[str] = []
    take = False
    for i, arg in enumerate(map(str, argv)):
        opt, eq, val = arg.partition("=")
        if take:
            arg, take = repo_relative(arg, cwd), False
        elif arg.startswith("--") and opt in path_opts and eq:
            arg = f"{opt}={repo_relative(val, cwd)}"
        elif arg in path_opts:
            take = True
        elif positional_paths and i >= 4 and not arg.startswith("-") and not _is_value(argv, i):
            arg = repo_relative(arg, cwd)
        out.append(arg)
    return shlex.join(out)


def _is_value(argv: list[str], i: int) -> bool:
    """argv[i] follows an option that takes a value (every export option but --force does)."""
    prev = str(argv[i - 1])
    return prev.startswith("--") and "=" not in prev and prev != "--force"


def _diff(cfg: Any, base: Any) -> Any:
    """The parts of `cfg` that differ from `base` (nested dicts), or None when equal."""
    if isinstance(cfg, dict) and isinstance(base, dict):
        out = {k: d for k, v in cfg.items() if (d := _diff(v, base.get(k, _MISSING))) is not None}
        return out or None
    return None if cfg == base else cfg


_MISSING = object()


def _leaves(d: Any) -> int:
    return sum(_leaves(v) for v in d.values()) if isinstance(d, dict) else 1


def closest_recipe(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(recipe name or None, the rest of `config` as an overlay): the checked-in recipe that leaves
    the least to say, none when the defaults do as well. "run" and "data" are not compared."""
    cfg = C.with_predated(config)
    data = cfg.get("data") or {}
    best: tuple[int, str | None, dict[str, Any]] | None = None
    for name in (None, *C.recipe_names()):
        try:
            layers = C.recipe_overlays(name, data.get("kind")) if name else [{"arch": cfg["arch"]}]
            base = C.resolve(layers, data)
        except UserError:
            continue
        body = {k: v for k, v in cfg.items() if k not in ("run", "data")}
        if isinstance(body.get("train"), dict):   # threads say where a run ran (they may change on resume)
            body["train"] = {**body["train"], "threads": base["train"].get("threads")}
        diff = _diff(body, {k: v for k, v in base.items() if k not in ("run", "data")}) or {}
        if best is None or _leaves(diff) < best[0]:
            best = (_leaves(diff), name, diff)
    if best is None:
        raise UserError("no recipe resolves against this run's dataset facts")
    return best[1], best[2]


def fit_command(config: dict[str, Any], info: dict[str, Any], run_dir: str | os.PathLike | None) -> str:
    """A `trainer fit` line that resolves to `config` again: `--recipe` for the closest recipe,
    flags where fit has one, an inline `--config` overlay for the rest, `--out` the run folder."""
    root = repo_relative(info["root"]) if info.get("root") else "DATA"
    out = repo_relative(run_dir) if run_dir is not None else None
    try:
        recipe, diff = closest_recipe(config)
    except Exception:  # noqa: BLE001 - a config from another version: fall back to the file itself
        where = out or "RUN"
        return shlex.join(["python", "-m", "trainer", "fit", "--data", root, "--config", f"{where}/config.json",
                           "--out", where])
    args = ["python", "-m", "trainer", "fit"] + (["--recipe", recipe] if recipe else []) + ["--data", root]
    if "arch" in diff or not recipe:
        args += ["--arch", str(diff.pop("arch", config["arch"]))]
    for path, flag in FIT_FLAGS.items():
        node = diff
        for k in path[:-1]:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict) and path[-1] in node:
            args += [flag, str(node.pop(path[-1]))]
    rest = {k: v for k, v in diff.items() if v not in ({}, None)}
    if rest:
        args += ["--config", json.dumps(rest, sort_keys=True)]
    if out:
        args += ["--out", out]
    return shlex.join(args)


def reproduce(config: dict[str, Any], info: dict[str, Any], run_dir, export_argv: list[str] | None,
              cwd: str | os.PathLike | None = None) -> list[str]:
    """The dataset, fit and export commands that rebuild a preset (`training.commands` in preset.json).

    The dataset command is the one recorded in the dataset's manifest; `export_argv` is the running
    export's own command line, whose relative paths are relative to `cwd`.
    """
    cmds = []
    src = info.get("source") if isinstance(info.get("source"), dict) else {}
    if src.get("command"):
        cmds.append(command_line(src["command"], DATASET_PATH_OPTS))
    run = config.get("run") if isinstance(config.get("run"), dict) else {}
    fit = config.get("command") or run.get("command")
    if fit:
        cmds.append(fit if isinstance(fit, str) else shlex.join(map(str, fit)))
    elif run_dir is not None and isinstance(config.get("train"), dict):
        cmds.append(fit_command(config, info, repo_relative(run_dir, cwd)))
    if export_argv:
        cmds.append(command_line(export_argv, EXPORT_PATH_OPTS, positional_paths=True, cwd=cwd))
    return cmds


def recipe_commands(name: str, run_dir: str | None = None) -> list[str]:
    """The commands that build recipe `name`'s dataset, train it, export (and refine) and measure its preset."""
    data = C.recipe_section(name, "dataset")
    out = data.get("out")
    if not out:
        raise UserError(f"recipe {name!r}: no \"dataset\" with an \"out\" folder; add one to {C.recipe_path(name)}")
    preset = Path(name).stem
    run = run_dir or f"runs/{preset}"
    refine = ([shlex.join(["python", "-m", "trainer", "refine", f"presets/{preset}", "--data", out, "--recipe", name])]
              if C.recipe_section(name, "refine") else [])
    return [shlex.join(["python", "-m", "trainer", "dataset", *C.cli_args(data)]),
            shlex.join(["python", "-m", "trainer", "fit", "--recipe", name, "--data", out, "--out", run]),
            shlex.join(["python", "-m", "trainer", "export", run, "--preset", f"presets/{preset}", "--force"]),
            *refine,
            shlex.join(["python", "-m", "trainer", "eval", f"presets/{preset}", "--data", out,
                        *C.cli_args(C.recipe_section(name, "eval")), "--update-preset"])]
