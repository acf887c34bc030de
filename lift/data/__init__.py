"""SfM patch data: the versioned HDF5 contract, its writer, torch Datasets and the builders.

See ``data/README.md`` for the schema. Builders: :func:`build_synthetic`
(:mod:`lift.data.synthetic`), :func:`build_colmap` (:mod:`lift.data.colmap`, needs pycolmap),
:func:`build_brown` (:mod:`lift.data.brown`); console script ``lift-build-patches``.
"""
from .dataset import PatchDataset, PatchStore, QuadrupletDataset
from .patches import PATCH_SIZE, PATCH_SUPPORT, cut_patches
from .schema import (KINDS, SCHEMA_NAME, SCHEMA_VERSION, SPLITS, PatchFileInfo, SchemaError,
                     open_patch_file, validate_patch_file)
from .writer import PatchWriter

__all__ = [
    "KINDS", "PATCH_SIZE", "PATCH_SUPPORT", "SCHEMA_NAME", "SCHEMA_VERSION", "SPLITS",
    "PatchDataset", "PatchFileInfo", "PatchStore", "PatchWriter", "QuadrupletDataset",
    "SchemaError", "build_brown", "build_colmap", "build_synthetic", "cut_patches",
    "open_patch_file", "validate_patch_file",
]


def __getattr__(name):  # builders are imported on demand (colmap pulls in pycolmap)
    if name == "build_synthetic":
        from .synthetic import build_synthetic
        return build_synthetic
    if name == "build_colmap":
        from .colmap import build_colmap
        return build_colmap
    if name == "build_brown":
        from .brown import build_brown
        return build_brown
    raise AttributeError(f"module 'lift.data' has no attribute '{name}'")
