"""`python -m trainer fit`: adversarial training of a one-shot generator.

Single process or `torchrun` (DistributedDataParallel: nccl on GPUs, gloo on CPU; rank 0 writes).
Run folder `runs/<name>-<hash8>/` (or `--out`): `config.json` (fully resolved, dataset facts
included), `checkpoints/last.pt` + `checkpoints/step-XXXXXXX.pt` (the last `train.keep`), `tb/`.
The config comes from the recipes (`--recipe`, `trainer/config.py`), `--config` overlays and flags.

Each step: one generator forward G(z, p, v); a discriminator update on (real, G(z) detached) with the
adversarial loss and an auxiliary pitch/class cross-entropy; a generator update with the adversarial
and auxiliary losses and a paired multi-resolution spectral L1 between G(z, p, v) and the real note
with the same pitch and velocity (plus, with `train.encoder`, the reconstruction G(E(x), p, v) ~ x
and a KL term). The generator's EMA is what gets exported.

A discriminator that cannot simply memorise a few hundred notes (all off in base.json; docs/
decisions-trainer.md): `train.augment` (DiffAugment on the waveform, real and fake alike, in both
updates: `trainer.nn.augment`), `train.r1_gamma` (lazy R1 on the real notes every `train.r1_every`
steps, scaled by that interval as in StyleGAN2), `train.fm_weight` (feature matching: L1 between D's
activations for each real note and the fake at its pitch and velocity, in the generator's loss) and
`train.d_start` (the discriminator and every adversarial term start at that step, as in Parallel
WaveGAN; before it the generator fits the paired spectral loss alone). Log keys: adv/*, aux/*,
spec/l1, reg/r1, fm/loss, valid/*, perf/steps_per_s (and perf/lr_scale with a decay).

Learning rates: constant, or (`train.lr_half_life` H > 0) constant until `train.lr_decay_start` and
then halved every H steps, both G's and D's; a recipe can start the decay where its budget ends, so
its own steps train as before and only a longer run anneals (on the piano it did not stop the late
drift: docs/decisions-trainer.md).

Timbre training (`train.timbres`, multi-instrument sets only; `trainer.models.timbre`): one learned
latent code per instrument, trained with G; each note's z is its instrument's code plus
`train.timbre_sigma` of N(0, I) noise, and the ddsp discriminator's realness is conditional on the
instrument too (a projection term). The codes (`T`, `T_ema`) are in the checkpoints;
`load_timbres` reads them for export. Off, nothing changes (same draws, same bits).

Validation (`train.valid_every` > 0; `trainer.validation`): every that many steps and at the end,
the EMA generator is measured on the valid split; the best evaluation's weights go to
`checkpoints/best.pt` (atomically), the curve to `validation.json`, and `trainer export` takes
best.pt when there is one. The run ends at `train.steps` or `train.minutes`, whichever comes first,
on a signal, or (`train.patience` N > 0) at the first validation that is the Nth in a row without a
better figure; the checkpoint records which (`ended_by`) and the steps per second.

Checkpoints hold everything `--resume RUN` needs to continue exactly (same next batch, same next
losses, same best-so-far): the step, config, weights, optimisers, RNG states, data position and the
validation state with the best weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synth.errors import UserError
from synth.fsutil import atomic_path, atomic_write_text
from trainer import config as C

MAX_BAD_STEPS = 20       # consecutive steps with non-finite gradients before a run counts as diverged
CKPT_KEYS = ("step", "config", "G", "G_ema", "D", "opt_G", "opt_D", "rng", "data_pos")
BEST_KEYS = ("step", "config", "G_ema", "valid")
ENDED_BY = ("steps", "minutes", "signal", "patience")


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="trainer fit", description="Train a GAN on a one-shot dataset.")
    ap.add_argument("--data", help="dataset folder from `python -m trainer dataset` (default: the recipe's; "
                                   "not needed with --resume)")
    ap.add_argument("--recipe", metavar="NAME", help="a recipe from trainer/recipes (piano, drums, ...) or a .json "
                                                    "recipe file; --config and flags apply on top")
    ap.add_argument("--arch", choices=("ddsp", "spectral", "wavegan"), help="model (default: ddsp)")
    ap.add_argument("--loss", choices=("hinge", "ns", "wgan-gp"), help="adversarial loss (default: hinge)")
    ap.add_argument("--spectral-weight", type=float, dest="spectral_weight", help="weight of the paired spectral L1")
    ap.add_argument("--steps", type=int, help="stop after this many steps (total, counting resumed ones)")
    ap.add_argument("--minutes", type=float, help="stop after this many minutes of training (total)")
    ap.add_argument("--patience", type=int, help="stop once this many validations in a row bring no better "
                                                 "figure (0: never; needs train.valid_every)")
    ap.add_argument("--batch", type=int, help="batch size per process")
    ap.add_argument("--ckpt-every", type=int, dest="ckpt_every", help="checkpoint interval in steps")
    ap.add_argument("--out", help="run folder (default runs/<name>-<config hash>)")
    ap.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from checkpoints/last.pt")
    ap.add_argument("--config", action="append", default=[], metavar="OVERLAY.json",
                    help="JSON overlay(s) on the recipe, applied in order: a file, or an object such as "
                         "'{\"train\": {\"adv_weight\": 0.3}}' (see trainer/config.py)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--name", help="run name (default <dataset>-<arch>)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    ap.add_argument("--threads", type=int, help="CPU threads per process (default: the cores / processes); "
                                                "may change on --resume")
    ap.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA (bf16, else fp16)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _cli_overlay(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {"train": {}, "run": {}}
    for k in ("arch", "seed", "name"):
        if getattr(a, k) is not None:
            o[k] = getattr(a, k)
    for k in ("loss", "spectral_weight", "steps", "minutes", "patience", "batch", "ckpt_every", "threads"):
        if getattr(a, k) is not None:
            o["train"][k] = getattr(a, k)
    for k in ("device", "amp"):
        if getattr(a, k) is not None:
            o["run"][k] = getattr(a, k)
    return o


def data_info(ds) -> dict[str, Any]:
    """The dataset facts stored in the config (JSON-able), including the note-off time if known."""
    info = {k: v for k, v in ds.info.items() if k != "n_notes"}
    info["n_notes"] = int(ds.info["n_notes"])
    info["root"] = str(Path(ds.root).resolve())
    src = ds.info.get("source") or {}
    hold = None
    if isinstance(src.get("seconds"), (int, float)) and isinstance(src.get("release"), (int, float)):
        hold = float(src["seconds"]) - float(src["release"])
        if not 0.0 < hold < info["note_samples"] / info["sample_rate"]:
            hold = None
    info["hold_seconds"] = hold
    if info.get("kind") == "drums":
        info["key_hz"] = drum_key_hz(ds)
    return info


def drum_key_hz(ds) -> dict[str, float]:
    """{str(MIDI key): Hz}: each drum key's dominant spectral peak in the given split's hits
    (`trainer.data.pitch.dominant_peak_hz`). The ddsp generator sets a kit key's partials there
    instead of at the key's note frequency, which is no drum's tuning."""
    from trainer.data.pitch import dominant_peak_hz

    out: dict[str, float] = {}
    sr = int(ds.info["sample_rate"])
    for key in np.unique(ds.pitches):
        idx = np.flatnonzero(ds.pitches == key)
        hz = dominant_peak_hz(ds.audio_batch(idx), sr)
        if np.isfinite(hz):
            out[str(int(key))] = round(hz, 3)
    return out


# ---------------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str | os.PathLike, keys: tuple[str, ...] = CKPT_KEYS) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a missing or corrupt file (or one without `keys`:
    BEST_KEYS for best.pt) is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train first (`python -m trainer fit --data DIR`) "
                        f"or point --resume at a run folder")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}); delete it and resume "
                        f"from an older checkpoints/step-*.pt (copy it to last.pt) or retrain") from None
    if not isinstance(ck, dict) or any(k not in ck for k in keys):
        raise UserError(f"{path}: not a trainer checkpoint (missing keys); delete it or retrain")
    return ck


def _save_file(ck: dict[str, Any], dest: Path, step: int) -> None:
    """torch.save `ck` to `dest` atomically; a failed write leaves the previous file and is a `UserError`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{dest.parent}: cannot create the checkpoint folder ({e.strerror or e})") from None
    try:
        with atomic_path(dest) as tmp, open(tmp, "wb") as f:
            torch.save(ck, f)    # through a Python file, so an OS error keeps its errno (as __context__)
    except (OSError, RuntimeError) as e:
        raise UserError(f"{dest}: writing the step-{step} checkpoint failed ({_io_reason(e)}); the previous "
                        f"{dest.parent / 'last.pt'} is intact: free space, then continue with --resume "
                        f"{dest.parent.parent}") from None


def _save(ck: dict[str, Any], ckdir: Path, keep: int, step: int) -> None:
    """Write step-XXXXXXX.pt then last.pt, each atomically; prune to the last `keep` step files.

    A failed write (full disk, file size limit, I/O error) removes its temporary file, leaves the
    previous last.pt as it was and raises a one-line `UserError`.
    """
    for dest in (ckdir / f"step-{step:07d}.pt", ckdir / "last.pt"):
        _save_file(ck, dest, step)
    olds = sorted(ckdir.glob("step-*.pt"))
    for p in olds[:-keep] if keep > 0 else olds:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _io_reason(e: BaseException) -> str:
    """A short reason for a failed checkpoint write (torch wraps the OS error in a RuntimeError)."""
    import errno as _errno
    seen: BaseException | None = e
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno is not None:
            return f"{_errno.errorcode.get(seen.errno, seen.errno)}: {seen.strerror}"
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e).split())
    for code, what in ((_errno.ENOSPC, "No space left on device"), (_errno.EFBIG, "File too large"),
                       (_errno.EDQUOT, "Disk quota exceeded")):
        if what.lower() in text.lower():
            return f"{_errno.errorcode[code]}: {what}"
    return (text[:160] + "...") if len(text) > 160 else (text or type(e).__name__)


def _rng_state(device: torch.device) -> dict[str, Any]:
    py = random.getstate()
    npst = np.random.get_state()
    st = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [npst[0], torch.from_numpy(npst[1].astype(np.int64)), int(npst[2]), int(npst[3]), float(npst[4])],
          "torch": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _fingerprint(*modules: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on all DDP ranks iff their weights are bitwise equal."""
    import hashlib
    h = hashlib.sha256()
    for m in modules:
        for t in m.state_dict().values():
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def run_checkpoint(run_dir: str | os.PathLike, which: str = "last") -> Path:
    """The checkpoint file of a run folder: "last" (checkpoints/last.pt), "best" (checkpoints/best.pt,
    the best validation) or "auto" (best.pt when the run kept one, else last.pt)."""
    ckdir = Path(run_dir) / "checkpoints"
    if which not in ("last", "best", "auto"):
        raise ValueError(f"which must be last, best or auto, not {which!r}")
    if which == "auto":
        which = "best" if (ckdir / "best.pt").is_file() else "last"
    return ckdir / f"{which}.pt"


def load_generator(run_dir: str | os.PathLike, ema: bool = True, which: str = "last"):
    """(G in eval mode on CPU, resolved config) rebuilt from a run folder alone (config.json and the
    checkpoint `which`: see `run_checkpoint`; best.pt holds the EMA weights only)."""
    from trainer.models import build_generator
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{cfg_path}: missing; {run_dir} is not a run folder from `python -m trainer fit`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: unreadable run config ({e}); retrain or restore the file") from None
    path = run_checkpoint(run_dir, which)
    best = path.name == "best.pt"
    if best and not ema:
        raise UserError(f"{path}: holds the EMA generator only; load last.pt for the raw weights")
    ck = load_checkpoint(path, BEST_KEYS if best else CKPT_KEYS)
    G = build_generator(cfg)
    G.load_state_dict(ck["G_ema" if ema else "G"])
    return G.eval(), cfg


def load_timbres(run_dir: str | os.PathLike, which: str = "last") -> np.ndarray | None:
    """The EMA timbre codes float32[n_instruments, Z] of checkpoint `which` (`run_checkpoint`) of a run
    trained with `train.timbres`, aligned with its config's data.instruments; None for other runs."""
    path = run_checkpoint(run_dir, which)
    ck = load_checkpoint(path, BEST_KEYS if path.name == "best.pt" else CKPT_KEYS)
    st = ck.get("T_ema")
    if st is None:
        return None
    return st["codes"].detach().cpu().float().numpy()


# ------------------------------------------------------------------------------------- sampling
class Sampler:
    """Deterministic shuffled batches; rank r of w takes every w-th index of each epoch's permutation.

    The position (epoch, pos) is all the state there is, so checkpoints resume the exact next batch.
    """

    def __init__(self, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world
        self.epoch, self.pos = 0, 0
        self._cur = self._order(0)

    def _order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        per = -(-self.n // self.world)
        perm = np.resize(perm, per * self.world)        # wrap so every rank gets the same count
        return perm[self.rank::self.world]

    def state(self) -> list[int]:
        return [self.epoch, self.pos]

    def load(self, st) -> None:
        self.epoch, self.pos = int(st[0]), int(st[1])
        self._cur = self._order(self.epoch)

    def next(self) -> np.ndarray:
        out = []
        while len(out) < self.batch:
            if self.pos >= len(self._cur):
                self.epoch, self.pos = self.epoch + 1, 0
                self._cur = self._order(self.epoch)
            take = self._cur[self.pos:self.pos + self.batch - len(out)]
            out.extend(take.tolist())
            self.pos += len(take)
        return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------- logs
def _spectrogram_image(audio: np.ndarray, n_fft: int = 1024) -> np.ndarray:
    """uint8[3, H, W] log spectrogram picture (low frequencies at the bottom)."""
    from matplotlib import colormaps

    from trainer.nn import stft
    hop = max(n_fft // 4, len(audio) // 400)
    S = stft.magnitude(np.asarray(audio, np.float64)[None], n_fft, hop)[0].T
    db = 20 * np.log10(S + 1e-6)
    db = np.clip((db - db.max() + 80.0) / 80.0, 0.0, 1.0)[::-1]
    return (colormaps["magma"](db)[..., :3] * 255).astype(np.uint8).transpose(2, 0, 1)


class _Logs:
    """TensorBoard (rank 0 only): namespaced loss curves, audio and spectrograms of fixed latents."""

    def __init__(self, run_dir: Path, cfg: dict[str, Any], enabled: bool) -> None:
        self.w = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.w = SummaryWriter(str(run_dir / "tb"))
        d = cfg["data"]
        lo, hi = (d.get("pitch_range") or [36, 84])[:2]
        lo, hi = int(lo) or 36, int(hi) or 84
        self.pitches = torch.tensor(sorted({lo, lo + (hi - lo) // 3, lo + 2 * (hi - lo) // 3, hi}), dtype=torch.int64)
        Z = cfg["model"][cfg["arch"]]["latent_size"]
        g = torch.Generator().manual_seed(1234)   # own generator: logging never moves the training RNG
        self.z = torch.randn(2, Z, generator=g)
        self.sr = int(d["sample_rate"])

    def scalars(self, step: int, vals: dict[str, float]) -> None:
        if self.w:
            for k, v in vals.items():
                self.w.add_scalar(k, v, step)

    @torch.no_grad()
    def samples(self, step: int, G_ema: torch.nn.Module, device: torch.device) -> None:
        if not self.w:
            return
        n = len(self.pitches)
        z = self.z.repeat_interleave(n, 0).to(device)
        p = self.pitches.repeat(2).to(device)
        v = torch.full((2 * n,), 0.8, device=device)
        audio = G_ema(z, p, v).float().cpu().numpy()
        for i, a in enumerate(audio):
            self.w.add_audio(f"sample/z{i // n}_p{int(p[i])}", a[None], step, sample_rate=self.sr)
        imgs = [_spectrogram_image(a) for a in audio]
        rows = [np.concatenate(imgs[r * n:(r + 1) * n], axis=2) for r in range(2)]
        self.w.add_image("spectrogram/fixed_latents", np.concatenate(rows, axis=1), step)
        self.w.flush()

    def close(self) -> None:
        if self.w:
            self.w.close()


# ---------------------------------------------------------------------------------------- main
def _device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA device visible; use --device cpu or auto")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: missing; --resume takes a run folder written by `trainer fit`")
    try:
        return json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: unreadable run config ({e}); restore it or retrain") from None


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from trainer.data import OneShotDataset

    if a.resume:
        if a.recipe or a.config:
            raise UserError("--resume continues a run with its own config; drop --recipe/--config "
                            "(only --steps, --minutes, --patience, --ckpt-every, --threads, --device and --amp may change)")
        run_dir = Path(a.resume)
        cfg = C.with_absent(_read_run_config(run_dir))
        over = _cli_overlay(a)
        # a resumed run may only change its budget and where it runs; anything else is a new run
        cfg["train"].update({k: v for k, v in over["train"].items() if k in ("steps", "minutes", "patience", "ckpt_every", "threads")})
        cfg["run"].update(over["run"])
        ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        ds = OneShotDataset(a.data or cfg["data"]["root"], "train")
    else:
        data = a.data or (C.recipe_section(a.recipe, "dataset").get("out") if a.recipe else None)
        if not data:
            raise UserError("trainer fit: --data DIR is required (a folder from `python -m trainer dataset`)")
        ds = OneShotDataset(data, "train")
        info = data_info(ds)
        recipe = C.recipe_overlays(a.recipe, info.get("kind")) if a.recipe else []
        overlays = recipe + [C.load_overlay(p) for p in a.config] + [_cli_overlay(a)]
        cfg = C.resolve(overlays, info)
        run_dir = Path(a.out) if a.out else Path("runs") / f"{cfg['name']}-{C.config_hash(cfg)}"
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise UserError(f"{run_dir}: already holds a trained run; continue it with --resume {run_dir}, "
                            f"or pass --out NEWDIR")
        ck = None
    if len(ds) == 0:
        raise UserError(f"{ds.root}: the train split is empty; add notes to the dataset")
    return Trainer(cfg, run_dir, ds, ck, rank, world, local_rank).run(quiet=a.quiet)


def _resume_rng(saved: Any, rank: int) -> dict[str, Any] | None:
    """The RNG state rank `rank` resumes with: its own from a DDP checkpoint, the single process's for
    rank 0, else None (the checkpoint holds no stream for this rank: `_seed_rank` makes one)."""
    if isinstance(saved, list):
        return saved[rank] if rank < len(saved) and isinstance(saved[rank], dict) else None
    return saved if rank == 0 else None


def _seed_rank(seed: int, rank: int, step: int) -> None:
    """A fresh stream for a rank that resumes a checkpoint without one: distinct per rank, the same on every
    resume of the same checkpoint (seeded from seed, rank and step)."""
    s = int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


class Trainer:
    """One training process: its models, optimisers, data position and loop state.

    `Trainer(cfg, run_dir, ds, ck, rank, world, local_rank).run()` trains until the step or time
    budget, a signal or Ctrl-C, checkpointing on the way and at the end; returns the exit status.
    """

    def __init__(self, cfg: dict[str, Any], run_dir: Path, ds, ck: dict[str, Any] | None, rank: int,
                 world: int, local_rank: int) -> None:
        self.cfg, self.tr, self.run_dir, self.ds, self.resumed = cfg, cfg["train"], run_dir, ds, ck is not None
        self.rank, self.world, self.master, self.ddp = rank, world, rank == 0, world > 1
        self.device = self._init_process(local_rank)
        self._build_models()
        self.sampler = Sampler(len(ds), int(self.tr["batch"]), int(cfg["seed"]), rank, world)
        self.step, self.train_seconds, self.valid_seconds = 0, 0.0, 0.0
        self.ended_by: str | None = None          # one of ENDED_BY, once the loop has stopped
        self.bad_steps = self.skipped_total = 0
        self._init_valid()
        self.patience, self.out_of_patience = int(self.tr.get("patience") or 0), False
        if self.patience < 0 or (self.patience and self.valid_every <= 0):
            raise UserError(f"config: train.patience = {self.patience}; use 0 (off) or N > 0 with "
                            f"train.valid_every > 0 (it counts validations)")
        if ck is not None:
            self._restore(ck)
        self._wrap_ddp()
        self._init_amp()
        self._init_losses()
        self.ckdir = run_dir / "checkpoints"
        self.stop: dict[str, Any] = {"signal": None}

    # -- set-up -----------------------------------------------------------------------------------
    def _init_process(self, local_rank: int) -> torch.device:
        """The device; the process group under DDP; CPU threads (train.threads, else the cores / world)."""
        device = _device(self.cfg["run"]["device"], local_rank)
        if self.ddp:
            import torch.distributed as dist
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cpu":
            threads = int(self.tr.get("threads") or 0) or max(1, (os.cpu_count() or 1) // self.world)
            torch.set_num_threads(threads)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return device

    def _build_models(self) -> None:
        """G, D, E (identical initial weights on every rank), then per-rank noise streams, G_ema and the optimisers."""
        from trainer.models import build_discriminator, build_encoder, build_generator, build_timbres

        seed, rank, device = int(self.cfg["seed"]), self.rank, self.device
        random.seed(seed + rank)
        np.random.seed(seed + rank)
        torch.manual_seed(seed)
        self.G = build_generator(self.cfg).to(device)
        self.D = build_discriminator(self.cfg).to(device)
        E = build_encoder(self.cfg)
        self.E = E.to(device) if E is not None else None
        T = build_timbres(self.cfg)           # after G, D, E: a run without timbres draws as before
        self.T = T.to(device) if T is not None else None
        torch.manual_seed(seed + 1000 * rank)
        self.G_ema = copy.deepcopy(self.G).eval()
        for p in self.G_ema.parameters():
            p.requires_grad_(False)
        self.T_ema = None
        if self.T is not None:
            self.T_ema = copy.deepcopy(self.T).eval()
            self.T_ema.requires_grad_(False)
        self.g_params = list(self.G.parameters()) + (list(self.E.parameters()) if self.E is not None else [])
        if self.T is not None:     # last, so the optimiser state of the other parameters keeps its layout
            self.g_params += list(self.T.parameters())
        betas = tuple(self.tr["betas"])
        self.opt_G = torch.optim.Adam(self.g_params, lr=self.tr["lr_g"], betas=betas)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=self.tr["lr_d"], betas=betas)
        self.d_params = list(self.D.parameters())
        self.lr_start, self.lr_half = int(self.tr.get("lr_decay_start") or 0), float(self.tr.get("lr_half_life") or 0)
        if self.lr_start < 0 or self.lr_half < 0:
            raise UserError(f"config: train.lr_decay_start = {self.lr_start}, train.lr_half_life = {self.lr_half:g}; "
                            "use steps >= 0 (a half-life of 0 keeps the learning rates constant)")

    def lr_scale(self, step: int) -> float:
        """Both learning rates' factor at `step`: 1 until train.lr_decay_start, then halving every
        train.lr_half_life steps (0: constant). A function of the step alone, so resume stays exact."""
        if self.lr_half <= 0 or step <= self.lr_start:
            return 1.0
        return 0.5 ** ((step - self.lr_start) / self.lr_half)

    def _set_lr(self) -> None:
        scale = self.lr_scale(self.step)
        for opt, base in ((self.opt_G, self.tr["lr_g"]), (self.opt_D, self.tr["lr_d"])):
            for g in opt.param_groups:
                g["lr"] = float(base) * scale

    def _restore(self, ck: dict[str, Any]) -> None:
        """Weights, optimisers, step, RNG and data position from checkpoint `ck` (`--resume`)."""
        self.G.load_state_dict(ck["G"])
        self.G_ema.load_state_dict(ck["G_ema"])
        self.D.load_state_dict(ck["D"])
        if self.E is not None:
            self.E.load_state_dict(ck["E"])
        if self.T is not None:
            if "T" not in ck:
                raise UserError("checkpoint: train.timbres is on but the checkpoint holds no timbre codes; retrain")
            self.T.load_state_dict(ck["T"])
            self.T_ema.load_state_dict(ck["T_ema"])
        self.opt_G.load_state_dict(ck["opt_G"])
        self.opt_D.load_state_dict(ck["opt_D"])
        self.step = int(ck["step"])
        self.train_seconds = float(ck.get("train_seconds", 0.0))
        st = _resume_rng(ck["rng"], self.rank)
        if st is not None:
            _set_rng_state(st, self.device)
        else:
            _seed_rank(int(self.cfg["seed"]), self.rank, self.step)
        pos = ck["data_pos"]
        if isinstance(pos[0], (list, tuple)):
            pos = pos[self.rank] if self.rank < len(pos) else pos[0]
        self.sampler.load(pos)
        self.valid_seconds = float(ck.get("valid_seconds", 0.0))
        self.tracker.load(ck.get("valid_state"))
        self.best_G_ema, self.best_E = ck.get("best_G_ema"), ck.get("best_E")
        self.best_T_ema = ck.get("best_T_ema")

    def _wrap_ddp(self) -> None:
        self.Gm, self.Dm, self.Em, self.Tm = self.G, self.D, self.E, self.T
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel as DDP
            kw = {"device_ids": [self.device.index]} if self.device.type == "cuda" else {}
            self.Gm, self.Dm = DDP(self.G, **kw), DDP(self.D, **kw)
            self.Em = DDP(self.E, **kw) if self.E is not None else None
            self.Tm = DDP(self.T, **kw) if self.T is not None else None

    def _init_amp(self) -> None:
        """Mixed precision on CUDA with `run.amp` (bf16, else fp16 with a gradient scaler)."""
        self.amp_dtype = None
        if self.cfg["run"].get("amp") and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _init_losses(self) -> None:
        from trainer.nn.losses import MultiResSTFTLoss

        tr = self.tr
        # None: the absolute floor (pitched sets, and runs made before the relative floor existed).
        self.spec = MultiResSTFTLoss(tuple(tr["spec_ffts"]), relative_floor_db=tr.get("spec_floor_db")).to(self.device)
        self.loss_kind, self.lam = tr["loss"], float(tr["spectral_weight"])
        # train.spec_head_ms > 0: the paired term again over the note's first milliseconds, its attack,
        # which the whole-note term weighs only by its share of the frames (docs/decisions-trainer.md).
        head_ms = float(tr.get("spec_head_ms") or 0.0)
        if not (math.isfinite(head_ms) and head_ms >= 0):
            raise UserError(f"config: train.spec_head_ms = {head_ms:g}; use 0 (off) or a positive length in ms")
        self.head_n = min(int(round(head_ms * 1e-3 * int(self.cfg["data"]["sample_rate"]))),
                          int(self.cfg["data"]["note_samples"]))
        if self.head_n:
            # the run's FFT sizes that fit the head (reflect padding needs n_fft / 2 < its length), else one
            ffts = [n for n in tr["spec_ffts"] if n <= self.head_n] or [1 << max(6, self.head_n.bit_length() - 1)]
            if ffts[0] // 2 >= self.head_n:
                raise UserError(f"config: train.spec_head_ms = {head_ms:g} is {self.head_n} samples; "
                                "the attack term needs more than 32")
            self.spec_head = MultiResSTFTLoss(tuple(ffts), relative_floor_db=tr.get("spec_floor_db")).to(self.device)
        self.adv_w, self.aux_w = float(tr["adv_weight"]), float(tr["aux_weight"])
        self.Z = self.cfg["model"][self.cfg["arch"]]["latent_size"]
        self.steps_total, self.budget_s = int(tr["steps"]), float(tr["minutes"]) * 60.0
        self._init_disc_regs()

    def _init_disc_regs(self) -> None:
        """Augmentation, R1, feature matching, the discriminator's start step, the diversity floor and the
        paired mel term (train.*; all off in base)."""
        from trainer.nn.augment import DiffAugment

        tr = self.tr
        self.aug = DiffAugment.from_config(int(self.cfg["data"]["sample_rate"]), tr.get("augment"))
        self.r1_gamma, self.r1_every = float(tr.get("r1_gamma") or 0.0), int(tr.get("r1_every") or 16)
        self.fm_w, self.d_start = float(tr.get("fm_weight") or 0.0), int(tr.get("d_start") or 0)
        self.last_r1 = float("nan")
        self.div_w, self.div_target = float(tr.get("div_weight") or 0.0), float(tr.get("div_target_db") or 0.0)
        bad = [k for k, v in (("r1_gamma", self.r1_gamma), ("fm_weight", self.fm_w), ("d_start", self.d_start),
                              ("r1_every", self.r1_every - 1), ("div_weight", self.div_w),
                              ("div_target_db", self.div_target)) if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise UserError(f"config: train.{bad[0]} = {tr.get(bad[0])!r}; use a number >= 0 (r1_every >= 1)")
        # train.mel_weight > 0: HiFi-GAN's paired mel term, in the eval's log-mel dB (again over the attack
        # frames when spec_head_ms is set): it weighs the low bands where drum classes differ.
        self.mel_w = float(tr.get("mel_weight") or 0.0)
        if not (math.isfinite(self.mel_w) and self.mel_w >= 0):
            raise UserError(f"config: train.mel_weight = {tr.get('mel_weight')!r}; use a number >= 0")
        self.logmel_db = None
        if self.div_w > 0 or self.mel_w > 0:
            from trainer.nn.losses import LogMelDB
            self.logmel_db = LogMelDB(int(self.cfg["data"]["sample_rate"])).to(self.device)

    def _init_valid(self) -> None:
        """Validation state (train.valid_every > 0): the valid split's measure on rank 0, the tracker on all."""
        from trainer.validation import Tracker, Validator

        self.valid_every = int(self.tr.get("valid_every") or 0)
        self.tracker = Tracker(str(self.tr.get("valid_metric") or "logmel_db"))
        self.best_G_ema: dict[str, torch.Tensor] | None = None      # the best evaluation's weights
        self.best_E: dict[str, torch.Tensor] | None = None
        self.best_T_ema: dict[str, torch.Tensor] | None = None
        self.validator = None
        if self.valid_every > 0 and self.master:
            v = Validator(self.ds.root, self.cfg, self.device)
            if v.enabled:
                self.validator = v
            else:
                print(f"trainer fit: {self.ds.root} has no valid notes; validation is off (no best.pt)",
                      file=sys.stderr)

    # -- one step ---------------------------------------------------------------------------------
    def _finite_step(self, opt, params, clip) -> bool:
        """Clip (if `clip`) and step; a step whose gradients are not finite is skipped (as AMP's scaler
        does), so one 0/0 in a backward pass cannot turn the weights into NaN. True if it stepped."""
        self.scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else math.inf)
        if self.scaler.is_enabled():
            self.scaler.step(opt)            # the scaler skips non-finite steps itself and lowers its scale
            return True
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            return False
        opt.step()
        return True

    def _generate(self, x, z, p, v, z2=None):
        """One generator forward for both updates: (fake, reconstruction or None, mu, logvar, fake2 or
        None). z2[h] (train.div_weight): a second latent for the first h examples, in the same forward
        (one forward a backward, as DDP wants)."""
        B = x.shape[0]
        zs, ps, vs = [z], [p], [v]
        mu = logvar = None
        with self._autocast():
            if self.Em is not None:
                mu, logvar = self.Em(x)
                zs.append(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
                ps.append(p)
                vs.append(v)
            if z2 is not None:
                zs.append(z2)
                ps.append(p[:len(z2)])
                vs.append(v[:len(z2)])
            out = self.Gm(torch.cat(zs), torch.cat(ps), torch.cat(vs)).float() if len(zs) > 1 else self.Gm(z, p, v).float()
        rec = out[B:2 * B] if self.Em is not None else None
        fake2 = out[out.shape[0] - len(z2):] if z2 is not None else None
        return out[:B], rec, mu, logvar, fake2

    @property
    def d_on(self) -> bool:
        """The discriminator trains and judges from step train.d_start on."""
        return self.step >= self.d_start

    def _dkw(self, inst, times: int = 1) -> dict[str, Any]:
        """D's instrument condition (timbre training), repeated `times` for concatenated batches."""
        if inst is None or not getattr(self.D, "n_instruments", 0):
            return {}
        return {"instrument": torch.cat([inst] * times) if times > 1 else inst}

    def _d_step(self, x, fake, p, v, inst=None) -> tuple[dict[str, float], bool]:
        """Discriminator update on (real, fake detached), both through the augmentation: adversarial +
        auxiliary (+ gradient penalty, + lazy R1). Nothing before train.d_start."""
        from trainer.nn.losses import d_adv_loss, gradient_penalty

        if not self.d_on:
            return {}, False
        B = x.shape[0]
        self.opt_D.zero_grad(set_to_none=True)
        logs = {}
        if self.r1_gamma > 0:
            if self.step % self.r1_every == 0:
                self.last_r1 = self._r1_backward(x, p, v)
            if math.isfinite(self.last_r1):     # the latest lazy value, so every logged step shows one
                logs["reg/r1"] = self.last_r1
        with self._autocast():
            xa = self.aug(torch.cat([x, fake.detach()]), B if self.aug.paired else None)
            logit, aux = self.Dm(xa, torch.cat([p, p]), torch.cat([v, v]), **self._dkw(inst, 2))
        logit, aux = logit.float(), aux.float()
        l_d = d_adv_loss(self.loss_kind, logit[:B], logit[B:])
        l_aux_d = F.cross_entropy(aux[:B], p)
        loss_d = self.adv_w * l_d + self.aux_w * l_aux_d
        logs.update({"adv/d": l_d.item(), "aux/d": l_aux_d.item()})
        if self.loss_kind == "wgan-gp":
            gp = gradient_penalty(self.D, x, fake.detach(), p, v)
            loss_d = loss_d + float(self.tr["gp_weight"]) * gp
            logs["adv/gp"] = gp.item()
        self.scaler.scale(loss_d).backward()
        return logs, not self._finite_step(self.opt_D, self.d_params, None)

    def _r1_backward(self, x, p, v) -> float:
        """Backward of the lazy R1 term, gamma/2 * r1_every * R1 (StyleGAN2), into D's gradients. Under DDP
        through the bare module, outside DDP's forward: its gradient is not synced here, and the D loss's
        backward that follows all-reduces the sum. Returns R1."""
        from trainer.nn.losses import r1_penalty

        with self.Dm.no_sync() if self.ddp else contextlib.nullcontext():
            r1 = r1_penalty(self.D, x, p, v, self.aug if self.aug.active else None)
            self.scaler.scale(0.5 * self.r1_gamma * self.r1_every * r1).backward()
        return r1.item()

    def _g_adv(self, x, fake, p, v, inst=None) -> tuple[torch.Tensor, dict[str, float]]:
        """The discriminator's terms of the generator loss: adversarial + auxiliary on the augmented fakes,
        and with train.fm_weight the feature matching against the real notes (same augmentation draw)."""
        from trainer.nn.losses import feature_matching, g_adv_loss

        B = x.shape[0]
        with self._autocast():
            if self.fm_w > 0:
                lo, au, feats = self.Dm(self.aug(torch.cat([x, fake]), B), torch.cat([p, p]), torch.cat([v, v]),
                                        features=True, **self._dkw(inst, 2))
                lf, af = lo[B:], au[B:]
                l_fm = feature_matching([f[:B] for f in feats], [f[B:] for f in feats])
            else:
                lf, af = self.Dm(self.aug(fake), p, v, **self._dkw(inst))
        l_g = g_adv_loss(self.loss_kind, lf.float())
        l_aux_g = F.cross_entropy(af.float(), p)
        loss = self.adv_w * l_g + self.aux_w * l_aux_g
        logs = {"adv/g": l_g.item(), "aux/g": l_aux_g.item()}
        if self.fm_w > 0:
            loss = loss + self.fm_w * l_fm
            logs["fm/loss"] = l_fm.item()
        return loss, logs

    def _g_step(self, x, fake, rec, mu, logvar, p, v, inst=None, fake2=None) -> tuple[dict[str, float], bool]:
        """Generator update: paired spectral L1 (+ reconstruction and KL, + the diversity floor on
        `fake2`), and from train.d_start on the discriminator's terms (`_g_adv`)."""
        if not self.ddp:
            self.D.requires_grad_(False)
        l_adv, logs = self._g_adv(x, fake, p, v, inst) if self.d_on else (None, {})
        l_spec = self.spec(fake, x)
        if self.head_n:
            l_spec = l_spec + self.spec_head(fake[:, :self.head_n], x[:, :self.head_n])
        # the sum in the order it had before the D terms could be off: same recipe, same bits
        loss_g = self.lam * l_spec if l_adv is None else l_adv + self.lam * l_spec
        logs["spec/l1"] = l_spec.item()
        if self.mel_w > 0:
            l_mel = self._mel_l1(fake, x)
            loss_g = loss_g + self.mel_w * l_mel
            logs["mel/db"] = l_mel.item()
        if rec is not None:
            l_rec = self.spec(rec, x)
            kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(-1).mean()
            loss_g = loss_g + self.lam * l_rec + float(self.tr["kl_weight"]) * kl
            logs.update({"rec/l1": l_rec.item(), "rec/kl": kl.item()})
        if fake2 is not None:
            from trainer.nn.losses import diversity_floor
            l_div, d = diversity_floor(self.logmel_db(fake[:len(fake2)]), self.logmel_db(fake2), self.div_target)
            loss_g = loss_g + self.div_w * l_div
            logs.update({"div/db": d.mean().item(), "div/floor": l_div.item()})
        self.opt_G.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        stepped = self._finite_step(self.opt_G, self.g_params, self.tr.get("grad_clip"))
        if self.T is not None:
            self.T.project_()
        return logs, not stepped

    def _mel_l1(self, fake: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Mean |log-mel dB| between generated and real notes, plus the same over the frames centred in
        the attack (train.spec_head_ms), so the attack weighs as in the linear paired term."""
        a, b = self.logmel_db(fake), self.logmel_db(x)
        d = (a - b).abs()
        loss = d.mean()
        if self.head_n:
            loss = loss + d[:, :max(1, self.head_n // self.logmel_db.hop)].mean()
        return loss

    def _count_skipped(self, skipped: bool, logs_g: dict[str, float]) -> None:
        """Count steps skipped for non-finite gradients; MAX_BAD_STEPS in a row end the run as diverged."""
        self.bad_steps = self.bad_steps + 1 if skipped else 0
        self.skipped_total += int(skipped)
        if self.skipped_total:
            logs_g["skipped"] = float(self.skipped_total)
        if self.bad_steps > MAX_BAD_STEPS:
            raise UserError(f"{self.run_dir}: training diverged at step {self.step} ({self.bad_steps} steps in a row "
                            "with non-finite gradients); lower --spectral-weight or the learning rates in an overlay, "
                            "or --resume from an earlier checkpoint")

    def _update_ema(self) -> None:
        with torch.no_grad():
            # warm-up: early weights are poor, so the average must not remember them for long
            decay = min(float(self.tr["ema"]), (1.0 + self.step) / (10.0 + self.step))
            for pe, pg in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
                pe.lerp_(pg.detach(), 1.0 - decay)
            if self.T is not None:   # the exported codes are the average's, as the exported G is
                self.T_ema.codes.lerp_(self.T.codes.detach(), 1.0 - decay)

    def train_step(self) -> dict[str, float]:
        """One step on the next batch: D update, G update, EMA. Returns the namespaced loss logs."""
        dev = self.device
        if self.lr_half > 0:
            self._set_lr()
        idx = self.sampler.next()
        x = torch.from_numpy(self.ds.audio_batch(idx)).to(dev)
        p = self.pitches[idx].to(dev)
        v = self.vels[idx].to(dev)
        z = torch.randn(x.shape[0], self.Z, device=dev)
        # the diversity floor's second latent, for half the batch (drawn only when it is on)
        z2 = torch.randn(max(1, x.shape[0] // 2), self.Z, device=dev) if self.div_w > 0 else None
        inst = None
        if self.T is not None:     # timbre training: the note's instrument code plus sigma of noise
            inst = self.instruments[idx].to(dev)
            codes = self.Tm(inst)
            sigma = float(self.tr["timbre_sigma"])
            z = codes + sigma * z
            z2 = codes[:len(z2)] + sigma * z2 if z2 is not None else None
        fake, rec, mu, logvar, fake2 = self._generate(x, z, p, v, z2)
        logs_d, skipped_d = self._d_step(x, fake, p, v, inst)
        logs_g, skipped_g = self._g_step(x, fake, rec, mu, logvar, p, v, inst, fake2)
        self.scaler.update()
        self._count_skipped(skipped_d or skipped_g, logs_g)
        if not self.ddp:
            self.D.requires_grad_(True)
        self._update_ema()
        self.step += 1
        logs = {**logs_d, **logs_g}
        if self.lr_half > 0:
            logs["perf/lr_scale"] = self.lr_scale(self.step - 1)
        bad = [k for k, val in logs.items() if not math.isfinite(val)]
        if bad:
            raise UserError(f"{self.run_dir}: training diverged at step {self.step} (non-finite {', '.join(bad)}); "
                            "lower --spectral-weight or the learning rates in an overlay, or --resume from an "
                            "earlier checkpoint")
        return logs

    # -- the loop ---------------------------------------------------------------------------------
    def _out_of_budget(self) -> bool:
        """A signal arrived, the time budget is spent or patience ran out (on any rank, under DDP: only
        rank 0 validates, so its verdict reaches the others here)."""
        done = (bool(self.stop["signal"]) or self.out_of_patience
                or self.train_seconds + time.monotonic() - self.t_start >= self.budget_s)
        if not self.ddp:
            return done
        import torch.distributed as dist
        flag = torch.tensor([1.0 if done else 0.0], device=self.device)
        dist.all_reduce(flag)
        return flag.item() > 0

    def checkpoint(self) -> None:
        """Gather every rank's RNG state and data position (checking their weights agree); rank 0 saves."""
        rng, pos, prints = _rng_state(self.device), self.sampler.state(), None
        if self.ddp:
            import torch.distributed as dist
            rngs: list[Any] = [None] * self.world
            poss: list[Any] = [None] * self.world
            prints = [None] * self.world
            dist.all_gather_object(rngs, rng)
            dist.all_gather_object(poss, pos)
            dist.all_gather_object(prints, _fingerprint(self.G, self.D))
            rng, pos = rngs, poss
            if len(set(prints)) != 1:
                raise RuntimeError(f"DDP ranks diverged at step {self.step}: weight fingerprints {prints}")
        if self.master:
            st = {"step": self.step, "config": json.dumps(self.cfg, sort_keys=True), "G": self.G.state_dict(),
                  "G_ema": self.G_ema.state_dict(), "D": self.D.state_dict(), "opt_G": self.opt_G.state_dict(),
                  "opt_D": self.opt_D.state_dict(), "rng": rng, "data_pos": pos, "train_seconds": self.train_seconds,
                  "arch": self.cfg["arch"], "valid_seconds": self.valid_seconds,
                  "steps_per_second": self.steps_per_second, "valid_state": self.tracker.state()}
            if self.ended_by:
                st["ended_by"] = self.ended_by
            if self.best_G_ema is not None:
                st["best_G_ema"] = self.best_G_ema
            if self.best_E is not None:
                st["best_E"] = self.best_E
            if self.E is not None:
                st["E"] = self.E.state_dict()
            if self.T is not None:
                st["T"], st["T_ema"] = self.T.state_dict(), self.T_ema.state_dict()
                if self.best_T_ema is not None:
                    st["best_T_ema"] = self.best_T_ema
            if self.ddp:
                st["rank_fingerprints"] = prints
            _save(st, self.ckdir, int(self.tr["keep"]), self.step)

    @property
    def steps_per_second(self) -> float:
        """Training steps per second over the whole run so far, validation time excluded."""
        return round(self.step / max(self.train_seconds - self.valid_seconds, 1e-9), 4) if self.step else 0.0

    def _clock(self) -> None:
        """Move the wall time since the last call into train_seconds (the minutes budget's clock)."""
        now = time.monotonic()
        self.train_seconds += now - self.t_start
        self.t_start = now

    def _say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    # -- validation ---------------------------------------------------------------------------------
    def _validate(self) -> None:
        """Measure G_ema on the valid split (rank 0); on a new best write best.pt; log and write the curve."""
        t0 = time.monotonic()
        fig = self.validator.measure(self.G_ema)
        self._clock()
        fig["minutes"] = round(self.train_seconds / 60.0, 3)
        improved = self.tracker.add(self.step, fig)
        if improved:
            self.best_G_ema = {k: t.detach().cpu().clone() for k, t in self.G_ema.state_dict().items()}
            if self.E is not None:
                self.best_E = {k: t.detach().cpu().clone() for k, t in self.E.state_dict().items()}
            if self.T_ema is not None:
                self.best_T_ema = {k: t.detach().cpu().clone() for k, t in self.T_ema.state_dict().items()}
            self._write_best()
        self._write_curve()
        self.logs.scalars(self.step, {f"valid/{k}": v for k, v in fig.items() if k not in ("seconds", "minutes")})
        self._say(self.tracker.summary(self.step, fig, improved))
        if self.patience and self.tracker.stale >= self.patience:
            self.out_of_patience = True
            self._say(f"trainer fit: stopping: {self.tracker.stale} validations in a row without a better figure "
                      f"(train.patience {self.patience}); export takes best.pt (step {self.tracker.best['step']})")
        self.valid_seconds += time.monotonic() - t0

    def _write_best(self) -> None:
        """checkpoints/best.pt (atomic): the best evaluation's EMA weights, its figures and when it was."""
        b = self.tracker.best
        st = {"step": int(b["step"]), "config": json.dumps(self.cfg, sort_keys=True), "G_ema": self.best_G_ema,
              "arch": self.cfg["arch"], "valid": dict(b), "train_seconds": 60.0 * float(b.get("minutes", 0.0))}
        if self.best_E is not None:
            st["E"] = self.best_E
        if self.best_T_ema is not None:
            st["T_ema"] = self.best_T_ema
        _save_file(st, self.ckdir / "best.pt", int(b["step"]))

    def _write_curve(self) -> None:
        """validation.json in the run folder: every evaluation so far and the best (atomic)."""
        from trainer.validation import VALID_SEED

        doc = {"metric": self.tracker.metric, "every": self.valid_every, "latents": int(self.tr["valid_latents"]),
               "notes": self.validator.n_notes, "seed": VALID_SEED,
               "best": self.tracker.best, "history": self.tracker.history}
        atomic_write_text(self.run_dir / "validation.json", json.dumps(doc, indent=1) + "\n")

    def _sync_best_files(self) -> None:
        """On resume: best.pt and validation.json as the checkpoint's validation state says (a run killed
        after a checkpoint may have written a later best.pt, from steps the resumed run will redo)."""
        if self.validator is None:
            return
        best_pt = self.ckdir / "best.pt"
        b = self.tracker.best
        if b is None or self.best_G_ema is None:
            with contextlib.suppress(FileNotFoundError):
                best_pt.unlink()
        else:
            try:
                on_disk = int(load_checkpoint(best_pt, BEST_KEYS)["step"])
            except UserError:
                on_disk = None
            if on_disk != int(b["step"]):
                self._write_best()
        if self.tracker.history:
            self._write_curve()

    def _after_step(self, logs: dict[str, float]) -> None:
        """Log curves and samples (rank 0), advance the bar, validate every train.valid_every steps,
        checkpoint every train.ckpt_every steps."""
        step, tr = self.step, self.tr
        now = time.monotonic()
        if self.master and (step % int(tr["log_every"]) == 0 or step == self.steps_total):
            rate = (step - self.step_last) / max(now - self.t_last, 1e-9)
            self.t_last, self.step_last = now, step
            self.logs.scalars(step, {**logs, "perf/steps_per_s": rate})
            if self.bar is not None:
                self.bar.set_postfix({k: f"{v:.3g}" for k, v in logs.items()} | {"steps/s": f"{rate:.2f}"},
                                     refresh=False)
        if self.bar is not None:
            self.bar.update(1)
        if self.master and step % int(tr["sample_every"]) == 0:
            self.logs.samples(step, self.G_ema, self.device)
        if self.validator is not None and step % self.valid_every == 0:
            self._validate()
            self.t_last, self.step_last = time.monotonic(), step     # the next steps/s: training alone
        if step - self.last_ckpt >= int(tr["ckpt_every"]):
            self._clock()
            self.checkpoint()
            self.last_ckpt = step

    def _start(self, quiet: bool) -> None:
        """Run folder and resolved config (rank 0), logs, signal handlers, progress bar, clocks."""
        if self.master:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg, indent=1, sort_keys=True) + "\n")
            if not quiet:      # (quiet: an error stays the one line on stderr)
                print(f"trainer fit: budget {self.steps_total} steps or {self.budget_s / 60:g} minutes, whichever "
                      f"comes first (train.steps, train.minutes); starting at step {self.step}, "
                      f"{self.train_seconds / 60:.1f} min", file=sys.stderr)
        self.logs = _Logs(self.run_dir, self.cfg, self.master)

        def on_signal(signum, _frame):
            self.stop["signal"] = signum

        self.old_handlers = {}
        for s in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(ValueError):   # not the main thread
                self.old_handlers[s] = signal.signal(s, on_signal)
        self.bar = None
        if self.master and not quiet:
            from tqdm import tqdm
            self.bar = tqdm(total=self.steps_total, initial=self.step, desc=self.run_dir.name, dynamic_ncols=True,
                            mininterval=1.0, file=sys.stderr)
        self.pitches = torch.from_numpy(self.ds.pitches)
        self.vels = torch.from_numpy(self.ds.velocities)
        self.instruments = torch.from_numpy(self.ds.instruments)
        self.t_start = time.monotonic()
        self.t_last, self.step_last = self.t_start, self.step
        self.last_ckpt = self.start_step = self.step
        if self.master and self.resumed:
            self._sync_best_files()

    def run(self, quiet: bool = False) -> int:
        """Train to the budget; 0 when done or stopped by SIGTERM, 130 on Ctrl-C."""
        self._start(quiet)
        status = 0
        try:
            while True:
                if self.step >= self.steps_total:
                    self.ended_by = "steps"
                    break
                if self._out_of_budget():
                    self.ended_by = ("signal" if self.stop["signal"] else
                                     "patience" if self.out_of_patience else "minutes")
                    break
                self._after_step(self.train_step())
        except KeyboardInterrupt:
            status, self.ended_by = 130, "signal"
        finally:
            for s, h in self.old_handlers.items():
                signal.signal(s, h)
        return self._finish(status)

    def _finish(self, status: int) -> int:
        """A last validation (unless stopped by a signal), the final checkpoint and samples, a one-line
        summary saying what ended the run, the process group torn down."""
        if (self.validator is not None and self.ended_by != "signal"
                and (not self.tracker.history or self.tracker.history[-1]["step"] != self.step)):
            self._validate()
        self._clock()
        if (self.step != self.last_ckpt or self.step != self.start_step or not self.resumed
                or not (self.ckdir / "last.pt").exists() or self.valid_every > 0):
            self.checkpoint()         # also when the last step just checkpointed: it lacked ended_by
        if self.master:
            self.logs.samples(self.step, self.G_ema, self.device)
        self.logs.close()
        if self.bar is not None:
            self.bar.close()
        if self.master:
            self._say(self._summary())
        if self.ddp:
            import torch.distributed as dist
            dist.barrier()
            dist.destroy_process_group()
        if self.stop["signal"] == signal.SIGINT:
            return 130
        return status

    def _summary(self) -> str:
        """The run's last log line: where and why it stopped, its speed and its best validation."""
        sig = self.stop["signal"]
        why = {"steps": f"the step budget; {self.train_seconds / 60:.1f} of {self.budget_s / 60:g} minutes used",
               "minutes": f"the {self.budget_s / 60:g}-minute budget, before the {self.steps_total} steps",
               "signal": f"signal {sig}" if sig else "interrupted",
               "patience": f"{self.tracker.stale} validations without a better figure, train.patience "
                           f"{self.patience}"}[self.ended_by]
        line = (f"trainer fit: stopped at step {self.step} (ended_by: {self.ended_by}: {why}), "
                f"{self.train_seconds / 60:.1f} min, {self.steps_per_second:.2f} steps/s")
        b = self.tracker.best
        if b is not None:
            line += f"; best validation at step {b['step']} ({b['logmel_db']:.3f} dB, checkpoints/best.pt)"
        return line + f"; run folder {self.run_dir}"


if __name__ == "__main__":
    raise SystemExit(main())
