"""Console scripts: lift-extract writes hloc's layout; lift-match draws a picture."""
import json

import cv2
import h5py
import numpy as np
import pytest

from lift import LIFT
from lift.cli import extract, match
from lift.h5io import list_feature_names, read_features


@pytest.fixture
def weights(tmp_path, random_model):
    return random_model.save(tmp_path / "w.pt")


def test_extract_writes_hloc_layout_and_skips_existing(tmp_path, weights, photo, capsys):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    cv2.imwrite(str(d / "a.png"), photo)
    cv2.imwrite(str(d / "sub" / "b.jpg"), photo[::-1])
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "features.h5"
    rc = extract.main([str(d), "--output", str(out), "--model", str(weights), "--max-keypoints",
                       "300", "--quiet"])
    assert rc == 1  # the broken image is reported, the others are written
    with h5py.File(out, "r") as f:  # read as hloc does: one group per relative path
        assert sorted(list_feature_names(f)) == ["a.png", "sub/b.jpg"]
        g = f["sub/b.jpg"]
        assert g["keypoints"].dtype == np.float32 and g["keypoints"].shape == (300, 2)
        assert g["descriptors"].shape == (128, 300)  # D x N
        assert tuple(g["image_size"][()]) == (photo.shape[1], photo.shape[0])
        assert g["scores"].shape == (300,)
    feats = read_features(out, "a.png")
    assert len(feats) == 300
    mtime = out.stat().st_mtime_ns
    # a second run with the same settings skips the existing images (and leaves no temporary
    # files behind)
    same = ["--output", str(out), "--model", str(weights), "--max-keypoints", "300", "--quiet"]
    rc = extract.main([str(d / "a.png")] + same)
    assert rc == 0
    assert not list(tmp_path.glob("*.tmp"))
    with h5py.File(out, "r") as f:
        assert f["a.png/keypoints"].shape == (300, 2)
        assert f.attrs["lift_version"] and '"max_keypoints": 300' in f.attrs["extract_conf"]
    assert out.stat().st_mtime_ns >= mtime
    capsys.readouterr()
    # other settings: refused, not mixed into the file; --overwrite recomputes
    rc = extract.main([str(d / "a.png"), "--output", str(out), "--model", str(weights), "--quiet"])
    assert rc == 2 and "max_keypoints 300 -> 2048" in capsys.readouterr().err
    with h5py.File(out, "r") as f:
        assert f["a.png/keypoints"].shape == (300, 2)
    rc = extract.main([str(d / "a.png"), "--output", str(out), "--model", str(weights), "--quiet",
                       "--max-keypoints", "100", "--overwrite"])
    assert rc == 0
    with h5py.File(out, "r") as f:
        assert list_feature_names(f) == ["a.png"] and f["a.png/keypoints"].shape == (100, 2)
    # lift-sfm's extraction settings, recorded as such
    rc = extract.main([str(d / "a.png"), "--output", str(out), "--model", str(weights), "--quiet",
                       "--max-keypoints", "100", "--overwrite", "--scale-nms", "1", "--subpixel", "response"])
    assert rc == 0
    with h5py.File(out, "r") as f:
        conf = json.loads(f.attrs["extract_conf"])
        assert conf["scale_nms"] == 1 and conf["subpixel"] == "response"
        kp1 = f["a.png/keypoints"][()]
    np.testing.assert_allclose(kp1, LIFT(str(weights), max_keypoints=100, scale_nms=1,
                                         subpixel="response").extract(photo).keypoints, atol=1e-4)


def test_extract_usage_errors(tmp_path, weights):
    assert extract.main([str(tmp_path / "missing"), "--model", str(weights)]) == 2
    (tmp_path / "empty").mkdir()
    assert extract.main([str(tmp_path / "empty"), "--model", str(weights)]) == 2
    assert not (tmp_path / "features.h5").exists()


def test_match_on_builtin_pair(tmp_path, weights, capsys):
    out = tmp_path / "m.png"
    assert match.main(["--output", str(out), "--model", str(weights), "--max-keypoints", "500"]) == 0
    pic = cv2.imread(str(out))
    assert pic is not None and pic.shape[1] > 1000
    assert "mutual matches" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        match.main(["only_one.png", "--model", str(weights)])
    assert exc.value.code == 2


def test_match_refine_on_builtin_pair_with_shipped_weights(tmp_path, capsys):
    """README's main command with --refine: the corner error against the ground truth falls
    (measured 0.12 -> 0.04 px)."""
    import re

    from lift.model import LIFTModel

    try:
        LIFTModel.load("default")
    except (FileNotFoundError, ValueError):
        pytest.skip("shipped weights missing")
    errors = []
    for extra in ([], ["--refine"]):
        assert match.main(["--output", str(tmp_path / "m.png"), *extra]) == 0
        errors.append(float(re.search(r"corner error vs ground truth ([0-9.]+) px", capsys.readouterr().out)[1]))
    assert errors[1] < 0.7 * errors[0] and errors[1] < 0.1


def test_match_reports_bad_files(tmp_path, weights):
    assert match.main([str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--model", str(weights)]) == 2


def test_extract_resumes_an_interrupted_run(tmp_path, weights, photo, monkeypatch):
    """lift-extract shares lift-sfm's resumable path: images already in the part file of an
    interrupted run are not extracted again, and the part is merged and removed."""
    from lift.sfm import extract as sfm_extract

    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        cv2.imwrite(str(d / f"{i}.png"), np.roll(photo, 7 * i, axis=1))
    out = tmp_path / "features.h5"
    from lift.pipeline import LIFTConfig  # lift-extract's settings: the runtime defaults

    conf = sfm_extract.ExtractConf("lift", 200, None, str(weights), None, 0, scale_nms=LIFTConfig.scale_nms,
                                   subpixel=LIFTConfig.subpixel)
    images = extract.find_images([str(d)])
    part = sfm_extract.extract(images[:1], out, conf, progress=False)  # the "interrupted" run
    assert part.exists() and not out.exists()
    calls = []
    factory = sfm_extract.EXTRACTORS["lift"]

    def counting(c):
        run = factory(c)
        return lambda image: calls.append(1) or run(image)
    monkeypatch.setitem(sfm_extract.EXTRACTORS, "lift", counting)
    rc = extract.main([str(d), "--output", str(out), "--model", str(weights), "--max-keypoints", "200",
                       "--quiet"])
    assert rc == 0 and len(calls) == 2  # only the two images the interrupted run had not done
    assert not part.exists()
    with h5py.File(out, "r") as f:
        assert list_feature_names(f) == ["0.png", "1.png", "2.png"]
    np.testing.assert_allclose(read_features(out, "2.png").keypoints,
                               LIFT(str(weights), max_keypoints=200).extract(
                                   np.roll(photo, 14, axis=1)).keypoints, atol=1e-4)


def test_extract_missing_weights_leaves_no_files(tmp_path, photo, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    out = tmp_path / "out" / "features.h5"
    rc = extract.main([str(tmp_path / "a.png"), "--output", str(out), "--model", str(tmp_path / "nope.pt")])
    assert rc == 2 and "nope.pt" in capsys.readouterr().err
    assert not out.exists()
    assert not (out.parent.exists() and any(out.parent.iterdir()))  # no empty part file either


def test_extract_refuses_a_corrupt_output(tmp_path, weights, photo, capsys):
    cv2.imwrite(str(tmp_path / "a.png"), photo)
    out = tmp_path / "features.h5"
    out.write_bytes(b"\x89HDF\r\n not an hdf5 file")
    args = [str(tmp_path / "a.png"), "--output", str(out), "--model", str(weights), "--max-keypoints", "50",
            "--quiet"]
    assert extract.main(args) == 2
    assert "not a readable HDF5" in capsys.readouterr().err
    assert out.read_bytes().startswith(b"\x89HDF\r\n not")  # left as it was
    assert extract.main(args + ["--overwrite"]) == 0
    assert len(read_features(out, "a.png")) == 50
