"""`python -m trainer fit`: adversarial training of a one-shot generator.

Single process or `torchrun` (DistributedDataParallel: nccl on GPUs, gloo on CPU; rank 0 writes).
Run folder `runs/<name>-<hash8>/` (or `--out`): `config.json` (fully resolved, dataset facts
included), `checkpoints/last.pt` + `checkpoints/step-XXXXXXX.pt` (the last `train.keep`), `tb/`.

Each step: one generator forward G(z, p, v); one discriminator update on (real, G(z) detached) with the adversarial loss and an auxiliary
pitch/class cross-entropy (plus a gradient penalty for wgan-gp); then one generator update with the
adversarial loss, the auxiliary loss and a paired multi-resolution spectral L1 between G(z, p, v)
and the real note x with the same pitch and velocity (plus, with `train.encoder`, the
reconstruction G(E(x), p, v) ~ x and a KL term). The generator's EMA is what gets exported.

Checkpoints hold the step, config, G, G_ema, D, E, both optimisers, the RNG states and the data
position, so `--resume RUN` continues exactly (same next batch, same next losses). They are written
atomically every `--ckpt-every` steps and at exit (budget reached, SIGTERM, Ctrl-C).
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


# ----------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="trainer fit", description="Train a GAN on a one-shot dataset.")
    ap.add_argument("--data", help="dataset folder from `python -m trainer dataset` (not needed with --resume)")
    ap.add_argument("--arch", choices=("ddsp", "spectral", "wavegan"), help="model (default: ddsp)")
    ap.add_argument("--loss", choices=("hinge", "ns", "wgan-gp"), help="adversarial loss (default: hinge)")
    ap.add_argument("--spectral-weight", type=float, dest="spectral_weight", help="weight of the paired spectral L1")
    ap.add_argument("--steps", type=int, help="stop after this many steps (total, counting resumed ones)")
    ap.add_argument("--minutes", type=float, help="stop after this many minutes of training (total)")
    ap.add_argument("--batch", type=int, help="batch size per process")
    ap.add_argument("--ckpt-every", type=int, dest="ckpt_every", help="checkpoint interval in steps")
    ap.add_argument("--out", help="run folder (default runs/<name>-<config hash>)")
    ap.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from checkpoints/last.pt")
    ap.add_argument("--config", action="append", default=[], metavar="OVERLAY.json",
                    help="JSON overlay(s) on the defaults, applied in order (see trainer/config.py)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--name", help="run name (default <dataset>-<arch>)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    ap.add_argument("--amp", action="store_true", default=None, help="mixed precision on CUDA (bf16, else fp16)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def _cli_overlay(a: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {"train": {}, "run": {}}
    for k in ("arch", "seed", "name"):
        if getattr(a, k) is not None:
            o[k] = getattr(a, k)
    for k in ("loss", "spectral_weight", "steps", "minutes", "batch", "ckpt_every"):
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
def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; a missing or corrupt file is a `UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; train first (`python -m trainer fit --data DIR`) "
                        f"or point --resume at a run folder")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable
        raise UserError(f"{path}: corrupt or unreadable checkpoint ({type(e).__name__}); delete it and resume "
                        f"from an older checkpoints/step-*.pt (copy it to last.pt) or retrain") from None
    if not isinstance(ck, dict) or any(k not in ck for k in CKPT_KEYS):
        raise UserError(f"{path}: not a trainer checkpoint (missing keys); delete it or retrain")
    return ck


def _save(ck: dict[str, Any], ckdir: Path, keep: int, step: int) -> None:
    """Write step-XXXXXXX.pt then last.pt, each atomically; prune to the last `keep` step files.

    A failed write (full disk, file size limit, I/O error) removes its temporary file, leaves the
    previous last.pt as it was and raises a one-line `UserError`.
    """
    try:
        ckdir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{ckdir}: cannot create the checkpoint folder ({e.strerror or e})") from None
    for dest in (ckdir / f"step-{step:07d}.pt", ckdir / "last.pt"):
        try:
            with atomic_path(dest) as tmp, open(tmp, "wb") as f:
                torch.save(ck, f)    # through a Python file, so an OS error keeps its errno (as __context__)
        except (OSError, RuntimeError) as e:
            raise UserError(f"{dest}: writing the step-{step} checkpoint failed ({_io_reason(e)}); the previous "
                            f"{ckdir / 'last.pt'} is intact: free space, then continue with --resume "
                            f"{ckdir.parent}") from None
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


def load_generator(run_dir: str | os.PathLike, ema: bool = True):
    """(G in eval mode on CPU, resolved config) rebuilt from a run folder alone (config + last.pt)."""
    from trainer.models import build_generator
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{cfg_path}: missing; {run_dir} is not a run folder from `python -m trainer fit`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: unreadable run config ({e}); retrain or restore the file") from None
    ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    G = build_generator(cfg)
    G.load_state_dict(ck["G_ema" if ema else "G"])
    return G.eval(), cfg


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
    hop = max(n_fft // 4, len(audio) // 400)
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, (0, n_fft)), n_fft)[::hop]
    S = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)).T
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


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    from trainer.data import OneShotDataset

    if a.resume:
        run_dir = Path(a.resume)
        cfg_path = run_dir / "config.json"
        if not cfg_path.is_file():
            raise UserError(f"{cfg_path}: missing; --resume takes a run folder written by `trainer fit`")
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{cfg_path}: unreadable run config ({e}); restore it or retrain") from None
        over = _cli_overlay(a)
        # a resumed run may only change its budget and where it runs; anything else is a new run
        cfg["train"].update({k: v for k, v in over["train"].items() if k in ("steps", "minutes", "ckpt_every")})
        cfg["run"].update(over["run"])
        ck = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        ds = OneShotDataset(a.data or cfg["data"]["root"], "train")
    else:
        if not a.data:
            raise UserError("trainer fit: --data DIR is required (a folder from `python -m trainer dataset`)")
        ds = OneShotDataset(a.data, "train")
        overlays = [C.load_overlay(p) for p in a.config] + [_cli_overlay(a)]
        cfg = C.resolve(overlays, data_info(ds))
        run_dir = Path(a.out) if a.out else Path("runs") / f"{cfg['name']}-{C.config_hash(cfg)}"
        if (run_dir / "checkpoints" / "last.pt").exists():
            raise UserError(f"{run_dir}: already holds a trained run; continue it with --resume {run_dir}, "
                            f"or pass --out NEWDIR")
        ck = None
    if len(ds) == 0:
        raise UserError(f"{ds.root}: the train split is empty; add notes to the dataset")
    return _train(cfg, run_dir, ds, ck, rank, world, local_rank, quiet=a.quiet)


def _train(cfg, run_dir: Path, ds, ck, rank: int, world: int, local_rank: int, quiet: bool) -> int:
    from trainer.models import build_discriminator, build_encoder, build_generator
    from trainer.nn.losses import MultiResSTFTLoss, d_adv_loss, g_adv_loss, gradient_penalty

    tr, run = cfg["train"], cfg["run"]
    device = _device(run["device"], local_rank)
    ddp = world > 1
    if ddp:
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        threads = int(tr.get("threads") or 0) or max(1, (os.cpu_count() or 1) // world)
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    master = rank == 0

    seed = int(cfg["seed"])
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed)            # identical initial weights on every rank
    G = build_generator(cfg).to(device)
    D = build_discriminator(cfg).to(device)
    E = build_encoder(cfg)
    E = E.to(device) if E is not None else None
    torch.manual_seed(seed + 1000 * rank)   # then per-rank noise streams
    G_ema = copy.deepcopy(G).eval()
    for p in G_ema.parameters():
        p.requires_grad_(False)
    g_params = list(G.parameters()) + (list(E.parameters()) if E is not None else [])
    opt_G = torch.optim.Adam(g_params, lr=tr["lr_g"], betas=tuple(tr["betas"]))
    opt_D = torch.optim.Adam(D.parameters(), lr=tr["lr_d"], betas=tuple(tr["betas"]))
    d_params = list(D.parameters())
    bad_steps = skipped_total = 0

    def finite_step(opt, params, clip) -> bool:
        """Clip (if `clip`) and step; a step whose gradients are not finite is skipped (as AMP's scaler
        does), so one 0/0 in a backward pass cannot turn the weights into NaN. True if it stepped."""
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, float(clip) if clip else math.inf)
        if scaler.is_enabled():
            scaler.step(opt)            # the scaler skips non-finite steps itself and lowers its scale
            return True
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            return False
        opt.step()
        return True
    sampler = Sampler(len(ds), int(tr["batch"]), seed, rank, world)
    step, train_seconds = 0, 0.0
    if ck is not None:
        G.load_state_dict(ck["G"])
        G_ema.load_state_dict(ck["G_ema"])
        D.load_state_dict(ck["D"])
        if E is not None:
            E.load_state_dict(ck["E"])
        opt_G.load_state_dict(ck["opt_G"])
        opt_D.load_state_dict(ck["opt_D"])
        step = int(ck["step"])
        train_seconds = float(ck.get("train_seconds", 0.0))
        rngs = ck["rng"][rank] if isinstance(ck["rng"], list) and rank < len(ck["rng"]) else ck["rng"]
        _set_rng_state(rngs if isinstance(rngs, dict) else ck["rng"][0], device)
        pos = ck["data_pos"]
        sampler.load(pos[rank] if isinstance(pos[0], (list, tuple)) else pos)

    Gm, Dm, Em = G, D, E
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        kw = {"device_ids": [device.index]} if device.type == "cuda" else {}
        Gm, Dm = DDP(G, **kw), DDP(D, **kw)
        Em = DDP(E, **kw) if E is not None else None

    amp_dtype = None
    if run.get("amp") and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=amp_dtype)

    # None: the absolute floor (pitched sets, and runs made before the relative floor existed).
    spec = MultiResSTFTLoss(tuple(tr["spec_ffts"]), relative_floor_db=tr.get("spec_floor_db")).to(device)
    kind, lam = tr["loss"], float(tr["spectral_weight"])
    adv_w, aux_w = float(tr["adv_weight"]), float(tr["aux_weight"])
    Z = cfg["model"][cfg["arch"]]["latent_size"]
    steps_total, budget_s = int(tr["steps"]), float(tr["minutes"]) * 60.0
    ckdir = run_dir / "checkpoints"

    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg, indent=1, sort_keys=True) + "\n")
    logs = _Logs(run_dir, cfg, master)

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old_handlers = {}
    for s in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):   # not the main thread
            old_handlers[s] = signal.signal(s, on_signal)

    def checkpoint() -> None:
        rng = _rng_state(device)
        pos = sampler.state()
        if ddp:
            import torch.distributed as dist
            rngs: list[Any] = [None] * world
            poss: list[Any] = [None] * world
            prints: list[Any] = [None] * world
            dist.all_gather_object(rngs, rng)
            dist.all_gather_object(poss, pos)
            dist.all_gather_object(prints, _fingerprint(G, D))
            rng, pos = rngs, poss
            if len(set(prints)) != 1:
                raise RuntimeError(f"DDP ranks diverged at step {step}: weight fingerprints {prints}")
        if master:
            st = {"step": step, "config": json.dumps(cfg, sort_keys=True), "G": G.state_dict(),
                  "G_ema": G_ema.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(),
                  "opt_D": opt_D.state_dict(), "rng": rng, "data_pos": pos, "train_seconds": train_seconds,
                  "arch": cfg["arch"]}
            if E is not None:
                st["E"] = E.state_dict()
            if ddp:
                st["rank_fingerprints"] = prints
            _save(st, ckdir, int(tr["keep"]), step)

    bar = None
    if master and not quiet:
        from tqdm import tqdm
        bar = tqdm(total=steps_total, initial=step, desc=run_dir.name, dynamic_ncols=True, mininterval=1.0,
                   file=sys.stderr)
    pitches = torch.from_numpy(ds.pitches)
    vels = torch.from_numpy(ds.velocities)
    t_start = time.monotonic()
    t_last, step_last = t_start, step
    last_ckpt = step
    status = 0
    try:
        while step < steps_total:
            if ddp:
                import torch.distributed as dist
                flag = torch.tensor([1.0 if (stop["signal"] or train_seconds + time.monotonic() - t_start >= budget_s)
                                     else 0.0], device=device)
                dist.all_reduce(flag)
                if flag.item() > 0:
                    break
            elif stop["signal"] or train_seconds + time.monotonic() - t_start >= budget_s:
                break
            idx = sampler.next()
            x = torch.from_numpy(ds.audio_batch(idx)).to(device)
            p = pitches[idx].to(device)
            v = vels[idx].to(device)
            B = x.shape[0]
            z = torch.randn(B, Z, device=device)

            # one generator forward serves both updates: D sees it detached, then G backpropagates
            # through D (after D's step) into it
            with autocast():
                if Em is not None:
                    mu, logvar = Em(x)
                    zr = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
                    both = Gm(torch.cat([z, zr]), torch.cat([p, p]), torch.cat([v, v])).float()
                    fake, rec = both[:B], both[B:]
                else:
                    fake = Gm(z, p, v).float()

            # discriminator
            with autocast():
                logit, aux = Dm(torch.cat([x, fake.detach()]), torch.cat([p, p]), torch.cat([v, v]))
            logit, aux = logit.float(), aux.float()
            l_d = d_adv_loss(kind, logit[:B], logit[B:])
            l_aux_d = F.cross_entropy(aux[:B], p)
            loss_d = adv_w * l_d + aux_w * l_aux_d
            logs_d = {"adv/d": l_d.item(), "aux/d": l_aux_d.item()}
            if kind == "wgan-gp":
                gp = gradient_penalty(D, x, fake.detach(), p, v)
                loss_d = loss_d + float(tr["gp_weight"]) * gp
                logs_d["adv/gp"] = gp.item()
            opt_D.zero_grad(set_to_none=True)
            scaler.scale(loss_d).backward()
            skipped_d = not finite_step(opt_D, d_params, None)

            # generator
            if not ddp:
                D.requires_grad_(False)
            with autocast():
                lf, af = Dm(fake, p, v)
            l_g = g_adv_loss(kind, lf.float())
            l_aux_g = F.cross_entropy(af.float(), p)
            l_spec = spec(fake, x)
            loss_g = adv_w * l_g + aux_w * l_aux_g + lam * l_spec
            logs_g = {"adv/g": l_g.item(), "aux/g": l_aux_g.item(), "spec/l1": l_spec.item()}
            if Em is not None:
                l_rec = spec(rec, x)
                kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1.0 - logvar.float()).sum(-1).mean()
                loss_g = loss_g + lam * l_rec + float(tr["kl_weight"]) * kl
                logs_g.update({"rec/l1": l_rec.item(), "rec/kl": kl.item()})
            opt_G.zero_grad(set_to_none=True)
            scaler.scale(loss_g).backward()
            skipped_g = not finite_step(opt_G, g_params, tr.get("grad_clip"))
            scaler.update()
            bad_steps = bad_steps + 1 if (skipped_d or skipped_g) else 0
            skipped_total += int(skipped_d or skipped_g)
            if skipped_total:
                logs_g["skipped"] = float(skipped_total)
            if bad_steps > MAX_BAD_STEPS:
                raise UserError(f"{run_dir}: training diverged at step {step} ({bad_steps} steps in a row with "
                                "non-finite gradients); lower --spectral-weight or the learning rates in an overlay, "
                                "or --resume from an earlier checkpoint")
            if not ddp:
                D.requires_grad_(True)
            with torch.no_grad():
                # warm-up: early weights are poor, so the average must not remember them for long
                decay = min(float(tr["ema"]), (1.0 + step) / (10.0 + step))
                for pe, pg in zip(G_ema.parameters(), G.parameters(), strict=True):
                    pe.lerp_(pg.detach(), 1.0 - decay)
            step += 1

            bad = [k for k, val in (*logs_d.items(), *logs_g.items()) if not math.isfinite(val)]
            if bad:
                raise UserError(f"{run_dir}: training diverged at step {step} (non-finite {', '.join(bad)}); lower "
                                "--spectral-weight or the learning rates in an overlay, or --resume from an earlier "
                                "checkpoint")
            now = time.monotonic()
            if master and (step % int(tr["log_every"]) == 0 or step == steps_total):
                rate = (step - step_last) / max(now - t_last, 1e-9)
                t_last, step_last = now, step
                logs.scalars(step, {**logs_d, **logs_g, "perf/steps_per_s": rate})
                if bar is not None:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in {**logs_d, **logs_g}.items()}
                                    | {"steps/s": f"{rate:.2f}"}, refresh=False)
            if bar is not None:
                bar.update(1)
            if master and step % int(tr["sample_every"]) == 0:
                logs.samples(step, G_ema, device)
            if step - last_ckpt >= int(tr["ckpt_every"]):
                train_seconds += time.monotonic() - t_start
                t_start = time.monotonic()
                checkpoint()
                last_ckpt = step
    except KeyboardInterrupt:
        status = 130
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    train_seconds += time.monotonic() - t_start
    if step != last_ckpt or ck is None or not (ckdir / "last.pt").exists():
        checkpoint()
    if master:
        logs.samples(step, G_ema, device)
    logs.close()
    if bar is not None:
        bar.close()
    if master:
        why = f"signal {stop['signal']}" if stop["signal"] else ("interrupted" if status else
              ("step budget" if step >= steps_total else "time budget"))
        print(f"trainer fit: stopped at step {step} ({why}), {train_seconds / 60:.1f} min; run folder {run_dir}",
              file=sys.stderr)
    if ddp:
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    if stop["signal"] == signal.SIGINT:
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
