"""COLMAP builder: an existing text model (generated plane scene), and pycolmap SfM on real
photos (shared data, slow)."""
from pathlib import Path

import h5py
import numpy as np
import pytest

pytest.importorskip("pycolmap")

from lift.data import QuadrupletDataset, fixtures, validate_patch_file  # noqa: E402
from lift.data.colmap import build_colmap, read_sfm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return fixtures.make_colmap_text_model(tmp_path_factory.mktemp("colmap") / "plane")


def _rows(path):
    with h5py.File(path) as f:
        return {k: f[k][...] for k in ("track_id", "image_id", "keypoints", "kind", "split")}, \
            f["images/name"].asstr()[...], f["images/scale"][...], f["images/size"][...]


def test_existing_model_positives_sit_on_their_observations(scene, tmp_path):
    model, images, truth = scene
    out = build_colmap(tmp_path / "c.h5", images=images, model=model, negatives_per_image=40,
                       progress=False)
    info = validate_patch_file(out)
    r, names, scales, sizes = _rows(out)
    pos = np.flatnonzero(r["kind"] == 0)
    assert info.num_tracks >= 0.7 * len(truth) and info.num_images == 3
    for i in pos:  # COLMAP's +0.5 pixel-centre offset is removed
        x, y = truth[int(r["track_id"][i])][names[r["image_id"][i]]]
        np.testing.assert_allclose(r["keypoints"][i, :2], [x, y], atol=1e-3)
    assert (r["keypoints"][pos, 2] >= 1.6).all()
    for img in range(3):
        sel = r["image_id"] == img
        p = r["keypoints"][sel & (r["kind"] == 0)]
        for kind in (1, 2):
            neg = r["keypoints"][sel & (r["kind"] == kind)]
            assert len(neg) > 0
            d = np.linalg.norm(neg[:, None, :2] - p[None, :, :2], axis=2).min(1)
            assert (d > 3 * neg[:, 2]).all()
    q = QuadrupletDataset(out, split=None)
    it = q[0]
    assert it["track"][0] == it["track"][1] != it["track"][2] and it["track"][3] == -1


def test_existing_model_downscaled_and_held_out(scene, tmp_path):
    model, images, truth = scene
    out = build_colmap(tmp_path / "s.h5", images=images, model=model, max_side=240,
                       split="test", progress=False)
    r, names, scales, sizes = _rows(out)
    np.testing.assert_allclose(scales, 0.5)
    np.testing.assert_array_equal(sizes, [[240, 180]] * 3)
    assert (r["split"] == 2).all()
    for i in np.flatnonzero(r["kind"] == 0):
        x, y = truth[int(r["track_id"][i])][names[r["image_id"][i]]]
        expect = [(x + 0.5) / 2 - 0.5, (y + 0.5) / 2 - 0.5]
        np.testing.assert_allclose(r["keypoints"][i, :2], expect, atol=1e-3)


def test_bad_arguments(scene, tmp_path):
    model, images, _ = scene
    with pytest.raises(ValueError, match="split"):
        build_colmap(tmp_path / "x.h5", images=images, model=model, split="training")
    with pytest.raises(ValueError, match="folder of photos"):
        build_colmap(tmp_path / "x.h5", model=model)
    with pytest.raises(FileNotFoundError, match="not in"):
        read_sfm(model, tmp_path)


@pytest.mark.slow
@pytest.mark.shared_data
def test_pycolmap_sfm_from_photos(tmp_path):
    photos = SHARED / "data/sfm/sacre_coeur/mapping"
    if not photos.is_dir():
        pytest.skip(f"shared data not found at {photos}")
    out = build_colmap(tmp_path / "sc.h5", images=photos, max_side=700, num_threads=2,
                       negatives_per_image=50, progress=False)
    info = validate_patch_file(out)
    r, names, scales, sizes = _rows(out)
    assert info.num_images >= 8 and info.num_tracks > 200
    assert sizes.max() == 700 and (scales < 1).all()
    # tracks have several views; every registered image contributes keypoint patches
    _, counts = np.unique(r["track_id"][r["kind"] == 0], return_counts=True)
    assert np.median(counts) >= 2
    assert len(np.unique(r["image_id"][r["kind"] == 0])) == info.num_images
