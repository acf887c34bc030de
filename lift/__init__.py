"""lift: learned invariant feature transform (detector + orientation + descriptor) in PyTorch.

Drop-in replacement for ``cv2.SIFT_create()``; see :func:`detect_and_describe` and
:class:`LIFT`. Conventions (pixel centres, angles, scales) are documented in
:mod:`lift.features`.
"""
from .features import DESCRIPTOR_SUPPORT, Features
from .image import ImageError, load_image, to_gray_tensor
from .model import LIFTModel, WeightsError
from .pipeline import LIFT, LIFTConfig, detect_and_describe

__version__ = "0.1.0"

__all__ = [
    "DESCRIPTOR_SUPPORT",
    "Features",
    "ImageError",
    "LIFT",
    "LIFTConfig",
    "LIFTModel",
    "WeightsError",
    "detect_and_describe",
    "load_image",
    "to_gray_tensor",
]
