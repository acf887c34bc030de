"""Patch file schema and atomic writer: round trip, validation errors, no half-written files."""
import json

import h5py
import numpy as np
import pytest

from lift.data import (SCHEMA_NAME, SCHEMA_VERSION, PatchWriter, SchemaError, open_patch_file,
                       validate_patch_file)


def write_small(path, n_tracks=6, views=3, negatives=5, patch_size=16, seed=0, splits=None):
    """Tracks t = 0..n_tracks-1 with ``views`` patches each whose pixels all equal t,
    then ``negatives`` non-keypoint patches of value 200."""
    rng = np.random.default_rng(seed)
    splits = splits if splits is not None else [t % 3 for t in range(n_tracks)]
    with PatchWriter(path, "unit-test", "generated", {"seed": seed}, patch_size=patch_size,
                     support_sigma=12.0) as w:
        ids = [w.add_image(f"img{v}", (320, 240), source="photo.png", scale=0.5,
                           homography=np.eye(3) * (v + 1)) for v in range(views)]
        for t in range(n_tracks):
            w.add_patches(np.full((views, patch_size, patch_size), t, np.uint8), [t] * views, ids,
                          np.column_stack([rng.uniform(20, 200, (views, 2)),
                                           np.full(views, 2.0), np.zeros(views)]),
                          [splits[t]] * views, [0] * views)
        w.add_patches(np.full((negatives, patch_size, patch_size), 200, np.uint8),
                      [-1] * negatives, [0] * negatives,
                      np.tile([50.0, 60.0, 3.0, 0.0], (negatives, 1)), [0] * negatives,
                      [2] * negatives)
    return path


def test_round_trip_layout_and_attributes(tmp_path):
    path = write_small(tmp_path / "a.h5")
    info = validate_patch_file(path)
    assert (info.num_patches, info.num_images, info.num_tracks, info.patch_size) == (23, 3, 6, 16)
    assert info.split_counts == {"train": 6 + 5, "val": 6, "test": 6}
    assert info.kind_counts == {"track": 18, "other_keypoint": 0, "random": 5}
    with h5py.File(path) as f:
        assert f.attrs["schema"] == SCHEMA_NAME and f.attrs["schema_version"] == SCHEMA_VERSION
        assert json.loads(f.attrs["params"]) == {"seed": 0}
        assert f["patches"].dtype == np.uint8 and f["patches"].chunks == (1, 16, 16)
        assert f["patches"].compression == "gzip"
        assert f["images/name"].asstr()[...].tolist() == ["img0", "img1", "img2"]
        assert f["images/source"].asstr()[0] == "photo.png"
        np.testing.assert_array_equal(f["images/size"][0], [320, 240])
        assert f["images/scale"][1] == pytest.approx(0.5)
        np.testing.assert_allclose(f["images/homography"][2], 3 * np.eye(3))
        np.testing.assert_array_equal(f["track_id"][:4], [0, 0, 0, 1])
        assert (f["patches"][3] == 1).all() and (f["patches"][-1] == 200).all()
    assert not list(tmp_path.glob(".*tmp*"))


def test_failure_inside_the_writer_leaves_no_file_and_keeps_the_old_one(tmp_path):
    target = write_small(tmp_path / "a.h5")
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with PatchWriter(target, "x", "y", {}, patch_size=16) as w:
            w.add_image("i", (10, 10))
            w.add_patches(np.zeros((2, 16, 16), np.uint8), [0, 0], [0, 0], np.ones((2, 4)),
                          [0, 0], [0, 0])
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5"]
    with pytest.raises(ValueError, match="16 x 16"):
        with PatchWriter(tmp_path / "b.h5", "x", "y", {}, patch_size=16) as w:
            w.add_patches(np.zeros((1, 8, 8), np.uint8), [0], [0], np.ones((1, 4)), [0], [0])
    assert not (tmp_path / "b.h5").exists()


def test_writer_rejects_inconsistent_content(tmp_path):
    with pytest.raises(ValueError, match="image_id"):
        with PatchWriter(tmp_path / "c.h5", "x", "y", {}, patch_size=8) as w:
            w.add_patches(np.zeros((1, 8, 8), np.uint8), [0], [0], np.ones((1, 4)), [0], [0])
    with pytest.raises(ValueError, match="already added"):
        with PatchWriter(tmp_path / "c.h5", "x", "y", {}, patch_size=8) as w:
            w.add_image("i", (1, 1))
            w.add_image("i", (1, 1))
    # a track in two splits is refused at close (validation before the rename)
    with pytest.raises(SchemaError, match="more than one split"):
        with PatchWriter(tmp_path / "c.h5", "x", "y", {}, patch_size=8) as w:
            w.add_image("i", (1, 1))
            w.add_patches(np.zeros((2, 8, 8), np.uint8), [4, 4], [0, 0], np.ones((2, 4)),
                          [0, 1], [0, 0])
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("schema_version", 99), "version 99 is not supported"),
    (lambda f: f.attrs.__setitem__("schema", "other"), "schema is 'other'"),
    (lambda f: f.attrs.__delitem__("schema"), "no 'schema' attribute"),
    (lambda f: f.attrs.__delitem__("builder"), "missing root attribute"),
    (lambda f: f.__delitem__("track_id"), "missing dataset '/track_id'"),
    (lambda f: f.__delitem__("images/scale"), "missing dataset '/images/scale'"),
    (lambda f: (f.__delitem__("split"), f.create_dataset("split", data=np.zeros(23, np.int32))),
     "'/split' must have dtype uint8"),
    (lambda f: (f.__delitem__("keypoints"),
                f.create_dataset("keypoints", data=np.zeros((23, 3), np.float32))),
     r"'/keypoints' must have shape \(23, 4\)"),
    (lambda f: f["image_id"].__setitem__(0, 7), "image_id values must index"),
    (lambda f: f["kind"].__setitem__(0, 2), "kind must be 0 exactly"),
    (lambda f: f["keypoints"].__setitem__((1, 2), 0.0), "sigma"),
    (lambda f: f["split"].__setitem__(0, 1), "more than one split"),
])
def test_validation_names_the_problem(tmp_path, edit, message):
    path = write_small(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(SchemaError, match=message):
        validate_patch_file(path)
    with pytest.raises(SchemaError, match=message):
        open_patch_file(path, check_values=True)


def test_corrupt_missing_and_foreign_files(tmp_path):
    path = write_small(tmp_path / "a.h5")
    data = path.read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 3])
    with pytest.raises(SchemaError, match="cannot be opened as HDF5"):
        validate_patch_file(tmp_path / "trunc.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(SchemaError, match="corrupt"):
        open_patch_file(tmp_path / "text.h5")
    with pytest.raises(FileNotFoundError):
        validate_patch_file(tmp_path / "missing.h5")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(SchemaError, match="not a lift-sfm-patches file"):
        open_patch_file(tmp_path / "foreign.h5")
