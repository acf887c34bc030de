"""SfM benchmark: lift vs SIFT through the same ``lift-sfm`` path, and COLMAP's own SIFT pipeline
(pycolmap) as the reference, on Strecha castle-P19 / entry-P10 (ground-truth cameras) and
sacre_coeur/mapping. Writes ``benchmarks/sfm.md``.

Metrics: registered images, 3-D points, mean track length, mean reprojection error (px), camera
centre error (mm, Strecha units are metres) and rotation error (deg) against the ground truth
after a similarity alignment of the centres (:mod:`lift.sfm.evaluate`), wall time per stage.

Strecha images (3072 x 2048) are downscaled to ``--long-side`` px (default 1536, K scaled with
them) into the work folder; the ground-truth intrinsics are given to every method and kept fixed
(PINHOLE, one shared camera). sacre_coeur has no ground truth: one SIMPLE_RADIAL camera per image,
estimated.

Usage::

    python tools/bench_sfm.py --methods lift,sift,colmap --max-keypoints 2048

A method is a ``lift-sfm`` extractor name (``lift``, ``sift``, ...), optionally with
``+norefine`` (the same without the keypoint refinement, :mod:`correspondence.refine`), or
``colmap``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lift.colmap import (CameraSpec, camera_poses, colmap_sift_database, incremental_mapping,  # noqa: E402
                         model_stats, read_model, write_model)
from lift.sfm import ExtractConf, RefineConf, SfMConfig, SfMError, VerifyConf, run  # noqa: E402
from lift.sfm.evaluate import pose_errors, read_strecha_camera  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "sfm"
SCENES = {
    "castle-P19": ("strecha", SHARED / "strecha" / "castle-P19"),
    "entry-P10": ("strecha", SHARED / "strecha" / "entry-P10"),
    "sacre_coeur": ("plain", SHARED / "sacre_coeur" / "mapping"),
}


def prepare_strecha(src: Path, dst: Path, long_side: int):
    """Downscaled images in dst/images and GT cameras (K scaled) keyed by image name."""
    import cv2

    images = dst / "images"
    images.mkdir(parents=True, exist_ok=True)
    gt = {}
    for path in sorted((src / "images").glob("*.jpg")):
        cam_file = src / "gt_dense_cameras" / (path.name + ".camera")
        img = cv2.imread(str(path))
        h, w = img.shape[:2]
        s = long_side / max(h, w)
        out = images / path.name
        if not out.exists():
            cv2.imwrite(str(out), cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
        gt[path.name] = read_strecha_camera(cam_file, scale=s)
    K = next(iter(gt.values()))["K"]
    params = [K[0, 0], K[1, 1], K[0, 2] + 0.5, K[1, 2] + 0.5]  # COLMAP: pixel centre at +0.5
    return images, gt, params


def evaluate(model_dir: Path, num_images: int, gt):
    rec = read_model(model_dir)
    row = vars(model_stats(rec, num_images)).copy()
    if gt:
        try:
            e = pose_errors(camera_poses(rec), gt)
            row.update(center_med_mm=1000 * float(np.median(e["center"])),
                       center_mean_mm=1000 * float(np.mean(e["center"])),
                       rot_med_deg=float(np.median(e["rotation"])))
        except ValueError as err:
            row["gt_error"] = str(err)
    return row


def data_fingerprint(folder: Path) -> str:
    """First 12 hex digits of the sha1 of ``name:size`` of every file under ``folder`` (sorted)."""
    import hashlib

    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{f.relative_to(folder).as_posix()}:{f.stat().st_size}\n".encode())
    return h.hexdigest()[:12]


def seed_spread(database: Path, images: Path, work: Path, num_images: int, gt, seeds: int,
                fix_intrinsics: bool) -> dict:
    """The same database mapped with mapper seeds 1 .. seeds-1 (single-threaded COLMAP is
    deterministic for a seed, but its path through a scene depends on it): per seed the
    registered images, points, reprojection error and median centre error."""
    from lift.sfm import reconstruct

    out = []
    for seed in range(1, seeds):
        try:
            model = reconstruct.main(database, images, work / f"seed{seed}", fix_intrinsics, overwrite=True,
                                     seed=seed, num_threads=1)
            out.append(evaluate(model, num_images, gt))
        except SfMError as err:
            out.append({"error": str(err)})
    return {"seeds": out}


def run_lift_sfm(method, images, work, params, args, gt):
    """``method``: an extractor name, with ``+norefine``: without the keypoint refinement."""
    extractor, _, variant = method.partition("+")
    if variant not in ("", "norefine"):
        raise ValueError(f"unknown method variant {variant!r} (known: +norefine)")
    refine = None if variant == "norefine" else RefineConf()
    conf = SfMConfig(extract=ExtractConf(extractor, args.max_keypoints, model=args.model, num_workers=1),
                     verify=VerifyConf(threshold=args.verify_threshold, refine=refine), mapper_threads=1,
                     camera=CameraSpec("PINHOLE", params, "single") if params else CameraSpec("SIMPLE_RADIAL"))
    t = time.perf_counter()
    res = run(images, work, conf, overwrite=True, progress=False)
    row = evaluate(res.model, res.stats.num_images, gt)
    row["times"] = {k: round(v, 1) for k, v in res.timings.items()}
    row["total_s"] = round(time.perf_counter() - t, 1)
    row.update(seed_spread(res.database, images, work, res.stats.num_images, gt, args.seeds, bool(params)))
    return row


def run_colmap(images, work, params, args, gt):
    work.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in images.iterdir())
    t0 = time.perf_counter()
    db = colmap_sift_database(work / "database.db", images, names, args.max_keypoints,
                              camera_model="PINHOLE" if params else "SIMPLE_RADIAL",
                              camera_params=params, single_camera=bool(params), num_threads=2)
    t1 = time.perf_counter()
    models = incremental_mapping(db, images, work / "raw", fix_intrinsics=bool(params), num_threads=1)
    t2 = time.perf_counter()
    if not models:
        raise SfMError("COLMAP reconstructed nothing")
    model = write_model(models[0], work / "sparse" / "0")
    row = evaluate(model, len(names), gt)
    row["times"] = {"extract+match+verify": round(t1 - t0, 1), "reconstruct": round(t2 - t1, 1)}
    row["total_s"] = round(t2 - t0, 1)
    row.update(seed_spread(db, images, work, len(names), gt, args.seeds, bool(params)))
    return row


def fmt(v, spec):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def report(results, args, path: Path):
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = "?"
    import pycolmap
    import torch

    lines = [
        "# Structure from motion benchmark (lift-sfm)", "",
        f"Generated by `tools/bench_sfm.py` (never edited by hand).", "",
        f"- date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC; commit: {commit}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs shared with other jobs, "
        f"torch {torch.__version__} (2 threads), pycolmap {pycolmap.__version__}, "
        f"OpenCV {cv2.__version__}, numpy {np.__version__}",
        "- data (sha1 of the image files' names and byte sizes, to tell a changed data set from a "
        "changed pipeline): " + ", ".join(f"{k} `{data_fingerprint(v[1])}`" for k, v in SCENES.items()
                                          if v[1].is_dir()),
        f"- command: `python tools/bench_sfm.py {' '.join(sys.argv[1:])}`",
        f"- settings: {args.max_keypoints} keypoints per image for every method; Strecha images downscaled "
        f"to {args.long_side} px long side, ground-truth K (scaled) given and fixed, one PINHOLE camera; "
        "sacre_coeur: one SIMPLE_RADIAL camera per image, estimated. lift-sfm: LIFT with its SfM setting "
        "scale_nms=1 (one scale per location; `ExtractConf.scale_nms`) and subpixel='response' (positions "
        "from the detector's continuous response; `ExtractConf.subpixel`), exhaustive pairs, mutual NN "
        f"matching, our batched F-RANSAC (Sampson {args.verify_threshold:g} px, >= 15 inliers), keypoints of "
        "each verified track moved onto one point by patch alignment (`correspondence.refine`, defaults; "
        "`+norefine`: without it), pycolmap incremental mapping. "
        "colmap: pycolmap SIFT extraction (same budget, RootSIFT-normalised, same images), exhaustive SIFT "
        "matching with COLMAP's verification, same mapper. Every mapper runs on 1 thread, the only "
        "setting where COLMAP gives the same model on every run (with more threads, sacre_coeur with SIFT "
        "registered 8 or 2 of 10 images from run to run on one database).",
        "- errors: camera centres aligned to the ground truth by a least-squares similarity; centre error "
        "in mm (Strecha units are metres), rotation error in degrees; median over registered images.", "",
        "| scene | method | registered | 3-D points | track length | reproj. err. (px) | centre err. med (mm) "
        "| centre err. mean (mm) | rot. err. med (°) | time per stage (s) | total (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scene, rows in results.items():
        for method, r in rows.items():
            if "error" in r:
                lines.append(f"| {scene} | {method} | failed: {r['error']} | | | | | | | | |")
                continue
            times = ", ".join(f"{k} {v}" for k, v in r["times"].items())
            lines.append(
                f"| {scene} | {method} | {r['registered']}/{r['num_images']} | {r['points3d']} | "
                f"{fmt(r['track_length'], '.2f')} | {fmt(r['reprojection_error'], '.3f')} | "
                f"{fmt(r.get('center_med_mm'), '.1f')} | {fmt(r.get('center_mean_mm'), '.1f')} | "
                f"{fmt(r.get('rot_med_deg'), '.3f')} | {times} | {r['total_s']} |")
    if args.seeds > 1:
        lines += ["", f"The same databases mapped with mapper seeds 0..{args.seeds - 1} (one value per seed; "
                  "single-threaded COLMAP is deterministic for a seed, but the order in which it registers "
                  "images depends on it):", "",
                  "| scene | method | registered | 3-D points | reproj. err. (px) | centre err. med (mm) |",
                  "|---|---|---|---|---|---|"]
        for scene, rows in results.items():
            for method, r in rows.items():
                if "error" in r:
                    continue
                runs = [r] + r.get("seeds", [])
                col = lambda key, spec: " / ".join("–" if "error" in x else fmt(x.get(key), spec) for x in runs)  # noqa: E731
                lines.append(f"| {scene} | {method} | {col('registered', 'd')} | {col('points3d', 'd')} | "
                             f"{col('reprojection_error', '.3f')} | {col('center_med_mm', '.1f')} |")
    if args.note:
        lines += ["", args.note]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="lift,sift,colmap")
    p.add_argument("--scenes", default=",".join(SCENES))
    p.add_argument("--max-keypoints", type=int, default=2048)
    p.add_argument("--long-side", type=int, default=1536)
    p.add_argument("--model", default="default", help="LIFT weights for the lift method")
    p.add_argument("--verify-threshold", type=float, default=VerifyConf.threshold,
                   help="lift-sfm's F-RANSAC Sampson threshold, px")
    p.add_argument("--work", type=Path, default=Path("/tmp/lift_bench_sfm"))
    p.add_argument("--report", type=Path, default=ROOT / "benchmarks" / "sfm.md")
    p.add_argument("--note", default="", help="free text appended to the report")
    p.add_argument("--seeds", type=int, default=4,
                   help="map every database with this many mapper seeds (the table: seed 0; the "
                        "second table: the spread over all)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    results = {}
    for scene in args.scenes.split(","):
        kind, src = SCENES[scene]
        if not src.exists():
            print(f"skipping {scene}: {src} is absent", file=sys.stderr)
            continue
        work = args.work / scene
        if kind == "strecha":
            images, gt, params = prepare_strecha(src, work, args.long_side)
        else:
            images, gt, params = src, None, None
        results[scene] = {}
        for method in args.methods.split(","):
            print(f"== {scene} / {method}", file=sys.stderr, flush=True)
            try:
                if method == "colmap":
                    row = run_colmap(images, work / method, params, args, gt)
                else:
                    row = run_lift_sfm(method, images, work / method, params, args, gt)
            except (SfMError, FileNotFoundError, ValueError) as err:
                row = {"error": str(err).split("\n")[0]}
            results[scene][method] = row
            print(json.dumps(row), file=sys.stderr, flush=True)
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    report(results, args, args.report)
    print(args.report)


if __name__ == "__main__":
    main()
