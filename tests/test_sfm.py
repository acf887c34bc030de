"""lift-sfm end to end on a synthetic scene with known cameras, plus the steps: extraction
(registry, resizing, rank split + merge, resume), pairs, batched matching, bad input."""
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

pytest.importorskip("pycolmap")

from correspondence import match_descriptors  # noqa: E402
from lift import Features  # noqa: E402
from lift.cli.sfm import main as sfm_main  # noqa: E402
from lift.colmap import CameraSpec, camera_poses, model_stats, read_database, read_model  # noqa: E402
from lift.h5io import read_extract_conf  # noqa: E402
from lift.sfm import ExtractConf, MatchConf, SfMConfig, run  # noqa: E402
from lift.sfm import extract, match, pairs  # noqa: E402
from lift.sfm.evaluate import pose_errors  # noqa: E402
from lift.sfm.synthetic import render_corner_scene  # noqa: E402


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    cams = render_corner_scene(root / "images", num_views=6)
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return root / "images", cams


@pytest.fixture(scope="module")
def reconstruction(scene, tmp_path_factory):
    images, cams = scene
    K = next(iter(cams.values()))["K"]
    params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]  # COLMAP: pixel centre at +0.5
    conf = SfMConfig(extract=ExtractConf("sift", max_keypoints=1024, num_workers=1),
                     camera=CameraSpec("PINHOLE", params))
    out = tmp_path_factory.mktemp("sfm")
    return run(images, out, conf, progress=False), conf, cams


def test_synthetic_scene_reconstructs(reconstruction):
    result, _, cams = reconstruction
    s = result.stats
    assert s.registered == 6 and s.num_images == 6
    assert s.points3d > 300 and s.track_length > 3.0
    assert s.reprojection_error < 0.6
    errors = pose_errors(camera_poses(read_model(result.model)), cams)
    assert len(errors["names"]) == 6
    assert errors["center"].max() < 0.01  # scene side 1, cameras ~1.9 away
    assert errors["rotation"].max() < 0.3  # degrees
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        assert (result.model / f).is_file()
    # the unreadable image is reported and skipped, nothing else lost
    assert [n for n, _ in result.failed] == ["broken.jpg"]


def test_hloc_layouts_readable_by_h5py(reconstruction):
    result, _, _ = reconstruction
    with h5py.File(result.features, "r") as f:
        g = f["view_00.png"]
        n = g["keypoints"].shape[0]
        assert g["keypoints"].dtype == np.float32 and g["keypoints"].shape == (n, 2)
        assert g["descriptors"].shape == (128, n)
        assert tuple(g["image_size"][()]) == (400, 300)
        assert json.loads(f.attrs["failed"])[0][0] == "broken.jpg"
    lines = result.pairs.read_text().split("\n")
    assert len([x for x in lines if x]) == 15 and lines[0] == "view_00.png view_01.png"
    with h5py.File(result.matches, "r") as f:
        g = f["view_00.png"]["view_01.png"]
        m, s = g["matches0"][()], g["matching_scores0"][()]
        assert m.dtype == np.int16 and s.dtype == np.float16 and len(m) == n
        assert (m >= 0).sum() > 100 and (m >= -1).all()
    db = read_database(result.database)
    assert len(db.two_view) == 15 and db.frames == 6
    inl, config = db.two_view[("view_00.png", "view_01.png")]
    assert config == "UNCALIBRATED" and len(inl) > 100
    assert set(map(tuple, inl)) <= set(map(tuple, db.matches[("view_00.png", "view_01.png")]))


def test_rerun_skips_finished_steps(reconstruction, scene):
    result, conf, _ = reconstruction
    again = run(scene[0], result.output_dir, conf, progress=False)
    assert all(t == 0.0 for t in again.timings.values()), again.timings
    assert again.stats.points3d == result.stats.points3d


def test_rerun_with_changed_settings_recomputes_from_that_step(reconstruction, scene, tmp_path, capsys):
    result, conf, _ = reconstruction
    out = tmp_path / "sfm"
    shutil.copytree(result.output_dir, out)
    with h5py.File(out / "features.h5", "r") as f:
        assert read_extract_conf(f) == conf.extract.signature()
    # fewer keypoints: the old features must not be reused (they were, before the record)
    fewer = SfMConfig(extract=ExtractConf("sift", max_keypoints=300, num_workers=1), camera=conf.camera)
    again = run(scene[0], out, fewer, progress=False)
    assert all(t > 0 for t in again.timings.values()), again.timings
    assert "extract settings changed (max_keypoints 1024 -> 300)" in capsys.readouterr().err
    with h5py.File(out / "features.h5", "r") as f:
        assert max(len(f[n]["keypoints"]) for n in extract.list_feature_names(f)) <= 300
    assert run(scene[0], out, fewer, progress=False).timings == dict.fromkeys(again.timings, 0.0)
    # a later step's setting: the earlier steps are kept, that one and the later ones rerun
    ratio = SfMConfig(extract=fewer.extract, camera=conf.camera, match=MatchConf("mnn_ratio", 0.9))
    t = run(scene[0], out, ratio, progress=False).timings
    assert t["extract"] == t["pairs"] == 0.0 and t["match"] > 0 and t["verify"] > 0 and t["reconstruct"] > 0
    assert "match settings changed (method 'mnn' -> 'mnn_ratio', ratio 0.8 -> 0.9)" in capsys.readouterr().err
    state = json.loads((out / "lift-sfm.json").read_text())
    assert state["match"] == {"method": "mnn_ratio", "ratio": 0.9}
    assert state["verify"]["refine"]["min_ncc"] == 0.9
    # the command line's --no-refine changes the verify step only
    args = [str(scene[0]), str(out), "--extractor", "sift", "--max-keypoints", "300", "--num-workers", "1",
            "--matcher", "mnn_ratio", "--ratio", "0.9", "--camera-model", "PINHOLE",
            "--camera-params", ",".join(str(v) for v in conf.camera.params), "--no-refine", "--quiet"]
    assert sfm_main(args) == 0
    assert "verify settings changed" in capsys.readouterr().err
    assert json.loads((out / "lift-sfm.json").read_text())["verify"]["refine"] is None


def test_extract_refuses_to_mix_settings_in_one_file(scene, tmp_path):
    images, _ = scene
    items = [(p, p.name) for p in sorted(images.glob("view_0[0-1].png"))]
    out = tmp_path / "features.h5"
    extract.extract(items[:1], out, ExtractConf("sift", max_keypoints=100, num_workers=0), progress=False)
    extract.merge_parts(out, 1)
    other = ExtractConf("sift", max_keypoints=200, num_workers=0)
    with pytest.raises(extract.StaleFeaturesError, match="max_keypoints 100 -> 200"):
        extract.extract(items, out, other, progress=False)
    # an interrupted part file written with other settings is refused as well
    part = extract.part_path(tmp_path / "p.h5", 0, 1)
    extract.extract(items[:1], tmp_path / "p.h5", other, progress=False)
    with pytest.raises(extract.StaleFeaturesError, match=part.name):
        extract.extract(items, tmp_path / "p.h5", ExtractConf("rootsift", 200, num_workers=0), progress=False)
    extract.extract(items, out, other, overwrite=True, progress=False)
    extract.merge_parts(out, 1, keep_existing=False)
    with h5py.File(out, "r") as f:
        assert read_extract_conf(f)["max_keypoints"] == 200 and len(f["view_01.png"]["keypoints"]) <= 200
    # lift: the weights' content is part of the settings
    sig = ExtractConf("lift").signature()
    assert sig["scale_nms"] == 1 and len(sig["weights_sha1"]) == 40


def test_cli_bad_inputs(tmp_path, capsys, scene):
    assert sfm_main([str(tmp_path / "missing"), str(tmp_path / "o1"), "--quiet"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert sfm_main([str(empty), str(tmp_path / "o2"), "--quiet"]) == 1
    assert "no images found" in capsys.readouterr().err
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(scene[0] / "view_00.png", single)
    assert sfm_main([str(single), str(tmp_path / "o3"), "--quiet"]) == 1
    assert "single image" in capsys.readouterr().err
    # two unrelated noise images: nothing to reconstruct -> clear message, exit 1
    noise = tmp_path / "noise"
    noise.mkdir()
    import cv2

    rng = np.random.default_rng(0)
    for i in range(2):
        cv2.imwrite(str(noise / f"{i}.png"), cv2.GaussianBlur(rng.integers(0, 255, (120, 160), dtype=np.uint8), (3, 3), 1))
    assert sfm_main([str(noise), str(tmp_path / "o4"), "--extractor", "sift", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "did not reconstruct" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:  # argparse usage error
        sfm_main([str(noise), str(tmp_path / "o5"), "--extractor", "nope"])
    assert exc.value.code == 2
    assert sfm_main([str(noise), str(tmp_path / "o6"), "--camera-model", "PINHOLE",
                     "--camera-params", "100,100,80", "--extractor", "sift"]) == 2
    assert "4 parameters" in capsys.readouterr().err
    # a corrupt features.h5 left in the output folder: a clear refusal, --overwrite recovers
    out7 = tmp_path / "o7"
    out7.mkdir()
    (out7 / "features.h5").write_bytes(b"\x89HDF\r\n truncated")
    args = [str(scene[0]), str(out7), "--extractor", "sift", "--quiet", "--max-keypoints", "256"]
    assert sfm_main(args) == 2
    err = capsys.readouterr().err
    assert "not a readable HDF5" in err and "--overwrite" in err and "Traceback" not in err
    assert sfm_main(args + ["--overwrite"]) == 0


def test_extract_rank_split_merge_and_resume(scene, tmp_path):
    images, _ = scene
    items = [(p, p.name) for p in sorted(images.glob("view_0[0-2].png"))]
    conf = ExtractConf("rootsift", max_keypoints=200, num_workers=0)
    out = tmp_path / "features.h5"
    for rank in range(2):
        extract.extract(items, out, conf, rank=rank, world_size=2, progress=False)
    with h5py.File(extract.part_path(out, 0, 2), "r") as f:
        assert sorted(f.keys()) == ["view_00.png", "view_02.png"]
    extract.merge_parts(out, 2)
    assert not extract.part_path(out, 0, 2).exists()
    single = tmp_path / "single.h5"
    extract.extract(items, single, conf, progress=False)
    extract.merge_parts(single, 1)
    with h5py.File(out, "r") as a, h5py.File(single, "r") as b:
        assert sorted(a.keys()) == sorted(b.keys()) == [n for _, n in items]
        for n in a:
            np.testing.assert_array_equal(a[n]["keypoints"][()], b[n]["keypoints"][()])
            d = a[n]["descriptors"][()]
            np.testing.assert_allclose(np.linalg.norm(d, axis=0), 1, atol=1e-5)
            assert (d >= 0).all()  # RootSIFT
    # resume: an interrupted part keeps its complete groups and drops the incomplete one
    part = extract.part_path(tmp_path / "r.h5", 0, 1)
    extract.extract(items[:2], tmp_path / "r.h5", conf, progress=False)
    with h5py.File(part, "a") as f:
        del f["view_01.png"].attrs["complete"]
        kp0 = f["view_00.png"]["keypoints"][()]
        f["view_00.png"]["keypoints"][0] = -7  # would be recomputed if not resumed
    extract.extract(items, tmp_path / "r.h5", conf, progress=False)
    with h5py.File(part, "r") as f:
        assert sorted(f.keys()) == [n for _, n in items]
        assert f["view_00.png"]["keypoints"][0, 0] == -7
        np.testing.assert_array_equal(f["view_01.png"]["keypoints"][()],
                                      h5py.File(single, "r")["view_01.png"]["keypoints"][()])
    assert kp0[0, 0] != -7
    # a corrupt part (killed writer) is moved aside and redone
    part.write_bytes(b"garbage")
    extract.extract(items[:1], tmp_path / "r.h5", conf, progress=False)
    assert part.with_name(part.name + ".corrupt").exists()


def test_lift_extractor_and_resize(tmp_path, scene, random_model):
    images, _ = scene
    weights = random_model.save(tmp_path / "random.pt")
    items = [(images / "view_00.png", "view_00.png")]
    conf = ExtractConf("lift", max_keypoints=64, model=str(weights), num_workers=0, resize_max=200)
    out = extract.main(images, tmp_path / "f.h5", conf, image_names=["view_00.png"], progress=False)
    with h5py.File(out, "r") as f:
        g = f["view_00.png"]
        assert 0 < len(g["keypoints"]) <= 64 and g["descriptors"].shape[0] == random_model.descriptor.dim
        assert tuple(g["image_size"][()]) == (400, 300)
        assert g["keypoints"][:, 0].max() > 200  # mapped back to the full-size image
    # the mapping back to the original pixels: (x + 0.5) * s - 0.5, sigma * s
    small = Features(np.array([[0.0, 0.0], [99.5, 74.5]]), [1.0, 2.0], [0.0, 1.0], [1.0, 0.5],
                     np.zeros((2, 4)), (200, 150))
    big = extract.to_original(small, (400, 300))
    np.testing.assert_allclose(big.keypoints, [[0.5, 0.5], [199.5, 149.5]])
    np.testing.assert_allclose(big.scales, [2.0, 4.0])
    assert big.image_size == (400, 300)
    with pytest.raises(ValueError, match="unknown extractor"):
        extract.build_extractor(ExtractConf("nope"))


def test_lift_extractor_for_sfm_keeps_one_scale_per_location(tmp_path, scene, random_model):
    """The SfM ``lift`` extractor runs with ``scale_nms=1``: the matching default (0) keeps a
    location's keypoints at adjacent scales, which become near-duplicate tracks in SfM."""
    from lift import LIFT
    from lift.image import load_image

    images, _ = scene
    image = load_image(images / "view_00.png")
    weights = str(random_model.save(tmp_path / "random.pt"))
    assert ExtractConf().scale_nms == 1

    def near_duplicates(feats):
        d = np.linalg.norm(feats.keypoints[:, None] - feats.keypoints[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return int((d.min(1) < 1.0).sum())

    sfm = extract.build_extractor(ExtractConf("lift", max_keypoints=0, model=weights))(image)
    default = LIFT(weights, max_keypoints=None).extract(image)
    assert len(sfm) > 20 and near_duplicates(default) > 0
    assert near_duplicates(sfm) < 0.5 * near_duplicates(default), (near_duplicates(sfm), near_duplicates(default))


def test_pairs_strategies(tmp_path):
    names = [f"{i}.jpg" for i in range(5)]
    assert len(pairs.make_pairs(names, "exhaustive")) == 10
    seq = pairs.make_pairs(names, "sequential:2")
    assert seq == [("0.jpg", "1.jpg"), ("0.jpg", "2.jpg"), ("1.jpg", "2.jpg"), ("1.jpg", "3.jpg"),
                   ("2.jpg", "3.jpg"), ("2.jpg", "4.jpg"), ("3.jpg", "4.jpg")]
    f = tmp_path / "p.txt"
    f.write_text("0.jpg 1.jpg\n1.jpg 0.jpg\n\n2.jpg 9.jpg\n3.jpg 3.jpg\n4.jpg 2.jpg")
    assert pairs.make_pairs(names, str(f)) == [("0.jpg", "1.jpg"), ("4.jpg", "2.jpg")]
    assert pairs.names_to_pair("a/b.jpg", "c.jpg") == "a-b.jpg/c.jpg"
    with pytest.raises(ValueError, match="sequential:K"):
        pairs.make_pairs(names, "sequential:x")
    with pytest.raises(ValueError, match="existing pairs file"):
        pairs.make_pairs(names, "nonsense")


def test_batched_matching_equals_per_pair(tmp_path):
    rng = np.random.default_rng(0)
    out = tmp_path / "f.h5"
    sizes = {"a": 40, "b": 55, "c": 0, "d": 31}
    from lift.h5io import write_features

    descs = {}
    with h5py.File(out, "w") as f:
        for n, k in sizes.items():
            d = rng.normal(size=(k, 16)).astype(np.float32)
            d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
            descs[n] = d
            write_features(f, n, Features(rng.uniform(0, 50, (k, 2)), np.ones(k), np.zeros(k),
                                         np.zeros(k), d, (64, 64)))
    plist = pairs.exhaustive_pairs(list(sizes))
    for method, ratio in (("mnn", None), ("mnn_ratio", 0.9)):
        conf = MatchConf(method, ratio or 0.8, max_elements=3000)  # forces several batches
        got = {(a, b): (m, s) for a, b, m, s in match.match_pairs(plist, out, conf, progress=False)}
        for a, b in plist:
            ref, _ = match_descriptors(descs[a], descs[b], "mnn", ratio=ratio)
            m = got[(a, b)][0]
            i0 = np.nonzero(m >= 0)[0]
            np.testing.assert_array_equal(np.stack([i0, m[i0]], 1).reshape(-1, 2), ref.reshape(-1, 2))
    pf = pairs.write_pairs(plist, tmp_path / "pairs.txt")
    mpath = match.main(pf, out, tmp_path / "m.h5", MatchConf(), progress=False)
    k, _ = match.read_matches(mpath, "b", "a")  # reversed lookup flips the columns
    k2, _ = match.read_matches(mpath, "a", "b")
    np.testing.assert_array_equal(k, k2[:, ::-1])
    assert torch.is_tensor(torch.as_tensor(k))


def test_colmap_verifier_on_our_matches(reconstruction, scene, tmp_path):
    from lift.sfm import VerifyConf, verify

    result, conf, _ = reconstruction
    with pytest.raises(ValueError, match="image folder"):
        verify.main(result.features, result.pairs, result.matches, tmp_path / "x.db", conf.camera,
                    VerifyConf("colmap", 4.0), progress=False)
    db = verify.main(result.features, result.pairs, result.matches, tmp_path / "database.db",
                     conf.camera, VerifyConf("colmap", 4.0), progress=False, image_dir=scene[0])
    ours = read_database(result.database).two_view
    theirs = read_database(db).two_view
    assert len(theirs) == 15
    for key, (inl, config) in theirs.items():
        assert config in ("CALIBRATED", "UNCALIBRATED", "PLANAR_OR_PANORAMIC", "PLANAR")
        # both verifiers keep most of the same matches on this clean scene
        a, b = set(map(tuple, inl)), set(map(tuple, ours[key][0]))
        assert len(a & b) > 0.8 * min(len(a), len(b))


def test_single_thread_mapper_is_deterministic(reconstruction, scene, tmp_path):
    """With one mapper thread the mapper gives the same model twice on one database (the SfM
    benchmark relies on it: COLMAP is only deterministic on one thread)."""
    from lift.sfm import reconstruct

    result, _, _ = reconstruction
    runs = []
    for k in range(2):
        model = reconstruct.main(result.database, scene[0], tmp_path / str(k), fix_intrinsics=True,
                                 num_threads=1)
        rec = read_model(model)
        runs.append((rec.num_points3D(), camera_poses(rec)))
    (n0, p0), (n1, p1) = runs
    assert n0 == n1 > 300 and sorted(p0) == sorted(p1)
    for name in p0:
        assert np.array_equal(p0[name]["R"], p1[name]["R"]) and np.array_equal(p0[name]["t"], p1[name]["t"])


def test_keypoint_refinement_lowers_reprojection_error(reconstruction, scene, tmp_path):
    """The refined database (the default) against the detected positions, same matches: the
    stored keypoints of the verified tracks move (features.h5 keeps the detections) and the
    model's reprojection error falls."""
    from lift.sfm import RefineConf, VerifyConf, reconstruct, verify

    result, conf, cams = reconstruction
    db = verify.main(result.features, result.pairs, result.matches, tmp_path / "plain.db", conf.camera,
                     VerifyConf(refine=None), progress=False)
    plain, refined = read_database(db), read_database(result.database)
    moved = total = 0
    with h5py.File(result.features, "r") as f:
        for name, kp in refined.keypoints.items():
            det = f[name]["keypoints"][()] + 0.5  # COLMAP convention
            np.testing.assert_allclose(plain.keypoints[name][:, :2], det, atol=1e-4)
            np.testing.assert_array_equal(refined.keypoints[name][:, 2:], plain.keypoints[name][:, 2:])
            shift = np.linalg.norm(kp[:, :2] - det, axis=1)
            moved += int((shift > 1e-4).sum())
            total += len(kp)
            assert (shift <= RefineConf().max_shift * kp[:, 2] + 0.5 + 1e-3).all()  # the acceptance bound
    assert moved > 0.2 * total
    stats = []
    for name, path in (("plain", db), ("refined", result.database)):
        model = reconstruct.main(path, scene[0], tmp_path / name, fix_intrinsics=True, num_threads=1)
        stats.append(model_stats(read_model(model)))
    assert stats[0].registered == stats[1].registered == 6
    assert stats[1].reprojection_error < 0.8 * stats[0].reprojection_error


def test_extract_signature_records_the_noise_threshold():
    """The lift extractor's pre-smoothing setting is part of what features.h5 records, so
    features made with another setting are not reused (lift.denoise)."""
    default, off = ExtractConf(), ExtractConf(noise_threshold=None)
    assert default.signature()["noise_threshold"] == 8.0 and off.signature()["noise_threshold"] is None
    assert "noise_threshold" not in ExtractConf("sift").signature()
    from lift.cli.sfm import build_parser

    args = build_parser().parse_args(["in", "out", "--noise-threshold", "0"])
    assert args.noise_threshold == 0.0  # main() maps <= 0 to None (disabled)
