"""Image input handling shared by every entry point: validation and conversion to grey float.

Convention:
    Every image that enters the library is turned into a ``1 x H x W`` float32 tensor with values
    in [0, 1] (grey). The pixel grid convention is OpenCV's: the centre of the top-left pixel is
    (0, 0), x to the right, y down.

Accepted inputs:
    * numpy ``H x W``, ``H x W x 1``, ``H x W x 3`` (RGB order, as skimage/PIL give it; pass
      ``bgr=True`` for ``cv2.imread`` output; the grey weights make the difference small),
      ``H x W x 4`` (alpha dropped);
    * torch ``H x W``, ``C x H x W`` or ``1 x C x H x W`` with C in {1, 3};
    * dtypes uint8 (0..255), uint16 (0..65535), bool, or floating point. Floating point images are
      taken in [0, 1]; if their maximum exceeds 1 they are taken as 0..255 (OpenCV habit).

Bad input raises :class:`ImageError` (a ``ValueError``) with a message naming the problem. An
image with zero pixels is not an error here: callers decide (``detect_and_describe`` returns an
empty :class:`lift.Features`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["ImageError", "to_gray_tensor", "load_image", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")

_RGB_WEIGHTS = (0.299, 0.587, 0.114)


class ImageError(ValueError):
    """Raised for images that cannot be interpreted (wrong shape, dtype, NaN values...)."""


def _as_tensor(image) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.detach()
    if isinstance(image, np.ndarray):
        if image.dtype == object:
            raise ImageError("image has dtype object; expected a numeric array")
        if image.dtype == np.uint16:
            return torch.from_numpy(image.astype(np.float32) / 65535.0)
        return torch.from_numpy(np.ascontiguousarray(image))
    raise ImageError(f"image must be a numpy array or a torch tensor, got {type(image).__name__}")


def to_gray_tensor(image, device: Optional[Union[str, torch.device]] = None,
                   bgr: bool = False) -> torch.Tensor:
    """Convert an image to a ``1 x H x W`` float32 grey tensor in [0, 1].

    Args:
        image: numpy array or torch tensor (see module docstring for layouts and dtypes).
        device: target device (default: the tensor's own device, CPU for numpy).
        bgr: the 3-channel input is in OpenCV's BGR order.

    Returns:
        ``1 x H x W`` float32 tensor on ``device``. H or W may be 0.

    Raises:
        ImageError: unsupported type, layout or dtype, or non-finite values.
    """
    is_torch = isinstance(image, torch.Tensor)
    t = _as_tensor(image)
    if t.is_complex():
        raise ImageError("complex images are not supported")
    if device is not None:
        t = t.to(device)
    # --- layout -> C x H x W
    if t.ndim == 2:
        t = t[None]
    elif t.ndim == 3:
        if is_torch and t.shape[0] in (1, 3) and t.shape[-1] not in (1, 3, 4):
            pass  # C x H x W
        elif is_torch and t.shape[0] in (1, 3) and t.shape[-1] in (1, 3, 4) and t.shape[0] < t.shape[-1]:
            pass  # ambiguous small image: torch means channels first
        elif t.shape[-1] in (1, 3, 4):
            t = t.permute(2, 0, 1)
        else:
            raise ImageError(
                f"cannot interpret image of shape {tuple(t.shape)}: expected H x W, H x W x C "
                "(numpy) or C x H x W (torch) with C in {1, 3, 4}")
    elif t.ndim == 4 and is_torch and t.shape[0] == 1:
        t = t[0]
    else:
        raise ImageError(
            f"cannot interpret image of shape {tuple(t.shape)}: expected a single image "
            "(H x W, H x W x C, C x H x W or 1 x C x H x W)")
    if t.shape[0] not in (1, 3, 4):
        raise ImageError(f"image has {t.shape[0]} channels; expected 1, 3 or 4")
    # --- dtype -> float in [0, 1]
    if t.dtype == torch.bool:
        t = t.float()
    elif t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.dtype.is_floating_point:
        t = t.float()
        if t.numel() and not torch.isfinite(t).all():
            raise ImageError("image contains NaN or infinite values")
        if t.numel() and t.max() > 1.0:
            t = t / 255.0
    elif t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        raise ImageError(f"integer image dtype {t.dtype} is ambiguous; pass uint8, uint16 or float")
    else:
        raise ImageError(f"unsupported image dtype {t.dtype}")
    if t.shape[0] == 4:
        t = t[:3]
    if t.shape[0] == 3:
        w = torch.tensor(_RGB_WEIGHTS[::-1] if bgr else _RGB_WEIGHTS, dtype=t.dtype, device=t.device)
        t = (t * w[:, None, None]).sum(0, keepdim=True)
    return t.clamp_(0.0, 1.0).contiguous()


def load_image(path: Union[str, Path]) -> np.ndarray:
    """Read an image file as a grey uint8 ``H x W`` numpy array.

    Raises:
        FileNotFoundError: the file does not exist.
        ImageError: the file exists but cannot be decoded.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ImageError(f"cannot decode image file {path}")
    return image
