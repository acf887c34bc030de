"""Brown/UBC converter on a tiny generated set in the original layout."""
import cv2
import h5py
import numpy as np
import pytest

from lift.data import (PatchDataset, QuadrupletDataset, cut_patches, fixtures,
                       validate_patch_file)
from lift.data.brown import build_brown
from lift.data.build import main


@pytest.fixture(scope="module")
def brown(tmp_path_factory):
    return fixtures.make_brown_fixture(tmp_path_factory.mktemp("brown") / "liberty")


def test_cli_converts_every_patch_pair_and_point(brown, tmp_path):
    out = main(["brown", "--root", str(brown), "--output", str(tmp_path / "b.h5"), "--quiet"])
    assert out == tmp_path / "b.h5"
    info = validate_patch_file(out)
    assert (info.num_patches, info.num_tracks, info.num_images) == (300, 100, 2)
    assert (info.patch_size, info.support_sigma) == (64, 6.0)
    sheets = [cv2.imread(str(brown / f"patches000{b}.bmp"), 0) for b in (0, 1)]
    with h5py.File(out) as f:
        patches, tid, kp = f["patches"][...], f["track_id"][...], f["keypoints"][...]
        img, pairs, match = f["image_id"][...], f["pairs/index"][...], f["pairs/match"][...]
    np.testing.assert_array_equal(tid, np.arange(300) // 3)
    for k in (0, 17, 255, 256, 299):  # row-major 16 x 16 grid, second bitmap partly filled
        r, c = (k % 256) // 16, k % 16
        np.testing.assert_array_equal(patches[k], sheets[k // 256][r * 64:(r + 1) * 64,
                                                                   c * 64:(c + 1) * 64])
    # the stored keypoints cut the same tiles back out of the bitmaps
    for b in (0, 1):
        sel = np.flatnonzero(img == b)
        np.testing.assert_array_equal(cut_patches(sheets[b], kp[sel], 64, 6.0), patches[sel])
    lines = [ln.split() for ln in (brown / "m50_200_200_0.txt").read_text().splitlines()]
    np.testing.assert_array_equal(pairs, [[int(ln[0]), int(ln[3])] for ln in lines])
    np.testing.assert_array_equal(match, [int(ln[1] == ln[4]) for ln in lines])
    assert 0.3 < match.mean() < 0.8


def test_split_by_point_and_datasets(brown, tmp_path):
    auto = build_brown(brown, tmp_path / "a.h5", val_fraction=0.3, progress=False)
    val = PatchDataset(auto, split="val")
    train = PatchDataset(auto, split="train")
    assert len(val) + len(train) == 300 and 30 < len(val) < 150
    assert not set(val.store.track_id.tolist()) & set(train.store.track_id.tolist())
    q = QuadrupletDataset(auto, with_negative=False)
    assert q[0]["patches"].shape == (3, 1, 64, 64)
    test = build_brown(brown, tmp_path / "t.h5", split="test", max_patches=100, progress=False)
    info = validate_patch_file(test)
    assert info.split_counts["test"] == 100 and info.num_images == 1
    with h5py.File(test) as f:  # pairs beyond the converted patches are dropped
        assert f["pairs/index"][...].max() < 100


def test_brown_errors(brown, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # the console script: message, no traceback
        main(["brown", "--root", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x.h5")])
    assert exit_info.value.code == 2
    assert "no info.txt in" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="info.txt"):
        build_brown(tmp_path, tmp_path / "x.h5", progress=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "info.txt").write_text((brown / "info.txt").read_text())
    (partial / "patches0000.bmp").write_bytes((brown / "patches0000.bmp").read_bytes())
    with pytest.raises(ValueError, match="needing 2 bitmaps"):
        build_brown(partial, tmp_path / "x.h5", progress=False)
    assert not (tmp_path / "x.h5").exists()
