"""`python -m trainer refine PRESET --data DATA`: a trained preset's generator refined at its default latent.

A GAN learns the instrument's spread of sounds; the preset plays one point of it, its default latent.
Refining adjusts every weight so that this latent plays each training note as recorded: the eval's
log-mel L1 (`trainer.finetune.LogMelL1`, loudness-normalised, over the whole note, so the quiet end of
a held note counts frame for frame) plus an L1 on each note's level in dB (the log-mel term is blind to
level: without it soft velocities drifted 6 dB loud). Adam on minibatches of the train split; the
valid split is measured every `--valid-every` steps and the best step's weights are kept.

The preset is rewritten atomically (`synth.fsutil.atomic_dir`): the same graph with the new weights,
checked against torch; knobs measured again on it (`trainer.export.knob_directions`, at their CCs);
the refinement and its command recorded in `training`; the metrics and spectrograms dropped, since
they describe the old weights (`trainer eval --update-preset` measures them again). A recipe's
"refine" section gives the defaults (`--recipe`). Measurements: docs/decisions-trainer.md, stop 44.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synth.errors import OneLineParser, UserError

DEFAULTS = {"steps": 1000, "lr": 1e-4, "batch": 8, "level_weight": 1.0, "valid_every": 25, "seed": 0}
VALID_BATCH = 8          # valid notes per forward pass


@dataclass
class Refined:
    G: Any
    steps: int
    kept_step: int
    valid_before: float      # the valid split's loss (log-mel dB + level_weight x level dB), before and after
    valid_after: float
    seconds: float


class _Loss:
    """Per note: log-mel L1 (dB, loudness-normalised) + `level_weight` x |level difference| (dB)."""

    def __init__(self, sr: int, level_weight: float) -> None:
        from trainer.finetune import LogMelL1

        self.lm, self.w = LogMelL1(sr), float(level_weight)

    def __call__(self, y, x):
        import torch

        d = self.lm(y, self.lm.log_mel(x).detach())
        if self.w:
            def level(a):
                return 10.0 * torch.log10((a ** 2).mean(dim=1).clamp_min(1e-12))
            d = d + self.w * (level(y) - level(x)).abs()
        return d


def refine(G, z: np.ndarray, train, valid, steps: int, lr: float, batch: int, level_weight: float,
           valid_every: int, seed: int, say=lambda m: None) -> Refined:
    """Adam on all of G's weights with z fixed, on minibatches of `train` (a `OneShotDataset`); the
    weights of the step with the lowest loss on `valid` are kept (step 0, the weights given, included)."""
    import torch

    t0 = time.monotonic()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    G = copy.deepcopy(G).train()
    loss = _Loss(int(train.info["sample_rate"]), level_weight)
    zt = torch.from_numpy(np.asarray(z, np.float32)[None])

    def batch_loss(ds, idx, grad: bool):
        x = torch.from_numpy(ds.audio_batch(idx))
        with torch.set_grad_enabled(grad):
            y = G(zt.expand(len(idx), -1), torch.from_numpy(ds.pitches[idx]), torch.from_numpy(ds.velocities[idx]))
            return loss(y, x)

    def measure() -> float:
        G.eval()
        total = sum(float(batch_loss(valid, np.arange(a, min(a + VALID_BATCH, len(valid))), False).sum())
                    for a in range(0, len(valid), VALID_BATCH))
        G.train()
        return total / len(valid)

    opt = torch.optim.Adam(G.parameters(), lr=lr)
    before = best = measure()
    best_state, kept = copy.deepcopy(G.state_dict()), 0
    say(f"refine: step 0, valid {before:.3f} dB")
    for step in range(1, steps + 1):
        d = batch_loss(train, rng.choice(len(train), min(batch, len(train)), replace=False), True).mean()
        opt.zero_grad()
        d.backward()
        if not torch.isfinite(d):
            raise UserError(f"refine: the loss is not finite at step {step}; lower --lr")
        opt.step()
        if step % valid_every == 0 or step == steps:
            v = measure()
            if v < best:
                best, kept, best_state = v, step, copy.deepcopy(G.state_dict())
            say(f"refine: step {step}, train {d.item():.3f}, valid {v:.3f} dB (best {best:.3f} at {kept})")
    G.load_state_dict(best_state)
    G.eval()
    return Refined(G, steps, kept, before, best, round(time.monotonic() - t0, 1))


def _datasets(preset, data: Path):
    """The train and valid splits of `data`, checked against the preset's rate, note length and kind."""
    from trainer.data.loader import OneShotDataset

    train, valid = OneShotDataset(data, "train"), OneShotDataset(data, "valid")
    info = train.info
    want = (preset.sample_rate, preset.note_samples, preset.kind)
    got = (info["sample_rate"], info["note_samples"], info["kind"])
    if got != want:
        raise UserError(f"{data}: {got[2]} notes of {got[1]} samples at {got[0]} Hz, but preset {preset.name} plays "
                        f"{want[2]} notes of {want[1]} samples at {want[0]} Hz; pass the dataset it was trained on")
    for name, ds in (("train", train), ("valid", valid)):
        if len(ds) == 0:
            raise UserError(f"{data}: the {name} split has no notes; rebuild the dataset with `python -m trainer "
                            "dataset` (it splits the notes into train, valid and test)")
    return train, valid


def _knobs(preset) -> tuple[list[dict[str, Any]], str]:
    """The latent knobs measured again on `preset`'s (refined) graph as export measures them (middle
    velocity layer, seed 0), on the CCs they had."""
    from synth.inference import GeneratorSession
    from trainer.export import knob_directions

    old = [k for k in preset.knobs if k.kind == "latent"]
    if not old:
        return [], ""
    gen = GeneratorSession(preset, providers="cpu", threads=os.cpu_count() or 1, warmup=False).generate
    layers = preset.velocity_layers or (127,)
    return knob_directions(gen, preset.latent_size, preset.playable_keys(),
                           layers[len(layers) // 2] / 127.0, preset.sample_rate, n_knobs=len(old),   # as export
                           default=np.asarray(preset.default_latent, np.float32), pitched=not preset.is_drums,
                           ccs=tuple(k.cc for k in old))


def refine_preset(src: Path, data: Path, dest: Path, opts: dict[str, Any], command: list[str], say) -> Refined:
    """Refine preset folder `src` on dataset `data` into `dest` (may be `src`), atomically."""
    from synth.fsutil import atomic_dir
    from synth.preset import load_preset_dir, manifest_dict, validate_manifest
    from trainer import card, finetune

    preset = load_preset_dir(src)
    if preset.timbres:
        raise UserError(f"{src}: a family of {len(preset.timbres)} timbres; refine tunes one instrument's default "
                        "latent and would pull the others towards it")
    G = finetune.torch_generator(preset)
    if G is None:
        raise UserError(f"{src}: preset.json does not say how to build its generator (training.generator_config); "
                        "re-export it with `python -m trainer export`")
    train, valid = _datasets(preset, data)
    r = refine(G, np.asarray(preset.default_latent, np.float32), train, valid, opts["steps"], opts["lr"],
               opts["batch"], opts["level_weight"], opts["valid_every"], opts["seed"], say)
    with atomic_dir(dest, replace=True) as tmp:
        for f in src.iterdir():
            if f.is_file() and f.name not in (preset.generator_path.name, card.GRID_FILE):
                shutil.copy2(f, tmp / f.name)
        finetune.write_graph(preset.generator_path, r.G, tmp / preset.generator_path.name,
                             {"refined": f"default latent, step {r.kept_step} of {r.steps}"})
        refined = load_preset_dir(tmp)            # the copied manifest over the new graph
        err = finetune._parity(r.G, refined)
        if err > finetune.PARITY_TOL:
            raise UserError(f"{dest}: the refined graph differs from torch by {err:.3g}; nothing was written")
        m = manifest_dict(refined)
        latent, method = _knobs(refined)
        m["knobs"] = latent + [k for k in m["knobs"] if k.get("kind", "latent") != "latent"]
        tr = m.setdefault("training", {})
        if method:
            tr["knob_method"] = method
        tr["refine"] = {**{k: opts[k] for k in DEFAULTS}, "kept step": r.kept_step,
                        "valid dB before": round(r.valid_before, 3), "valid dB after": round(r.valid_after, 3),
                        "minutes": round(r.seconds / 60, 1)}
        tr["commands"] = [*(tr.get("commands") or []), shlex.join(command)]
        m["metrics"] = {}
        validate_manifest(json.loads(json.dumps(m)), tmp)
        (tmp / "preset.json").write_text(json.dumps(m, indent=1) + "\n")
        card.write_card(tmp)
        load_preset_dir(tmp)
    return r



def build_parser() -> argparse.ArgumentParser:
    ap = OneLineParser(prog="python -m trainer refine", description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", help="preset folder (as `trainer export` wrote it)")
    ap.add_argument("--data", required=True, help="the dataset folder it was trained on")
    ap.add_argument("--recipe", help="take the defaults from this recipe's \"refine\" section")
    ap.add_argument("--out", help="write the refined preset here (default: replace PRESET)")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--level-weight", type=float, dest="level_weight")
    ap.add_argument("--valid-every", type=int, dest="valid_every")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: all cores)")
    ap.add_argument("--quiet", action="store_true")
    return ap


def _options(a: argparse.Namespace) -> dict[str, Any]:
    from trainer import config as C

    opts = dict(DEFAULTS)
    if a.recipe:
        section = C.recipe_section(a.recipe, "refine")
        unknown = sorted(set(section) - set(DEFAULTS))
        if unknown:
            raise UserError(f"recipe {a.recipe}: unknown \"refine\" key {unknown[0]!r}; known: {', '.join(DEFAULTS)}")
        opts.update(section)
    opts.update({k: getattr(a, k) for k in DEFAULTS if getattr(a, k) is not None})
    for k in ("steps", "batch", "valid_every"):
        if not isinstance(opts[k], int) or opts[k] < 1:
            raise UserError(f"--{k.replace('_', '-')} {opts[k]}: must be a whole number >= 1")
    if not (math.isfinite(opts["lr"]) and opts["lr"] > 0):
        raise UserError(f"--lr {opts['lr']}: must be a number > 0")
    if not (math.isfinite(opts["level_weight"]) and opts["level_weight"] >= 0):
        raise UserError(f"--level-weight {opts['level_weight']}: must be a number >= 0")
    return opts


def main(argv: list[str]) -> int:
    import torch

    from trainer.commands import repo_relative

    a = build_parser().parse_args(argv)
    opts = _options(a)
    src = Path(a.preset)
    if not (src / "preset.json").is_file():
        raise UserError(f"{src}: not a preset folder (no preset.json)")
    if a.threads is not None and a.threads < 1:
        raise UserError(f"--threads {a.threads}: must be >= 1")
    torch.set_num_threads(a.threads or os.cpu_count() or 1)
    dest = Path(a.out) if a.out else src
    cwd = Path.cwd()
    cmd = ["python", "-m", "trainer", "refine", repo_relative(src, cwd), "--data", repo_relative(Path(a.data), cwd)]
    cmd += ["--out", repo_relative(dest, cwd)] if a.out else []
    cmd += ["--recipe", a.recipe] if a.recipe else []
    cmd += [x for k in DEFAULTS if getattr(a, k) is not None for x in (f"--{k.replace('_', '-')}", str(getattr(a, k)))]
    say = (lambda m: None) if a.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    r = refine_preset(src, Path(a.data), dest, opts, cmd, say)
    print(f"refined {dest}: valid {r.valid_before:.3f} -> {r.valid_after:.3f} dB (step {r.kept_step} of {r.steps}, "
          f"{r.seconds / 60:.1f} min); measure it with `python -m trainer eval {dest} --data {a.data} --update-preset`")
    return 0
