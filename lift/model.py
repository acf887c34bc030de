"""The three LIFT networks together, and their weights files.

A weights file is a ``torch.save``d dict that loads with ``torch.load(weights_only=True)``::

    {"format": "lift-weights", "version": 1,
     "config": {"detector": {...}, "orientation": {...}, "descriptor": {...}},
     "detector": state_dict, "orientation": state_dict, "descriptor": state_dict,
     "meta": {...}}   # free-form provenance (training record summary)

The configs are the constructor arguments of :class:`~lift.detector.Detector`,
:class:`~lift.orientation.Orientation` and :class:`~lift.descriptor.Descriptor`.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from .descriptor import Descriptor
from .inference import inference_net
from .detector import Detector
from .orientation import Orientation

__all__ = ["LIFTModel", "WeightsError", "WEIGHTS_DIR", "MODEL_NAMES", "resolve_weights",
           "FAST_CONFIG", "PAPER_CONFIG"]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: shipped model names -> file in ``lift/weights``
MODEL_NAMES = {"default": "lift_default.pt"}
FORMAT, VERSION = "lift-weights", 1

#: The architecture of the paper (LIFT ECCV'16 / tf-lift defaults).
PAPER_CONFIG: Dict[str, Dict[str, Any]] = {
    "detector": dict(kernel_size=25, num_sum=4, num_max=4, px_per_sigma=47.0 / 24.0),
    "orientation": dict(input_size=64, channels=[10, 20, 50], kernels=[5, 5, 3],
                        strides=[1, 1, 1], pools=[2, 2, 2], hidden=100),
    "descriptor": dict(input_size=64, channels=[32, 64, 128], kernels=[7, 6, 5],
                       strides=[1, 1, 1], pools=[2, 3, 4]),
}
#: The speed-oriented variant the shipped model uses: the same supports in sigma units at
#: half the sampling density (32 px patches, strided first convolutions, 13 px detector).
FAST_CONFIG: Dict[str, Dict[str, Any]] = {
    "detector": dict(kernel_size=13, num_sum=4, num_max=4, px_per_sigma=23.0 / 24.0),
    "orientation": dict(input_size=32, channels=[10, 20, 50], kernels=[6, 5, 4],
                        strides=[2, 1, 1], pools=[1, 2, 2], hidden=100),
    "descriptor": dict(input_size=32, channels=[16, 32, 128], kernels=[6, 5, 5],
                       strides=[2, 1, 1], pools=[1, 2, 1]),
}


class WeightsError(ValueError):
    """A weights file exists but is not a valid LIFT weights file."""


class LIFTModel(nn.Module):
    """Detector + orientation + descriptor networks (no runtime logic; see :class:`lift.LIFT`).

    Args:
        config: ``{"detector": {...}, "orientation": {...}, "descriptor": {...}}`` constructor
            arguments (default: :data:`FAST_CONFIG`). Missing sub-dicts use the class defaults.
    """

    def __init__(self, config: Optional[Dict[str, Dict[str, Any]]] = None):
        super().__init__()
        config = FAST_CONFIG if config is None else config
        unknown = set(config) - {"detector", "orientation", "descriptor"}
        if unknown:
            raise ValueError(f"unknown LIFTModel config keys: {sorted(unknown)}")
        self.detector = Detector(**config.get("detector", {}))
        self.orientation = Orientation(**config.get("orientation", {}))
        self.descriptor = Descriptor(**config.get("descriptor", {}))
        self.meta: Dict[str, Any] = {}

    @property
    def config(self) -> Dict[str, Dict[str, Any]]:
        return {"detector": dict(self.detector.config),
                "orientation": dict(self.orientation.config),
                "descriptor": dict(self.descriptor.config)}

    def inference_nets(self, dtype: torch.dtype = torch.float32) -> Dict[str, nn.Module]:
        """Frozen copies of the orientation and descriptor networks for fast inference, their
        conv stages in ``dtype`` (:func:`lift.inference.inference_net`: same outputs, fewer and
        cheaper operations). The copies do not follow later changes of this model's weights."""
        return {name: inference_net(getattr(self, name), dtype) for name in ("orientation", "descriptor")}

    # ---------------------------------------------------------------- weights I/O
    def state(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "config": self.config,
                "detector": self.detector.state_dict(),
                "orientation": self.orientation.state_dict(),
                "descriptor": self.descriptor.state_dict(), "meta": dict(self.meta)}

    def save(self, path: Union[str, Path]) -> Path:
        """Write the weights atomically (temporary file + rename). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            state = self.state()
            state = {k: ({n: t.detach().cpu() for n, t in v.items()} if k in
                         ("detector", "orientation", "descriptor") else v) for k, v in state.items()}
            torch.save(state, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    @classmethod
    def load(cls, name_or_path: Union[str, Path] = "default", device=None) -> "LIFTModel":
        """Load shipped weights by name (``"default"``) or from a file path.

        Raises:
            FileNotFoundError: no such file (the message names the file and how to make it).
            WeightsError: the file is not a valid LIFT weights file.
        """
        path = resolve_weights(name_or_path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # pickle/zip errors of a corrupt or foreign file
            raise WeightsError(f"cannot read LIFT weights from {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise WeightsError(f"{path} is not a LIFT weights file (missing format tag)")
        if state.get("version") != VERSION:
            raise WeightsError(f"{path} has weights format version {state.get('version')}, "
                               f"this library reads version {VERSION}")
        for key in ("config", "detector", "orientation", "descriptor"):
            if key not in state:
                raise WeightsError(f"{path} lacks the entry {key!r}")
        try:
            model = cls(state["config"])
            for key in ("detector", "orientation", "descriptor"):
                getattr(model, key).load_state_dict(state[key])
        except (RuntimeError, TypeError, ValueError) as err:
            raise WeightsError(f"{path} does not match its declared architecture: {err}") from err
        for key in ("detector", "orientation", "descriptor"):
            for name, t in getattr(model, key).state_dict().items():
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise WeightsError(f"{path}: parameter {key}.{name} has non-finite values")
        model.meta = dict(state.get("meta", {}))
        model.eval()
        return model.to(device) if device is not None else model


def resolve_weights(name_or_path: Union[str, Path]) -> Path:
    """Map a shipped model name or a path to an existing file (FileNotFoundError otherwise)."""
    if isinstance(name_or_path, str) and name_or_path in MODEL_NAMES:
        path = WEIGHTS_DIR / MODEL_NAMES[name_or_path]
        if not path.is_file():
            raise FileNotFoundError(
                f"the shipped LIFT weights {name_or_path!r} are missing: expected {path}. "
                "They are produced by tools/train_default.sh (see lift/weights/README.md); "
                "pass model=<path to a .pt file> to use other weights.")
        return path
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(MODEL_NAMES))
        raise FileNotFoundError(f"no LIFT weights file at {path} (shipped names: {known})")
    return path
