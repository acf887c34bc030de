"""COLMAP interoperability through pycolmap: database export/import (:mod:`.database`) and
mapping, verification and model helpers (:mod:`.compat`). All pycolmap calls of lift are in
these two modules."""
from .compat import (ModelStats, camera_poses, colmap_sift_database, incremental_mapping,
                     model_stats, read_model, verify_matches_colmap, write_model)
from .database import (CameraSpec, DatabaseContents, add_cameras_and_images, database_counts,
                       open_database, read_database, update_keypoint_positions, write_keypoints,
                       write_matches, write_two_view_geometry)

__all__ = [
    "CameraSpec", "DatabaseContents", "ModelStats", "add_cameras_and_images", "camera_poses",
    "colmap_sift_database", "database_counts", "incremental_mapping", "model_stats",
    "open_database", "read_database", "read_model", "update_keypoint_positions",
    "verify_matches_colmap", "write_keypoints",
    "write_matches", "write_model", "write_two_view_geometry",
]
