"""Training of the LIFT networks from SfM patch files (``lift.data`` schema).

Stages, in the LIFT order: ``desc`` -> ``ori`` -> ``det`` -> ``joint`` (:mod:`.stages`), run by
the resumable, deterministic, optionally distributed loop of :mod:`.trainer`; console script
``lift-train`` (:mod:`.cli`). Inference never imports this package.
"""
from .crops import PatchGeometry, crop_patches, detector_input
from .losses import classification_loss, contrastive_loss, hardest_negative_loss, orientation_loss
from .metrics import fpr95, fpr_at_recall, roc_auc
from .stages import STAGES, make_stage
from .trainer import TrainConfig, Trainer
from .validation import evaluate

__all__ = [
    "PatchGeometry", "STAGES", "TrainConfig", "Trainer", "classification_loss",
    "contrastive_loss", "crop_patches", "detector_input", "evaluate", "fpr95", "fpr_at_recall",
    "hardest_negative_loss", "make_stage", "orientation_loss", "roc_auc",
]
