"""Generic, resumable, deterministic training loop for the LIFT stages.

* The batch of step ``s`` is a pure function of ``(seed, s)``: items ``(s mod E) * B ...`` of
  epoch ``s // E`` of a :class:`lift.data.QuadrupletDataset` (``E`` steps per epoch, the dataset
  re-draws its quadruplets per epoch), and the augmentation generator of step ``s`` is seeded with
  ``(seed, s, rank)``. Resuming at step ``s`` therefore replays exactly what an uninterrupted run
  would have done.
* Checkpoints (``checkpoint.pt``: model, optimiser, scheduler, step, RNG states of torch, numpy
  and python, validation history) are written atomically every ``ckpt_every`` steps, at the end,
  and when the process gets SIGTERM/SIGINT (the current step finishes first).
* Logs: ``log.csv`` (one row per ``log_every`` steps), ``val.jsonl`` (one JSON object per
  validation), ``summary.json`` at the end; tqdm progress on stderr.
* Data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) the stage runs in
  ``DistributedDataParallel`` (gloo on CPU); each of ``W`` processes takes every ``W``-th item of
  the global batch; rank 0 validates, logs and writes checkpoints.
* Weights: ``model.pt`` (last) and ``best.pt`` (best validation of the stage's metric) in the
  :class:`lift.LIFTModel` format.
"""
from __future__ import annotations

import csv
import json
import os
import random
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .stages import Stage
from .validation import collate, evaluate

__all__ = ["TrainConfig", "Trainer", "save_atomic", "STAGE_METRIC"]

#: validation metric (lower is better) that selects ``best.pt`` for each stage. ``ori`` uses
#: the median angle error: FPR95 at the predicted orientation saturates at ~20 false positives
#: in 1264 pairs and picked step 200 of 1600 (6.8 deg on sacre_coeur/mapping_rot, last step:
#: 5.2 deg)
STAGE_METRIC = {"desc": "fpr95_gt", "ori": "ori_err_deg", "det": "fpr95_chain",
                "joint": "fpr95_chain"}


@dataclass
class TrainConfig:
    """Loop settings.

    Attributes:
        steps: total optimisation steps (the run stops at this step, also after a resume).
        batch_size: quadruplets per step, summed over processes.
        lr: Adam learning rate (LIFT: 1e-3); decays linearly to ``lr * lr_end``.
        weight_decay: Adam (L2) weight decay.
        seed: seeds the model init, the data order and the augmentation.
        ckpt_every / val_every / log_every: periods in steps (0 disables periodic val).
        val_items: validation quadruplets.
        threads: torch intra-op threads per process.
        max_minutes: stop (with a checkpoint) after this wall time, 0 = no limit.
        stop_at: stop (with a checkpoint) after this step without changing the schedule, so a
            later ``--resume`` continues the same run; 0 = run to ``steps``.
    """

    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    lr_end: float = 0.05
    weight_decay: float = 1e-4
    seed: int = 0
    ckpt_every: int = 200
    val_every: int = 500
    log_every: int = 10
    val_items: int = 2000
    threads: int = 1
    max_minutes: float = 0.0
    stop_at: int = 0
    progress: bool = True
    extra: Dict[str, object] = field(default_factory=dict)


def save_atomic(obj, path: Path):
    """``torch.save`` to a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def _set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class Trainer:
    """Runs one stage.

    Args:
        stage: the loss module (owns the model).
        train_set: a :class:`lift.data.QuadrupletDataset` over the training split.
        val_set: the same over held-out tracks, or None.
        output: run folder (checkpoint, logs, weights).
        config: :class:`TrainConfig`.
        resume: continue from ``output/checkpoint.pt`` if it exists.
    """

    def __init__(self, stage: Stage, train_set, val_set, output, config: TrainConfig,
                 resume: bool = False):
        self.stage, self.train_set, self.val_set = stage, train_set, val_set
        self.out = Path(output)
        self.cfg = config
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("gloo")
        if config.batch_size % self.world:
            raise ValueError(f"batch size {config.batch_size} is not divisible by the "
                             f"{self.world} processes")
        self.steps_per_epoch = len(train_set) // config.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training set has {len(train_set)} quadruplets, fewer than one "
                             f"batch of {config.batch_size}")
        params = stage.trainable()
        if not params:
            raise ValueError(f"stage {stage.name} has nothing to train")
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        steps, end = max(1, config.steps), config.lr_end
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 1.0 - (1.0 - end) * min(s, steps) / steps)
        self.net = stage
        if self.world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(stage)
        self.step = 0
        self.history: List[dict] = []
        self.best: Optional[float] = None
        self.metric = STAGE_METRIC.get(stage.name, "fpr95_gt")
        self._stop = False
        self.elapsed = 0.0  # training wall time over all runs (seconds)
        if resume and (self.out / "checkpoint.pt").is_file():
            self._load(self.out / "checkpoint.pt")

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        return {"step": self.step, "stage": self.stage.name, "model": self.stage.model.state(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "rng": _rng_state(), "history": self.history, "best": self.best,
                "elapsed": self.elapsed, "config": asdict(self.cfg), "world": self.world}

    def save_checkpoint(self):
        if self.rank == 0:
            save_atomic(self._state(), self.out / "checkpoint.pt")

    def _load(self, path: Path):
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["stage"] != self.stage.name:
            raise ValueError(f"{path} is a checkpoint of stage {state['stage']!r}, not "
                             f"{self.stage.name!r}")
        model = self.stage.model
        for key in ("detector", "orientation", "descriptor"):
            getattr(model, key).load_state_dict(state["model"][key])
        model.meta = dict(state["model"].get("meta", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.best, self.elapsed = state["best"], float(state.get("elapsed", 0.0))

    # ------------------------------------------------------------------ data
    def batch(self, step: int) -> Dict[str, torch.Tensor]:
        """This process's share of the global batch of ``step``."""
        bsz = self.cfg.batch_size
        self.train_set.set_epoch(step // self.steps_per_epoch)
        first = (step % self.steps_per_epoch) * bsz
        idx = range(first + self.rank, first + bsz, self.world)
        return collate([self.train_set[i] for i in idx])

    def generator(self, step: int) -> torch.Generator:
        seed = (self.cfg.seed * 1_000_003 + step) * 64 + self.rank
        return torch.Generator().manual_seed(seed % (2 ** 63))

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum, frame):
        self._stop = True

    def train_step(self, step: int) -> Dict[str, float]:
        self.stage.train()
        out = self.net(self.batch(step), self.generator(step))
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in out.items()}

    def validate(self) -> Optional[dict]:
        if self.val_set is None or self.rank != 0:
            return None
        res = evaluate(self.stage, self.val_set, self.cfg.val_items)
        res["step"] = self.step
        self.history.append(res)
        with open(self.out / "val.jsonl", "a") as f:
            f.write(json.dumps(res) + "\n")
        value = res.get(self.metric)
        if value is not None and (self.best is None or value <= self.best):  # ties: later
            self.best = value
            self.export(self.out / "best.pt", res)
        return res

    def export(self, path: Path, metrics: Optional[dict] = None) -> Path:
        model = self.stage.model
        model.meta = dict(model.meta)
        model.meta.setdefault("stages", {})
        model.meta["stages"] = dict(model.meta["stages"])
        model.meta["stages"][self.stage.name] = {
            "steps": self.step, "batch_size": self.cfg.batch_size, "lr": self.cfg.lr,
            "seed": self.cfg.seed, "processes": self.world, "wall_s": round(self.elapsed, 1),
            "val": metrics or (self.history[-1] if self.history else None),
            **{k: v for k, v in self.cfg.extra.items()}}
        return model.save(path)

    def _log_rows(self, rows: List[dict]):
        if self.rank != 0 or not rows:
            return
        path = self.out / "log.csv"
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("step", "time"), k))
        exists = path.is_file()
        if exists:  # drop rows beyond the resumed step so the file stays monotonic
            with open(path) as f:
                old = list(csv.DictReader(f))
            keep = [r for r in old if int(r["step"]) < rows[0]["step"]]
            if len(keep) != len(old) or (old and list(old[0].keys()) != keys):
                old_keys = list(old[0].keys()) if old else keys
                keys = old_keys + [k for k in keys if k not in old_keys]
                with open(path, "w", newline="") as f:
                    w = csv.DictWriter(f, keys)
                    w.writeheader()
                    w.writerows(keep)
        else:
            with open(path, "w", newline="") as f:
                csv.DictWriter(f, keys).writeheader()
        with open(path) as f:
            keys = next(csv.reader(f))
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, keys, extrasaction="ignore").writerows(rows)

    def run(self) -> Path:
        """Train until ``config.steps`` (or a signal / the time limit); returns ``model.pt``."""
        cfg = self.cfg
        torch.set_num_threads(cfg.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=f"lift-train {self.stage.name}",
                       dynamic_ncols=True)
        t_start, rows, t_last = time.time(), [], time.time()
        if self.step == 0 and cfg.val_every > 0:
            self.validate()
        try:
            while self.step < cfg.steps and not (0 < cfg.stop_at <= self.step):
                logs = self.train_step(self.step)
                self.step += 1
                now = time.time()
                self.elapsed += now - t_last
                t_last = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    rows.append({"step": self.step, "time": round(self.elapsed, 2),
                                 "lr": self.scheduler.get_last_lr()[0], **logs})
                    self._log_rows(rows)
                    rows = []
                if cfg.val_every > 0 and self.step % cfg.val_every == 0:
                    res = self.validate()
                    if res is not None and bar is not None:
                        bar.write(f"step {self.step}: " + ", ".join(
                            f"{k}={v:.4f}" for k, v in res.items() if isinstance(v, float)))
                timeout = cfg.max_minutes > 0 and now - t_start > 60 * cfg.max_minutes
                timeout = timeout or (0 < cfg.stop_at <= self.step)
                stop = torch.tensor(float(self._stop or timeout))
                if self.world > 1:
                    dist.all_reduce(stop, op=dist.ReduceOp.MAX)
                if stop.item() > 0:
                    break
                if self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
        finally:
            self._log_rows(rows)
            self.save_checkpoint()
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
        path = self.out / "model.pt"
        if self.rank == 0:
            if self.step >= cfg.steps and cfg.val_every > 0 and (
                    not self.history or self.history[-1]["step"] != self.step):
                self.validate()
            self.export(path)
            summary = {"stage": self.stage.name, "step": self.step, "steps": cfg.steps,
                       "finished": self.step >= cfg.steps, "wall_s": round(self.elapsed, 1),
                       "best": self.best, "metric": self.metric,
                       "last_val": self.history[-1] if self.history else None}
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.world > 1:
            dist.barrier()
        return path
