"""`lift-bench` end to end on small data (any image folder, built-in photos)."""
import cv2
import numpy as np
import pytest

from lift.bench.cli import main
from lift.bench.report import markdown_report, read_json


def _photo_folder(tmp_path):
    from skimage import data as skdata

    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("astronaut",):
        im = getattr(skdata, name)()
        cv2.imwrite(str(folder / f"{name}.jpg"), cv2.resize(im[..., ::-1], (320, 240)))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_homography_on_user_folder(tmp_path, capsys):
    folder = _photo_folder(tmp_path)
    out = tmp_path / "out"
    path = main(["homography", "--data", str(folder), "--methods", "sift,orb,lift", "--output", str(out),
                 "--pairs-per-image", "2", "--max-keypoints", "500", "--quiet"])
    res = read_json(path)
    assert res["settings"]["n_pairs"] == 2 and res["meta"]["command"].startswith("lift-bench homography")
    sift = res["methods"]["sift"]["summary"]
    # easy synthetic warps: SIFT matches are mostly right and the homography is found
    assert sift["mma"][2] > 0.5 and sift["homography_accuracy"]["5"] == 1.0
    assert 0 < sift["repeatability"] <= 1 and sift["keypoints_mean"] <= 500
    assert all(np.diff(sift["mma"]) >= 0)  # MMA grows with the threshold
    assert res["methods"]["lift"]["status"] in ("ok", "unavailable")
    assert (out / "results.md").read_text().count("| sift |") >= 1
    assert (out / "mma.png").stat().st_size > 5000
    assert len(list((out / "figures").glob("matches_sift_*.png"))) >= 1
    assert "MMA@3" in capsys.readouterr().out


def test_homography_with_refined_matches(tmp_path):
    """--refine adds '<method>+refine' rows scored from the same features: the same matches,
    closer to the ground truth (MMA@1 up) and a homography at least as accurate."""
    folder = _photo_folder(tmp_path)
    path = main(["homography", "--data", str(folder), "--methods", "sift,orb", "--output", str(tmp_path / "out"),
                 "--pairs-per-image", "2", "--max-keypoints", "500", "--quiet", "--no-figures",
                 "--refine", "sift"])
    res = read_json(path)
    assert list(res["methods"]) == ["sift", "sift+refine", "orb"] and res["settings"]["refine"] == "sift"
    plain, ref = (res["methods"][k] for k in ("sift", "sift+refine"))
    assert [r["matches"] for r in plain["pairs"]] == [r["matches"] for r in ref["pairs"]]
    assert ref["summary"]["mma"][0] > plain["summary"]["mma"][0] + 0.05
    for a, b in zip(plain["pairs"], ref["pairs"]):
        assert b["corner_error"] <= max(a["corner_error"], 0.5)
    assert ref["summary"]["time_ms_median"] > plain["summary"]["time_ms_median"]
    assert "| sift+refine |" in (tmp_path / "out" / "results.md").read_text()


def test_pose_and_speed_builtin(tmp_path):
    path = main(["pose", "--data", "skimage", "--methods", "sift", "--output", str(tmp_path / "pose"),
                 "--max-pairs", "2", "--no-figures", "--quiet"])
    res = read_json(path)
    assert res["methods"]["sift"]["summary"]["pose_auc"]["20"] > 0.7
    assert "AUC@10°" in markdown_report(res)
    assert (tmp_path / "pose" / "pose_recall.png").stat().st_size > 5000
    path = main(["speed", "--data", "skimage", "--methods", "orb", "--output", str(tmp_path / "speed"),
                 "--max-images", "2", "--repeats", "1", "--warmup", "1", "--max-size", "256", "--quiet"])
    s = read_json(path)["methods"]["orb"]["summary"]
    assert s["time_ms_median"] > 0 and s["keypoints_mean"] > 100


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["homography", "--data", str(tmp_path / "missing"), "--methods", "sift", "--output", str(tmp_path)])
    assert exc.value.code == 2 and "no benchmark data" in capsys.readouterr().err
    cv2.imwrite(str(tmp_path / "a.png"), np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8))
    with pytest.raises(SystemExit) as exc:
        main(["homography", "--data", str(tmp_path), "--methods", "sift,nope", "--output", str(tmp_path)])
    assert exc.value.code == 2 and "unknown method 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
