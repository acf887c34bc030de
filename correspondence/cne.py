"""Learned outlier filter for two-view correspondences (CNe, Yi, Trulls et al., CVPR 2018).

The network classifies each putative match of an image pair as inlier or outlier from the
coordinates of *all* matches of that pair: a shared per-correspondence MLP (1 x 1 layers,
128 channels) with 12 residual blocks, each layer followed by **context normalisation**
(mean / std over the correspondences of one pair), batch norm (no affine) and ReLU. One logit
per correspondence; weights ``w = relu(tanh(logit))`` (0 for logit <= 0). The network is
permutation-equivariant and takes any number ``N`` of matches; padded batches carry a mask and
padded entries never enter a statistic.

Input per correspondence: ``(x0, y0, x1, y1)`` in **normalised coordinates**:

* with intrinsics ``K0``, ``K1``: ``K^-1 (x, y, 1)`` (normalised camera coordinates), the
  training setting;
* without, from the image sizes ``(W, H)``: pseudo-intrinsics with focal ``1.2 max(W, H)``
  (COLMAP's default prior) and the principal point at the image centre ``((W-1)/2, (H-1)/2)``;
  about a third of the training pairs were normalised this way, so the network is used to the
  resulting (uncalibrated, F-like) geometry. Without K and without sizes: ``ValueError``.
* optionally a fifth channel: the descriptor distance ratio (nearest / second nearest, in
  [0, 1]); the shipped weights are trained without it unless their ``config`` says otherwise.

Pixel convention: keypoints ``(x, y)``, top-left pixel centre at ``(0, 0)``.

Public API:

* :func:`filter_matches` -> ``(weights, inlier_mask)``;
* :func:`relative_pose_cne` -> ``(R, t, inlier_mask)`` like
  :func:`correspondence.ransac.estimate_relative_pose` (``method="cne"``: weighted eight-point
  on the network weights; ``"cne+ransac"``: our RANSAC on the matches the network keeps);
* :class:`CNeNet`, :func:`load_cne`, :func:`weighted_eight_point` (differentiable).

Inference (:meth:`CNeNet.infer`, used by :func:`filter_matches`) takes a fast path: eval-mode
statistics, no autograd, the context norm + batch norm of each layer as one group norm over a
points-major ``B x N x C`` layout (the conv biases cancel in the context norm and are dropped),
unpadded batches in one pass and the pairs of a padded batch one at a time on their real
points (padded entries cost nothing), and with ``precision="auto"``
bfloat16 matrix products on CPUs with native bfloat16 (float32 statistics and logits). The
training forward (:meth:`CNeNet.forward`) is the float32 reference and is unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from .epipolar import essential_fit, recover_pose
from .geometry import ArrayLike, apply_similarity, as_points, batch_correspondences, epipolar_rows, \
    sampson_error, skew, weighted_nullvector

__all__ = ["CNeNet", "context_norm", "load_cne", "default_weights_path", "normalize_keypoints",
           "pseudo_intrinsics", "weighted_eight_point", "filter_matches", "relative_pose_cne",
           "inference_dtype"]

PathLike = Union[str, Path]
CN_EPS = 1e-3  # variance epsilon of the context normalisation (as the reference code)
PSEUDO_FOCAL = 1.2  # focal of the pseudo-intrinsics, in units of max(W, H)
PRECISIONS = ("auto", "float32", "bfloat16")


def default_weights_path() -> Path:
    """Path of the shipped weights ``correspondence/weights/cne_default.pt``."""
    return Path(__file__).resolve().parent / "weights" / "cne_default.pt"


# ------------------------------------------------------------------ normalisation layers
def _masked_moments(x: torch.Tensor, mask: torch.Tensor, dims) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of ``x`` over ``dims`` counting only ``mask`` entries."""
    m = mask.to(x.dtype)
    n = m.sum(dims, keepdim=True).clamp_min(1)
    mean = (x * m).sum(dims, keepdim=True) / n
    var = ((x - mean).square() * m).sum(dims, keepdim=True) / n
    return mean, var


def context_norm(x: torch.Tensor, mask: Optional[torch.Tensor] = None, eps: float = CN_EPS) -> torch.Tensor:
    """Context normalisation: per pair and channel, zero mean and unit variance over the points.

    Args:
        x: ``B x C x N`` features. mask: optional ``B x N`` bool (True = real correspondence);
            padded entries take no part in the statistics and come out as 0.
        eps: variance epsilon.

    Returns:
        ``B x C x N``.
    """
    if mask is None:
        mean, var = x.mean(2, keepdim=True), x.var(2, unbiased=False, keepdim=True)
        return (x - mean) / torch.sqrt(var + eps)
    m = mask[:, None, :]
    mean, var = _masked_moments(x, m, 2)
    return torch.where(m, (x - mean) / torch.sqrt(var + eps), torch.zeros_like(x))


class ContextBatchNorm(nn.Module):
    """Context normalisation followed by batch norm, both without affine, in one pass.

    Context norm (per pair ``b`` and channel ``c``, over the ``n_b`` real points):
    ``y = (x - m_bc) / sqrt(v_bc + 1e-3)``. Batch norm of ``y`` over the batch and the points:
    its mean is exactly 0 and its variance exactly ``sum_b n_b v_bc / (v_bc + 1e-3) / sum_b n_b``,
    so both are computed from the context statistics (no second pass), and the output is one
    fused ``x * scale + shift``. Identical (values and gradients) to the two layers in sequence.
    Running statistics as ``nn.BatchNorm1d`` (momentum 0.1, unbiased running variance); padded
    entries (``mask`` False) take no part in any statistic.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1, cn_eps: float = CN_EPS):
        super().__init__()
        self.eps, self.momentum, self.cn_eps = eps, momentum, cn_eps
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # two-pass moments (torch.var_mean is ~10x slower on CPU for this layout)
        if mask is None:
            mean = x.mean(2, keepdim=True)
            d = x - mean
            var = (d * d).mean(2, keepdim=True)
            n = torch.full((x.shape[0], 1, 1), float(x.shape[2]), dtype=x.dtype, device=x.device)
        else:
            m = mask[:, None, :].to(x.dtype)
            n = m.sum(2, keepdim=True)
            mean = (x * m).sum(2, keepdim=True) / n.clamp_min(1)
            d = x - mean
            var = (d * d * m).sum(2, keepdim=True) / n.clamp_min(1)
        s = torch.rsqrt(var + self.cn_eps)  # B x C x 1
        if self.training:  # batch statistics of the context-normalised values: mean 0, variance:
            total = n.sum().clamp_min(1)
            bn_var = ((var * s * s) * n).sum((0, 2)) / total
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum)
                unbiased = bn_var * total / (total - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
            return d * (s * torch.rsqrt(bn_var + self.eps)[None, :, None])
        b = torch.rsqrt(self.running_var.to(x.dtype) + self.eps)[None, :, None]
        return d * (s * b) - self.running_mean.to(x.dtype)[None, :, None] * b


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A kernel-1 ``Conv1d`` as one batched matrix product (CPU conv1d takes a slow im2col path)."""
    return torch.matmul(conv.weight[:, :, 0], x).add_(conv.bias[:, None])


class _Layer(nn.Module):
    """1 x 1 layer -> context norm -> batch norm -> ReLU (outputs at padded entries are
    finite but meaningless; no statistic sees them)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 1)
        self.norm = ContextBatchNorm(c_out)

    def forward(self, x, mask):
        return torch.relu(self.norm(_pointwise(self.conv, x), mask))


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.l1 = _Layer(channels, channels)
        self.l2 = _Layer(channels, channels)

    def forward(self, x, mask):
        return x + self.l2(self.l1(x, mask), mask)


class CNeNet(nn.Module):
    """Context-normalisation network: ``B x N x D`` correspondences -> ``B x N`` logits.

    Args:
        in_dim: 4 (coordinates) or 5 (coordinates + descriptor ratio).
        channels: width of the 1 x 1 layers (128). blocks: residual blocks (12).
    """

    def __init__(self, in_dim: int = 4, channels: int = 128, blocks: int = 12):
        super().__init__()
        self.config = {"in_dim": int(in_dim), "channels": int(channels), "blocks": int(blocks)}
        self.inp = nn.Conv1d(in_dim, channels, 1)
        self.blocks = nn.ModuleList([_ResBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv1d(channels, 1, 1)
        for mod in self.modules():  # truncated normal, std sqrt(2 / fan_in), zero bias
            if isinstance(mod, nn.Conv1d):
                nn.init.trunc_normal_(mod.weight, std=(2.0 / mod.in_channels) ** 0.5)
                nn.init.zeros_(mod.bias)

    @property
    def in_dim(self) -> int:
        return self.config["in_dim"]

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``B x N x in_dim`` (normalised coordinates, optional ratio); ``mask``: ``B x N``
        bool or None. Returns ``B x N`` logits (``-inf`` at padded entries)."""
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"CNeNet expects B x N x {self.in_dim} input, got {tuple(x.shape)}")
        if mask is not None and bool(mask.all()):
            mask_in, mask = mask, None  # fast path: nothing padded
        else:
            mask_in = mask
        h = _pointwise(self.inp, x.transpose(1, 2))
        for blk in self.blocks:
            h = blk(h, mask)
        logits = _pointwise(self.out, h)[:, 0]
        if mask_in is not None:
            logits = logits.masked_fill(~mask_in, float("-inf"))
        return logits

    @torch.no_grad()
    def infer(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, precision: str = "auto") -> torch.Tensor:
        """Fast inference: the logits of :meth:`forward` in eval mode (running batch-norm
        statistics, whatever ``self.training`` says), without autograd.

        Unpadded batches run in one pass; in a padded batch each pair runs alone on its real
        correspondences (eval-mode pairs are independent, so this equals the masked batch),
        points-major, with context norm + batch norm + ReLU as one
        group norm (one group per channel, the batch norm as its affine) and an in-place ReLU.

        Args:
            x, mask: as :meth:`forward`.
            precision: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (:func:`inference_dtype`):
                the dtype of the residual stream and of the 1 x 1 layers of the blocks. The input
                layer and the first block layer (composed, straight from the coordinates) and the
                output layer stay in the parameter dtype (float32), and the group norm
                accumulates its statistics in float32. ``"float32"`` equals :meth:`forward` up
                to float rounding (1e-5); for bfloat16 against float32 see :func:`filter_matches`.

        Returns:
            ``B x N`` logits in float32 (the parameter dtype with ``"float32"``), ``-inf`` at
            padded entries.
        """
        if x.ndim != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"CNeNet expects B x N x {self.in_dim} input, got {tuple(x.shape)}")
        p = self.inp.weight
        pack = self._inference_pack(inference_dtype(precision, p.device))
        x = x.to(p.dtype)
        B, N, _ = x.shape
        if mask is not None and tuple(mask.shape) != (B, N):
            raise ValueError(f"mask must be B x N = {(B, N)}, got {tuple(mask.shape)}")
        if mask is None or bool(mask.all()):  # nothing padded: all pairs in one pass
            return _infer_pairs(pack, x) if B and N else x.new_zeros(B, N)
        mask = mask.to(x.device)
        out = x.new_full((B, N), float("-inf"))
        for b in range(B):  # padded pairs: each on its real points (padding costs nothing)
            idx = torch.nonzero(mask[b]).squeeze(1)
            if idx.numel():
                out[b, idx] = _infer_pairs(pack, x[b, idx][None])[0]
        return out

    def _inference_pack(self, dtype: torch.dtype) -> "_Pack":
        """The layers folded for :meth:`infer`, cached until a parameter or buffer changes
        (data pointer or in-place version counter: ``.to()``, ``load_state_dict``, an
        optimiser step)."""
        mods = self.__dict__.get("_state_modules")
        if mods is None:
            mods = self.__dict__["_state_modules"] = [m for m in self.modules() if m._parameters or m._buffers]
        key = (dtype,) + tuple((t.data_ptr(), t._version) for m in mods for d in (m._parameters, m._buffers)
                               for t in d.values() if t is not None)
        cache = self.__dict__.setdefault("_packs", {})
        if key not in cache:
            cache.clear()
            cache[key] = _Pack(self, dtype)
        return cache[key]


def inference_dtype(precision: str = "auto", device=None) -> torch.dtype:
    """The dtype of :meth:`CNeNet.infer`'s block layers: ``"auto"`` picks bfloat16 on CPUs with
    native bfloat16 arithmetic (AVX512-BF16 / AMX) and float32 elsewhere (other CPUs, GPUs)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")
    if precision == "auto":
        dev = torch.device(device if device is not None else "cpu")
        native = dev.type == "cpu" and bool(getattr(torch.cpu, "_is_avx512_bf16_supported", bool)())
        precision = "bfloat16" if native else "float32"
    return torch.bfloat16 if precision == "bfloat16" else torch.float32


class _Pack:
    """:class:`CNeNet` folded for eval-mode inference (points-major, ``y = x @ W^T``).

    Eval layer: ``relu(((z - m) / sqrt(v + 1e-3)) * a - mu * a)`` with ``z = W x + b``, the
    context mean ``m`` and variance ``v`` over the pair's points, ``a = 1 / sqrt(running_var +
    eps)`` and ``mu = running_mean``: the bias ``b`` cancels in ``z - m``, and the rest is a
    group norm with one group per channel, weight ``a`` and bias ``-mu a``. The first block's
    first layer is composed with the input layer (``W1 W_in``, 4 inputs) and stays float32.
    """

    def __init__(self, net: CNeNet, dtype: torch.dtype):
        with torch.no_grad():
            pdt = net.inp.weight.dtype
            self.dtype = pdt if dtype == torch.float32 else dtype
            w_in, b_in = net.inp.weight[:, :, 0], net.inp.bias
            self.inp = (b_in.clone(), w_in.t().contiguous())
            self.layers = []  # (W^T, group-norm weight, group-norm bias, cn eps) per layer
            for i, blk in enumerate(net.blocks):
                for j, layer in enumerate((blk.l1, blk.l2)):
                    w = layer.conv.weight[:, :, 0]
                    if i == 0 and j == 0:
                        wt = (w @ w_in).t().contiguous()  # straight from the coordinates
                    else:
                        wt = w.t().contiguous().to(self.dtype)
                    norm = layer.norm
                    a = torch.rsqrt(norm.running_var.to(pdt) + norm.eps)
                    adt = wt.dtype  # CPU group norm takes float32 affine parameters with bfloat16 input
                    if adt == torch.bfloat16 and w.device.type == "cpu":
                        adt = torch.float32
                    self.layers.append((wt, a.to(adt), (-norm.running_mean.to(pdt) * a).to(adt), norm.cn_eps))
            self.out = (net.out.bias.clone(), net.out.weight[:, :, 0].t().contiguous())


def _channels_last(z: torch.Tensor) -> torch.Tensor:
    """``B x n x C`` (contiguous) as a ``B x C x n x 1`` channels-last view (no copy)."""
    return z.unsqueeze(2).permute(0, 3, 1, 2)


def _norm_relu(z4: torch.Tensor, layer) -> torch.Tensor:
    """Pre-activations (:func:`_channels_last` view) -> ``B x n x C`` ``relu(group_norm)``
    (group norm statistics are per sample, i.e. per pair: the context norm)."""
    y = torch.group_norm(z4, z4.shape[1], layer[1], layer[2], layer[3], False)
    y = y.permute(0, 2, 3, 1).reshape(z4.shape[0], z4.shape[2], z4.shape[1])  # a view
    if y.dtype == torch.bfloat16:  # ReLU on the bit patterns (sign bit set = negative int16):
        y.view(torch.int16).clamp_min_(0)  # 4x faster than a bfloat16 relu_ on CPU
        return y
    return y.relu_()


def _infer_pairs(pack: _Pack, x: torch.Tensor) -> torch.Tensor:
    """``B x n x in_dim`` correspondences of ``B`` unpadded pairs -> ``B x n`` logits (all NaN
    for a pair with a non-finite input, as :meth:`CNeNet.forward`, whose context statistics then
    are NaN; the other pairs are unaffected)."""
    x = x.contiguous()
    bad = ~torch.isfinite(x).all(2).all(1)
    dt = pack.dtype
    h = torch.matmul(x, pack.inp[1]).add_(pack.inp[0]).to(dt)  # residual stream
    z = torch.empty_like(h)  # pre-activations, reused by every layer
    z4 = _channels_last(z)
    for k in range(0, len(pack.layers), 2):
        l1, l2 = pack.layers[k], pack.layers[k + 1]
        if k == 0:  # float32, straight from the coordinates
            y = _norm_relu(_channels_last(torch.matmul(x, l1[0])), l1).to(dt)
        else:
            torch.matmul(h, l1[0], out=z)
            y = _norm_relu(z4, l1)
        torch.matmul(y, l2[0], out=z)
        h.add_(_norm_relu(z4, l2))
    out = torch.matmul(h.to(x.dtype), pack.out[1]).add_(pack.out[0])[..., 0]
    return out.masked_fill_(bad[:, None], float("nan")) if bool(bad.any()) else out


def logits_to_weights(logits: torch.Tensor) -> torch.Tensor:
    """``w = relu(tanh(logit))`` in [0, 1); padded (``-inf``) entries get 0."""
    return torch.relu(torch.tanh(logits))


# ------------------------------------------------------------------ weights
_CACHE = {}


def load_cne(path: Optional[PathLike] = None, device=None) -> CNeNet:
    """Load a :class:`CNeNet` in eval mode from a ``.pt`` file written by ``lift-train-cne``
    (``{"config": ..., "state_dict": ...}``, read with ``weights_only=True``).

    Args: path: default :func:`default_weights_path`. device: where to put it.

    Raises:
        FileNotFoundError: no such file. ValueError: the file is not a CNe weight file.
    """
    path = Path(path) if path is not None else default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"CNe weights not found at {path} (train them with lift-train-cne)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read CNe weights {path}: {type(e).__name__}: {e}") from e
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise ValueError(f"{path} is not a CNe weight file (expected keys 'config' and 'state_dict')")
    cfg = dict(blob["config"])
    net = CNeNet(**{k: cfg[k] for k in ("in_dim", "channels", "blocks") if k in cfg})
    try:
        net.load_state_dict(blob["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the CNe network: {e}") from e
    return net.eval().to(device)


def _default_model(device) -> CNeNet:
    key = (str(default_weights_path()), str(device))
    if key not in _CACHE:
        _CACHE[key] = load_cne(None, device)
    return _CACHE[key]


# ------------------------------------------------------------------ inputs
def pseudo_intrinsics(image_size: Sequence[float], dtype=torch.float64, device=None) -> torch.Tensor:
    """``3 x 3`` pseudo-intrinsics of an image of size ``(W, H)``: focal ``1.2 max(W, H)``,
    principal point ``((W - 1) / 2, (H - 1) / 2)`` (centre, top-left pixel centre at 0)."""
    W, H = (float(v) for v in image_size)
    if not (W > 0 and H > 0):
        raise ValueError(f"image_size must be (W, H) > 0, got {tuple(image_size)}")
    f = PSEUDO_FOCAL * max(W, H)
    return torch.tensor([[f, 0, (W - 1) / 2], [0, f, (H - 1) / 2], [0, 0, 1]], dtype=dtype, device=device)


def _normaliser(K, image_size, name: str, B: int, like: torch.Tensor) -> torch.Tensor:
    """``B x 3 x 3`` matrix whose inverse maps pixels to the network's input coordinates."""
    if K is not None:
        from .ransac import _intrinsics  # lazy: ransac dispatches to this module

        return _intrinsics(K, name, B, like)
    if image_size is None:
        raise ValueError("give intrinsics K0, K1 or image sizes image_size0, image_size1 (W, H) "
                         "to normalise the coordinates")
    sz = np.asarray(image_size, np.float64)
    if sz.shape == (2,):
        sz = np.broadcast_to(sz, (B, 2))
    if sz.shape != (B, 2):
        raise ValueError(f"image size must be (W, H) or B x 2, got shape {sz.shape}")
    return torch.stack([pseudo_intrinsics(s, like.dtype, like.device) for s in sz])


def normalize_keypoints(kpts0: torch.Tensor, kpts1: torch.Tensor, K0=None, K1=None, image_size0=None,
                        image_size1=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """``B x N x 2`` pixels -> ``B x N x 2`` network coordinates ``K^-1 x`` (K or pseudo-K)."""
    B = kpts0.shape[0]
    if (K0 is None) != (K1 is None):
        raise ValueError("give both K0 and K1 (or neither)")
    N0 = _normaliser(K0, image_size0, "K0", B, kpts0)
    N1 = _normaliser(K1, image_size1, "K1", B, kpts1)
    return apply_similarity(torch.linalg.inv(N0), kpts0), apply_similarity(torch.linalg.inv(N1), kpts1)


def _prepare(kpts0, kpts1, K0, K1, image_size0, image_size1, ratio, mask, device):
    x0, x1, valid, _, batched = batch_correspondences(kpts0, kpts1, mask, None, device)
    c0, c1 = normalize_keypoints(x0, x1, K0, K1, image_size0, image_size1)
    feats = [c0, c1]
    if ratio is not None:
        r = as_points(ratio, "ratio", x0.device, x0.dtype)
        if not batched:
            r = r[None]
        if tuple(r.shape) != tuple(x0.shape[:2]):
            raise ValueError(f"ratio must have one value per match, shape {tuple(x0.shape[:2])} "
                             f"(batched) or ({x0.shape[1]},), got {tuple(r.shape)}")
        valid = valid & torch.isfinite(r)
        feats.append(torch.where(valid, r, torch.zeros_like(r))[..., None])
    return torch.cat(feats, -1), c0, c1, valid, batched


# ------------------------------------------------------------------ weighted eight-point
def weighted_eight_point(x0: torch.Tensor, x1: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Differentiable weighted eight-point: ``B x 9`` unit vector ``e`` (row-major ``3 x 3``,
    ``x1^T E x0 = 0``) minimising ``sum_i w_i (x1_i^T E x0_i)^2``: the eigenvector of the smallest
    eigenvalue of ``X^T W X`` (float64 ``eigh``). No rank-2 projection (as in the CNe loss).

    Args: x0, x1: ``B x N x 2`` normalised coordinates. weights: ``B x N`` (>= 0; 0 = ignored).
    The sign of ``e`` is arbitrary."""
    return weighted_nullvector(epipolar_rows(x0, x1), weights)


# ------------------------------------------------------------------ public API
def _run(model: CNeNet, feats: torch.Tensor, valid: torch.Tensor, precision: str) -> torch.Tensor:
    if feats.shape[1] == 0:
        return feats.new_zeros(feats.shape[:2])
    return model.infer(feats, valid, precision).to(feats.dtype)


def filter_matches(kpts0: ArrayLike, kpts1: ArrayLike, K0: Optional[ArrayLike] = None,
                   K1: Optional[ArrayLike] = None, image_size0=None, image_size1=None,
                   ratio: Optional[ArrayLike] = None, mask: Optional[ArrayLike] = None,
                   model: Optional[CNeNet] = None, weights_path: Optional[PathLike] = None, device=None,
                   return_logits: bool = False, precision: str = "auto"):
    """Learned inlier weights of putative matches (one image pair or a padded batch).

    Args:
        kpts0, kpts1: ``N x 2`` / ``B x N x 2`` matched keypoints in pixels (numpy or torch).
        K0, K1: ``3 x 3`` / ``B x 3 x 3`` intrinsics (preferred), or
        image_size0, image_size1: ``(W, H)`` (or ``B x 2``) to normalise without intrinsics.
        ratio: optional ``N`` / ``B x N`` descriptor distance ratios; only for a model trained with
            them (``in_dim == 5``).
        mask: optional ``N`` / ``B x N`` bool, False for padded entries.
        model: a :class:`CNeNet` (default: the shipped weights, or ``weights_path``).
        return_logits: also return the raw logits.
        precision: ``"float32"``, ``"bfloat16"`` or ``"auto"`` ["auto"]: the dtype the network's
            residual blocks run in (:meth:`CNeNet.infer`). ``"auto"`` picks bfloat16 on CPUs with
            native bfloat16 arithmetic (AVX512-BF16 / AMX: 1.6-2.5x faster than float32 there,
            N = 2000 on 2 threads) and float32 elsewhere. The coordinates enter in float32 and
            the statistics and logits are float32: against float32, the logits differ by 0.011
            (median; 0.05 at the 99th percentile) and ``inlier_mask`` agrees on 99.9 % of the
            matches (worst pair 99.55 %; synthetic N = 2000 scenes and the held-out Strecha
            pairs, shipped weights); poses of ``relative_pose_cne`` are unchanged within noise.

    Returns:
        ``(weights, inlier_mask)``: ``N`` / ``B x N`` weights ``relu(tanh(logit))`` in [0, 1) and
        bool masks ``weights > 0``. Padded, NaN or infinite matches get weight 0. numpy in ->
        numpy out. ``N = 0`` gives empty arrays.

    Raises:
        ValueError: mismatched shapes, missing normalisation, ratio given to a 4-input model (or
        missing for a 5-input one), bad weight file. FileNotFoundError: missing weight file.
    """
    as_numpy = isinstance(kpts0, np.ndarray) and isinstance(kpts1, np.ndarray)
    inference_dtype(precision)  # ValueError on an unknown precision, before any work
    if model is None:
        model = load_cne(weights_path, device) if weights_path is not None else _default_model(device)
    feats, _, _, valid, batched = _prepare(kpts0, kpts1, K0, K1, image_size0, image_size1, ratio, mask, device)
    if feats.shape[-1] != model.in_dim:
        raise ValueError(f"the model takes {model.in_dim} inputs per match "
                         f"({'with' if model.in_dim == 5 else 'without'} ratio), got {feats.shape[-1]}")
    dev = next(model.parameters()).device
    logits = _run(model, feats.to(dev), valid.to(dev), precision)
    logits = logits.to(feats.device).masked_fill(~valid, float("-inf"))
    w = logits_to_weights(logits)
    keep = w > 0
    out = [w, keep] + ([logits] if return_logits else [])
    if not batched:
        out = [o[0] for o in out]
    if as_numpy:
        out = [o.cpu().numpy() for o in out]
    return tuple(out)


IRLS_PX = (32.0, 16.0, 8.0, 4.0, 2.0, 2.0)  # Cauchy scales of the robust refits of method="cne"
MIN_KEEP = 16  # the pose solvers always get at least this many matches (the best logits)


def _two_hypotheses(k0, k1, K0, K1, keep, valid, w, kw, floor: float = 0.1):
    """``relative_pose_cne(second_hypothesis=True)``: one batched RANSAC over 2B problems (the
    kept matches sampled by weight; all valid matches sampled by weight + ``floor``), then per
    pair the pose with the higher MSAC score on all valid matches. ``B x N x 2`` float64 inputs."""
    from .ransac import _calibrate, _epipolar_msac, _intrinsics, estimate_relative_pose

    B = k0.shape[0]
    Ks = [_intrinsics(K, name, B, k0) for K, name in ((K0, "K0"), (K1, "K1"))]
    two = lambda x: torch.cat([x, x])  # noqa: E731
    R, t, inl = estimate_relative_pose(two(k0), two(k1), two(Ks[0]), two(Ks[1]), mask=torch.cat([keep, valid]),
                                       weights=torch.cat([w, w + floor]), **kw)
    thr = float(kw.get("threshold", 1.0))
    c0, c1, ok, _, _, s0, s1 = _calibrate(k0, k1, Ks[0], Ks[1], valid, None, None)
    R2, t2 = R.view(2, B, 3, 3).transpose(0, 1), t.view(2, B, 3).transpose(0, 1)  # B x 2 x ...
    good = torch.isfinite(R2).flatten(2).all(2) & torch.isfinite(t2).all(2)
    E = skew(torch.where(good[..., None], t2, torch.zeros_like(t2))) @ torch.where(
        good[..., None, None], R2, torch.eye(3, dtype=R2.dtype, device=R2.device).expand_as(R2))
    _, gain = _epipolar_msac(E, c0, c1, s0, s1, ok, thr)  # B x 2
    pick = gain.masked_fill(~good, -1.0).argmax(1)  # B (ties: the kept-matches fit)
    ar = torch.arange(B, device=k0.device)
    return R2[ar, pick], t2[ar, pick], inl.view(2, B, -1)[pick, ar]


def relative_pose_cne(kpts0: ArrayLike, kpts1: ArrayLike, K0: ArrayLike, K1: ArrayLike,
                      method: str = "cne+ransac", ratio: Optional[ArrayLike] = None,
                      mask: Optional[ArrayLike] = None, model: Optional[CNeNet] = None,
                      weights_path: Optional[PathLike] = None, threshold: Optional[float] = None,
                      irls_steps: int = 6, device=None, precision: str = "auto",
                      second_hypothesis: bool = False, second_floor: float = 0.1,
                      **ransac_options):
    """Relative pose ``X1 = R X0 + t`` with the learned filter (like ``estimate_relative_pose``).

    * ``method="cne"``: weighted eight-point on the network weights (projected to an essential
      matrix), then ``irls_steps`` robust refits: network weight x Cauchy weight
      ``1 / (1 + d^2 / s^2)`` of the Sampson distance ``d``, with the scale ``s`` shrinking
      32, 16, 8, 4, 2, 2 px (Sampson-normalised, :func:`correspondence.epipolar.essential_fit` with
      ``init``), then the cheirality test of :func:`correspondence.epipolar.recover_pose` on the
      kept matches within 4 px of the final model (no sampling, one pass).
    * ``method="cne+ransac"``: :func:`correspondence.ransac.estimate_relative_pose` on the
      matches the network keeps (``weight > 0``), sampling proportionally to the weights;
      ``threshold`` and ``**ransac_options`` go to it. With ``second_hypothesis=True`` the same
      batched call also solves each pair on *all* its matches, sampled by ``weight +
      second_floor``, and the model with the higher MSAC score on all matches is returned: this
      recovers pairs where the network keeps a consistent wrong set or too few of the true
      inliers, at the cost of a second, harder RANSAC problem. The floor sets how independent
      the second problem is of the network: on the 75 held-out Strecha pairs of
      ``tools/bench_cne.py`` accuracy at 5 / 10 / 20 deg is 0.84 / 0.85 / 0.85 with 1e-3,
      0.87 / 0.89 / 0.89 with 0.1 (our RANSAC alone: 0.81 / 0.88 / 0.88) at about the same
      time per pair; at 10 % synthetic inliers 0.1 costs 2.8x the time of 1e-3 (1.0 against
      0.36 s per pair, same accuracy), and uniform sampling (a large floor) 3x more again.

    If fewer than 16 matches have positive weight, the 16 with the highest logits are used.

    Args:
        kpts0, kpts1: ``N x 2`` / ``B x N x 2`` pixels. K0, K1: ``3 x 3`` / ``B x 3 x 3``.
        ratio, mask, model, weights_path, device, precision: as :func:`filter_matches`.

    Returns:
        ``(R, t, inlier_mask)``: ``3 x 3`` / ``B x 3 x 3``, unit ``3`` / ``B x 3`` and ``N`` /
        ``B x N`` bool (the matches used that pass cheirality); no model: NaN ``R``, ``t``,
        all-False mask. numpy in -> numpy out.
    """
    if method not in ("cne", "cne+ransac"):
        raise ValueError(f"method must be 'cne' or 'cne+ransac', got {method!r}")
    if not second_floor >= 0:
        raise ValueError(f"second_floor must be >= 0, got {second_floor}")
    if K0 is None or K1 is None:
        raise ValueError("relative_pose_cne needs the intrinsics K0 and K1")
    as_numpy = isinstance(kpts0, np.ndarray) and isinstance(kpts1, np.ndarray)
    w, keep, logits = filter_matches(kpts0, kpts1, K0, K1, ratio=ratio, mask=mask, model=model,
                                     weights_path=weights_path, device=device, return_logits=True,
                                     precision=precision)
    w, keep, logits = (torch.as_tensor(v) for v in (w, keep, logits))
    batched = w.ndim == 2
    if not batched:
        w, keep, logits = w[None], keep[None], logits[None]
    valid = torch.isfinite(logits)
    # at least MIN_KEEP matches with the best logits (weights floored to a small positive value)
    k = min(MIN_KEEP, w.shape[1])
    if k > 0:
        top = logits.topk(k, dim=1).indices
        boost = torch.zeros_like(keep).scatter_(1, top, True) & valid & (keep.sum(1, keepdim=True) < MIN_KEEP)
        w = torch.where(boost & (w <= 0), torch.full_like(w, 1e-3), w)
        keep = keep | boost
    if method == "cne+ransac":
        from .ransac import estimate_relative_pose

        kw = dict(ransac_options)
        if threshold is not None:
            kw["threshold"] = threshold
        k0t = as_points(kpts0, "kpts0", w.device, torch.float64)
        k1t = as_points(kpts1, "kpts1", w.device, torch.float64)
        if not batched:
            k0t, k1t = k0t[None], k1t[None]
        if not second_hypothesis:
            R, t, inl = estimate_relative_pose(k0t, k1t, K0, K1, mask=keep, weights=w.to(torch.float64), **kw)
        else:
            R, t, inl = _two_hypotheses(k0t, k1t, K0, K1, keep, valid, w.to(torch.float64), kw,
                                        float(second_floor))
    else:
        x0, x1, ok, _, _ = batch_correspondences(kpts0, kpts1, None, None, w.device)
        x0, x1 = x0.double(), x1.double()
        c0, c1 = normalize_keypoints(x0, x1, K0, K1)
        ww = torch.where(keep & ok, w.double(), torch.zeros_like(w, dtype=torch.float64))
        E = essential_fit(c0, c1, ww)
        Kf0, Kf1 = _normaliser(K0, None, "K0", c0.shape[0], x0), _normaliser(K1, None, "K1", c0.shape[0], x0)
        f = ((Kf0[:, 0, 0] + Kf0[:, 1, 1] + Kf1[:, 0, 0] + Kf1[:, 1, 1]) / 4).abs()[:, None]
        good = torch.isfinite(E).flatten(1).all(1) & ((ww > 0).sum(1) >= 8)
        eye = torch.eye(3, dtype=E.dtype).expand_as(E)
        for k in range(max(0, irls_steps)):
            Es = torch.where(good[:, None, None], E, eye)
            d2 = sampson_error(Es[:, None], c0, c1)[:, 0] * f.square()  # pixels^2
            s2 = IRLS_PX[min(k, len(IRLS_PX) - 1)] ** 2
            E = essential_fit(c0, c1, ww / (1 + d2 / s2), init=Es)
            good = good & torch.isfinite(E).flatten(1).all(1)
        Es = torch.where(good[:, None, None], E, eye)
        d2 = sampson_error(Es[:, None], c0, c1)[:, 0] * f.square()
        close = keep & ok & (d2 < 16.0)
        use = torch.where((close.sum(1) >= 8)[:, None], close, keep & ok)
        R, t, inl = recover_pose(Es, c0, c1, use)
        good = good & (inl.sum(1) > 0)
        R = torch.where(good[:, None, None], R, torch.full_like(R, float("nan")))
        t = torch.where(good[:, None], t, torch.full_like(t, float("nan")))
        inl = inl & good[:, None]
    R, t, inl = torch.as_tensor(R), torch.as_tensor(t), torch.as_tensor(inl)
    if not batched and R.ndim == 3:
        R, t, inl = R[0], t[0], inl[0]
    if as_numpy:
        return R.cpu().numpy(), t.cpu().numpy(), inl.cpu().numpy()
    return R, t, inl
