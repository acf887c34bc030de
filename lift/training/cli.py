"""``lift-train``: train one LIFT stage on SfM patch files.

Examples::

    lift-train --stage desc --data runs/data/synthetic.h5 runs/data/colmap_*.h5 \\
        --output runs/train/desc --steps 8000
    lift-train --stage ori --data ... --init runs/train/desc/best.pt --output runs/train/ori
    torchrun --nproc_per_node 2 -m lift.training.cli --stage desc --data ... --output ...

``--resume`` continues a run from ``OUTPUT/checkpoint.pt`` exactly where it stopped. The stage's
weights are written to ``OUTPUT/model.pt`` (last) and ``OUTPUT/best.pt`` (best validation);
``--export PATH`` also copies the chosen one (``--export-which``) to PATH.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import List, Optional

import torch

from ..model import FAST_CONFIG, PAPER_CONFIG, LIFTModel
from .crops import PatchGeometry
from .stages import STAGES, make_stage
from .trainer import TrainConfig, Trainer

__all__ = ["main", "build_parser", "train"]

CONFIGS = {"fast": FAST_CONFIG, "paper": PAPER_CONFIG}
NETS = ("detector", "orientation", "descriptor")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift-train", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--data", required=True, nargs="+", help="patch HDF5 file(s) (lift.data schema)")
    p.add_argument("--val-data", nargs="+", default=None,
                   help="files for validation (default: the 'val' split of --data)")
    p.add_argument("--output", required=True, help="run folder")
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint.pt")
    p.add_argument("--init", default=None, help="start from these LIFT weights (earlier stage)")
    p.add_argument("--arch", choices=sorted(CONFIGS), default="fast",
                   help="architecture when not given by --init")
    p.add_argument("--fresh", nargs="+", default=[], choices=NETS, metavar="NET",
                   help="with --init: replace these networks (detector, orientation, "
                        "descriptor) by freshly initialised ones of the --arch architecture")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-end", type=float, default=0.05, help="final lr as a fraction of --lr")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--val-items", type=int, default=2000)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per process (1 is fastest on a shared, loaded CPU)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop with a checkpoint after this wall time (0: no limit)")
    p.add_argument("--stop-at", type=int, default=0,
                   help="stop with a checkpoint after this step (schedule unchanged; --resume "
                        "continues); 0: run to --steps")
    p.add_argument("--no-in-memory", action="store_true",
                   help="read patches from disk per item instead of loading them into RAM")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("stage options")
    g.add_argument("--margin", type=float, default=1.0, help="descriptor triplet margin")
    g.add_argument("--jitter-xy", type=float, default=0.15, help="desc crop shift, +- sigma")
    g.add_argument("--jitter-scale", type=float, default=0.1, help="desc crop scale, +- log2")
    g.add_argument("--jitter-ori", type=float, default=0.1, help="desc crop angle, +- radians")
    g.add_argument("--angle-weight", type=float, default=0.5,
                   help="ori stage: weight of the supervised relative-angle term")
    g.add_argument("--equivariance-weight", type=float, default=0.0,
                   help="ori stage: weight of the same-patch rotation-equivariance term")
    g.add_argument("--ori-jitter-xy", type=float, default=0.0,
                   help="ori stage: orientation crops shifted by +- this many sigma per axis, "
                        "independently per view (detection noise; 0 = exact keypoints)")
    g.add_argument("--ori-jitter-scale", type=float, default=0.0,
                   help="ori stage: orientation crop scale jitter, +- log2")
    g.add_argument("--quarter-weight", type=float, default=0.0,
                   help="ori stage: weight of the exact quarter-turn equivariance term")
    g.add_argument("--rot90", action="store_true",
                   help="det/joint: random quarter-turn augmentation of the patches")
    g.add_argument("--class-weight", type=float, default=1.0, help="det/joint classification")
    g.add_argument("--pair-weight", type=float, default=1.0, help="det pair loss")
    g.add_argument("--det-crop", type=int, default=3, help="central detector window, +- cells")
    g.add_argument("--loc-weight", type=float, default=0.0,
                   help="det: weight of the localisation-covariance term (P1's sharp soft-argmax, "
                        "turned into P2's frame, must land on P2's)")
    g.add_argument("--loc-beta", type=float, default=30.0, help="det: soft-argmax strength of that term")
    g.add_argument("--scale-weight", type=float, default=0.0,
                   help="det/joint scale-selection hinge (0 = LIFT's original losses)")
    g.add_argument("--export", default=None, help="also write the weights to this path")
    g.add_argument("--export-which", choices=("best", "last"), default="best")
    return p


def train(args: argparse.Namespace) -> Path:
    """Run one stage from parsed arguments; returns the weights file written."""
    from ..data import QuadrupletDataset

    torch.manual_seed(args.seed)
    if args.init:
        model = LIFTModel.load(args.init)
        if args.fresh:
            fresh = LIFTModel(CONFIGS[args.arch])  # seeded above: the same fresh weights every run
            for net in args.fresh:
                setattr(model, net, getattr(fresh, net))
    else:
        if args.fresh:
            raise SystemExit("lift-train: --fresh needs --init (without it every network is fresh)")
        model = LIFTModel(CONFIGS[args.arch])
    in_memory = not args.no_in_memory
    train_set = QuadrupletDataset(args.data, split="train", seed=args.seed, in_memory=in_memory,
                                  as_float=False)
    val_files = args.val_data or args.data
    try:
        val_set = QuadrupletDataset(val_files, split="val", seed=12345, in_memory=in_memory,
                                    as_float=False)
    except ValueError as err:  # no usable val tracks: train without validation
        print(f"lift-train: no validation ({err})")
        val_set = None
    geom = PatchGeometry(train_set.patch_size, train_set.support_sigma)
    stage = make_stage(args.stage, model, geom, jitter_xy=args.jitter_xy,
                       jitter_scale=args.jitter_scale, jitter_ori=args.jitter_ori,
                       margin=args.margin, det_crop=args.det_crop,
                       angle_weight=args.angle_weight, pair_weight=args.pair_weight,
                       class_weight=args.class_weight,
                       equivariance_weight=args.equivariance_weight,
                       scale_weight=args.scale_weight, rot90=args.rot90,
                       loc_weight=args.loc_weight, loc_beta=args.loc_beta,
                       ori_jitter_xy=args.ori_jitter_xy, ori_jitter_scale=args.ori_jitter_scale,
                       quarter_weight=args.quarter_weight)
    extra = {"data": [Path(d).name for d in args.data], "init": args.init and Path(args.init).name,
             "fresh": list(args.fresh),
             "options": {k: getattr(args, k) for k in ("margin", "jitter_xy", "jitter_scale",
                                                       "jitter_ori", "angle_weight", "equivariance_weight",
                                                       "class_weight",
                                                       "pair_weight", "det_crop",
                                                       "scale_weight", "rot90", "loc_weight",
                                                       "loc_beta", "ori_jitter_xy",
                                                       "ori_jitter_scale", "quarter_weight")}}
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                      lr_end=args.lr_end, weight_decay=args.weight_decay, seed=args.seed,
                      ckpt_every=args.ckpt_every, val_every=args.val_every,
                      log_every=args.log_every, val_items=args.val_items, threads=args.threads,
                      max_minutes=args.max_minutes, stop_at=args.stop_at,
                      progress=not args.no_progress, extra=extra)
    trainer = Trainer(stage, train_set, val_set if int(os.environ.get("RANK", "0")) == 0 else None,
                      args.output, cfg, resume=args.resume)
    last = trainer.run()
    chosen = last
    best = Path(args.output) / "best.pt"
    if args.export_which == "best" and best.is_file():
        chosen = best
    if args.export and trainer.rank == 0:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.export).with_suffix(".tmp")
        shutil.copyfile(chosen, tmp)
        os.replace(tmp, args.export)
        chosen = Path(args.export)
    return chosen


def main(argv: Optional[List[str]] = None) -> Path:
    """Console entry point; returns the weights path written."""
    args = build_parser().parse_args(argv)
    path = train(args)
    print(path)
    return path


if __name__ == "__main__":
    main()
