"""The LIFT runtime: image -> scale space -> detector scores -> NMS over space and scale ->
refinement -> orientation -> descriptors, batched over images and keypoints.

``detect_and_describe(image)`` is the one-call API; :class:`LIFT` holds a model and the runtime
knobs and also speaks OpenCV's ``Feature2D`` dialect (``LIFT.create(...).detectAndCompute``).
Conventions of the outputs: :mod:`lift.features`.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .features import DESCRIPTOR_SUPPORT, Features, keypoints_from_cv2
from .glue import build_pyramid, extract_patches_pyramid, pyramid_atlas, pyramid_depth
from .image import ImageError, to_gray_tensor
from .inference import standardized_window
from .denoise import adaptive_smooth
from .layers import max_filter
from .model import LIFTModel
from .nms import scale_space_nms
from .subpixel import refine_on_response

__all__ = ["LIFT", "LIFTConfig", "detect_and_describe"]

#: target pixels per detector stripe (see ``LIFT._score_level``)
STRIPE_PIXELS = 160_000


@dataclass
class LIFTConfig:
    """Runtime knobs (defaults in brackets).

    Attributes:
        max_keypoints: keep at most this many keypoints per image, best scores first;
            ``None`` or <= 0 keeps all [2048].
        min_sigma, max_sigma: range of the scale space sigma, in pixels [1.0, 16.0]. With
            ``scale_nms >= 1`` keypoints come from its interior levels only (see
            :func:`lift.nms.scale_space_nms`).
        scales_per_octave: scale-space samples per doubling of sigma [4].
        nms_radius: spatial non-maximum suppression radius in detector pixels; a keypoint is
            the maximum of a (2r+1)^2 window [2].
        scale_nms: a keypoint must beat the window maxima of the neighbouring +-scale_nms
            scales; 0 = every spatial maximum of every level is a candidate, the best scores
            win [0]. The shipped detector's response is sharply tuned in scale, so keypoints at
            adjacent scales of one location describe it at slightly different scales, as
            SIFT's extra orientations do; on boat + iguazu with the weights shipped until
            2026-12-01 evening (orientation network ``ori4``), MMA@3 is
            65.4 % at 0 against 60.1 % at 1 with 8 levels per octave (1.5x slower) and 49.5 %
            at 1 with 4 (SIFT: 46.2 %). At 0, 60 % of the keypoints have another within 1 px
            (SIFT: 39 %), with more distinct pixel locations than SIFT (1711 against 1636 of
            2048 on boat img1).
        edge_threshold: Hessian ratio r of the edge test tr^2/det < (r+1)^2/r; <= 0 disables [10].
        score_threshold: minimum detector score; ``None`` disables [None].
        refine: sub-pixel refinement, and sub-scale refinement where ``scale_nms >= 1``
            [True].
        subpixel: how the kept keypoints get their sub-pixel positions: ``"response"``, the
            soft-argmax (the training beta) of the detector's score evaluated between the pixels
            (:func:`lift.subpixel.refine_on_response`), or ``"quadratic"``, the vertex of a
            quadratic fit to the 3 x 3 scores (:func:`lift.nms.scale_space_nms`), the default
            until 2026-12-01. The response is more precise (median re-detection error after
            known warps 0.09-0.17 px against 0.18-0.28, ``tools/bench_localisation.py``) and
            matches better (``BENCHMARKS.md``, ``lift`` against ``lift+quadratic``:
            synthetic-warp MMA@1 / @3 40.0 / 48.8 % against 35.5 / 46.7 %; Strecha epipolar
            precision 49.4 against 47.8 %; boat + iguazu MMA@3 74.4 against 74.5 %; before the
            noise-adaptive smoothing, homography accuracy @3 px on the synthetic warps 55.6
            against 53.3 %, now both 55.6 %), for 8 % more time per 640 x 480 image at 2048 keypoints
            (paired in-process runs without page faults; 14 % in ``tools/bench_speed.py``'s
            run) ["response"].
        upright: skip the orientation network, all orientations 0 [False].
        noise_threshold: noise-adaptive pre-smoothing (:mod:`lift.denoise`): an image whose
            estimated white-noise std (grey levels of 0..255; clean photos 1-12) exceeds it is
            Gaussian-blurred by ``noise / (2 sqrt(pi) threshold)`` px (at most 2) before
            detection and description, which brings the noise down to about the threshold;
            ``None`` disables [8.0]. On the benchmarks (``BENCHMARKS.md``, ``lift`` against
            ``lift+nodenoise``): boat + iguazu MMA@3 74.4 against 68.0 %, homography accuracy
            @3 px 90 against 80 % (SIFT: 46.1 %, 90 %); synthetic warps (3 of 9 photos smoothed)
            MMA@3 48.8 against 48.6 %; Strecha (no image smoothed) unchanged. Chosen on synthetic warps of photos outside the benchmarks
            (scikit-image's and Urban100 img_081-090) with Gaussian noise of std 0 / 10 / 20 /
            40 added to the second image: MMA@3 41.4 / 38.8 / 34.7 / 28.8 % against 41.4 / 38.8 /
            32.9 / 20.7 % without, homography accuracy @5 px 50.0 / 44.7 / 39.5 / 36.8 %
            against 50.0 / 47.4 / 36.8 / 13.2 % (threshold 12: 41.4 / 38.8 / 33.7 / 27.1 %).
        patch_batch: patches per network call, bounds memory [4096].
        tile_rows: the detector runs on horizontal stripes of at most this many rows of a
            scale level, bounding memory on huge images [1024].
        patch_precision: ``"float32"``, ``"bfloat16"`` or ``"auto"`` ["auto"]: the dtype the
            orientation and descriptor networks run in. ``"auto"`` picks bfloat16 on CPUs with
            native bfloat16 arithmetic (AVX512-BF16 / AMX: 1.5-3x faster there) and float32
            elsewhere. Patches are standardised in float32 first, and descriptors re-normalised
            in float32: against float32 (6 photos, 2048 keypoints each), orientations differ by
            0.09 deg (median; 1.6 deg at the 99th percentile) and 99 % of the descriptors have
            cosine similarity > 0.997 (a few patches with two near-equal dominant directions
            flip orientation). The detector always runs in float32.
    """

    max_keypoints: Optional[int] = 2048
    min_sigma: float = 1.0
    max_sigma: float = 16.0
    scales_per_octave: int = 4
    nms_radius: int = 2
    scale_nms: int = 0
    edge_threshold: float = 10.0
    score_threshold: Optional[float] = None
    refine: bool = True
    subpixel: str = "response"
    upright: bool = False
    noise_threshold: Optional[float] = 8.0
    patch_batch: int = 4096
    tile_rows: int = 1024
    patch_precision: str = "auto"

    def __post_init__(self):
        if self.subpixel not in ("response", "quadratic"):
            raise ValueError(f"subpixel must be 'response' or 'quadratic', got {self.subpixel!r}")
        if self.patch_precision not in ("auto", "float32", "bfloat16"):
            raise ValueError("patch_precision must be 'auto', 'float32' or 'bfloat16', "
                             f"got {self.patch_precision!r}")
        if self.noise_threshold is not None and not self.noise_threshold > 0:
            raise ValueError(f"noise_threshold must be > 0 or None, got {self.noise_threshold}")
        if not 0 < self.min_sigma <= self.max_sigma:
            raise ValueError(f"need 0 < min_sigma <= max_sigma, got {self.min_sigma}, {self.max_sigma}")
        if self.scales_per_octave < 1 or self.nms_radius < 0 or self.scale_nms < 0:
            raise ValueError("scales_per_octave >= 1, nms_radius >= 0 and scale_nms >= 0 required")

    def sigmas(self) -> List[float]:
        n = int(math.floor(math.log2(self.max_sigma / self.min_sigma) * self.scales_per_octave + 1e-9))
        return [self.min_sigma * 2.0 ** (i / self.scales_per_octave) for i in range(n + 1)]


def _as_image_list(images) -> Tuple[List, bool]:
    if isinstance(images, (list, tuple)):
        return list(images), True
    return [images], False


class LIFT(nn.Module):
    """LIFT feature extractor.

    Args:
        model: a :class:`~lift.model.LIFTModel`, a shipped weights name (``"default"``) or a
            path to a weights file.
        device: torch device to run on (default: CPU).
        **knobs: :class:`LIFTConfig` fields, e.g. ``max_keypoints=4096``.

    Example::

        lift_ = LIFT(max_keypoints=2048)
        feats = lift_.extract(image)                 # lift.Features
        kps, desc = lift_.detectAndCompute(img, None)  # OpenCV-shaped
    """

    def __init__(self, model: Union[LIFTModel, str] = "default", device=None, **knobs):
        super().__init__()
        names = {f.name for f in fields(LIFTConfig)}
        unknown = set(knobs) - names
        if unknown:
            raise TypeError(f"unknown LIFT option(s) {sorted(unknown)}; valid: {sorted(names)}")
        self.conf = LIFTConfig(**knobs)
        self.model = model if isinstance(model, LIFTModel) else LIFTModel.load(model)
        self.model.eval()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.model.to(self.device)
        # inference copies of the patch networks (lift.inference; weights as of now)
        self._nets = self.model.inference_nets(self._patch_dtype())

    def _patch_dtype(self) -> torch.dtype:
        want = self.conf.patch_precision
        if want == "auto":
            native = self.device.type == "cpu" and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", bool)())
            want = "bfloat16" if native else "float32"
        return torch.bfloat16 if want == "bfloat16" else torch.float32

    # ------------------------------------------------------------------ OpenCV dialect
    @classmethod
    def create(cls, nfeatures: int = 2048, model: Union[LIFTModel, str] = "default",
               device=None, **knobs) -> "LIFT":
        """OpenCV-style factory, usable where code calls ``cv2.SIFT_create(nfeatures)``
        (``nfeatures=0`` keeps all keypoints, as in OpenCV)."""
        return cls(model=model, device=device, max_keypoints=nfeatures if nfeatures > 0 else None,
                   **knobs)

    def detect(self, image, mask=None) -> tuple:
        """Keypoints as a tuple of ``cv2.KeyPoint`` (OpenCV conventions)."""
        return self.extract(image, mask=mask).to_cv2()[0]

    def compute(self, image, keypoints) -> Tuple[tuple, Optional[np.ndarray]]:
        """Descriptors at given ``cv2.KeyPoint``s (``size`` = 2 sigma; ``angle`` in degrees, -1
        = estimate it with the orientation network). Returns ``(keypoints, N x D float32 or
        None)``; keypoints are returned unchanged except that estimated angles are filled in."""
        feats = self.describe(image, keypoints)
        if len(feats) == 0:
            return tuple(keypoints), None
        return feats.to_cv2()

    def detectAndCompute(self, image, mask=None, descriptors=None, useProvidedKeypoints=False):
        """OpenCV's ``detectAndCompute(image, mask) -> (keypoints, descriptors)``."""
        if useProvidedKeypoints:
            raise ValueError("useProvidedKeypoints=True: call compute(image, keypoints) instead")
        return self.extract(image, mask=mask).to_cv2()

    def defaultNorm(self) -> int:
        import cv2

        return cv2.NORM_L2

    def descriptorSize(self) -> int:
        return self.model.descriptor.dim

    def descriptorType(self) -> int:
        import cv2

        return cv2.CV_32F

    def getDefaultName(self) -> str:
        return "Feature2D.LIFT"

    # ------------------------------------------------------------------ public extraction
    @torch.inference_mode()
    def extract(self, image, mask=None) -> Union[Features, List[Features]]:
        """Detect and describe. ``image``: one image (numpy/torch, see :mod:`lift.image`) or a
        list of images (then ``mask`` is None or a list, and a list of Features is returned;
        images of equal size are processed as one batch)."""
        images, is_list = _as_image_list(image)
        masks = mask if isinstance(mask, (list, tuple)) else [mask] * len(images)
        if len(masks) != len(images):
            raise ValueError(f"{len(masks)} masks for {len(images)} images")
        grays = [to_gray_tensor(im, device=self.device) for im in images]
        out: List[Optional[Features]] = [None] * len(grays)
        groups: Dict[Tuple[int, int], List[int]] = {}
        for i, g in enumerate(grays):
            groups.setdefault(tuple(g.shape[-2:]), []).append(i)
        for (h, w), idx in groups.items():
            batch = torch.stack([grays[i] for i in idx])
            mbatch = [self._mask_tensor(masks[i], h, w) for i in idx]
            for i, f in zip(idx, self._extract_batch(batch, mbatch)):
                out[i] = f
        return out if is_list else out[0]

    @torch.inference_mode()
    def describe(self, image, keypoints) -> Features:
        """Orientation (where missing) and descriptors at given keypoints.

        ``keypoints``: sequence of ``cv2.KeyPoint`` or a :class:`Features` (its keypoints,
        scales and oris are used; NaN oris are estimated)."""
        gray = to_gray_tensor(image, device=self.device)
        h, w = gray.shape[-2:]
        if isinstance(keypoints, Features):
            kpts, scales, oris, scores = (keypoints.keypoints, keypoints.scales,
                                          keypoints.oris.copy(), keypoints.scores)
        else:
            kpts, scales, oris, scores = keypoints_from_cv2(keypoints)
            given = np.array([k.angle >= 0 for k in keypoints], dtype=bool).reshape(-1)
            oris = np.where(given, oris, np.nan).astype(np.float32)
        if len(kpts) == 0 or h == 0 or w == 0:
            return Features.empty((w, h), self.model.descriptor.dim)
        if not (np.isfinite(kpts).all() and np.isfinite(scales).all() and (scales > 0).all()):
            raise ValueError("keypoints must have finite coordinates and positive sizes")
        dev = self.device
        gray = self._smooth(gray[None])[0]
        kp_t = torch.from_numpy(kpts).to(dev)
        sc_t = torch.from_numpy(scales).to(dev)
        or_t = torch.from_numpy(oris).to(dev)
        pyr = self._pyramid(gray[None], sc_t.max().item())
        bidx = torch.zeros(len(kp_t), dtype=torch.long, device=dev)
        missing = ~torch.isfinite(or_t)
        if missing.any():
            est = self._orientations(pyr, kp_t[missing], sc_t[missing], bidx[missing])
            or_t = or_t.clone()
            or_t[missing] = est
        desc = self._descriptors(pyr, kp_t, sc_t, or_t, bidx)
        return Features(kpts, scales, or_t.cpu().numpy(), scores, desc.cpu().numpy(), (w, h))

    # ------------------------------------------------------------------ internals
    def _mask_tensor(self, mask, h: int, w: int) -> Optional[torch.Tensor]:
        if mask is None:
            return None
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.shape != (h, w):
            raise ImageError(f"mask has shape {tuple(m.shape)}, image is {h} x {w}")
        return (m != 0).to(self.device)

    def _smooth(self, batch: torch.Tensor) -> torch.Tensor:
        """``B x 1 x H x W`` -> the same with the noisy images smoothed (``noise_threshold``)."""
        if self.conf.noise_threshold is None:
            return batch
        return adaptive_smooth(batch, self.conf.noise_threshold)[0]

    def _pyramid(self, gray: torch.Tensor, max_sigma: float):
        """The patch source of a batch: its Gaussian pyramid (deep enough for patches of
        ``max_sigma``) and the pyramid's atlas, built once for both patch networks."""
        size = self.model.descriptor.input_size
        pyr = build_pyramid(gray, pyramid_depth(2.0 * DESCRIPTOR_SUPPORT * max_sigma / size))
        return pyr, pyramid_atlas(pyr)

    def _run_chunks(self, net, source, kp, sc, ori, bidx) -> torch.Tensor:
        outs = []
        pyr, atlas = source
        dtype = next(net.features.parameters()).dtype
        size, r = net.input_size, getattr(net, "space_to_depth", 1)
        for s in range(0, len(kp), self.conf.patch_batch):
            sl = slice(s, s + self.conf.patch_batch)
            patches = extract_patches_pyramid(pyr, kp[sl], sc[sl], None if ori is None else ori[sl],
                                              size, DESCRIPTOR_SUPPORT, bidx[sl], atlas=atlas,
                                              space_to_depth=r)
            if r > 1:  # N x r^2 x S/r x S/r channels-last: the same memory as N x 1 x S x S
                patches = patches.permute(0, 2, 3, 1).reshape(-1, 1, size, size)
            # standardised in float32 (bfloat16 would flatten faint texture), then cast; the
            # network reads only its top-left crop x crop window (lift.inference; the whole
            # patch where it takes space-to-depth input, whose statistics ignore pixel order)
            patches = standardized_window(patches, net.crop, dtype)
            if r > 1:
                patches = patches.view(-1, size // r, size // r, r * r).permute(0, 3, 1, 2)
            outs.append(net.forward_standardized(
                patches.contiguous(memory_format=torch.channels_last)).float())
        return torch.cat(outs)

    def _orientations(self, pyr, kp, sc, bidx) -> torch.Tensor:
        cs = self._run_chunks(self._nets["orientation"], pyr, kp, sc, None, bidx)
        return torch.atan2(cs[:, 1], cs[:, 0])

    def _descriptors(self, pyr, kp, sc, ori, bidx) -> torch.Tensor:
        # re-normalised in float32 (a bfloat16 network's output is unit-norm only to ~1e-2)
        return F.normalize(self._run_chunks(self._nets["descriptor"], pyr, kp, sc, ori, bidx), dim=-1)

    def _score_level(self, level: torch.Tensor) -> torch.Tensor:
        """Detector scores for one resized level (``B x 1 x h x w`` -> same, -inf border),
        computed on horizontal stripes: at most ``tile_rows`` rows (bounds memory on huge
        images) and about ``STRIPE_PIXELS`` pixels per stripe and image, so that the 16-channel
        convolution output of a stripe stays in cache (1.4x faster on a 640 x 480 level)."""
        det = self.model.detector
        bsz, _, h, w = level.shape
        b = det.border
        rows = min(self.conf.tile_rows, max(STRIPE_PIXELS // max(w, 1), 1))
        rows = max(rows, 2 * det.kernel_size)
        out = level.new_full((bsz, 1, h, w), -math.inf)
        for top in range(0, h - 2 * b, rows):
            stripe = level[..., top:min(h, top + rows + 2 * b), :]
            s = det(stripe)
            out[..., b + top:b + top + s.shape[-2], b:w - b] = s
        return out

    def _detect(self, batch: torch.Tensor, masks: Sequence[Optional[torch.Tensor]]):
        """Keypoints of a ``B x 1 x H x W`` batch. Returns per image (xy N x 2, sigma N, score N)."""
        conf, det = self.conf, self.model.detector
        bsz, _, h, w = batch.shape
        min_side = det.kernel_size + 2 * max(conf.nms_radius, 1) + 2
        levels = []  # (sigma, fx, fy, scores B x h x w, pooled B x h x w)
        on_response = conf.refine and conf.subpixel == "response"
        level_images = []  # with on_response: the B x 1 x h x w image of each level
        images = []  # resized images of the levels so far: (factor, image)
        for sigma in conf.sigmas():
            f = det.px_per_sigma / sigma
            lh, lw = int(round(h * f)), int(round(w * f))
            if min(lh, lw) < min_side:
                continue
            # resize from the smallest earlier level at least 4x as large (else the input):
            # the anti-aliasing filter then reads at most ~16x the output's pixels instead of
            # the whole image (resizes 22.6 -> 18.2 ms at 8 levels per octave; with 2x the
            # doubled blur lowered MMA@3 on boat + iguazu from 55.1 to 53.4 %, with 4x it
            # stays 55.0 %). Sizes compose exactly (align_corners=False), so the level keeps
            # its geometry lw / w, lh / h.
            src, fs = batch, 1.0
            for fk, im in images:
                if fk >= 4.0 * f and fk < fs:
                    src, fs = im, fk
            img = batch if (lh, lw) == (h, w) else F.interpolate(
                src, size=(lh, lw), mode="bilinear", align_corners=False, antialias=f < fs)
            # sigma only grows, so a level larger than this one's source is never a source again
            images = [(fk, im) for fk, im in images if fk <= fs] + [(f, img)]
            s = self._score_level(img)[:, 0]
            r = conf.nms_radius
            pooled = max_filter(s, r)
            levels.append((sigma, lw / w, lh / h, s, pooled))
            if on_response:
                level_images.append(img)
        empty = [(batch.new_zeros((0, 2)), batch.new_zeros(0), batch.new_zeros(0))] * bsz
        if not levels:
            return empty
        cand = scale_space_nms(levels, conf, return_index=on_response)
        if len(cand) == 0:
            return empty
        kept = []
        for b in range(bsz):
            c = cand[cand[:, 0] == b]
            c = c[(c[:, 1] >= 0) & (c[:, 1] <= w - 1) & (c[:, 2] >= 0) & (c[:, 2] <= h - 1)]
            m = masks[b]
            if m is not None and len(c):
                c = c[m[c[:, 2].round().long().clamp(0, h - 1), c[:, 1].round().long().clamp(0, w - 1)]]
            order = torch.argsort(c[:, 4], descending=True)
            if conf.max_keypoints is not None and conf.max_keypoints > 0:
                order = order[:conf.max_keypoints]
            kept.append(c[order])
        if on_response:  # positions of the kept keypoints from the continuous response
            c = torch.cat(kept)
            lev, xi, yi = c[:, 5].long(), c[:, 6].long(), c[:, 7].long()
            ox, oy = refine_on_response(det, level_images, lev, c[:, 0].long(), xi, yi)
            geo = c.new_tensor([[lv[1], lv[2]] for lv in levels])[lev]
            c = c.clone()
            c[:, 1] = ((xi.to(c.dtype) + ox + 0.5) / geo[:, 0] - 0.5).clamp(0, w - 1)
            c[:, 2] = ((yi.to(c.dtype) + oy + 0.5) / geo[:, 1] - 0.5).clamp(0, h - 1)
            kept = list(c.split([len(k) for k in kept]))
        return [(c[:, 1:3], c[:, 3], c[:, 4]) for c in kept]

    def _extract_batch(self, batch: torch.Tensor, masks) -> List[Features]:
        bsz, _, h, w = batch.shape
        dim = self.model.descriptor.dim
        if h == 0 or w == 0:
            return [Features.empty((w, h), dim) for _ in range(bsz)]
        batch = self._smooth(batch)
        dets = self._detect(batch, masks)
        counts = [len(d[0]) for d in dets]
        if sum(counts) == 0:
            return [Features.empty((w, h), dim) for _ in range(bsz)]
        kp = torch.cat([d[0] for d in dets])
        sc = torch.cat([d[1] for d in dets])
        score = torch.cat([d[2] for d in dets])
        bidx = torch.repeat_interleave(torch.arange(bsz, device=batch.device),
                                       torch.tensor(counts, device=batch.device))
        pyr = self._pyramid(batch, float(sc.max()))
        if self.conf.upright:
            ori = torch.zeros_like(sc)
        else:
            ori = self._orientations(pyr, kp, sc, bidx)
        desc = self._descriptors(pyr, kp, sc, ori, bidx)
        out, start = [], 0
        for n in counts:
            sl = slice(start, start + n)
            out.append(Features(kp[sl].cpu().numpy(), sc[sl].cpu().numpy(), ori[sl].cpu().numpy(),
                                score[sl].cpu().numpy(), desc[sl].cpu().numpy(), (w, h)))
            start += n
        return out

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Batched pipeline interface: ``B x 1 x H x W`` (or ``B x 3 x H x W``) float images in
        [0, 1] -> padded dict: ``keypoints`` B x N x 2, ``scales`` B x N, ``oris`` B x N
        (radians), ``keypoint_scores`` B x N, ``descriptors`` B x N x D, ``mask`` B x N bool,
        ``image_size`` B x 2 (W, H). N is the largest keypoint count in the batch."""
        if images.ndim != 4:
            raise ValueError(f"forward expects B x C x H x W, got {tuple(images.shape)}")
        feats = self.extract([im for im in images])
        n = max([len(f) for f in feats] + [0])
        b, dim = len(feats), self.model.descriptor.dim
        dev = self.device
        out = {"keypoints": torch.zeros(b, n, 2, device=dev), "scales": torch.zeros(b, n, device=dev),
               "oris": torch.zeros(b, n, device=dev), "keypoint_scores": torch.zeros(b, n, device=dev),
               "descriptors": torch.zeros(b, n, dim, device=dev),
               "mask": torch.zeros(b, n, dtype=torch.bool, device=dev),
               "image_size": torch.tensor([f.image_size for f in feats], device=dev).reshape(b, 2)}
        for i, f in enumerate(feats):
            k = len(f)
            out["keypoints"][i, :k] = torch.from_numpy(f.keypoints)
            out["scales"][i, :k] = torch.from_numpy(f.scales)
            out["oris"][i, :k] = torch.from_numpy(f.oris)
            out["keypoint_scores"][i, :k] = torch.from_numpy(f.scores)
            out["descriptors"][i, :k] = torch.from_numpy(f.descriptors)
            out["mask"][i, :k] = True
        return out


@functools.lru_cache(maxsize=4)
def _cached_extractor(model: str, device: str) -> "LIFT":
    return LIFT(model, device=device)


def detect_and_describe(image, max_keypoints: Optional[int] = 2048, mask=None, device=None,
                        model: Union[str, LIFTModel] = "default", **knobs
                        ) -> Union[Features, List[Features]]:
    """Detect keypoints and compute descriptors: the drop-in for SIFT's ``detectAndCompute``.

    Args:
        image: numpy ``H x W`` / ``H x W x 3`` (uint8 or float) or torch ``(1 x) C x H x W``;
            or a list of such images (then a list of Features comes back; equal-size images
            are batched).
        max_keypoints: at most this many keypoints (best scores); ``None`` keeps all.
        mask: ``H x W`` array, non-zero where keypoints are allowed (OpenCV's mask); a list
            for a list of images.
        device: torch device (default CPU).
        model: shipped weights name (``"default"``), a weights path, or a LIFTModel.
        **knobs: other :class:`LIFTConfig` fields (``min_sigma``, ``edge_threshold``, ...).

    Returns:
        :class:`lift.Features` (0 keypoints for an empty, tiny or featureless image).

    Raises:
        lift.ImageError: the image cannot be interpreted (wrong type, layout, NaN values).
        FileNotFoundError / lift.model.WeightsError: missing or invalid weights.
    """
    dev = str(torch.device(device)) if device is not None else "cpu"
    if isinstance(model, LIFTModel):
        extractor = LIFT(model, device=dev, max_keypoints=max_keypoints, **knobs)
    else:
        # one loaded model per (weights, device); the knobs are applied to a shallow copy
        extractor = copy.copy(_cached_extractor(str(model), dev))
        extractor.conf = LIFTConfig(max_keypoints=max_keypoints, **knobs)
    return extractor.extract(image, mask=mask)


