"""The error of the SfM pipeline: a run that cannot produce a model for a reason the user can
act on (no images, a single image, nothing reconstructs). The CLI prints it without a traceback."""

__all__ = ["SfMError"]


class SfMError(RuntimeError):
    """Raised when a structure-from-motion run cannot produce a result (message says why)."""
