"""``lift-train-flow``: self-supervised training of the RANSAC-Flow fine network.

Losses (methods notes 6.3), for each direction of each pair (``a -> b`` and ``b -> a``):

* cycle-consistent matchability ``M_c(p) = M_ab(p) * M_ba(p + F_ab(p))``;
* reconstruction ``L_rec``: mean of ``(1 - SSIM(a, b o F_ab)) / 2`` (Gaussian window 11,
  sigma 1.5) over a mask: the border/in-image mask in stages 1-2, the **binarised**
  ``box11(M_c) > 0.5`` (no gradient to matchability, as the paper) in stage 3;
* cycle ``L_cycle``: per-axis mean of ``|F_ab(p) + F_ba(p + F_ab(p))|`` in pixels, weighted by
  ``M_c`` (stage 3) or the mask (stage 2);
* matchability ``L_m``: mean ``|1 - M_c|``;
* ``total = L_rec + mu * L_cycle + lambda * L_m (+ gt * L_gt)``.

Stages by step (as the paper's 200 / 50 / 50 epochs): stage 1 (first ``2/3`` of the steps):
``L_rec`` only; stage 2 (next ``1/6``): ``+ mu L_cycle``; stage 3 (last ``1/6``):
``+ lambda L_m`` with the matchability head trained by its own Adam optimiser. Adam lr 2e-4,
betas (0.5, 0.999) as the paper.

Optional synthetic supervision (``--gt-weight``, recorded in the weights' meta): the synthetic
pairs come with their true flow, and ``L_gt`` = mean ``|F_ab - F_gt|`` over valid pixels plus,
in stage 3, the binary cross-entropy of ``M_ab`` against the valid mask. It speeds up
convergence on a CPU budget; 0 gives the purely self-supervised recipe.

Run folder (git-ignored ``runs/flow/<name>``): ``checkpoint.pt`` (model, both optimisers, RNG
states, step, wall time, arguments; written atomically every ``--ckpt-every`` steps, at the end
and on SIGTERM/SIGINT), ``log.csv``, ``model.pt`` (weights file). The batch of step ``s`` is a pure
function of ``(seed, s)``: ``--resume`` continues exactly.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import signal
import time
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from ..ransac_flow.fine import FineFlowNet, identity_grid, sample_flow_at, warp
from .flow_data import SyntheticFlowPairs, load_photos, photo_paths

__all__ = ["ssim_map", "flow_losses", "FlowTrainer", "main", "stage_of"]

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "photos"


# ---------------------------------------------------------------------------- losses
def _gauss_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - size // 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    c, r = x.shape[1], g.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim_map(x: torch.Tensor, y: torch.Tensor, c1: float = 0.01 ** 2,
             c2: float = 0.03 ** 2) -> torch.Tensor:
    """Per-pixel SSIM of ``B x C x H x W`` images in [0, 1] (Gaussian window 11, sigma 1.5)."""
    g = _gauss_window(device=x.device)
    mx, my = _blur(x, g), _blur(y, g)
    sxx = _blur(x * x, g) - mx * mx
    syy = _blur(y * y, g) - my * my
    sxy = _blur(x * y, g) - mx * my
    return ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))


def stage_of(step: int, steps: int, bounds: str = "") -> int:
    """Training stage (1, 2, 3) of ``step`` in a run of ``steps``: by default the first 2/3 of
    the steps are stage 1, the next 1/6 stage 2, the rest stage 3 (the paper's 200/50/50
    epochs); ``bounds = "S2,S3"`` gives the first steps of stages 2 and 3 explicitly (e.g. to
    extend a finished run's stage 3 with a larger ``steps``)."""
    if bounds:
        s2, s3 = (int(v) for v in bounds.split(","))
    else:
        s2, s3 = math.ceil(steps * 2 / 3), math.ceil(steps * 5 / 6)
    if step < s2:
        return 1
    return 2 if step < s3 else 3


def flow_losses(out: Dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor, stage: int,
                cycle_weight: float = 0.01, match_weight: float = 0.02, margin: int = 4,
                gt_flow: Optional[torch.Tensor] = None, gt_valid: Optional[torch.Tensor] = None,
                gt_weight: float = 0.0) -> Dict[str, torch.Tensor]:
    """The three RANSAC-Flow losses (module docstring) for both directions of a batch.

    Args:
        out: :class:`FineFlowNet` output for ``(a, b)``.
        a, b: ``B x 1 x H x W`` images. stage: 1, 2 or 3.
        cycle_weight: ``mu`` (per px of cycle error). match_weight: ``lambda``. Matchability
            goes to 1 where ``mu * cycle error < lambda``, i.e. below 2 px by default.
        margin: border pixels left out of every mean.
        gt_flow, gt_valid: optional ``B x 2 x H x W`` true ``a -> b`` flow and ``B x 1 x H x W``
            bool validity. gt_weight: weight of the supervised terms (0: self-supervised only).

    Returns:
        dict of scalar tensors ``loss``, ``rec``, ``cycle``, ``match``, ``gt``, ``epe``.
    """
    n, _, h, w = a.shape
    img1, img2 = torch.cat([a, b]), torch.cat([b, a])
    f12 = torch.cat([out["flow_ab"], out["flow_ba"]])
    f21 = torch.cat([out["flow_ba"], out["flow_ab"]])
    m1 = torch.cat([out["match_ab"], out["match_ba"]])
    m2 = torch.cat([out["match_ba"], out["match_ab"]])
    grid = identity_grid(h, w, a.device, a.dtype)
    target = grid + f12
    inside = ((target[:, :1] >= 0) & (target[:, :1] <= w - 1) & (target[:, 1:] >= 0)
              & (target[:, 1:] <= h - 1)).float()
    border = torch.zeros(1, 1, h, w, device=a.device)
    border[..., margin:h - margin, margin:w - margin] = 1
    mask = inside * border
    mc = m1 * sample_flow_at(m2, target) * mask
    recon = warp(img2, target, padding_mode="border")
    err_rec = ((1 - ssim_map(img1, recon)) / 2).clamp(0, 1)
    cyc = (f12 + sample_flow_at(f21, target)).abs().mean(1, keepdim=True)
    zero = a.new_zeros(())
    if stage >= 3:
        rec_mask = (F.avg_pool2d(mc.detach(), 11, 1, 5, count_include_pad=False) > 0.5).float()
        rec_mask = rec_mask * mask
        cycle = (mc * cyc.clamp(max=20)).sum() / mask.sum().clamp_min(1)
        match = ((1 - mc) * border).sum() / (border.sum() * 2 * n)
    else:
        rec_mask = mask
        cycle = (mask * cyc.clamp(max=20)).sum() / mask.sum().clamp_min(1) if stage == 2 else zero
        match = zero
    rec = (rec_mask * err_rec).sum() / rec_mask.sum().clamp_min(1)
    loss = rec + cycle_weight * cycle + (match_weight * match if stage >= 3 else 0)
    gt = epe = zero
    if gt_flow is not None:
        valid = gt_valid.float() * border
        epe = ((out["flow_ab"] - gt_flow).norm(dim=1, keepdim=True) * valid).sum() / valid.sum().clamp_min(1)
        gt = ((out["flow_ab"] - gt_flow).abs().sum(1, keepdim=True) * valid).sum() / valid.sum().clamp_min(1)
        if stage >= 3:
            bce = F.binary_cross_entropy(out["match_ab"].clamp(1e-4, 1 - 1e-4),
                                         gt_valid.float(), reduction="none")
            gt = gt + 10.0 * (bce * border).sum() / (border.sum() * n)
        loss = loss + gt_weight * gt
    return {"loss": loss, "rec": rec, "cycle": cycle, "match": match, "gt": gt, "epe": epe.detach()}


# ---------------------------------------------------------------------------- trainer
def _rng_state() -> dict:
    from lift.training.trainer import _rng_state as state

    return state()


class FlowTrainer:
    """Resumable staged training (see the module docstring).

    Args:
        data: :class:`SyntheticFlowPairs`. out: run folder. args: the parsed options (see
            :func:`build_parser`). resume: continue from ``out/checkpoint.pt`` if present.
    """

    def __init__(self, data: SyntheticFlowPairs, out, args: argparse.Namespace, resume: bool = False):
        self.data, self.out, self.args = data, Path(out), args
        torch.manual_seed(args.seed)
        self.net = FineFlowNet(**json.loads(args.arch)) if args.arch else FineFlowNet()
        match_params = list(self.net.match.parameters())
        ids = {id(p) for p in match_params}
        flow_params = [p for p in self.net.parameters() if id(p) not in ids]
        self.opt_flow = torch.optim.Adam(flow_params, lr=args.lr, betas=(0.5, 0.999))
        self.opt_match = torch.optim.Adam(match_params, lr=args.lr, betas=(0.5, 0.999))
        self.step, self.elapsed, self._stop = 0, 0.0, False
        if resume and (self.out / "checkpoint.pt").is_file():
            self.load(self.out / "checkpoint.pt")

    def state(self) -> dict:
        return {"step": self.step, "model": self.net.state_dict(),
                "config": self.net.config, "opt_flow": self.opt_flow.state_dict(),
                "opt_match": self.opt_match.state_dict(), "rng": _rng_state(),
                "elapsed": self.elapsed, "args": vars(self.args)}

    def save_checkpoint(self):
        from lift.training.trainer import save_atomic

        save_atomic(self.state(), self.out / "checkpoint.pt")

    def load(self, path: Path):
        from lift.training.trainer import _set_rng_state

        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["config"] != self.net.config:
            raise ValueError(f"{path} holds a network {state['config']}, not {self.net.config}")
        self.net.load_state_dict(state["model"])
        self.opt_flow.load_state_dict(state["opt_flow"])
        self.opt_match.load_state_dict(state["opt_match"])
        _set_rng_state(state["rng"])
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])

    def train_step(self, step: int) -> Dict[str, float]:
        args = self.args
        stage = stage_of(step, args.steps, args.stage_steps)
        batch = self.data.batch(step, args.batch_size)
        self.net.train()
        out = self.net(batch["a"], batch["b"])
        losses = flow_losses(out, batch["a"], batch["b"], stage, args.cycle_weight,
                             args.match_weight, args.margin, batch["flow"], batch["valid"],
                             args.gt_weight)
        self.opt_flow.zero_grad(set_to_none=True)
        self.opt_match.zero_grad(set_to_none=True)
        losses["loss"].backward()
        self.opt_flow.step()
        if stage >= 3:
            self.opt_match.step()
        return {"stage": stage, **{k: float(v.detach()) for k, v in losses.items()}}

    def _on_signal(self, signum, frame):
        self._stop = True

    def _log(self, rows):
        if not rows:
            return
        path = self.out / "log.csv"
        keys = list(rows[0])
        old = []
        if path.is_file():  # keep the file monotonic after a resume
            with open(path) as f:
                old = [r for r in csv.DictReader(f) if int(r["step"]) < rows[0]["step"]]
        with open(path, "w", newline="") as f:
            wr = csv.DictWriter(f, keys, extrasaction="ignore")
            wr.writeheader()
            wr.writerows(old + rows)

    def export(self, path: Path) -> Path:
        meta = {"steps": self.step, "batch_size": self.args.batch_size, "crop": self.args.crop,
                "lr": self.args.lr, "cycle_weight": self.args.cycle_weight,
                "match_weight": self.args.match_weight, "gt_weight": self.args.gt_weight,
                "stage_steps": self.args.stage_steps or "2/3,5/6 of steps",
                "seed": self.args.seed, "wall_s": round(self.elapsed, 1),
                "data": "synthetic warps of ../shared/data/photos minus HELD_OUT (CSet14, CSet5)"}
        return self.net.save(path, meta)

    def run(self) -> Path:
        args = self.args
        threads = torch.get_num_threads()
        torch.set_num_threads(args.threads)
        self.out.mkdir(parents=True, exist_ok=True)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        stop_at = args.stop_at if args.stop_at > 0 else args.steps
        bar = None
        if args.progress:
            from tqdm import tqdm

            bar = tqdm(total=args.steps, initial=self.step, desc="lift-train-flow", dynamic_ncols=True)
        rows, t_last, t0 = [], time.time(), time.time()
        try:
            while self.step < min(args.steps, stop_at) and not self._stop:
                logs = self.train_step(self.step)
                self.step += 1
                now = time.time()
                self.elapsed += now - t_last
                t_last = now
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", epe=f"{logs['epe']:.2f}")
                if self.step % args.log_every == 0 or self.step == args.steps:
                    rows.append({"step": self.step, "time": round(self.elapsed, 2), **logs})
                if self.step % args.ckpt_every == 0:
                    self._log(rows)
                    self.save_checkpoint()
                    self.export(self.out / "model.pt")
                if args.max_minutes > 0 and now - t0 > 60 * args.max_minutes:
                    break
        finally:
            self._log(rows)
            self.save_checkpoint()
            for s, h in old.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
            torch.set_num_threads(threads)
        path = self.export(self.out / "model.pt")
        if args.export and self.step >= args.steps:
            self.export(Path(args.export))
        return path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lift-train-flow", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--photos", default=str(DEFAULT_PHOTOS), help="photo folder")
    p.add_argument("--out", default="runs/flow/default", help="run folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--cycle-weight", type=float, default=0.01, help="mu, per px")
    p.add_argument("--match-weight", type=float, default=0.02, help="lambda")
    p.add_argument("--gt-weight", type=float, default=0.02,
                   help="weight of the synthetic ground-truth terms (0 = self-supervised only)")
    p.add_argument("--stage-steps", default="",
                   help="first steps of stages 2 and 3 as 'S2,S3' (default: 2/3 and 5/6 of --steps)")
    p.add_argument("--margin", type=int, default=4)
    p.add_argument("--max-side", type=int, default=512, help="photos are downscaled to this")
    p.add_argument("--arch", default="", help="FineFlowNet arguments as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=50)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=0.0)
    p.add_argument("--stop-at", type=int, default=0, help="stop after this step (resumable)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--export", default="", help="also write the final weights here")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv=None) -> Path:
    """Train; returns the path of the run's ``model.pt``."""
    args = build_parser().parse_args(argv)
    photos = load_photos(photo_paths(args.photos, "train"), args.max_side)
    data = SyntheticFlowPairs(photos, args.crop, args.seed)
    path = FlowTrainer(data, args.out, args, resume=args.resume).run()
    print(path)
    return path


if __name__ == "__main__":
    main()
