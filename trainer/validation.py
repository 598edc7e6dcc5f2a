"""Validation during `trainer fit`: a steady measure of the EMA generator and the best step so far.

Every `train.valid_every` steps `Validator.measure` generates every note of the dataset's valid split
(its pitch and velocity) with each of `train.valid_latents` fixed latents (z ~ N(0, I) from seed
VALID_SEED, the same for every evaluation and every run of the config) and measures them as
`trainer eval` does (`trainer.evaluate`):

- logmel_db: the log-mel distance to the real note, mean over notes and latents (logmel_db_std: the
  spread of the per-latent means, the measure's own noise);
- diversity_db: the mean log-mel distance between the notes of two latents, over notes and pairs
  of latents (as `trainer eval`'s diversity, on the valid notes);
- pitch_acc: the share of generated notes within ±50 cents of their pitch (pYIN); for drum kits
  class_acc instead: a nearest-centroid classifier fitted on the train split's real hits.

`Tracker` keeps the curve and the best evaluation by `train.valid_metric` (logmel_db, lower is
better, ties broken by accuracy; or pitch_acc, higher is better, ties broken by logmel_db). Its state
is a plain dict that checkpoints carry, so `--resume` continues with the same best and curve.
Nothing here touches a training RNG: resumed and straight runs draw the same batches either way.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

VALID_SEED = 20211         # the latents of every evaluation
CHUNK = 16                 # notes per generator call
METRICS = ("logmel_db", "pitch_acc")


class Validator:
    """The valid split of `root` and what measuring a generator on it needs (rank 0 only)."""

    def __init__(self, root, cfg: dict[str, Any], device: torch.device) -> None:
        from trainer.data import OneShotDataset

        ds = OneShotDataset(root, "valid")
        self.n_notes = len(ds)
        self.kind = str(cfg["data"].get("kind", "pitched"))
        self.sr = int(ds.info["sample_rate"])
        self.device = device
        K = int(cfg["train"]["valid_latents"])
        Z = int(cfg["model"][cfg["arch"]]["latent_size"])
        self.z = torch.randn(max(1, K), Z, generator=torch.Generator().manual_seed(VALID_SEED))
        if not self.n_notes:
            return
        idx = np.arange(self.n_notes)
        self.real = ds.audio_batch(idx)
        self.pitches = ds.pitches.astype(np.int64)
        self.vels = ds.velocities.astype(np.float32)
        self.clf = self.labels = None
        if self.kind == "drums":
            self._fit_classifier(root, ds)

    def _fit_classifier(self, root, valid) -> None:
        """Nearest-centroid classifier on the train split's hits (trainer.evaluate's kit measure)."""
        from trainer.data import OneShotDataset
        from trainer.evaluate import CentroidClassifier, drum_features

        train = OneShotDataset(root, "train")
        classes = {int(k): str(v) for k, v in (train.info.get("drum_classes") or {}).items()}
        label = [classes.get(int(p), str(int(p))) for p in train.pitches]
        feats = np.concatenate([drum_features(train.audio_batch(np.arange(s, min(s + 64, len(train)))), self.sr)
                                for s in range(0, len(train), 64)])
        self.clf = CentroidClassifier().fit(feats, label)
        self.labels = np.asarray([classes.get(int(p), str(int(p))) for p in valid.pitches])

    @property
    def enabled(self) -> bool:
        return self.n_notes > 0

    @torch.no_grad()
    def generate(self, G: torch.nn.Module, z: torch.Tensor) -> np.ndarray:
        """float32[V, N]: latent z[Z] at every valid note's pitch and velocity."""
        out = []
        for s in range(0, self.n_notes, CHUNK):
            p = torch.from_numpy(self.pitches[s:s + CHUNK]).to(self.device)
            v = torch.from_numpy(self.vels[s:s + CHUNK]).to(self.device)
            zz = z.to(self.device).unsqueeze(0).expand(len(p), -1)
            out.append(G(zz, p, v).float().cpu().numpy())
        return np.concatenate(out)

    def measure(self, G: torch.nn.Module) -> dict[str, float]:
        """{logmel_db, logmel_db_std, pitch_acc or class_acc, seconds} of generator G (eval mode)."""
        from trainer.evaluate import PITCH_TOL_CENTS, drum_features, log_mel, pitch_accuracy

        t0 = time.monotonic()
        was_training = G.training
        G.eval()
        per_latent, hits, mels, real = [], [], [], None
        try:
            for z in self.z:
                fake = self.generate(G, z)
                n = min(fake.shape[1], self.real.shape[1])    # as log_mel_distance trims a pair
                if real is None or real[0] != n:
                    real = (n, log_mel(self.real[:, :n], self.sr))
                mels.append(log_mel(fake[:, :n], self.sr))
                per_latent.append(float(np.abs(mels[-1] - real[1]).mean()))
                if self.clf is not None:
                    hits.append(np.asarray(self.clf.predict(drum_features(fake, self.sr))) == self.labels)
                else:
                    _, err = pitch_accuracy(fake, self.pitches, self.sr)
                    hits.append(np.isfinite(err) & (np.abs(np.nan_to_num(err, nan=1e9)) <= PITCH_TOL_CENTS))
        finally:
            G.train(was_training)
        acc_key = "class_acc" if self.clf is not None else "pitch_acc"
        fig = {"logmel_db": float(np.mean(per_latent)), "logmel_db_std": float(np.std(per_latent)),
               acc_key: float(np.mean(np.concatenate(hits)))}
        pairs = [np.abs(a - b).mean() for i, a in enumerate(mels) for b in mels[i + 1:]]
        if pairs:
            fig["diversity_db"] = float(np.mean(pairs))
        return {**fig, "seconds": round(time.monotonic() - t0, 2)}


def accuracy(fig: dict[str, Any]) -> float:
    """The evaluation's accuracy figure: pitch_acc, or class_acc for a drum kit."""
    return float(fig.get("pitch_acc", fig.get("class_acc", float("nan"))))


class Tracker:
    """The validation curve, the best evaluation by `metric` and how long since it improved."""

    def __init__(self, metric: str = "logmel_db") -> None:
        if metric not in METRICS:
            from synth.errors import UserError
            raise UserError(f"config: train.valid_metric {metric!r}; choose from {', '.join(METRICS)}")
        self.metric = metric
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None

    def _key(self, fig: dict[str, Any]) -> tuple[float, float]:
        """Smaller is better: (primary, tie-break)."""
        acc = accuracy(fig)
        acc = -acc if np.isfinite(acc) else 0.0
        return (fig["logmel_db"], acc) if self.metric == "logmel_db" else (acc, fig["logmel_db"])

    def add(self, step: int, fig: dict[str, Any]) -> bool:
        """Record evaluation `fig` at `step`; True when it is the best so far (strictly better)."""
        rec = {"step": int(step), **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in fig.items()}}
        self.history.append(rec)
        if self.best is None or self._key(rec) < self._key(self.best):
            self.best = dict(rec)
            return True
        return False

    @property
    def stale(self) -> int:
        """Evaluations since the best one."""
        if self.best is None:
            return 0
        return sum(1 for h in self.history if h["step"] > self.best["step"])

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "history": [dict(h) for h in self.history],
                "best": dict(self.best) if self.best else None}

    def load(self, st: dict[str, Any] | None) -> None:
        if not st:
            return
        self.history = [dict(h) for h in st.get("history") or []]
        self.best = dict(st["best"]) if st.get("best") else None

    def summary(self, step: int, fig: dict[str, Any], improved: bool) -> str:
        """One log line for the evaluation at `step`."""
        acc_name = "class accuracy" if "class_acc" in fig else "pitch accuracy"
        line = (f"valid step {step}: log-mel {fig['logmel_db']:.3f} dB (±{fig['logmel_db_std']:.3f} over latents), "
                f"{acc_name} {accuracy(fig):.3f}")
        if "diversity_db" in fig:
            line += f", diversity {fig['diversity_db']:.3f} dB"
        if improved:
            return line + " - best so far, wrote best.pt"
        b = self.best or {}
        return (line + f"; best {b.get('logmel_db', float('nan')):.3f} dB, {accuracy(b):.3f} at step {b.get('step')}"
                f" (no better validation for {self.stale} evaluations since step {b.get('step')})")
