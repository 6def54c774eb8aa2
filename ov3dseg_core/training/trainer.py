"""A plain PyTorch trainer: AdamW + warm-up/cosine schedule, AMP on CUDA, gradient accumulation and clipping,
safetensors checkpoints with resume, tqdm progress, CSV + TensorBoard logs, and torch.distributed (torchrun).

The model is any ``nn.Module`` with ``training_losses(batch: dict, step: int) -> dict[str, Tensor]`` whose
``"loss"`` entry is the total to minimise; the other entries are logged. A model with ``train_state_dict()`` /
``load_train_state_dict(state)`` keeps that state (tensors) in the resume file beside the optimizer's; one with
``checkpoint_state_dict()`` / ``load_checkpoint_state(state)`` stores only that in its checkpoints (XMask3D leaves out
the frozen weights its config reloads from pretrained files). Multi-GPU / multi-node: launch with
``torchrun --nproc-per-node N -m ov3dseg_core.cli train CONFIG``; rank 0 logs and writes checkpoints.
"""
from __future__ import annotations

import csv
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from ov3dseg_core.atomic_write import atomic_path
from ov3dseg_core.training.checkpoint import (
    Checkpoint, load_checkpoint, load_train_state, save_checkpoint, save_train_state,
)
from ov3dseg_core.training.seeding import seed_everything, seed_worker


@dataclass
class TrainerConfig:
    max_steps: int = 2000
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.01        # cosine decays to lr * min_lr_ratio
    grad_accum_steps: int = 1
    grad_clip_norm: float = 1.0       # 0 disables clipping
    amp: bool = True                  # mixed precision, used only on CUDA
    log_every: int = 10
    checkpoint_every: int = 500
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"              # "auto" = cuda when available


class _LossModule(nn.Module):
    """Routes DDP's forward to ``model.training_losses`` so gradient synchronisation hooks run."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        return self.model.training_losses(batch, step)


def warmup_cosine(step: int, cfg: TrainerConfig) -> float:
    """LR multiplier: linear warm-up over ``warmup_steps``, then cosine to ``min_lr_ratio`` at ``max_steps``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if world > 1:
        return dist.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0"))
    return 0, 1, 0


@dataclass
class TrainResult:
    step: int
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)


class Trainer:
    """Trains ``model`` on ``dataset`` (batched by ``collate_fn``) and writes checkpoints to ``out_dir``.

    ``checkpoint_config`` (the model's config as plain data) and ``vocabulary`` are embedded in every checkpoint
    so that it can be rebuilt and queried without the training set-up.
    """

    def __init__(self, model: nn.Module, dataset: Dataset, collate_fn: Callable[[Sequence[Any]], dict],
                 config: TrainerConfig, out_dir: str | Path, checkpoint_config: dict[str, Any],
                 vocabulary: Sequence[str]):
        self.cfg = config
        self.out_dir = Path(out_dir)
        self.rank, self.world, local_rank = _distributed()
        if config.device == "auto":
            self.device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            self.device = torch.device(config.device)
        generator = seed_everything(config.seed + self.rank)
        self.model = model.to(self.device)
        self.loss_module: nn.Module = _LossModule(self.model)
        if self.world > 1:
            self.loss_module = nn.parallel.DistributedDataParallel(
                self.loss_module, device_ids=[local_rank] if self.device.type == "cuda" else None,
                find_unused_parameters=True)
        sampler = (DistributedSampler(dataset, seed=config.seed) if self.world > 1
                   else RandomSampler(dataset, generator=generator))
        self.loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate_fn,
                                 num_workers=config.num_workers, worker_init_fn=seed_worker, drop_last=False,
                                 persistent_workers=config.num_workers > 0)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_cosine(s, config))
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.checkpoint_config = checkpoint_config
        self.vocabulary = list(vocabulary)
        self.step = 0

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / "last.safetensors"

    def save(self, path: Path | None = None) -> Path:
        """Write the model checkpoint (+ resume state beside it); rank 0 only."""
        path = path or self.checkpoint_path
        if self.rank == 0:
            state = (self.model.checkpoint_state_dict() if hasattr(self.model, "checkpoint_state_dict")
                     else self.model.state_dict())  # without weights the config reloads from pretrained files
            save_checkpoint(path, Checkpoint(state, self.checkpoint_config, self.vocabulary, step=self.step))
            save_train_state(path, {"optimizer": self.optimizer.state_dict(),
                                    "scheduler": self.scheduler.state_dict(),
                                    "scaler": self.scaler.state_dict(), "step": self.step,
                                    "torch_rng": torch.get_rng_state(), "model": self._model_train_state()})
        return path

    def _model_train_state(self) -> dict[str, Any]:
        """The model's own training state outside its weights (``train_state_dict``, e.g. SAS's TESD bank)."""
        return self.model.train_state_dict() if hasattr(self.model, "train_state_dict") else {}

    def resume(self) -> bool:
        """Continue from ``out_dir/last.safetensors`` when it exists; returns whether it did."""
        if not self.checkpoint_path.exists():
            return False
        ckpt = load_checkpoint(self.checkpoint_path, device=self.device)
        if hasattr(self.model, "load_checkpoint_state"):
            self.model.load_checkpoint_state(ckpt.state_dict)
        else:
            self.model.load_state_dict(ckpt.state_dict)
        state = load_train_state(self.checkpoint_path)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            if state.get("model") and hasattr(self.model, "load_train_state_dict"):
                self.model.load_train_state_dict(state["model"])
        self.step = ckpt.step
        return True

    def _batches(self):
        epoch = 0
        while True:
            if isinstance(self.loader.sampler, DistributedSampler):
                self.loader.sampler.set_epoch(epoch)
            if hasattr(self.loader.dataset, "set_epoch"):  # fresh augmentation per epoch (num_workers = 0)
                self.loader.dataset.set_epoch(epoch)
            yield from self.loader
            epoch += 1

    def fit(self, resume: bool = True) -> TrainResult:
        """Train until ``max_steps`` optimizer steps; returns the final checkpoint path and the logged history."""
        if resume:
            self.resume()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = _Logger(self.out_dir, enabled=self.rank == 0, from_step=self.step)
        history: list[dict[str, float]] = []
        self.loss_module.train()
        batches = self._batches()
        bar = tqdm(total=self.cfg.max_steps, initial=self.step, desc="train", disable=self.rank != 0,
                   dynamic_ncols=True)
        t0, samples, interval = time.perf_counter(), 0, {}
        while self.step < self.cfg.max_steps:
            totals: dict[str, float] = {}
            for _ in range(self.cfg.grad_accum_steps):
                batch = move_to(next(batches), self.device)
                with torch.autocast(self.device.type, enabled=self.use_amp):
                    losses = self.loss_module(batch, self.step)
                self.scaler.scale(losses["loss"] / self.cfg.grad_accum_steps).backward()
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) / self.cfg.grad_accum_steps
                samples += int(batch.get("batch_size", self.cfg.batch_size))
            if self.cfg.grad_clip_norm > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss']:.4f}")
            for k, v in totals.items():
                interval.setdefault(k, []).append(v)
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.max_steps:
                elapsed = time.perf_counter() - t0
                row = {"step": self.step, "lr": self.scheduler.get_last_lr()[0],
                       "samples_per_s": samples * self.world / max(elapsed, 1e-9),
                       **{k: sum(v) / len(v) for k, v in interval.items()}}  # means over the interval
                history.append(row)
                log.write(row)
                t0, samples, interval = time.perf_counter(), 0, {}
            if self.step % self.cfg.checkpoint_every == 0:
                self.save()
        bar.close()
        log.close()
        path = self.save()
        if self.world > 1:
            dist.barrier()
        return TrainResult(step=self.step, checkpoint=path, history=history)


class _Logger:
    """CSV log (``train_log.csv``) and TensorBoard scalars (``tb/``) on rank 0.

    A run from step ``from_step`` keeps the rows of an existing log up to that step (a resumed run continues it;
    a run from step 0 starts it afresh; rows logged after the last checkpoint of a stopped run are dropped)."""

    def __init__(self, out_dir: Path, enabled: bool, from_step: int = 0):
        self.enabled = enabled
        self._csv = None
        self._writer = None
        self._tb = None
        if not enabled:
            return
        self.path = out_dir / "train_log.csv"
        if self.path.exists():
            with open(self.path, newline="") as f:
                reader = csv.DictReader(f)
                fields, rows = reader.fieldnames, [r for r in reader if int(float(r["step"])) <= from_step]
            if rows:
                with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=fields)
                    writer.writeheader()
                    writer.writerows(rows)
            else:
                self.path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self._tb = SummaryWriter(str(out_dir / "tb"))
        except ImportError:  # tensorboard is optional
            self._tb = None

    def write(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self._csv is None:
            new = not self.path.exists()
            self._csv = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._csv, fieldnames=list(row), extrasaction="ignore")
            if new:
                self._writer.writeheader()
        self._writer.writerow(row)
        self._csv.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step":
                    self._tb.add_scalar(k, v, row["step"])

    def close(self) -> None:
        if self._csv is not None:
            self._csv.close()
        if self._tb is not None:
            self._tb.close()
