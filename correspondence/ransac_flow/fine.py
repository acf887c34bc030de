"""Fine stage of RANSAC-Flow: a small siamese flow network with matchability, both directions.

The network refines a coarse (homography) alignment: its two inputs are already roughly aligned
and it predicts the residual flow and a matchability (confidence) map. It is a CPU-sized variant
of the paper's network (methods notes section 6.2) with a second, finer correlation level:

* Encoder (shared by both images): plain 3 x 3 convolutions with leaky ReLU, features at
  stride 4 (``C4`` channels) and stride 8 (``C8`` channels), each L2-normalised per location.
* Level 8: local correlation over a ``(2 r8 + 1)^2`` window (default 7 x 7 = 49 offsets, as
  the paper), a conv head, **softmax over the offsets and expected displacement** (soft-argmax).
  Range: +-``r8`` cells = +-24 px at the network's input resolution.
* Level 4: the stride-4 target features are warped by the upsampled level-8 flow, a
  ``(2 r4 + 1)^2`` correlation and a second soft-argmax head predict a residual
  (+-``r4`` cells = +-8 px), giving pixel-level precision.
* Matchability head on the level-4 correlation and features: sigmoid, initialised at ~0.5.
* Flows are upsampled to full resolution by bilinear sampling at the exact pixel positions
  (feature cell ``i`` of stride ``s`` sits at pixel ``s * i``).

Conventions: images ``B x 1 x H x W`` grey in [0, 1]; flows ``B x 2 x H x W`` in pixels,
``(dx, dy)``, defined on the grid of the first image: pixel ``p`` of ``a`` corresponds to pixel
``p + flow[p]`` of ``b``; top-left pixel centre (0, 0). All ``grid_sample`` calls use
``align_corners=True`` with that convention (see :func:`pixel_to_grid`).

Weights file (``torch.load(weights_only=True)``)::

    {"format": "ransac-flow-weights", "version": 1, "config": {...}, "state": state_dict,
     "meta": {...}}
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FineFlowNet", "local_correlation", "soft_argmax_offsets", "pixel_to_grid",
           "identity_grid", "warp", "sample_flow_at", "upsample_flow", "FLOW_WEIGHTS_DIR",
           "load_fine_net", "FlowWeightsError"]

FLOW_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
FORMAT, VERSION = "ransac-flow-weights", 1
#: shipped fine-network names -> file in ``correspondence/weights``
FLOW_MODEL_NAMES = {"default": "flow_default.pt"}


class FlowWeightsError(ValueError):
    """A weights file exists but is not a valid RANSAC-Flow fine-network file."""


# ---------------------------------------------------------------------------- sampling helpers
def identity_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``1 x 2 x h x w`` pixel coordinates ``(x, y)`` of every pixel centre."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                            torch.arange(w, device=device, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys])[None]


def pixel_to_grid(coords: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``B x 2 x H' x W'`` pixel coordinates in an ``h x w`` image -> ``B x H' x W' x 2``
    ``grid_sample`` grid for ``align_corners=True`` (pixel 0 -> -1, pixel ``w - 1`` -> +1)."""
    sx = 2.0 / max(w - 1, 1)
    sy = 2.0 / max(h - 1, 1)
    gx = coords[:, 0] * sx - 1.0
    gy = coords[:, 1] * sy - 1.0
    return torch.stack([gx, gy], dim=-1)


def warp(image: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear",
         padding_mode: str = "zeros") -> torch.Tensor:
    """Sample ``image`` (``B x C x h x w``) at pixel coordinates ``coords`` (``B x 2 x H x W``)
    -> ``B x C x H x W``. With ``coords = identity + flow`` this pulls the second image of a
    pair onto the first image's grid. A batch of one ``coords`` is broadcast over ``image``."""
    h, w = image.shape[-2:]
    if coords.shape[0] == 1 and image.shape[0] > 1:
        coords = coords.expand(image.shape[0], -1, -1, -1)
    return F.grid_sample(image, pixel_to_grid(coords, h, w), mode=mode,
                         padding_mode=padding_mode, align_corners=True)


def sample_flow_at(flow: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear value of ``flow`` (``B x C x h x w``) at pixel coordinates ``coords``
    (``B x 2 x H x W``), border values outside."""
    return warp(flow, coords, padding_mode="border")


def upsample_flow(flow: torch.Tensor, stride: int, size) -> torch.Tensor:
    """Flow (or any map) on a stride-``stride`` grid (cell ``i`` at pixel ``stride * i``) ->
    full-resolution ``B x C x H x W`` by bilinear sampling at ``p / stride`` (border clamp).
    Values are not rescaled: flows are kept in full-resolution pixels throughout."""
    h, w = size
    grid = identity_grid(h, w, flow.device, flow.dtype) / stride
    return sample_flow_at(flow, grid.expand(flow.shape[0], -1, -1, -1))


# ---------------------------------------------------------------------------- correlation
def local_correlation(fa: torch.Tensor, fb: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume without a loop over shifts: the padded ``fb`` in channels-last layout
    is viewed (``as_strided``, an unfold without copying) as every ``K x K`` window of every
    location, and one ``einsum`` takes the dot products with ``fa`` (about 4x faster on CPU
    than ``F.unfold`` + ``einsum`` in channels-first layout).

    Args:
        fa, fb: ``B x C x H x W`` feature maps.
        radius: window half-size ``r``; ``K = 2 r + 1``.

    Returns:
        ``B x K^2 x H x W``: channel ``k`` at ``p`` is ``<fa[p], fb[p + d_k]>`` with offset
        ``d_k = (k % K - r, k // K - r)`` as ``(dx, dy)``; zero outside ``fb``.
    """
    if fa.shape != fb.shape or fa.ndim != 4:
        raise ValueError(f"local_correlation needs two equal B x C x H x W maps, got "
                         f"{tuple(fa.shape)} and {tuple(fb.shape)}")
    b, c, h, w = fa.shape
    k = 2 * radius + 1
    pad = F.pad(fb, (radius, radius, radius, radius)).permute(0, 2, 3, 1).contiguous()
    s = pad.stride()  # b x (h + 2r) x (w + 2r) x c
    windows = pad.as_strided((b, h, w, k, k, c), (s[0], s[1], s[2], s[1], s[2], s[3]))
    a = fa.permute(0, 2, 3, 1).contiguous()
    return torch.einsum("bhwijc,bhwc->bijhw", windows, a).reshape(b, k * k, h, w)


def _offsets(radius: int, device, dtype) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=dtype)
    dy, dx = torch.meshgrid(r, r, indexing="ij")
    return torch.stack([dx.reshape(-1), dy.reshape(-1)])  # 2 x K^2


def soft_argmax_offsets(logits: torch.Tensor, radius: int) -> torch.Tensor:
    """``B x K^2 x H x W`` logits -> ``B x 2 x H x W`` expected offset ``(dx, dy)`` in cells
    under the softmax over the ``K^2`` offsets (order of :func:`local_correlation`)."""
    prob = logits.softmax(1)
    off = _offsets(radius, logits.device, logits.dtype)
    return torch.einsum("bkhw,ck->bchw", prob, off)


# ---------------------------------------------------------------------------- network
def _conv(cin: int, cout: int, stride: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
    if act:
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class FineFlowNet(nn.Module):
    """Siamese residual-flow + matchability network (see the module docstring).

    Args:
        c2, c4, c8: encoder channels at strides 2, 4, 8.
        r8, r4: correlation radii at strides 8 and 4.
        head: width of the flow heads.

    Shapes:
        ``forward(a, b)`` with ``a, b``: ``B x 1 x H x W`` grey in [0, 1] ->
        dict ``flow_ab`` / ``flow_ba`` (``B x 2 x H x W`` px), ``match_ab`` / ``match_ba``
        (``B x 1 x H x W`` in (0, 1)), each on the grid of its first image. H, W >= 16.
    """

    def __init__(self, c2: int = 16, c4: int = 32, c8: int = 64, r8: int = 3, r4: int = 2,
                 head: int = 64):
        super().__init__()
        self.config = dict(c2=c2, c4=c4, c8=c8, r8=r8, r4=r4, head=head)
        self.r8, self.r4 = r8, r4
        k8, k4 = (2 * r8 + 1) ** 2, (2 * r4 + 1) ** 2
        self.enc2 = nn.Sequential(_conv(1, c2), _conv(c2, c2, 2))
        self.enc4 = nn.Sequential(_conv(c2, c4, 2), _conv(c4, c4))
        self.enc8 = nn.Sequential(_conv(c4, c8, 2), _conv(c8, c8))
        self.head8 = nn.Sequential(_conv(k8 + c8, head), _conv(head, head),
                                   _conv(head, k8, act=False))
        self.head4 = nn.Sequential(_conv(k4 + c4 + 2, head), _conv(head, head // 2),
                                   _conv(head // 2, k4, act=False))
        self.match = nn.Sequential(_conv(k4 + c4 + 1, 32), _conv(32, 16), _conv(16, 1, act=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1)
                nn.init.zeros_(m.bias)
        last = self.match[-1][0]
        # tiny initial weights as the paper, but a bias giving matchability ~0.9 (the paper's
        # ~0.5 makes the binarised cycle-consistent mask M_ab * M_ba > 0.5 empty at first)
        nn.init.normal_(last.weight, std=1e-4)
        nn.init.constant_(last.bias, 2.2)

    # -------------------------------------------------------------- parts
    def encode(self, x: torch.Tensor):
        """``N x 1 x H x W`` -> (stride-4, stride-8) L2-normalised features."""
        mean = x.mean((2, 3), keepdim=True)
        std = x.std((2, 3), keepdim=True) + 1e-3
        f4 = self.enc4(self.enc2((x - mean) / std))
        f8 = self.enc8(f4)
        return F.normalize(f4, dim=1), F.normalize(f8, dim=1)

    def _direction(self, fa4, fa8, fb4, fb8, size):
        """Flow a -> b on a's grid at full resolution ``size`` + matchability logits."""
        h8, w8 = fa8.shape[-2:]
        h4, w4 = fa4.shape[-2:]
        corr8 = local_correlation(fa8, fb8, self.r8)
        flow8 = soft_argmax_offsets(self.head8(torch.cat([corr8, fa8], 1)), self.r8) * 8.0
        flow4 = upsample_flow(flow8, 2, (h4, w4))  # px, on the stride-4 grid
        grid4 = identity_grid(h4, w4, fa4.device, fa4.dtype)
        fb4w = warp(fb4, grid4 + flow4 / 4.0)
        corr4 = local_correlation(fa4, fb4w, self.r4)
        res = soft_argmax_offsets(self.head4(torch.cat([corr4, fa4, flow4 / 32.0], 1)),
                                  self.r4) * 4.0
        flow4 = flow4 + res
        m4 = self.match(torch.cat([corr4, fa4, corr4.amax(1, keepdim=True)], 1))
        return upsample_flow(flow4, 4, size), upsample_flow(m4, 4, size)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Dict[str, torch.Tensor]:
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 1:
            raise ValueError(f"FineFlowNet expects two B x 1 x H x W images of one size, got "
                             f"{tuple(a.shape)} and {tuple(b.shape)}")
        h, w = a.shape[-2:]
        if h < 16 or w < 16:
            raise ValueError(f"FineFlowNet needs images of at least 16 x 16 px, got {w} x {h}")
        n = a.shape[0]
        # pad to a multiple of 8 (replicate): cells stay at pixel multiples of the stride
        ph, pw = (-h) % 8, (-w) % 8
        x = torch.cat([a, b])
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        f4, f8 = self.encode(x)
        fa4, fb4, fa8, fb8 = f4[:n], f4[n:], f8[:n], f8[n:]
        # both directions in one batch
        flow, mlog = self._direction(torch.cat([fa4, fb4]), torch.cat([fa8, fb8]),
                                     torch.cat([fb4, fa4]), torch.cat([fb8, fa8]), (h, w))
        match = torch.sigmoid(mlog)
        return {"flow_ab": flow[:n], "flow_ba": flow[n:], "match_ab": match[:n],
                "match_ba": match[n:]}

    # -------------------------------------------------------------- weights I/O
    def save(self, path: Union[str, Path], meta: Optional[Dict[str, Any]] = None) -> Path:
        """Write ``{"format", "version", "config", "state", "meta"}`` atomically."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
        os.close(fd)
        try:
            state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
            torch.save({"format": FORMAT, "version": VERSION, "config": dict(self.config),
                        "state": state, "meta": dict(meta or {})}, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path


def load_fine_net(name_or_path: Union[str, Path, FineFlowNet] = "default",
                  device=None) -> FineFlowNet:
    """Load the shipped fine network (``"default"``) or one from a weights file; a
    :class:`FineFlowNet` instance is returned as is (moved to ``device``). Eval mode.

    Raises:
        FileNotFoundError: no such file / shipped weights missing (the message says how to make them).
        FlowWeightsError: the file is not a valid fine-network weights file.
    """
    if isinstance(name_or_path, FineFlowNet):
        net = name_or_path
    else:
        if isinstance(name_or_path, str) and name_or_path in FLOW_MODEL_NAMES:
            path = FLOW_WEIGHTS_DIR / FLOW_MODEL_NAMES[name_or_path]
            if not path.is_file():
                raise FileNotFoundError(
                    f"the shipped RANSAC-Flow weights {name_or_path!r} are missing: expected "
                    f"{path}. They are produced by lift-train-flow (see "
                    "correspondence/weights/flow.md).")
        else:
            path = Path(name_or_path)
            if not path.is_file():
                raise FileNotFoundError(f"no RANSAC-Flow weights file at {path} (shipped names: "
                                        f"{', '.join(FLOW_MODEL_NAMES)})")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise FlowWeightsError(f"cannot read RANSAC-Flow weights from {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise FlowWeightsError(f"{path} is not a RANSAC-Flow weights file (missing format tag)")
        if state.get("version") != VERSION:
            raise FlowWeightsError(f"{path} has format version {state.get('version')}, this "
                                   f"library reads version {VERSION}")
        try:
            net = FineFlowNet(**state["config"])
            net.load_state_dict(state["state"])
        except (KeyError, RuntimeError, TypeError) as err:
            raise FlowWeightsError(f"{path} does not match its declared architecture: {err}") from err
        net.meta = dict(state.get("meta", {}))
    net.eval()
    return net.to(device) if device is not None else net
