"""Train in-context linear-regression models: GPT-2-style transformers and the LSTM baseline.

    python -m benchmarks.train --preset cpu --out runs/cpu --max-minutes 45 --threads 2
    python -m benchmarks.train --preset cpu --out runs/cpu --resume          # continue exactly
    torchrun --standalone --nproc_per_node 2 -m benchmarks.train --preset smoke --out runs/ddp

Setup of Garg et al. (2022): every prompt is fresh (x ~ N(0, Sigma), w* ~ N(0, I)), tokens
interleave x_i and (y_i, 0..), and the loss is the squared error at every x position.  Adam
(:class:`benchmarks.adam.Adam`: bit-identical to ``torch.optim.Adam``, without its import of
``torch._dynamo``; checkpoints of either resume in the other),
optional warm-up and cosine/linear decay, and the curriculum over active dimensions and
points.  Everything a run does is fixed by one frozen :class:`TrainConfig` (presets in
:data:`PRESETS`), which is saved as JSON with every checkpoint.

Determinism and exact resume.  The model is initialised from ``seed``; the batch of step s is
drawn from its own generator seeded by ``(seed, s)``, and the learning rate and curriculum are
pure functions of s.  A checkpoint stores the model, Adam's moment and step tensors (in their
own dtypes, safetensors), the RNG states and the curriculum state, so a run killed at any
moment and resumed with ``--resume`` ends bit-identical (on the CPU) to one that never stopped.

Output folder ``OUT``::

    OUT/config.json, OUT/model.safetensors   the latest model: construct.checkpoint.load_model(OUT)
    OUT/train_config.json                    the TrainConfig
    OUT/log.csv                              step, wall_seconds, train_loss, lr, dims, points,
                                             eval_nmse_last, eval_nmse_avg
    OUT/checkpoints/latest.json              which step folder is current
    OUT/checkpoints/step_XXXXXXXX/           config.json, model.safetensors,
                                             optimizer.safetensors (Adam + RNG tensors), log.csv,
                                             trainer.json (step, scalars, RNG, curriculum, sha256)

Every file is written atomically (temp file, fsync, rename); a step folder is assembled under a
temporary name and renamed into place before ``latest.json`` points at it.

Evaluation: a fixed set of fresh prompts at full d and n_points; ``eval_nmse_last`` is the
squared error at the last position divided by d (the zero predictor scores 1 at kappa = 1, no
noise), ``eval_nmse_avg`` the same averaged over positions t >= d (t examples in context).

Multi-process: under ``torchrun`` the global batch of each step is split evenly across ranks
(gloo on CPU, nccl on CUDA) and DistributedDataParallel averages the gradients; only rank 0
evaluates and writes.
"""

from __future__ import annotations

import argparse

from construct.cli import HelpFormatter
import csv
import dataclasses
import io
import json
import math
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from construct.checkpoint import dumps_strict, sha256_file

from benchmarks.adam import Adam
from benchmarks.data import sample_prompts
from construct.validate import config_from_dict
from construct.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    SavableModel,
    atomic_save_tensors,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    read_tensors,
)

TRAIN_FORMAT = "newton-icl-train"
TRAIN_FORMAT_VERSION = 1
MODEL_KINDS = ("garg", "lstm")
DECAYS = ("constant", "cosine", "linear")
LOG_FIELDS = ("step", "wall_seconds", "train_loss", "lr", "dims", "points", "eval_nmse_last", "eval_nmse_avg")
EVAL_SEED_TAG = 0xE7A1  # separates the evaluation prompts' seeds from the training batches'


# ====================================================================== configuration
@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.  Validates itself; JSON round-trips."""

    preset: str = "custom"      # name, for the record
    model: str = "garg"         # "garg" (GPT-2-style transformer) | "lstm"
    # --- data
    d: int = 5                  # data dimension (read-in width)
    n_points: int = 11          # examples per training prompt (at the end of the curriculum)
    kappa: float = 1.0          # condition number of Sigma (1: identity)
    noise: float = 0.0          # label-noise std
    # --- model
    n_layers: int = 6           # transformer layers / LSTM layers
    n_heads: int = 4            # attention heads (garg); must divide d_model
    d_model: int = 64           # residual width (garg) / hidden width (lstm)
    d_mlp: int = 0              # MLP width (0 -> 4 d_model)
    max_points: int = 0         # position budget in examples (garg: 2*max_points tokens); 0 -> n_points
    # --- optimisation
    batch_size: int = 64        # global batch (split across ranks under torchrun)
    lr: float = 1e-3            # Adam peak learning rate
    warmup_steps: int = 0       # linear warm-up from lr/warmup to lr
    decay: str = "constant"     # "constant" | "cosine" | "linear" decay after warm-up
    min_lr_frac: float = 0.0    # final lr as a fraction of lr (cosine/linear)
    grad_clip: float = 0.0      # clip the global grad norm to this (0: off)
    train_steps: int = 1000     # optimiser steps
    # --- curriculum (Garg et al.): active dims / points grow by *_inc every *_every steps
    dims_start: int = 0         # 0 -> d (no dims curriculum)
    dims_inc: int = 1
    dims_every: int = 0         # 0 -> no dims curriculum
    points_start: int = 0       # 0 -> n_points (no points curriculum)
    points_inc: int = 2
    points_every: int = 0       # 0 -> no points curriculum
    # --- bookkeeping
    eval_every: int = 500       # steps between evaluations / log rows
    eval_prompts: int = 1000    # prompts in the fixed evaluation set
    eval_seed: int = 2024       # seed of the evaluation set (same for every training seed)
    checkpoint_every: int = 1000  # steps between checkpoints (and at the end)
    keep_checkpoints: int = 2   # step folders kept on disk
    seed: int = 0               # model init and training batches

    def __post_init__(self) -> None:
        ints_pos = ("d", "n_points", "n_layers", "d_model", "batch_size", "train_steps", "eval_every",
                    "eval_prompts", "checkpoint_every", "keep_checkpoints", "dims_inc", "points_inc")
        ints_nonneg = ("n_heads", "d_mlp", "max_points", "warmup_steps", "dims_start", "dims_every",
                       "points_start", "points_every", "eval_seed", "seed")
        for name in ints_pos + ints_nonneg:
            v = getattr(self, name)
            lo = 1 if name in ints_pos else 0
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                raise ValueError(f"TrainConfig.{name} must be an int >= {lo}, got {v!r}")
        for name in ("kappa", "noise", "lr", "min_lr_frac", "grad_clip"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"TrainConfig.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if self.model not in MODEL_KINDS:
            raise ValueError(f"TrainConfig.model must be one of {MODEL_KINDS}, got {self.model!r}")
        if self.decay not in DECAYS:
            raise ValueError(f"TrainConfig.decay must be one of {DECAYS}, got {self.decay!r}")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_frac <= 1.0:
            raise ValueError(f"TrainConfig.min_lr_frac must lie in [0, 1], got {self.min_lr_frac}")
        if self.kappa < 1.0:
            raise ValueError(f"TrainConfig.kappa (condition number) must be >= 1, got {self.kappa}")
        if self.noise < 0 or self.grad_clip < 0:
            raise ValueError("TrainConfig.noise and grad_clip must be >= 0")
        if self.model == "garg":
            if self.n_heads < 1:
                raise ValueError("TrainConfig.n_heads must be >= 1 for the garg transformer")
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                    "each head needs an integer width d_model / n_heads"
                )
        if self.max_points and self.n_points > self.max_points:
            raise ValueError(
                f"n_points={self.n_points} is beyond the position budget: the model has learned "
                f"positions for max_points={self.max_points} examples ({2 * self.max_points} tokens)"
            )
        if self.dims_start > self.d:
            raise ValueError(f"curriculum dims_start={self.dims_start} exceeds d={self.d}")
        if self.points_start > self.n_points:
            raise ValueError(f"curriculum points_start={self.points_start} exceeds n_points={self.n_points}")
        if self.warmup_steps > self.train_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds train_steps={self.train_steps}")

    # ------------------------------------------------------------ derived
    @property
    def position_budget(self) -> int:
        return self.max_points or self.n_points

    def lr_at(self, step: int) -> float:
        """Learning rate of update ``step`` (0-based): warm-up, then the decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.decay == "constant":
            return self.lr
        p = min(1.0, (step - self.warmup_steps) / max(1, self.train_steps - self.warmup_steps))
        f = 0.5 * (1.0 + math.cos(math.pi * p)) if self.decay == "cosine" else 1.0 - p
        return self.lr * (self.min_lr_frac + (1.0 - self.min_lr_frac) * f)

    def curriculum_at(self, step: int) -> tuple[int, int]:
        """(active dims, points) used at ``step``."""
        dims = self.d
        if self.dims_every and self.dims_start:
            dims = min(self.d, self.dims_start + self.dims_inc * (step // self.dims_every))
        points = self.n_points
        if self.points_every and self.points_start:
            points = min(self.n_points, self.points_start + self.points_inc * (step // self.points_every))
        return dims, points

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return config_from_dict(cls, d)

    def replace(self, **changes) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    # Garg et al. / Fu et al. at full scale (days on a CPU; GPU preset).
    "paper": TrainConfig(
        preset="paper", d=20, n_points=41, n_layers=12, n_heads=8, d_model=256, batch_size=64,
        lr=1e-4, train_steps=500_000, dims_start=5, dims_inc=1, dims_every=2000,
        points_start=11, points_inc=2, points_every=2000, eval_every=1000, eval_prompts=1000,
        checkpoint_every=5000,
    ),
    # Fits a CPU: d=5, 11 points, 6L/4H/64.  ~70 ms/step on 2 idle cores, ~100 ms on 1.
    "cpu": TrainConfig(
        preset="cpu", d=5, n_points=11, n_layers=6, n_heads=4, d_model=64, batch_size=64,
        lr=1e-3, warmup_steps=1000, decay="cosine", min_lr_frac=0.05, grad_clip=1.0,
        train_steps=18_000, eval_every=250, eval_prompts=1000, checkpoint_every=1000,
    ),
    # d=10, 21 points with a scaled-down curriculum (dims 3->10, points 7->21).
    "d10": TrainConfig(
        preset="d10", d=10, n_points=21, n_layers=6, n_heads=4, d_model=64, batch_size=64,
        lr=1e-3, warmup_steps=1000, decay="cosine", min_lr_frac=0.05, grad_clip=1.0,
        train_steps=15_000, dims_start=3, dims_inc=1, dims_every=500,
        points_start=7, points_inc=2, points_every=500, eval_every=250, eval_prompts=1000,
        checkpoint_every=1000,
    ),
    # Seconds; for CI and the tests.
    "smoke": TrainConfig(
        preset="smoke", d=3, n_points=6, n_layers=2, n_heads=2, d_model=16, batch_size=16,
        lr=3e-3, warmup_steps=10, decay="cosine", min_lr_frac=0.1, grad_clip=1.0,
        train_steps=100, eval_every=25, eval_prompts=128, checkpoint_every=50,
    ),
    # LSTM baseline on the cpu preset's data.
    "lstm-cpu": TrainConfig(
        preset="lstm-cpu", model="lstm", d=5, n_points=11, n_layers=2, n_heads=0, d_model=64,
        batch_size=64, lr=1e-3, warmup_steps=500, decay="cosine", min_lr_frac=0.05, grad_clip=1.0,
        train_steps=8000, eval_every=250, eval_prompts=1000, checkpoint_every=1000,
    ),
}


def get_preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


# ====================================================================== pieces
def build_model(cfg: TrainConfig) -> SavableModel:
    """A freshly initialised model (uses the global torch RNG: seed it first)."""
    if cfg.model == "garg":
        from construct.regressor import GargConfig, GargRegressor

        return GargRegressor(GargConfig(cfg.d, cfg.position_budget, cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_mlp))
    from benchmarks.models import LSTMConfig, LSTMRegressor

    return LSTMRegressor(LSTMConfig(cfg.d, cfg.position_budget, cfg.d_model, cfg.n_layers))


def _seed_of(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_seed(cfg: TrainConfig, step: int) -> int:
    """Seed of the training batch of ``step``: a pure function of (seed, step)."""
    return _seed_of(cfg.seed, step)


def training_batch(cfg: TrainConfig, step: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The global batch of ``step``: X (B, points, d) zero-padded past ``dims``, y (B, points)."""
    dims, points = cfg.curriculum_at(step)
    X, y, _ = sample_prompts(cfg.batch_size, points, cfg.d, kappa=cfg.kappa, noise=cfg.noise,
                             seed=batch_seed(cfg, step), d_active=dims)
    return X, y, dims, points


def eval_set(cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed evaluation prompts at full d and n_points (independent of the training seed)."""
    X, y, _ = sample_prompts(cfg.eval_prompts, cfg.n_points, cfg.d, kappa=cfg.kappa, noise=cfg.noise,
                             seed=_seed_of(cfg.eval_seed, EVAL_SEED_TAG, 1))
    return X, y


def nmse_per_position(pred: torch.Tensor, y: torch.Tensor, d: int) -> torch.Tensor:
    """Squared error per position, averaged over prompts, divided by d: (n,)."""
    return ((pred.double() - y.double()) ** 2).mean(0) / d


def summarize(per_pos: torch.Tensor, d: int) -> tuple[float, float]:
    """(at the last position, averaged over positions t >= d) -- NaN if n <= d."""
    last = float(per_pos[-1])
    avg = float(per_pos[d:].mean()) if per_pos.shape[0] > d else float("nan")
    return last, avg


@torch.no_grad()
def evaluate(model: SavableModel, X: torch.Tensor, y: torch.Tensor, d: int, chunk: int = 500) -> torch.Tensor:
    was_training = model.training
    model.eval()
    preds = [model.predict_all(X[i:i + chunk], y[i:i + chunk]).cpu() for i in range(0, X.shape[0], chunk)]
    model.train(was_training)
    return nmse_per_position(torch.cat(preds), y, d)


@torch.no_grad()
def compare_with_baselines(model: SavableModel, cfg: TrainConfig, prompts: int = 10_000, seed: int = 777) -> dict:
    """Normalised MSE of the model, min-norm OLS and the zero predictor on fresh prompts.

    Returns ``{name: {"last": ..., "avg_t_ge_d": ..., "per_position": [...]}}`` for
    ``name`` in ("model", "ols", "zero"), on ``prompts`` prompts drawn with ``seed`` (distinct
    from the training batches' and the periodic evaluation's seeds).
    """
    from benchmarks.data import ols_predict_all

    X, y, _ = sample_prompts(prompts, cfg.n_points, cfg.d, kappa=cfg.kappa, noise=cfg.noise,
                             seed=_seed_of(seed, EVAL_SEED_TAG, 2))
    p = next(model.parameters())
    per = {
        "model": evaluate(model, X.to(p.device), y.to(p.device), cfg.d),
        "ols": nmse_per_position(ols_predict_all(X, y), y, cfg.d),
        "zero": nmse_per_position(torch.zeros_like(y), y, cfg.d),
    }
    out = {}
    for name, v in per.items():
        last, avg = summarize(v, cfg.d)
        out[name] = {"last": last, "avg_t_ge_d": avg, "per_position": [float(a) for a in v]}
    return out


# ====================================================================== checkpoints
def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(keys.astype(np.int64))
    py = random.getstate()
    scalars = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": py[0], "state": list(py[1]), "gauss_next": py[2]},
    }
    return tensors, scalars


def _set_rng_state(tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    npst = scalars["numpy"]
    np.random.set_state((npst["name"], tensors["rng.numpy.keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    py = scalars["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def _optimizer_tensors(opt: Adam | torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for key, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = v
            else:
                scalars[f"{idx}.{key}"] = v
    return tensors, {"param_groups": sd["param_groups"], "state_scalars": scalars}


def _load_optimizer(opt: Adam | torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, key = k.split(".", 2)
            state.setdefault(int(idx), {})[key] = v
    for k, v in meta["state_scalars"].items():
        idx, key = k.split(".", 1)
        state.setdefault(int(idx), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class RunDir:
    """The files of one training run (see the module docstring)."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.ckpts = self.out / "checkpoints"
        self.latest = self.ckpts / "latest.json"
        self.log = self.out / "log.csv"
        self.train_config = self.out / "train_config.json"

    def has_run(self) -> bool:
        return self.latest.exists() or self.log.exists()

    def is_ours(self) -> bool:
        """True when OUT holds a training run of this program (its train_config.json parses)."""
        if not self.train_config.is_file():
            return False
        try:
            TrainConfig.from_dict(read_json(self.train_config, "training config"))
        except (CheckpointError, ValueError, TypeError):
            return False
        return True

    def check_out(self) -> None:
        """Refuse an --out we must not write into: a file, a folder that cannot be written, or a
        non-empty folder that is not one of our run folders (whose files we would overwrite)."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {str(out)!r} is a file; it must be a folder (new, empty, or a run of this program)")
        if out.is_dir() and any(out.iterdir()) and not self.is_ours():
            raise ValueError(
                f"--out {str(out)!r} is not empty and is not a training run folder of this program (no valid "
                "train_config.json); refusing to overwrite its files. Choose a new or empty folder."
            )
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--out {str(out)!r} cannot be created: {e.strerror or e}") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"--out {str(out)!r} is not writable")

    # ------------------------------------------------------------ write
    def save(self, step: int, model: SavableModel, opt: Adam | torch.optim.Optimizer, cfg: TrainConfig,
             extra: dict, log_rows: list[dict]) -> Path:
        name = f"step_{step:08d}"
        final = self.ckpts / name
        tmp = self.ckpts / f".tmp-{name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save(tmp)
        opt_t, opt_meta = _optimizer_tensors(opt)
        rng_t, rng_meta = _rng_state()
        atomic_save_tensors(tmp / "optimizer.safetensors", {**opt_t, **rng_t}, metadata={"format": TRAIN_FORMAT})
        self.write_log(log_rows, tmp / "log.csv")  # the log up to this step travels with the checkpoint
        atomic_write_json(tmp / "trainer.json", {
            "format": TRAIN_FORMAT,
            "format_version": TRAIN_FORMAT_VERSION,
            "step": step,
            "train_config": cfg.to_dict(),
            "curriculum": dict(zip(("dims", "points"), cfg.curriculum_at(step))),
            "optimizer": opt_meta,
            "rng": rng_meta,
            "sha256": {f: sha256_file(tmp / f) for f in (CONFIG_FILE, WEIGHTS_FILE, "optimizer.safetensors", "log.csv")},
            "torch_version": torch.__version__,
            **extra,
        })
        if final.exists():  # re-saving a step (e.g. after a resume): replace it whole
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_json(self.latest, {"format": TRAIN_FORMAT, "step": step, "dir": name})
        # the loadable model at the top of OUT, and the log
        model.save(self.out)
        self.write_log(log_rows)
        keep = sorted(p for p in self.ckpts.glob("step_*") if p.is_dir())
        for old in keep[: -cfg.keep_checkpoints]:
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return final

    def write_log(self, rows: list[dict], path: Path | None = None) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=LOG_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k)) for k in LOG_FIELDS})
        atomic_write_bytes(path or self.log, buf.getvalue().encode())

    # ------------------------------------------------------------ read
    def load(self) -> tuple[dict, Path]:
        """``(trainer.json, step folder)`` of the latest checkpoint, verified; CheckpointError otherwise."""
        if not self.latest.exists():
            raise CheckpointError(
                f"cannot resume: no checkpoint in {str(self.out)!r} (expected {str(self.latest)!r}); "
                "run without --resume to start a fresh run"
            )
        ptr = read_json(self.latest, "checkpoint pointer")
        if ptr.get("format") != TRAIN_FORMAT or not isinstance(ptr.get("dir"), str):
            raise CheckpointError(f"checkpoint pointer {str(self.latest)!r} is corrupt or foreign: {ptr}")
        # the pointer names a step folder inside OUT/checkpoints, never a path elsewhere
        if not re.fullmatch(r"step_\d{8}", ptr["dir"]):
            raise CheckpointError(
                f"checkpoint pointer {str(self.latest)!r} names {ptr['dir']!r}, not a step folder (step_NNNNNNNN) "
                "of this run; refusing to follow it")
        folder = self.ckpts / ptr["dir"]
        if folder.is_symlink() or folder.resolve().parent != self.ckpts.resolve():
            raise CheckpointError(f"checkpoint folder {str(folder)!r} leads outside {str(self.ckpts)!r}; refusing to follow it")
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {str(folder)!r} named by {str(self.latest)!r} is missing")
        meta = read_json(folder / "trainer.json", "trainer state")
        if meta.get("format") != TRAIN_FORMAT or meta.get("format_version") != TRAIN_FORMAT_VERSION:
            raise CheckpointError(f"{str(folder / 'trainer.json')!r} is not a {TRAIN_FORMAT} v{TRAIN_FORMAT_VERSION} file")
        for f, digest in meta.get("sha256", {}).items():
            p = folder / f
            if not p.is_file():
                raise CheckpointError(f"checkpoint file {str(p)!r} is missing")
            if sha256_file(p) != digest:
                raise CheckpointError(f"checkpoint file {str(p)!r} is corrupt (sha256 does not match trainer.json)")
        return meta, folder

    @staticmethod
    def read_log(path: Path, upto_step: int) -> list[dict]:
        if not path.exists():
            return []
        with open(path, newline="") as f:
            rows = [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]
        return [r for r in rows if r["step"] is not None and r["step"] <= upto_step]


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _parse(v: str):
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        return float(v)


# ====================================================================== training
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as tdist

    backend = "nccl" if device_kind == "cuda" else "gloo"
    tdist.init_process_group(backend=backend)
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _resolve_device(kind: str, dist: Dist) -> torch.device:
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but torch.cuda.is_available() is False")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {kind!r}")


def train(
    cfg: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    max_minutes: float | None = None,
    device: str = "cpu",
    progress: bool = True,
    step_delay: float = 0.0,
    print_summary: bool = True,
) -> dict:
    """Run (or resume) training; returns a summary dict.  See the module docstring.

    ``print_summary``: print the summary as one JSON line on stdout (the CLI's output); callers
    that run training as a sub-step (the width ablation inside ``benchmarks.run``) pass False so
    their own stdout stays theirs.
    """
    run = RunDir(out)
    run.check_out()  # every rank, before DDP init: a refusal never leaves a peer waiting
    dist = _init_distributed(device)
    ok = False
    try:
        summary = _train(cfg, run, resume, max_minutes, _resolve_device(device, dist), dist, progress, step_delay,
                         print_summary)
        ok = True
        return summary
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                # Leave together: without this barrier rank 1 tore down its gloo process group and
                # exited while rank 0 was still writing the final checkpoint; gloo's background
                # threads on the surviving side then hit a closed peer, which aborted a worker with
                # "terminate called without an active exception" (SIGABRT) now and then under load.
                if ok:
                    tdist.barrier()
                tdist.destroy_process_group()


def _train(cfg: TrainConfig, run: RunDir, resume: bool, max_minutes: float | None, dev: torch.device,
           dist: Dist, progress: bool, step_delay: float, print_summary: bool = True) -> dict:
    if cfg.batch_size % dist.world:
        raise ValueError(f"batch_size={cfg.batch_size} does not split evenly across {dist.world} processes")
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"--max-minutes must be > 0, got {max_minutes}")
    t_start = time.time()

    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(dev)
    opt = Adam(model.parameters(), lr=cfg.lr_at(0))
    start_step, wall_before, loss_sum, loss_cnt, log_rows = 0, 0.0, 0.0, 0, []

    if resume:
        meta, folder = run.load()
        saved = TrainConfig.from_dict(meta["train_config"])
        if saved != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if getattr(cfg, k) != v}
            raise ValueError(f"--resume: the checkpoint was trained with a different config (saved, asked): {diff}")
        state = read_tensors(folder / WEIGHTS_FILE, "model weights")
        model.load_state_dict(state)
        ot = read_tensors(folder / "optimizer.safetensors", "optimizer state")
        _load_optimizer(opt, {k: v.to(dev) if k.startswith("optim.") and k.split(".")[-1] != "step" else v
                              for k, v in ot.items()}, meta["optimizer"])
        _set_rng_state(ot, meta["rng"])
        start_step = int(meta["step"])
        wall_before = float(meta["wall_seconds"])
        loss_sum, loss_cnt = float(meta["loss_sum"]), int(meta["loss_count"])
        # (the top-level log is the fallback for step folders written without their own log.csv)
        log_rows = run.read_log(folder / "log.csv" if (folder / "log.csv").exists() else run.log, start_step)
    elif run.has_run():  # every rank checks (before DDP's first collective, so rank 0 has written nothing yet)
        raise ValueError(
            f"{str(run.out)!r} already holds a training run; pass --resume to continue it or choose another --out"
        )

    ddp_model = model
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ddp_model = DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    evX = evY = None
    if dist.main:
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.train_config, cfg.to_dict())
        evX, evY = eval_set(cfg)
        evX, evY = evX.to(dev), evY.to(dev)

    def wall() -> float:
        return wall_before + time.time() - t_start

    def checkpoint(step: int, status: str) -> None:
        if dist.main:
            run.save(step, model, opt, cfg, {"wall_seconds": wall(), "loss_sum": loss_sum, "loss_count": loss_cnt,
                                              "status": status, "world_size": dist.world}, log_rows)

    lo, hi = dist.rank * cfg.batch_size // dist.world, (dist.rank + 1) * cfg.batch_size // dist.world
    bar = None
    if progress and dist.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg.train_steps, initial=start_step, desc=f"train {cfg.preset}", mininterval=2.0,
                   dynamic_ncols=True, file=sys.stderr)
    status, step = "finished", start_step
    last = (float("nan"), float("nan"))
    model.train()
    while step < cfg.train_steps:
        X, y, dims, points = training_batch(cfg, step)
        X, y = X[lo:hi].to(dev), y[lo:hi].to(dev)  # this rank's share: (B/W, points, d), (B/W, points)
        lr = cfg.lr_at(step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = ((ddp_model(X, y) - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        loss_sum += float(loss.detach())
        loss_cnt += 1
        if step_delay:
            time.sleep(step_delay)

        if step % cfg.eval_every == 0 or step == cfg.train_steps:
            mean_loss = loss_sum / max(loss_cnt, 1)
            if dist.world > 1:
                import torch.distributed as tdist

                t = torch.tensor([mean_loss], dtype=torch.float64, device=dev)
                tdist.all_reduce(t)
                mean_loss = float(t) / dist.world
            loss_sum, loss_cnt = 0.0, 0
            if dist.main:
                last = summarize(evaluate(model, evX, evY, cfg.d), cfg.d)
                log_rows.append({"step": step, "wall_seconds": round(wall(), 3), "train_loss": mean_loss, "lr": lr,
                                 "dims": dims, "points": points, "eval_nmse_last": last[0], "eval_nmse_avg": last[1]})
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", nmse_last=f"{last[0]:.4f}", nmse_avg=f"{last[1]:.4f}")
        if bar is not None:
            bar.update(1)

        over = max_minutes is not None and (time.time() - t_start) > 60.0 * max_minutes
        if dist.world > 1:
            import torch.distributed as tdist

            flag = torch.tensor([1.0 if over else 0.0], device=dev)
            tdist.broadcast(flag, src=0)
            over = bool(flag.item())
        if step % cfg.checkpoint_every == 0 or step == cfg.train_steps or over:
            checkpoint(step, "finished" if step == cfg.train_steps else ("stopped: --max-minutes" if over else "running"))
        if over and step < cfg.train_steps:
            status = "stopped: --max-minutes"
            break
    if bar is not None:
        bar.close()
    if start_step == cfg.train_steps and dist.main:
        status = "already finished"
    summary = {"status": status, "step": step, "wall_seconds": wall(), "eval_nmse_last": last[0],
               "eval_nmse_avg": last[1], "out": str(run.out)}
    if dist.main and print_summary:
        print(dumps_strict(summary), flush=True)
    return summary


# ====================================================================== CLI
def _parse_set(items: list[str]) -> dict:
    changes = {}
    for it in items:
        if "=" not in it:
            raise ValueError(f"--set expects KEY=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        try:
            changes[k] = json.loads(v)
        except json.JSONDecodeError:
            changes[k] = v
    return changes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m benchmarks.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True, help=f"one of {sorted(PRESETS)}")
    ap.add_argument("--out", required=True, help="output folder (model, checkpoints, log.csv)")
    ap.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to train")
    ap.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    ap.add_argument("--steps", type=int, default=None, help="override train_steps")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any TrainConfig field")
    ap.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    ap.add_argument("--eval-only", action="store_true",
                    help="do not train: load the model in --out and print its normalised MSE against OLS and "
                         "the zero predictor on fresh prompts (JSON)")
    ap.add_argument("--eval-prompts", type=int, default=10_000, help="prompts for --eval-only")
    ap.add_argument("--step-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: slow a run down
    args = ap.parse_args(argv)
    try:
        changes = _parse_set(args.set)
        if args.seed is not None:
            changes["seed"] = args.seed
        if args.steps is not None:
            changes["train_steps"] = args.steps
        cfg = get_preset(args.preset).replace(**changes)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        if args.eval_only:
            from construct.checkpoint import load_model

            t0 = time.perf_counter()
            print(f"eval-only: loading {args.out}", file=sys.stderr, flush=True)
            model = load_model(args.out).eval()
            print(f"eval-only: {type(model).__name__}; model, OLS and zero predictor on {args.eval_prompts} "
                  f"fresh {cfg.preset} prompts (n={cfg.n_points}, d={cfg.d}) ...", file=sys.stderr, flush=True)
            res = compare_with_baselines(model, cfg, prompts=args.eval_prompts)
            print(f"eval-only: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            print(dumps_strict({"preset": cfg.preset, "d": cfg.d, "n_points": cfg.n_points, "prompts": args.eval_prompts,
                              **{k: {kk: vv for kk, vv in v.items()} for k, v in res.items()}}, indent=1))
            return 0
        train(cfg, args.out, resume=args.resume, max_minutes=args.max_minutes, device=args.device,
              progress=not args.no_progress, step_delay=args.step_delay)
    except (ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk full or a folder that vanished mid-run: say what, no traceback
        print(f"error: cannot write to --out {args.out!r}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
