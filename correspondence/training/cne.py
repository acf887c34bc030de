"""``lift-train-cne``: train the CNe outlier filter (:mod:`correspondence.cne`).

Data: synthetic pairs with realistic outliers plus, when the cache exists, real SIFT pairs of the
training COLMAP scenes (:mod:`correspondence.training.cne_data`; build the cache first with
``python -m correspondence.training.cne_data``). The batch of step ``s`` is a pure function of
``(seed, s)``.

Loss (:mod:`correspondence.training.cne_losses`): ``1.0`` balanced classification, plus ``0.1``
essential regression from step ``--essential-after`` on (the reference switches it on after 20k
of 500k steps; our CPU budget is a few thousand steps, so the default warm-up is 1500 steps).
Adam, lr 1e-3, no weight decay; batches whose loss or gradients are not finite are skipped.

Run folder (``--out``, default ``runs/cne/default``, git-ignored):

* ``checkpoint.pt``: model, optimiser, step, torch / numpy / python RNG states, best validation,
  written atomically every ``--ckpt-every`` steps, at the end and on SIGTERM / SIGINT;
  ``--resume`` continues exactly (same batches, same state);
* ``log.csv`` (training losses, precision / recall of ``logit > 0`` against the labels, seconds
  per step), ``val.csv`` (validation), ``best.pt`` / ``model.pt`` (weights in the shipped format).

Validation: 16 fixed synthetic pairs (N=1000, 8 at inlier ratio 0.1 and 8 at 0.25, uniform
outliers as the benchmark), pose by :func:`correspondence.cne.relative_pose_cne` ``method="cne"``
(weighted eight-point); ``best.pt`` maximises mAP@20 of the pose error.

``--export PATH`` writes the best weights of the run (``{"config", "state_dict", "meta"}``,
float32) to ``PATH`` and exits.
"""
from __future__ import annotations

import argparse
import csv
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from ..cne import CNeNet, load_cne, relative_pose_cne
from .cne_data import ROOT, BatchSampler, load_real_cache, synthetic_pair
from .cne_losses import cne_loss, precision_recall

__all__ = ["train", "export_weights", "validate", "main"]

LOG_FIELDS = ["step", "loss", "cls", "ess", "precision", "recall", "essential_on", "sec_per_step", "skipped"]
VAL_FIELDS = ["step", "precision", "recall", "map5", "map10", "map20", "median_err"]


def _save_atomic(obj, path: Path):
    from lift.training.trainer import save_atomic

    save_atomic(obj, path)


def _weights_blob(model: CNeNet, meta: dict) -> dict:
    return {"config": dict(model.config), "state_dict": {k: v.detach().float().clone()
                                                         for k, v in model.state_dict().items()},
            "meta": meta}


def validation_set(seed: int = 12345, n: int = 1000) -> List[dict]:
    """16 fixed synthetic pairs (8 at r=0.1, 8 at r=0.25, uniform outliers, K-normalised)."""
    rng = np.random.default_rng(seed)
    return [synthetic_pair(rng, n, r, 1.0, pseudo_prob=0.0, kinds={"uniform": 1.0})
            for r in (0.1,) * 8 + (0.25,) * 8]


def pose_errors(R, t, pairs) -> np.ndarray:
    """max(rotation, translation-direction) error in degrees per pair (180 for no model)."""
    from ..synthetic import rotation_error_deg, translation_error_deg

    return np.array([max(rotation_error_deg(R[i], p["R"]), translation_error_deg(t[i], p["t"]))
                     for i, p in enumerate(pairs)])


def map_at(errs: np.ndarray) -> Dict[str, float]:
    """mAP@5/10/20 (mean accuracy at 5, 10, ..., X degrees; CNe convention)."""
    acc = [float((errs < th).mean()) for th in (5, 10, 15, 20)]
    return {"map5": acc[0], "map10": float(np.mean(acc[:2])), "map20": float(np.mean(acc))}


@torch.no_grad()
def validate(model: CNeNet, pairs: List[dict], use_ratio: bool = False) -> Dict[str, float]:
    model.eval()
    k0 = np.stack([p["kpts0"] for p in pairs])
    k1 = np.stack([p["kpts1"] for p in pairs])
    K0 = np.stack([p["K0"] for p in pairs])
    K1 = np.stack([p["K1"] for p in pairs])
    ratio = np.full(k0.shape[:2], 0.8, np.float32) if use_ratio else None
    R, t, _ = relative_pose_cne(k0, k1, K0, K1, method="cne", model=model, ratio=ratio)
    x = torch.from_numpy(np.stack([p["x"] for p in pairs]))
    if use_ratio:
        x = torch.cat([x, torch.full_like(x[..., :1], 0.8)], -1)
    logits = model(x)
    labels = torch.from_numpy(np.stack([p["label"] for p in pairs]))
    prec, rec = precision_recall(logits, labels)
    errs = pose_errors(R, t, pairs)
    return {"precision": prec, "recall": rec, **map_at(errs), "median_err": float(np.median(errs))}


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _append_csv(path: Path, fields, row: dict):
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in fields})


def _truncate_csv(path: Path, step: int):
    """Drop the rows logged after ``step`` (a resumed run logs them again)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
        fields = rows and list(rows[0].keys())
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= step]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(keep)
    tmp.replace(path)


def train(out: Path, steps: int = 5000, batch_size: int = 8, n_min: int = 300, n_max: int = 700,
          lr: float = 1e-3, essential_after: int = 1500, ess_weight: float = 0.1, seed: int = 0,
          real_cache: Optional[Path] = None, real_prob: float = 0.3, use_ratio: bool = False,
          channels: int = 128, blocks: int = 12, ckpt_every: int = 100, val_every: int = 250,
          log_every: int = 10, resume: bool = False, stop_at: int = 0, progress: bool = True,
          validation: bool = True) -> Path:
    """Train (or resume) a run in ``out``; returns the path of ``checkpoint.pt``.

    ``stop_at``: stop after this step (with a checkpoint) without changing the schedule."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CNeNet(5 if use_ratio else 4, channels, blocks)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    real = load_real_cache(real_cache) if real_cache is not None and Path(real_cache).is_file() else None
    sampler = BatchSampler(seed, batch_size, n_min, n_max, real, real_prob, use_ratio)
    cfg = {"steps": steps, "batch_size": batch_size, "n_min": n_min, "n_max": n_max, "lr": lr,
           "essential_after": essential_after, "ess_weight": ess_weight, "seed": seed,
           "real_cache": str(real_cache) if real else None, "real_pairs": len(real) if real else 0,
           "real_prob": sampler.real_prob, "use_ratio": use_ratio, **model.config}
    step, best, elapsed = 0, None, 0.0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        step, best, elapsed = int(st["step"]), st["best"], float(st.get("elapsed", 0.0))
        _truncate_csv(out / "log.csv", step)
        _truncate_csv(out / "val.csv", step)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    val_pairs = validation_set() if validation else []

    def save():
        _save_atomic({"step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "rng": _rng_state(), "best": best, "elapsed": elapsed, "config": cfg}, ckpt)

    stop = {"flag": False}

    def on_signal(signum, frame):
        stop["flag"] = True

    old = [signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)]
    end = min(steps, stop_at) if stop_at > 0 else steps
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=end, initial=step, desc="cne", dynamic_ncols=True)
    skipped = 0
    try:
        while step < end and not stop["flag"]:
            t0 = time.perf_counter()
            model.train()
            batch = sampler(step)
            logits = model(batch["x"], batch["mask"])
            use_e = step >= essential_after
            losses = cne_loss(logits, batch, use_e, ess_weight)
            opt.zero_grad(set_to_none=True)
            ok = bool(torch.isfinite(losses["loss"]))
            if ok:
                losses["loss"].backward()
                ok = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
            if ok:
                opt.step()
            else:
                skipped += 1
            step += 1
            dt = time.perf_counter() - t0
            elapsed += dt
            if step % log_every == 0:
                prec, rec = precision_recall(logits.detach(), batch["label"], batch["mask"])
                _append_csv(out / "log.csv", LOG_FIELDS, {
                    "step": step, "loss": f"{float(losses['loss'].detach()):.5f}", "cls": f"{float(losses['cls']):.5f}",
                    "ess": f"{float(losses['ess']):.5f}", "precision": f"{prec:.4f}", "recall": f"{rec:.4f}",
                    "essential_on": int(use_e), "sec_per_step": f"{dt:.3f}", "skipped": skipped})
            if validation and (step % val_every == 0 or step == end):
                v = validate(model, val_pairs, use_ratio)
                _append_csv(out / "val.csv", VAL_FIELDS, {"step": step, **{k: f"{x:.4f}" for k, x in v.items()}})
                if best is None or v["map20"] >= best:
                    best = v["map20"]
                    _save_atomic(_weights_blob(model, {"step": step, "val": v, "train": cfg}), out / "best.pt")
            if step % ckpt_every == 0 or step == end:
                save()
                _save_atomic(_weights_blob(model, {"step": step, "train": cfg}), out / "model.pt")
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(losses['loss'].detach()):.3f}", ess=int(use_e))
        save()
    finally:
        for s, h in zip((signal.SIGTERM, signal.SIGINT), old):
            signal.signal(s, h)
        if bar is not None:
            bar.close()
    return ckpt


def export_weights(run: Path, dest: Path, which: str = "best") -> Path:
    """Copy ``run/{best,model}.pt`` to ``dest`` (checked by loading it back)."""
    src = Path(run) / f"{which}.pt"
    if not src.is_file():
        raise FileNotFoundError(f"no {which}.pt in {run}")
    blob = torch.load(src, map_location="cpu", weights_only=True)
    _save_atomic(blob, Path(dest))
    load_cne(dest)
    return Path(dest)


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(prog="lift-train-cne", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "cne" / "default")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-min", type=int, default=300)
    ap.add_argument("--n-max", type=int, default=700)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--essential-after", type=int, default=1500)
    ap.add_argument("--ess-weight", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-cache", type=Path, default=ROOT / "runs" / "cne" / "real_train.npz",
                    help="real training pairs (skipped with a note when missing)")
    ap.add_argument("--real-prob", type=float, default=0.3)
    ap.add_argument("--ratio", action="store_true", help="descriptor ratio as a 5th input")
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--val-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--stop-at", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--export", type=Path, default=None, help="export the run's best weights here and exit")
    ap.add_argument("--export-which", choices=("best", "model"), default="best")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.export is not None:
        path = export_weights(args.out, args.export, args.export_which)
        print(f"exported {path}")
        return path
    if not args.real_cache.is_file():
        print(f"note: no real-pair cache at {args.real_cache}; training on synthetic pairs only", file=sys.stderr)
    path = train(args.out, args.steps, args.batch_size, args.n_min, args.n_max, args.lr, args.essential_after,
                 args.ess_weight, args.seed, args.real_cache, args.real_prob, args.ratio, args.channels,
                 args.blocks, args.ckpt_every, args.val_every, resume=args.resume, stop_at=args.stop_at,
                 progress=not args.no_progress)
    print(f"checkpoint: {path}")
    return path


if __name__ == "__main__":
    main()
