"""Match refinement: the keypoints of each track of matches moved onto one common point.

Used by ``lift-sfm`` before mapping (:mod:`lift.sfm.verify`) and, for two images, by
:func:`refine_matches` (e.g. before a homography fit: on the synthetic-warp benchmark it raises
homography accuracy within 3 px from 55.6 to 71.1 % with lift features and keeps SIFT's at
68.9 %, ``BENCHMARKS.md``).

A detector places the same physical point slightly differently in each view (lift and SIFT
alike: the median re-detection error after a known warp is 0.1-0.2 px, the 90th percentile
0.3-0.6 px, ``BENCHMARKS.md``), and every such offset becomes reprojection error and camera
error in the reconstruction. This step moves the keypoints of every track onto one common
point, by photometric alignment of image patches:

1. **Tracks**: the connected components of the verified inlier matches (every keypoint is a
   node, every inlier match an edge; :func:`scipy.sparse.csgraph.connected_components`).
2. **Reference**: per track, the keypoint with the most inlier matches (ties: the smallest
   scale, i.e. the finest template). It is not moved; its patch is the template ``T``: ``G x G``
   samples on a square of half-width ``r = max(radius * sigma_ref, min_radius)`` pixels.
3. **Alignment**: every other keypoint ``p`` of the track gets an affine map of the template's
   offsets ``d`` (image pixels of the reference view) into its own view,
   ``x(d) = p + A d``, initialised from the two keypoints' scales and orientations
   (``A = sigma / sigma_ref * R(ori - ori_ref)``, with ``R`` the rotation from +x towards +y,
   the library's orientation sense), and a gain and bias ``a I + b``; Levenberg-Marquardt on
   the Gaussian-weighted squared difference ``sum_d w(d) (a I(x(d)) + b - T(d))^2`` (8
   parameters: position, the 4 entries of ``A``, gain, bias), batched over all keypoints of an
   image. Patches are sampled bilinearly from the pyramid level whose pixel step matches the
   sampling step (``lift.glue``'s rule: no aliasing for large scales); image gradients are
   central differences at +-0.5 level pixel.
4. **Acceptance**: the refined position is kept when the keypoint moved at most
   ``max_shift * sigma + 0.5`` pixels, the weighted normalised cross-correlation of the aligned
   patch with the template is at least ``min_ncc``, and ``A``'s singular values stayed within a
   factor ``max_stretch`` of the initial scale ratio; otherwise the keypoint keeps its detected
   position (a wrong match merged into a track, a depth edge, a textureless patch).

Measured (``tests/test_refine.py``'s warp, 5 scikit-image photos, lift keypoints matched by
the ground truth): distance between a keypoint mapped by the true homography and its match,
median / 90th percentile 0.29 / 0.93 px before, 0.04 / 0.18 px after (SIFT keypoints 0.12 /
0.45 -> 0.04 / 0.18). In ``lift-sfm`` (``tools/bench_sfm.py``, ``BENCHMARKS.md``) it lowers the
reprojection error and the camera errors of lift and SIFT alike.

Positions use the library convention (top-left pixel centre = (0, 0)); scales are sigma in
pixels. Everything is torch, device-agnostic (``device=``), batched over keypoints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from lift.glue import build_pyramid, pyramid_atlas, pyramid_depth, pyramid_level
from lift.image import to_gray_tensor

__all__ = ["RefineConf", "RefineStats", "build_tracks", "refine_keypoints", "refine_matches"]


@dataclass
class RefineConf:
    """Keypoint refinement settings.

    Attributes:
        radius: template half-width in units of the reference keypoint's sigma [4.0].
        min_radius: smallest template half-width, pixels [4.0].
        grid: samples per side of the template (odd) [15].
        iters: Levenberg-Marquardt iterations [15].
        max_shift: a keypoint may move at most ``max_shift * sigma + 0.5`` pixels [1.0].
        min_ncc: weighted NCC of the aligned patch with the template needed to accept [0.9].
            With random wrong matches (``tests/test_refine.py``) 11 % of the keypoints find an
            alignment of NCC >= 0.8 within the shift bound, 4.5 % of NCC >= 0.9; every true
            match there passes both, and on castle-P19 the ground-truth epipolar error after
            refinement is the same (0.084 against 0.083 px median).
        max_stretch: largest factor between ``A``'s singular values and the initial scale
            ratio [3.0]. It rejects collapsed or exploded alignments; real foreshortening
            needs room (at 1.5, 13 % of the aligned keypoints of Strecha castle-P19 with lift
            features failed it, 0.8 % at 3; the median epipolar error of their inlier matches
            against the ground-truth cameras fell from 0.207 px to 0.089 px at 1.5 and to
            0.083 px at 3).
        chunk: keypoints aligned per batch (bounds memory: ~30 kB each at the defaults) [4096].
    """

    radius: float = 4.0
    min_radius: float = 4.0
    grid: int = 15
    iters: int = 15
    max_shift: float = 1.0
    min_ncc: float = 0.9
    max_stretch: float = 3.0
    chunk: int = 4096

    def __post_init__(self):
        if self.grid < 3 or self.grid % 2 == 0:
            raise ValueError(f"grid must be an odd number >= 3, got {self.grid}")
        if not (self.radius > 0 and self.min_radius > 0 and self.max_shift > 0
                and self.max_stretch >= 1 and self.iters >= 1 and self.chunk >= 1):
            raise ValueError("radius, min_radius, max_shift > 0, max_stretch >= 1, iters, chunk >= 1 required")


@dataclass
class RefineStats:
    """What :func:`refine_keypoints` did: tracks (with at least 2 keypoints), keypoints that
    were aligned (every non-reference keypoint of a track), accepted (moved), the median
    shift of the accepted ones in pixels, and the rejected ones by the first test they failed
    (``flat`` template, ``ncc``, ``stretch``, ``shift``, non-finite)."""

    tracks: int = 0
    aligned: int = 0
    accepted: int = 0
    median_shift: float = 0.0
    rejected: Dict[str, int] = field(default_factory=dict)


def build_tracks(num_keypoints: Sequence[int], edges: Sequence[Tuple[int, int, np.ndarray]]
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tracks as connected components of match edges.

    Args:
        num_keypoints: keypoints per image (images indexed 0..M-1).
        edges: ``(image i, image j, K x 2 matches)``: keypoint ``m[k, 0]`` of image i matches
            keypoint ``m[k, 1]`` of image j.

    Returns:
        ``(track, degree, offsets)``: per global keypoint (image i's keypoint k is global
        ``offsets[i] + k``) its component label and its number of match edges; components of
        a single keypoint are labelled -1.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    offsets = np.concatenate([[0], np.cumsum(num_keypoints)]).astype(np.int64)
    n = int(offsets[-1])
    rows = [offsets[i] + np.asarray(m[:, 0], np.int64) for i, j, m in edges if len(m)]
    cols = [offsets[j] + np.asarray(m[:, 1], np.int64) for i, j, m in edges if len(m)]
    if n == 0 or not rows:
        return np.full(n, -1, np.int64), np.zeros(n, np.int64), offsets
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    degree = np.bincount(r, minlength=n) + np.bincount(c, minlength=n)
    size = np.bincount(label, minlength=label.max() + 1)
    label = np.where(size[label] >= 2, label, -1)
    return label.astype(np.int64), degree.astype(np.int64), offsets[:-1]


class _ImageSampler:
    """Bilinear samples of one grey image's pyramid at arbitrary points, each point from the
    level its pixel step asks for (``lift.glue.pyramid_level``), border-clamped per level."""

    def __init__(self, gray: torch.Tensor, max_step: float):
        self.pyr = build_pyramid(gray[None, None], pyramid_depth(max_step))
        self.atlas, offs = pyramid_atlas(self.pyr)
        dev, dt = gray.device, gray.dtype
        self.geo = torch.tensor([[p.shape[-1], p.shape[-2], x0, y0] for p, (x0, y0) in zip(self.pyr, offs)],
                                dtype=dt, device=dev)
        ha, wa = self.atlas.shape[-2:]
        self.norm = torch.tensor([2.0 / wa, 2.0 / ha], dtype=dt, device=dev)

    def level(self, step: torch.Tensor) -> torch.Tensor:
        return pyramid_level(step, len(self.pyr))

    def __call__(self, xy: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """``xy``: ``N x P x 2`` image pixels, ``level``: ``N`` -> ``N x P`` values."""
        f = torch.exp2(level.to(xy.dtype))[:, None, None]
        g = self.geo[level][:, None]  # N x 1 x 4
        lv = ((xy + 0.5) / f - 0.5)
        lv = torch.minimum(lv.clamp_min(0.0), g[..., :2] - 1)
        grid = (lv + g[..., 2:] + 0.5) * self.norm - 1
        out = F.grid_sample(self.atlas, grid.reshape(1, 1, -1, 2), mode="bilinear",
                            padding_mode="border", align_corners=False)
        return out.view(xy.shape[:2])


def _rotation(theta: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # N x 2 x 2


def _weighted_ncc(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    am = a - (a * w).sum(1, keepdim=True)
    bm = b - (b * w).sum(1, keepdim=True)
    num = (w * am * bm).sum(1)
    den = torch.sqrt((w * am * am).sum(1) * (w * bm * bm).sum(1)).clamp_min(1e-12)
    return num / den


def refine_keypoints(images: Sequence, keypoints: Sequence[np.ndarray], scales: Sequence[np.ndarray],
                     oris: Sequence[np.ndarray], edges: Sequence[Tuple[int, int, np.ndarray]],
                     conf: RefineConf = RefineConf(), device=None
                     ) -> Tuple[List[np.ndarray], RefineStats]:
    """Move the keypoints of every track onto one common point (see the module docstring).

    Args:
        images: per image, grey ``H x W`` (numpy or torch; dtypes as
            :func:`lift.image.to_gray_tensor`: uint8, uint16, float in [0, 1] or 0..255).
        keypoints: per image ``N_i x 2`` pixels (top-left pixel centre (0, 0)).
        scales: per image ``N_i`` sigma in pixels. oris: per image ``N_i`` radians, from +x
            towards +y (clockwise on screen).
        edges: verified matches ``(image i, image j, K x 2)``.
        conf: :class:`RefineConf`. device: torch device [CPU].

    Returns:
        ``(refined keypoints per image, N_i x 2 float32, RefineStats)``; keypoints outside any
        track, references and rejected alignments keep their input positions.
    """
    dev = torch.device(device) if device is not None else torch.device("cpu")
    m = len(images)
    if not (len(keypoints) == len(scales) == len(oris) == m):
        raise ValueError("images, keypoints, scales and oris must have one entry per image")
    kps = [np.asarray(k, np.float32).reshape(-1, 2) for k in keypoints]
    scs = [np.asarray(s, np.float32).reshape(-1) for s in scales]
    ors = [np.asarray(o, np.float32).reshape(-1) for o in oris]
    out = [k.copy() for k in kps]
    label, degree, offsets = build_tracks([len(k) for k in kps], edges)
    stats = RefineStats()
    if (label >= 0).sum() == 0:
        return out, stats
    kp_all, sc_all, or_all = np.concatenate(kps), np.concatenate(scs), np.concatenate(ors)
    if not (np.isfinite(kp_all).all() and np.isfinite(sc_all).all() and (sc_all > 0).all()):
        raise ValueError("keypoints must be finite with positive scales")
    img_of = np.repeat(np.arange(m), [len(k) for k in kps])
    in_track = np.nonzero(label >= 0)[0]
    # reference per track: most edges, then smallest scale
    order = np.lexsort((sc_all[in_track], -degree[in_track], label[in_track]))
    srt = in_track[order]
    first = np.ones(len(srt), bool)
    first[1:] = label[srt[1:]] != label[srt[:-1]]
    ref_of_label = dict(zip(label[srt[first]].tolist(), srt[first].tolist()))
    ref = np.array([ref_of_label[t] for t in label[in_track]], np.int64)
    movers, mref = in_track[in_track != ref], ref[in_track != ref]
    stats.tracks, stats.aligned = int(first.sum()), int(len(movers))
    if len(movers) == 0:
        return out, stats

    dt = torch.float32
    g = conf.grid
    u = torch.linspace(-1.0, 1.0, g, dtype=dt, device=dev)
    uu = torch.stack([u.repeat(g), u.repeat_interleave(g)], 1)  # P x 2, (x, y)
    w = torch.exp(-0.5 * (uu ** 2).sum(1) / 0.5 ** 2)
    w = w / w.sum()
    unit = torch.eye(2, dtype=dt, device=dev)
    radius_of = lambda s: np.maximum(conf.radius * s, conf.min_radius).astype(np.float32)  # noqa: E731
    max_step = float(radius_of(sc_all[in_track]).max()) * 2.0 / (g - 1) * conf.max_stretch * 2

    def sampler(i: int) -> _ImageSampler:
        # built when an image is visited, not kept (bounded memory on large collections):
        # each image is visited at most twice, for its templates and for its own keypoints
        im = images[i]
        if im.ndim != 2:
            raise ValueError(f"refine_keypoints needs grey H x W images, got shape {tuple(im.shape)}")
        # the library's one input rule (uint8 / uint16 / floats in [0, 1] or 0..255; NaN raises)
        return _ImageSampler(to_gray_tensor(im, device=dev)[0], max_step)

    # templates, per reference image
    refs = np.unique(mref)
    tmpl = torch.zeros(len(refs), g * g, dtype=dt, device=dev)
    rad = torch.from_numpy(radius_of(sc_all[refs])).to(dev)
    slot = {r: k for k, r in enumerate(refs.tolist())}
    for i in np.unique(img_of[refs]).tolist():
        sel = np.nonzero(img_of[refs] == i)[0]
        s = sampler(i)
        xy = torch.from_numpy(kp_all[refs[sel]]).to(dev)[:, None] + rad[sel, None, None] * uu
        lev = s.level(rad[sel] * 2.0 / (g - 1))
        tmpl[torch.from_numpy(sel).to(dev)] = s(xy, lev)
    # normalised templates: zero weighted mean, unit weighted std
    tmpl = tmpl - (tmpl * w).sum(1, keepdim=True)
    tstd = torch.sqrt((tmpl * tmpl * w).sum(1, keepdim=True))
    flat = (tstd[:, 0] < 1e-3)  # textureless template: nothing to align to
    tmpl = tmpl / tstd.clamp_min(1e-6)

    shifts, accepted = [], 0
    for i in np.unique(img_of[movers]).tolist():
        sel_all = np.nonzero(img_of[movers] == i)[0]
        s = sampler(i)
        for c0 in range(0, len(sel_all), conf.chunk):
            sel = sel_all[c0:c0 + conf.chunk]
            node, rnode = movers[sel], mref[sel]
            k = torch.from_numpy(np.array([slot[r] for r in rnode.tolist()])).to(dev)
            T = tmpl[k]
            rad = torch.from_numpy(radius_of(sc_all[rnode])).to(dev)
            d = rad[:, None, None] * uu  # N x P x 2 template offsets, reference-image pixels
            p0 = torch.from_numpy(kp_all[node]).to(dev)
            ratio = torch.from_numpy(sc_all[node] / sc_all[rnode]).to(dev)
            A = ratio[:, None, None] * _rotation(torch.from_numpy(or_all[node] - or_all[rnode]).to(dev))
            p = p0.clone()
            step0 = rad * 2.0 / (g - 1)
            gain = torch.ones(len(sel), dtype=dt, device=dev)
            bias = torch.zeros(len(sel), dtype=dt, device=dev)
            lam = torch.full((len(sel),), 1e-3, dtype=dt, device=dev)
            first_iter = True
            for _ in range(conf.iters):
                A_scale = torch.sqrt(torch.det(A).abs().clamp_min(1e-6))
                lev = s.level(step0 * A_scale)
                hpx = 0.5 * torch.exp2(lev.to(dt))[:, None, None]  # +-0.5 level pixel, image px
                x = p[:, None] + torch.einsum("nij,npj->npi", A, d)
                ex, ey = hpx * unit[0], hpx * unit[1]  # N x 1 x 2 steps along x and y
                pts = torch.cat([x, x - ex, x + ex, x - ey, x + ey], 1)
                vals = s(pts, lev).view(len(sel), 5, -1)
                I = vals[:, 0]
                gx = (vals[:, 2] - vals[:, 1]) / (2 * hpx[:, :, 0])
                gy = (vals[:, 4] - vals[:, 3]) / (2 * hpx[:, :, 0])
                if first_iter:  # gain and bias from the moments of the initial patch
                    mu = (I * w).sum(1)
                    sd = torch.sqrt(((I - mu[:, None]) ** 2 * w).sum(1)).clamp_min(1e-6)
                    gain, bias = 1.0 / sd, -mu / sd
                    first_iter = False
                r = gain[:, None] * I + bias[:, None] - T
                ga, gb = gain[:, None] * gx, gain[:, None] * gy
                J = torch.stack([ga, gb, ga * d[..., 0], ga * d[..., 1], gb * d[..., 0], gb * d[..., 1],
                                 I, torch.ones_like(I)], -1)  # N x P x 8
                Jw = J * w[None, :, None]
                H = Jw.transpose(1, 2) @ J
                rhs = -(Jw * r[..., None]).sum(1)
                Hd = H + lam[:, None, None] * torch.diag_embed(torch.diagonal(H, dim1=1, dim2=2)) \
                    + 1e-9 * torch.eye(8, dtype=dt, device=dev)
                delta = torch.linalg.solve(Hd, rhs[..., None])[..., 0]
                delta = torch.nan_to_num(delta)
                p = p + delta[:, :2]
                A = A + delta[:, 2:6].view(-1, 2, 2)
                gain = gain + delta[:, 6]
                bias = bias + delta[:, 7]
            # acceptance
            x = p[:, None] + torch.einsum("nij,npj->npi", A, d)
            lev = s.level(step0 * torch.sqrt(torch.det(A).abs().clamp_min(1e-6)))
            ncc = _weighted_ncc(s(x, lev), T, w[None])
            sv = torch.linalg.svdvals(A)
            shift = (p - p0).norm(dim=1)
            sig = torch.from_numpy(sc_all[node]).to(dev)
            tests = {"non-finite": torch.isfinite(p).all(1) & torch.isfinite(ncc), "flat": ~flat[k],
                     "ncc": ncc >= conf.min_ncc,
                     "stretch": (sv[:, 0] <= ratio * conf.max_stretch) & (sv[:, 1] >= ratio / conf.max_stretch),
                     "shift": shift <= conf.max_shift * sig + 0.5}
            ok = torch.ones_like(shift, dtype=torch.bool)
            for why, passed in tests.items():
                stats.rejected[why] = stats.rejected.get(why, 0) + int((ok & ~passed).sum())
                ok &= passed
            okn = ok.cpu().numpy()
            local = node[okn] - offsets[i]
            out[i][local] = p[ok].cpu().numpy()
            accepted += int(okn.sum())
            shifts.append(shift[ok].cpu().numpy())
    stats.accepted = accepted
    sh = np.concatenate(shifts) if shifts else np.zeros(0)
    stats.median_shift = float(np.median(sh)) if len(sh) else 0.0
    return out, stats


def refine_matches(image0, image1, keypoints0: np.ndarray, keypoints1: np.ndarray, matches: np.ndarray,
                   scales0=None, scales1=None, oris0=None, oris1=None, conf: RefineConf = RefineConf(),
                   device=None) -> Tuple[np.ndarray, np.ndarray, RefineStats]:
    """Refine the matched keypoints of two images (each match is a track of two keypoints;
    the keypoint with the smaller scale is the reference and stays).

    Args:
        image0, image1: grey ``H x W`` images (uint8, or float in [0, 1]).
        keypoints0, keypoints1: ``N0 x 2`` / ``N1 x 2`` pixels (top-left pixel centre (0, 0)).
        matches: ``K x 2`` indices ``(i0, i1)``; verified matches (RANSAC inliers) work best,
            wrong ones are mostly left alone by the acceptance tests.
        scales0, scales1: sigma per keypoint, pixels (``Features.scales``; default 2 px).
        oris0, oris1: orientation per keypoint, radians from +x towards +y (``Features.oris``;
            default 0: then the alignment starts from no rotation).
        conf, device: see :func:`refine_keypoints`.

    Returns:
        ``(keypoints0', keypoints1', stats)``: all keypoints (``N0 x 2`` / ``N1 x 2`` float32),
        the matched ones moved where accepted.

    Example::

        k0, k1, _ = refine_matches(img0, img1, f0.keypoints, f1.keypoints, inliers,
                                   f0.scales, f1.scales, f0.oris, f1.oris)
        H, _ = find_homography(k0[inliers[:, 0]], k1[inliers[:, 1]], threshold=3.0)
    """
    k0 = np.asarray(keypoints0, np.float32).reshape(-1, 2)
    k1 = np.asarray(keypoints1, np.float32).reshape(-1, 2)
    m = np.asarray(matches, np.int64).reshape(-1, 2)
    if len(m) and (m.min() < 0 or m[:, 0].max() >= len(k0) or m[:, 1].max() >= len(k1)):
        raise ValueError("matches index keypoints that do not exist")

    def default(v, n, value):
        return np.full(n, value, np.float32) if v is None else np.asarray(v, np.float32).reshape(-1)

    (r0, r1), stats = refine_keypoints([image0, image1], [k0, k1],
                                       [default(scales0, len(k0), 2.0), default(scales1, len(k1), 2.0)],
                                       [default(oris0, len(k0), 0.0), default(oris1, len(k1), 0.0)],
                                       [(0, 1, m)], conf, device)
    return r0, r1, stats
