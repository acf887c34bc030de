"""The four LIFT training stages (``desc`` -> ``ori`` -> ``det`` -> ``joint``) as loss modules.

Every stage is an ``nn.Module`` around one :class:`lift.LIFTModel` whose ``forward(batch, gen)``
returns a dict of scalars with the total ``loss``; :meth:`Stage.trainable` names the networks it
optimises (the others are frozen and kept in eval mode). A batch is a collated
:class:`lift.data.QuadrupletDataset` item: ``patches`` ``B x 4 x 1 x S x S`` (P1, P2 same track,
P3 another track, P4 non-keypoint), ``keypoints`` ``B x 4 x 4`` (x, y, sigma, ori), ``track``
``B x 4``. Network inputs are cut from the stored patches with :mod:`lift.training.crops`, the
inference geometry.

* ``desc``: P1/P2 cut at the ground-truth orientation (the stored keypoint's; with small random
  jitter of position, scale and angle, as the runtime's estimates have), HardNet loss
  (:func:`~lift.training.losses.hardest_negative_loss`, margin 1, anchor swap).
* ``ori``: P1/P2 input cut upright in a randomly rotated frame (full-circle rotation
  augmentation), orientation predicted, descriptor (frozen) cut at the predicted angle; loss =
  descriptor distance (LIFT), plus optionally ``angle_weight * (1 - cos(err))`` on the relative
  angle between the two views, whose ground truth is the difference of the stored orientations,
  and optionally ``equivariance_weight * chord(err)`` between the absolute angles predicted for
  the same patch seen in two random frames (exact rotation consistency, what rotated photos need).
* ``det``: detector scores on the stored patches resized as at inference; classification hinge
  over P1..P4 patch scores (soft maximum of the central score window) + pair loss: the
  descriptor distance of P1/P2 cut at their soft-argmax locations and predicted orientations
  (orientation net and descriptor frozen).
* ``joint``: the ``det`` classification loss + the descriptor HardNet loss on crops made by the
  detector + orientation chain, optimising detector and descriptor (orientation frozen, as in
  tf-lift where ori gets gradients from its own loss only).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..glue import soft_argmax, soft_max_score
from ..model import LIFTModel
from .crops import PatchGeometry, crop_patches, detector_input, score_offsets
from .losses import (angle_difference, classification_loss, descriptor_pair_distance,
                     hardest_negative_loss, orientation_loss)

__all__ = ["Stage", "DescriptorStage", "OrientationStage", "DetectorStage", "JointStage",
           "STAGES", "make_stage"]


def _uniform(gen: Optional[torch.Generator], n: int, low: float, high: float) -> torch.Tensor:
    return torch.rand(n, generator=gen) * (high - low) + low


class Stage(nn.Module):
    """Base class: holds the model and the stored-patch geometry.

    Args:
        model: the networks. geom: geometry of the stored patches.
        jitter_xy: position jitter of descriptor crops, +- this many sigma (uniform).
        jitter_scale: scale jitter, sigma multiplied by 2^U(+-jitter_scale).
        jitter_ori: angle jitter, +- radians.
        margin: descriptor triplet margin.
        det_crop: half-width (cells) of the central detector window used for the patch score
            and soft-argmax; cells are ~1 sigma for the shipped detector.
        beta: soft-argmax / soft-max strength (LIFT: 10).
        angle_weight: weight of the supervised relative-angle term of the ``ori`` stage.
        equivariance_weight: weight of the ``ori`` stage's rotation-equivariance term: each
            patch seen in a second random frame must get the same absolute angle.
        ori_jitter_xy, ori_jitter_scale: ``ori`` stage: every orientation input is cut at a
            keypoint shifted by +- ``ori_jitter_xy`` sigma per axis and with sigma multiplied by
            2^U(+-``ori_jitter_scale``), independently per view and frame (0: the exact stored
            keypoint). Re-detected keypoints move by a median 0.39 sigma (SIFT on the rotated
            photos of ``sacre_coeur/mapping_rot``); without this the network's angle follows
            such shifts.
        quarter_weight: ``ori`` stage: weight of the quarter-turn term: the same crop (same
            keypoint noise) seen in its frame turned by a random multiple of 90 degrees must get
            the angle turned by exactly that (chord distance). Those crops hold the same pixel
            values, rotated: the term trains exact equivariance where the pixel grid maps onto
            itself, as SIFT's histogram has.
        pair_weight, class_weight: detector loss weights.
        rot90: det/joint: turn every patch by a random multiple of 90 degrees (the detector is
            a plain convolution, not rotation invariant by construction).
        scale_weight: weight of the detector's scale-selection term (:meth:`Stage.scale_loss`):
            LIFT trains the detector at the keypoint's own scale only, which leaves the
            runtime's arg-max over scales unconstrained; this hinge makes the response at the
            keypoint peak at its (SIFT, hence covariant) scale.
        loc_weight, loc_beta: ``det`` stage: weight of the localisation-covariance term
            (:meth:`Stage.loc_loss`) and the soft-argmax strength it uses (sharper than
            ``beta``: it stands for the runtime's arg-max). An addition to LIFT, whose pair loss
            constrains the location only through the descriptor distance.
    """

    name = "base"
    trains: Tuple[str, ...] = ()

    def __init__(self, model: LIFTModel, geom: PatchGeometry, jitter_xy: float = 0.15,
                 jitter_scale: float = 0.1, jitter_ori: float = 0.1, margin: float = 1.0,
                 det_crop: int = 3, beta: float = 10.0, angle_weight: float = 0.5,
                 pair_weight: float = 1.0, class_weight: float = 1.0,
                 equivariance_weight: float = 0.0, scale_weight: float = 0.0,
                 rot90: bool = False, loc_weight: float = 0.0, loc_beta: float = 30.0,
                 ori_jitter_xy: float = 0.0, ori_jitter_scale: float = 0.0,
                 quarter_weight: float = 0.0):
        super().__init__()
        self.model, self.geom = model, geom
        self.jitter_xy, self.jitter_scale, self.jitter_ori = jitter_xy, jitter_scale, jitter_ori
        self.margin, self.det_crop, self.beta = margin, det_crop, beta
        self.angle_weight, self.equivariance_weight = angle_weight, equivariance_weight
        self.pair_weight, self.class_weight = pair_weight, class_weight
        self.scale_weight, self.rot90 = scale_weight, bool(rot90)
        self.loc_weight, self.loc_beta = float(loc_weight), float(loc_beta)
        self.ori_jitter_xy, self.ori_jitter_scale = float(ori_jitter_xy), float(ori_jitter_scale)
        if self.ori_jitter_xy < 0 or self.ori_jitter_scale < 0:
            raise ValueError("ori_jitter_xy and ori_jitter_scale must be >= 0")
        self.quarter_weight = float(quarter_weight)
        for net in ("detector", "orientation", "descriptor"):
            getattr(model, net).requires_grad_(net in self.trains)
        self.train()  # frozen networks (and their batch-norm statistics) stay in eval mode

    def trainable(self) -> List[nn.Parameter]:
        return [p for n in self.trains for p in getattr(self.model, n).parameters()]

    def train(self, mode: bool = True):
        """Only the trained networks switch to train mode; frozen ones stay in eval mode."""
        super().train(mode)
        for net in ("detector", "orientation", "descriptor"):
            getattr(self.model, net).train(mode and net in self.trains)
        return self

    # ------------------------------------------------------------------ building blocks
    def _pairs(self, batch) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """P1 and P2 stacked as ``2B x 1 x S x S`` (P1 rows first), their oris ``2B`` and the
        track labels ``B``."""
        p = batch["patches"]
        x = torch.cat([p[:, 0], p[:, 1]])
        ori = torch.cat([batch["keypoints"][:, 0, 3], batch["keypoints"][:, 1, 3]])
        return x, ori, batch["track"][:, 0]

    def _shift_and_scale(self, n: int, gen, xy: float, scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
        """Keypoint offsets ``n x 2`` (stored-patch pixels, U(+-``xy``) sigma per axis) and
        sigma multipliers ``n`` (2^U(+-``scale``)), drawn in that order."""
        off = _uniform(gen, 2 * n, -xy, xy).reshape(n, 2) * self.geom.sigma
        return off, 2.0 ** _uniform(gen, n, -scale, scale)

    def _jitter(self, n: int, gen) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        off, scl = self._shift_and_scale(n, gen, self.jitter_xy, self.jitter_scale)
        rot = _uniform(gen, n, -self.jitter_ori, self.jitter_ori)
        return off, scl, rot

    def pyramid(self, x: torch.Tensor):
        """Pyramid of stored patches deep enough for this model's orientation/descriptor inputs
        (scale jitter included)."""
        size = min(self.model.orientation.input_size, self.model.descriptor.input_size)
        return self.geom.pyramid(x, size, 2.0 ** max(self.jitter_scale, self.ori_jitter_scale, 0.0) * 1.01)

    def describe(self, pyr, offsets=None, oris=None) -> torch.Tensor:
        net = self.model.descriptor
        return net(crop_patches(pyr, self.geom, net.input_size, offsets, oris))

    def orient(self, pyr, offsets=None, frame: Optional[torch.Tensor] = None,
               scales: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predicted orientation (radians, stored-patch frame) of the keypoint at ``offsets``
        (and sigma multiplier ``scales``); the network sees the crop in the frame rotated by
        ``frame`` (augmentation)."""
        net = self.model.orientation
        cs = net(crop_patches(pyr, self.geom, net.input_size, offsets, frame, scales))
        ang = torch.atan2(cs[:, 1], cs[:, 0])
        return ang if frame is None else ang + frame

    def detect(self, patches: torch.Tensor, loc_beta: Optional[float] = None):
        """``(scores N, offsets N x 2, sharp offsets N x 2 or None)`` of ``N x 1 x S x S`` stored
        patches: the soft-max patch score, the soft-argmax offset (stored-patch pixels from the
        centre) at the stage's beta, and with ``loc_beta`` the soft-argmax offset at that
        (sharper) strength (``None`` without)."""
        det = self.model.detector
        inp = detector_input(patches, self.geom, det.px_per_sigma)
        smap = det(inp)[:, 0]
        sl, origin, cell = score_offsets(smap.shape[-1], inp.shape[-1], det.border, self.geom,
                                         self.det_crop)
        window = smap[:, sl, sl]
        score = soft_max_score(window, self.beta)
        xy = soft_argmax(window, self.beta)
        off = origin + xy * cell - self.geom.centre
        if loc_beta is None:
            return score, off, None
        return score, off, origin + soft_argmax(window, loc_beta) * cell - self.geom.centre

    def scale_loss(self, patches: torch.Tensor,
                   mults: Tuple[float, ...] = (2 ** -0.5, 2 ** -0.25, 2 ** 0.25, 2 ** 0.5)
                   ) -> torch.Tensor:
        """Scale selection: the detector response at the keypoint (the patch centre) for the
        keypoint's own sigma must beat the response for sigma * m by ``2 |log2 m|`` (hinge),
        for each multiplier m. The detector sees the patch resized exactly as the runtime
        resizes the image for the scale sigma * m. ``patches``: ``N x 1 x S x S`` keypoint
        patches. Returns the mean hinge."""
        det = self.model.detector

        def centre_response(m: float) -> torch.Tensor:
            f = det.px_per_sigma / (self.geom.sigma * m)
            side = int(round(self.geom.size * f))
            inp = F.interpolate(patches, size=(side, side), mode="bilinear", align_corners=False,
                                antialias=f < 1)
            smap = det(inp)  # N x 1 x h x h, cell j = input pixel j + border
            h = smap.shape[-1]
            pos = (self.geom.centre + 0.5) * side / self.geom.size - 0.5 - det.border
            g = torch.full((len(patches), 1, 1, 2), (2 * pos + 1) / h - 1, dtype=smap.dtype)
            return F.grid_sample(smap, g, mode="bilinear", align_corners=False)[:, 0, 0, 0]

        own = centre_response(1.0)
        terms = [F.relu(2 * abs(math.log2(m)) - own + centre_response(m)) for m in mults]
        return torch.stack(terms).mean()

    def _finish(self, loss: torch.Tensor, out: Dict[str, torch.Tensor],
                keypoint_patches: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Add the scale-selection term (when ``scale_weight`` > 0) and the total ``loss``."""
        if self.scale_weight > 0:
            scale = self.scale_loss(keypoint_patches)
            loss = loss + self.scale_weight * scale
            out["scale"] = scale.detach()
        out["loss"] = loss
        return out

    def classify(self, batch, gen: Optional[torch.Generator] = None):
        """Detector on all K patches of the batch. Returns ``x`` (``K B x 1 x S x S``, rows P1
        of every item, then P2, P3, P4), ``B``, patch scores and soft-argmax offsets (``K B``),
        the keypoint mask (P4 rows False), the classification loss and, when ``loc_weight`` > 0,
        the sharp soft-argmax offsets of :meth:`loc_loss` (else None). With ``rot90`` each
        patch is first turned by a random multiple of 90 degrees (drawn from ``gen``)."""
        p = batch["patches"]
        b, k = p.shape[:2]
        x = p.transpose(0, 1).reshape(b * k, *p.shape[2:])
        if self.rot90 and self.loc_weight > 0:
            raise ValueError("the localisation term compares P1 and P2 in their stored frames; "
                             "it cannot be combined with rot90")
        if self.rot90 and gen is not None:  # exact quarter-turns about the patch centre
            turns = torch.randint(0, 4, (len(x),), generator=gen)
            x = x.clone()
            for t in range(1, 4):
                sel = turns == t
                x[sel] = torch.rot90(x[sel], t, dims=(-2, -1))
        score, off, loc_off = self.detect(x, self.loc_beta if self.loc_weight > 0 else None)
        is_kp = torch.ones(b * k, dtype=torch.bool)
        if k > 3:
            is_kp[3 * b:] = False
        return x, b, score, off, is_kp, classification_loss(score, is_kp), loc_off

    def loc_loss(self, batch, loc_off: torch.Tensor) -> torch.Tensor:
        """Localisation covariance: the sharp soft-argmax offset of P1, turned by the relative
        orientation of the two views (exact for synthetic warps, SIFT's estimate for SfM
        tracks), must land on P2's; Charbonnier of the distance in sigma units. ``loc_off``:
        the offsets :meth:`classify` returns (rows P1 of every item, then P2, ...)."""
        b = batch["keypoints"].shape[0]
        o1, o2 = loc_off[:b], loc_off[b:2 * b]
        d = batch["keypoints"][:, 1, 3] - batch["keypoints"][:, 0, 3]
        c, s = torch.cos(d).to(o1), torch.sin(d).to(o1)
        r = torch.stack([c * o1[:, 0] - s * o1[:, 1], s * o1[:, 0] + c * o1[:, 1]], 1)
        e = (r - o2).square().sum(1) / self.geom.sigma ** 2
        return (e + 1e-2).sqrt().mean()

    def chain(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Full inference chain on ``N x 1 x S x S``: detector location -> orientation ->
        descriptor. Returns ``score``, ``offset``, ``ori``, ``desc``."""
        score, off, _ = self.detect(x)
        pyr = self.pyramid(x)
        ori = self.orient(pyr, off)
        return {"score": score, "offset": off, "ori": ori, "desc": self.describe(pyr, off, ori)}

    def forward(self, batch, gen: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


class DescriptorStage(Stage):
    name, trains = "desc", ("descriptor",)

    def forward(self, batch, gen=None):
        x, ori, labels = self._pairs(batch)
        off, scl, rot = self._jitter(len(x), gen)
        pyr = self.pyramid(x)
        net = self.model.descriptor
        d = net(crop_patches(pyr, self.geom, net.input_size, off, ori + rot, scl))
        b = len(labels)
        return hardest_negative_loss(d[:b], d[b:], self.margin, labels=labels)


class OrientationStage(Stage):
    name, trains = "ori", ("orientation",)

    def _detection_noise(self, n: int, gen) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Offsets ``n x 2`` and sigma multipliers ``n`` of the ``ori_jitter_*`` options
        (:meth:`_shift_and_scale`); ``(None, None)``, drawing nothing, where both are 0."""
        if self.ori_jitter_xy == 0 and self.ori_jitter_scale == 0:
            return None, None
        return self._shift_and_scale(n, gen, self.ori_jitter_xy, self.ori_jitter_scale)

    def forward(self, batch, gen=None):
        x, gt, _ = self._pairs(batch)
        b = len(x) // 2
        frame = _uniform(gen, len(x), -math.pi, math.pi)
        pyr = self.pyramid(x)
        off, scl = self._detection_noise(len(x), gen)
        theta = self.orient(pyr, off, frame, scl)
        d = self.describe(pyr, None, theta)
        out = {"desc_dist": orientation_loss(d[:b], d[b:])}
        err = angle_difference(theta[b:] - theta[:b], gt[b:] - gt[:b])
        out["angle"] = (1.0 - torch.cos(err)).mean()
        out["loss"] = out["desc_dist"] + self.angle_weight * out["angle"]
        if self.equivariance_weight > 0:
            # the same patches seen in other random frames must get the same absolute angle;
            # chord distance 2|sin(e/2)|: a gradient of constant size down to small errors
            frame2 = _uniform(gen, len(x), -math.pi, math.pi)
            off2, scl2 = self._detection_noise(len(x), gen)
            other = self.orient(pyr, off2, frame2, scl2)
            eq = 2.0 * torch.sin(angle_difference(other, theta) / 2).abs()
            out["equivariance"] = eq.mean()
            out["loss"] = out["loss"] + self.equivariance_weight * out["equivariance"]
        if self.quarter_weight > 0:
            k = torch.randint(1, 4, (len(x),), generator=gen).to(frame)
            turned = self.orient(pyr, off, frame + k * (math.pi / 2), scl)
            q = 2.0 * torch.sin(angle_difference(turned, theta) / 2).abs()
            out["quarter"] = q.mean()
            out["loss"] = out["loss"] + self.quarter_weight * out["quarter"]
        out["err_deg"] = err.detach().abs().median() * 180.0 / math.pi
        out["desc_dist"] = out["desc_dist"].detach()
        return out


class DetectorStage(Stage):
    name, trains = "det", ("detector",)

    def forward(self, batch, gen=None):
        x, b, score, off, is_kp, cls, loc_off = self.classify(batch, gen)
        k = len(x) // b
        pairs = x[:2 * b]
        pyr = self.pyramid(pairs)
        ori = self.orient(pyr, off[:2 * b])
        d = self.describe(pyr, off[:2 * b], ori)
        pair = descriptor_pair_distance(d[:b], d[b:]).mean()
        loss = self.class_weight * cls + self.pair_weight * pair
        out = {}
        if self.loc_weight > 0:
            loc = self.loc_loss(batch, loc_off)
            loss = loss + self.loc_weight * loc
            out["loc"] = loc.detach()
        out.update({"cls": cls.detach(), "pair": pair.detach(),
               "score_kp": score[is_kp].mean().detach(),
               "score_neg": score[~is_kp].mean().detach() if k > 3 else score.new_zeros(())})
        return self._finish(loss, out, x[is_kp])


class JointStage(Stage):
    name, trains = "joint", ("detector", "descriptor")

    def forward(self, batch, gen=None):
        x, b, score, off, is_kp, cls, _ = self.classify(batch, gen)
        pairs = x[:2 * b]
        pyr = self.pyramid(pairs)
        ori = self.orient(pyr, off[:2 * b]).detach()
        d = self.describe(pyr, off[:2 * b], ori)
        desc = hardest_negative_loss(d[:b], d[b:], self.margin, labels=batch["track"][:, 0])
        loss = self.class_weight * cls + desc["loss"]
        out = {"cls": cls.detach(), "desc": desc["loss"].detach(),
               "pos": desc["pos"], "neg": desc["neg"]}
        return self._finish(loss, out, x[is_kp])


STAGES = {s.name: s for s in (DescriptorStage, OrientationStage, DetectorStage, JointStage)}


def make_stage(name: str, model: LIFTModel, geom: PatchGeometry, **options) -> Stage:
    """Stage by name (``desc``, ``ori``, ``det``, ``joint``)."""
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; choose one of {sorted(STAGES)}")
    return STAGES[name](model, geom, **options)
