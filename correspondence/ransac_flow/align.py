"""``align(source, target) -> Alignment``: RANSAC-Flow dense alignment (coarse + fine).

1. Coarse (:mod:`.coarse`): dense LIFT descriptors, mutual nearest neighbours over a
   multi-scale source, RANSAC homography ``H_1``.
2. Fine (:mod:`.fine`): the source is warped into the target frame by ``H_k`` and the fine
   network predicts the residual flows both ways and their matchabilities, at a working
   resolution whose long side is ``fine_size``. The flows are composed with ``H_k``:

   * reverse flow on the target grid: ``q -> H_k^-1(q + g(q))``;
   * forward flow on the source grid: ``p -> H_k p + g'(H_k p)``;
   * cycle-consistent matchability ``M(q) = M_ts(q) * M_st(q + g(q)) * [inside]`` (paper 6.2).
3. Multi-homography (paper): target pixels with ``M >= matchability_threshold`` (and those
   covered by the inlier matches of ``H_k``) are explained by ``H_k``; matches landing there are
   dropped and RANSAC runs again, until a new homography
   explains at most ``min_new_area`` of the target or ``max_homographies`` are found.
4. Fusion: per pixel, the first homography whose matchability reaches the threshold (paper),
   otherwise the one whose coarse area covers the pixel, otherwise the most matchable one.
5. Variational refinement (an addition to the paper, :mod:`.variational`): both fused flows are
   refined coarse to fine by a brightness/gradient-constancy + smoothness energy started from
   them (``refine="variational"``, the default; ``refine=None`` stops after step 4).

Pixel convention of the library: top-left pixel centre (0, 0), ``(x, y)``. ``flow[p]``:
source pixel ``p`` corresponds to target pixel ``p + flow[p]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from lift.image import ImageError, to_gray_tensor
from .coarse import DEFAULT_SCALES, CoarseResult, dense_matches, multi_homography
from .features import DenseDescriptor
from .fine import FineFlowNet, identity_grid, load_fine_net, pixel_to_grid, sample_flow_at, warp
from .variational import refine_flow

__all__ = ["Alignment", "align", "dense_to_sparse", "RansacFlow", "apply_homography_grid",
           "colour_tensor"]


@dataclass
class Alignment:
    """Dense alignment of a source image to a target image.

    Attributes:
        flow: ``H_s x W_s x 2`` float32 px: source pixel ``p`` -> target pixel ``p + flow[p]``.
        matchability: ``H_s x W_s`` float32 in [0, 1] (cycle-consistent; 0 where ``p`` maps
            outside the target or the flow is not trusted).
        reverse_flow: ``H_t x W_t x 2``: target pixel ``q`` -> source pixel ``q + reverse_flow[q]``.
        reverse_matchability: ``H_t x W_t``.
        homographies: ``K x 3 x 3`` float64 coarse homographies (source -> target pixels).
        homography_index: ``H_s x W_s`` int8, the homography each source pixel's flow uses.
        warped: the source resampled into the target frame, ``H_t x W_t`` (grey input) or
            ``H_t x W_t x 3`` (colour input), float32 in [0, 1]; 0 outside the source.
        coarse_only: True when the fine network was not used (flow from the homographies).
    """

    flow: np.ndarray
    matchability: np.ndarray
    reverse_flow: np.ndarray
    reverse_matchability: np.ndarray
    homographies: np.ndarray
    homography_index: np.ndarray
    warped: np.ndarray
    coarse_only: bool = False

    @property
    def source_size(self) -> Tuple[int, int]:
        """(W, H) of the source."""
        return self.flow.shape[1], self.flow.shape[0]

    @property
    def target_size(self) -> Tuple[int, int]:
        """(W, H) of the target."""
        return self.reverse_flow.shape[1], self.reverse_flow.shape[0]


def colour_tensor(image, name: str) -> torch.Tensor:
    """Validated ``C x H x W`` float32 [0, 1] version of an input image, ``C`` in {1, 3}
    (RGB kept for the warped output; grey otherwise). Raises :class:`lift.ImageError`."""
    grey = to_gray_tensor(image)  # validates type, layout, dtype, finiteness
    if grey.shape[-1] < 32 or grey.shape[-2] < 32:
        raise ImageError(f"{name} image is {grey.shape[-1]} x {grey.shape[-2]} px; align needs "
                         "at least 32 x 32")
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (3, 4):
        chans = [image[..., i] for i in range(3)]
    elif isinstance(image, torch.Tensor) and image.ndim in (3, 4) and image.shape[-3] == 3 \
            and (image.ndim == 3 or image.shape[0] == 1):
        chans = [image.reshape(3, *image.shape[-2:])[i] for i in range(3)]
    else:
        return grey
    floating = image.dtype.kind == "f" if isinstance(image, np.ndarray) else image.dtype.is_floating_point
    if floating:  # one rule for the three channels: [0, 1], or 0..255 if the maximum exceeds 1
        t = torch.stack([torch.as_tensor(np.asarray(c, np.float32)) if isinstance(c, np.ndarray)
                         else c.float() for c in chans])
        return (t / 255.0 if t.max() > 1 else t).clamp(0, 1).contiguous()
    return torch.cat([to_gray_tensor(c) for c in chans]).contiguous()


def apply_homography_grid(H: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """``H`` (``3 x 3``) applied to ``B x 2 x h x w`` pixel coordinates."""
    x, y = coords[:, 0], coords[:, 1]
    den = H[2, 0] * x + H[2, 1] * y + H[2, 2]
    den = torch.where(den.abs() < 1e-12, torch.full_like(den, 1e-12), den)
    return torch.stack([(H[0, 0] * x + H[0, 1] * y + H[0, 2]) / den,
                        (H[1, 0] * x + H[1, 1] * y + H[1, 2]) / den], 1)


def _inside(coords: torch.Tensor, w: int, h: int) -> torch.Tensor:
    return ((coords[:, :1] >= 0) & (coords[:, :1] <= w - 1) & (coords[:, 1:] >= 0)
            & (coords[:, 1:] <= h - 1)).float()


class RansacFlow:
    """Reusable aligner (loads the networks once).

    Args:
        model: fine network: ``"default"`` (shipped weights), a weights path, a
            :class:`FineFlowNet`, or None for the coarse stage only.
        features: coarse features (default: :class:`DenseDescriptor` on the shipped LIFT model).
        coarse_size: long side of the images for the coarse features.
        scales: source scales of the coarse stage.
        fine_size: long side of the fine network's working resolution (images up to this size
            run at their own resolution). 1024 (was 512): on the Sintel pairs of
            ``tools/bench_flow.py`` PCK@1 0.24 -> 0.41 and AEPE 9.2 -> 8.7 px, on the motorcycle
            stereo pair PCK@1 0.22 -> 0.29 but AEPE 4.5 -> 4.7 px, at 2x the time.
        max_homographies: most homographies (1 = single-homography ablation).
        matchability_threshold: the paper's 0.95: "explained" and fusion threshold.
        min_new_area: multi-homography stop criterion (fraction of the target).
        tolerance: coarse RANSAC threshold, fraction of the target's long side.
        refine: ``"variational"`` (default): refine both fused flows of the fine stage with
            :func:`.variational.refine_flow` (``refine_levels`` pyramid sizes; the coarse-only
            alignment, ``model=None``, stays the homographies' exact flow; on
            ``tools/bench_flow.py``'s pairs Sintel PCK@1 0.41 -> 0.62, AEPE 8.7 -> 7.9 px, for
            ~0.2 s per 1024 x 436 pair); None: the network's flow as fused.
        device: torch device.
    """

    def __init__(self, model: Union[str, FineFlowNet, None] = "default",
                 features: Optional[DenseDescriptor] = None, coarse_size: int = 256,
                 scales=DEFAULT_SCALES, fine_size: int = 1024, max_homographies: int = 3,
                 matchability_threshold: float = 0.95, min_new_area: float = 0.01,
                 tolerance: float = 0.025, refine: Optional[str] = "variational",
                 refine_levels: int = 3, device=None, seed: Optional[int] = 0):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.net = None if model is None else load_fine_net(model, self.device)
        self.features = features if features is not None else DenseDescriptor(device=self.device)
        self.coarse_size, self.scales, self.fine_size = int(coarse_size), tuple(scales), int(fine_size)
        if max_homographies < 1:
            raise ValueError(f"max_homographies must be >= 1, got {max_homographies}")
        self.max_homographies = int(max_homographies)
        self.th = float(matchability_threshold)
        self.min_new_area, self.tolerance, self.seed = float(min_new_area), float(tolerance), seed
        if refine not in (None, "variational"):
            raise ValueError(f"refine must be 'variational' or None, got {refine!r}")
        if refine_levels < 1:
            raise ValueError(f"refine_levels must be >= 1, got {refine_levels}")
        self.refine, self.refine_levels = refine, int(refine_levels)

    # ------------------------------------------------------------------ fine stage
    def _fine(self, H: np.ndarray, src: torch.Tensor, tgt: torch.Tensor):
        """Fine stage for one homography: full-resolution (reverse flow, reverse matchability,
        forward flow, forward matchability) as ``1 x C x h x w`` tensors."""
        dev = self.device
        hs, ws = src.shape[-2:]
        ht, wt = tgt.shape[-2:]
        Ht = torch.as_tensor(H, dtype=torch.float64)
        Hinv = torch.linalg.inv(Ht).float().to(dev)
        Hf = Ht.float().to(dev)
        grid_t = identity_grid(ht, wt, dev)
        grid_s = identity_grid(hs, ws, dev)
        if self.net is None:
            back = apply_homography_grid(Hinv, grid_t)
            fwd = apply_homography_grid(Hf, grid_s)
            return (back - grid_t, _inside(back, ws, hs), fwd - grid_s, _inside(fwd, wt, ht))
        # working resolution (anti-aliased resize of the target; source pre-blurred to the
        # same reduction so warping it by H does not alias)
        r = min(1.0, self.fine_size / max(ht, wt))
        hr, wr = max(16, int(round(ht * r))), max(16, int(round(wt * r)))
        sx, sy = wt / wr, ht / hr  # working px -> target px: q = (q_r + 0.5) * s - 0.5
        t_r = F.interpolate(tgt[None].to(dev), size=(hr, wr), mode="bilinear",
                            align_corners=False, antialias=r < 1)
        rs = min(1.0, self.fine_size / max(hs, ws))
        s_r = F.interpolate(src[None].to(dev), scale_factor=rs, mode="bilinear",
                            align_corners=False, antialias=rs < 1) if rs < 1 else src[None].to(dev)
        scale = torch.tensor([sx, sy], device=dev).view(1, 2, 1, 1)
        q_full = (identity_grid(hr, wr, dev) + 0.5) * scale - 0.5
        p = apply_homography_grid(Hinv, q_full)  # source px
        src_scale = torch.tensor([s_r.shape[-1] / ws, s_r.shape[-2] / hs], device=dev).view(1, 2, 1, 1)
        p_r = (p + 0.5) * src_scale - 0.5
        s_w = warp(s_r, p_r)  # source warped into the working target frame
        valid_w = _inside(p, ws, hs)
        with torch.inference_mode():
            out = self.net(s_w, t_r)
        g_st, g_ts = out["flow_ab"], out["flow_ba"]  # working px, on the working grid
        base_r = identity_grid(hr, wr, dev)
        m_ts = out["match_ba"] * sample_flow_at(out["match_ab"] * valid_w, base_r + g_ts)
        m_ts = m_ts * _inside(base_r + g_ts, wr, hr) * valid_w
        m_st = out["match_ab"] * sample_flow_at(out["match_ba"], base_r + g_st)
        m_st = m_st * _inside(base_r + g_st, wr, hr) * valid_w
        # reverse flow on the full target grid
        q_r = (grid_t + 0.5) / scale - 0.5
        g_full = sample_flow_at(g_ts, q_r) * scale
        back = apply_homography_grid(Hinv, grid_t + g_full)
        m_rev = sample_flow_at(m_ts, q_r) * _inside(back, ws, hs)
        # forward flow on the full source grid
        q0 = apply_homography_grid(Hf, grid_s)
        q0_r = (q0 + 0.5) / scale - 0.5
        fwd = q0 + sample_flow_at(g_st, q0_r) * scale
        m_fwd = sample_flow_at(m_st, q0_r) * _inside(q0, wt, ht) * _inside(fwd, wt, ht)
        return back - grid_t, m_rev, fwd - grid_s, m_fwd

    def _refined(self, flow: torch.Tensor, first: np.ndarray, second: np.ndarray) -> torch.Tensor:
        """:func:`.variational.refine_flow` of a ``2 x h x w`` flow tensor (on its device)."""
        out = refine_flow(flow.permute(1, 2, 0).cpu().numpy(), first, second, self.refine_levels)
        return torch.from_numpy(out).permute(2, 0, 1).to(flow.device, flow.dtype)

    def _areas(self, fwd: torch.Tensor, mask: np.ndarray):
        """A homography's coarse area (``mask``, target grid) on both grids: ``1 x 1 x H_t x
        W_t`` and, at ``p + fwd[p]``, ``1 x 1 x H_s x W_s``."""
        hs, ws = fwd.shape[-2:]
        m = torch.from_numpy(mask).float().to(self.device)[None, None]
        q = identity_grid(hs, ws, self.device) + fwd
        return m, F.grid_sample(m, pixel_to_grid(q, *m.shape[-2:]), mode="nearest",
                                align_corners=True)

    # ------------------------------------------------------------------ main entry
    def __call__(self, source, target) -> Alignment:
        src_c, tgt_c = colour_tensor(source, "source"), colour_tensor(target, "target")
        src = to_gray_tensor(source)
        tgt = to_gray_tensor(target)
        hs, ws = src.shape[-2:]
        ht, wt = tgt.shape[-2:]
        sp, dp = dense_matches(src, tgt, self.features, self.coarse_size, self.scales)
        results = []  # fine (or coarse) flows of every homography RANSAC proposed, in order

        def explain(H, inl_dst):
            # run the fine stage for H; it explains where its cycle-consistent matchability
            # reaches the threshold (the paper's criterion)
            results.append(self._fine(H, src, tgt))
            if self.net is None:
                return np.zeros((ht, wt), bool)
            return (results[-1][1][0, 0] >= self.th).cpu().numpy()

        coarse: CoarseResult = multi_homography(
            sp.cpu().numpy(), dp.cpu().numpy(), (ws, hs), (wt, ht), explain,
            self.max_homographies, self.min_new_area, self.tolerance, seed=self.seed)
        if len(coarse) == 0:
            raise ValueError("align: the coarse stage found no homography relating the two "
                             f"images ({len(sp)} mutual matches); they may not overlap")
        kept = results[:len(coarse)]  # a rejected proposal can only be the last one
        areas = [self._areas(r[2], m) for r, m in zip(kept, coarse.masks)]
        area_t = torch.cat([a[0] for a in areas])
        area_s = torch.cat([a[1] for a in areas])
        rev = torch.cat([r[0] for r in kept])  # K x 2 x Ht x Wt
        mrev = torch.cat([r[1] for r in kept])  # K x 1 x Ht x Wt
        fwd = torch.cat([r[2] for r in kept])
        mfwd = torch.cat([r[3] for r in kept])
        if self.net is None:  # coarse only: "matchability" = inside the image and the area
            mrev, mfwd, th = mrev * area_t, mfwd * area_s, 0.5
        else:
            th = self.th
        flow, match, idx = _fuse(fwd, mfwd, th, area_s)
        rflow, rmatch, _ = _fuse(rev, mrev, th, area_t)
        if self.refine == "variational" and self.net is not None:
            s_np, t_np = src[0].cpu().numpy(), tgt[0].cpu().numpy()
            flow = self._refined(flow, s_np, t_np)
            rflow = self._refined(rflow, t_np, s_np)
        warped = warp(src_c[None].to(self.device), identity_grid(ht, wt, self.device) + rflow[None])[0]
        inside = _inside(identity_grid(ht, wt, self.device) + rflow[None], ws, hs)[0]
        warped = warped * inside
        warped = warped.permute(1, 2, 0).cpu().numpy()
        return Alignment(
            flow=flow.permute(1, 2, 0).cpu().numpy().astype(np.float32),
            matchability=match.cpu().numpy().astype(np.float32),
            reverse_flow=rflow.permute(1, 2, 0).cpu().numpy().astype(np.float32),
            reverse_matchability=rmatch.cpu().numpy().astype(np.float32),
            homographies=coarse.homographies, homography_index=idx.cpu().numpy().astype(np.int8),
            warped=warped[..., 0] if warped.shape[-1] == 1 else warped,
            coarse_only=self.net is None)


def _fuse(flows: torch.Tensor, matches: torch.Tensor, th: float, areas: torch.Tensor):
    """Per pixel, the first homography whose matchability is >= ``th``; elsewhere the one whose
    coarse area covers the pixel (areas are disjoint), else the most matchable one.

    Args:
        flows: ``K x 2 x h x w``; matches, areas: ``K x 1 x h x w``.

    Returns:
        ``(2 x h x w flow, h x w matchability, h x w index)``."""
    m = matches[:, 0]
    good = m >= th
    first = torch.where(good.any(0), good.float().argmax(0), (m + areas[:, 0]).argmax(0))
    flow = torch.gather(flows, 0, first[None, None].expand(1, 2, -1, -1))[0]
    match = torch.gather(m, 0, first[None])[0]
    return flow, match, first


def align(source, target, model: Union[str, FineFlowNet, None] = "default", **options) -> Alignment:
    """Dense alignment of ``source`` to ``target`` (RANSAC-Flow; see the module docstring).

    Args:
        source, target: images (numpy / torch, grey or colour, see :mod:`lift.image`); at least
            32 x 32 px.
        model: fine network (``"default"`` shipped weights, a path, a :class:`FineFlowNet`) or
            None for the coarse (homography-only) alignment.
        **options: :class:`RansacFlow` settings (``max_homographies``, ``fine_size``, ...).

    Returns:
        :class:`Alignment` (flow on the source grid: ``p -> p + flow[p]``).

    Raises:
        lift.ImageError: invalid or too small images.
        ValueError: no homography relates the images.
    """
    return RansacFlow(model=model, **options)(source, target)


def dense_to_sparse(alignment: Alignment, min_matchability: float = 0.95, stride: int = 8,
                    max_points: Optional[int] = None):
    """Confident correspondences from a dense alignment (e.g. for SfM).

    Samples the source grid every ``stride`` pixels and keeps the pixels with matchability
    ``>= min_matchability`` whose target lies inside the target image.

    Returns:
        ``(src, dst, confidence)``: ``N x 2`` float32 source / target pixels and ``N`` float32
        matchabilities, sorted by decreasing confidence (at most ``max_points``).
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    h, w = alignment.flow.shape[:2]
    ys, xs = np.mgrid[0:h:stride, 0:w:stride]
    f = alignment.flow[ys, xs]
    conf = alignment.matchability[ys, xs]
    dst = np.stack([xs + f[..., 0], ys + f[..., 1]], -1)
    wt, ht = alignment.target_size
    keep = ((conf >= min_matchability) & (dst[..., 0] >= 0) & (dst[..., 0] <= wt - 1)
            & (dst[..., 1] >= 0) & (dst[..., 1] <= ht - 1))
    src = np.stack([xs, ys], -1)[keep].astype(np.float32)
    dst, conf = dst[keep].astype(np.float32), conf[keep].astype(np.float32)
    order = np.argsort(-conf, kind="stable")
    if max_points is not None:
        order = order[:max_points]
    return src[order], dst[order], conf[order]
