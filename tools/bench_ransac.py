"""Benchmark of correspondence.ransac against OpenCV, pydegensac, poselib and kornia.

Protocol (issue "Batched robust estimation in torch"):

* Homography: synthetic correspondences in a 640 x 480 frame, N in {500, 2000}, inlier ratio in
  {0.5, 0.2, 0.1}, 1 px Gaussian noise on inliers, uniform outliers, ``--trials`` problems per
  setting, 3 px threshold, confidence 0.999; success = mean corner error < 3 px. Time = median
  wall time per problem. ``ours (batched)`` solves all trials of a setting in one call and reports
  total time / trials.
* Batch: 64 problems (N=2000, r=0.5) in one call vs 64 ``cv2.USAC_MAGSAC`` calls in a loop.
* ``ours`` samples uniformly, then from the neighbourhood-consistency prior once a problem
  still needs more than 16384 (H) or 2048 (E) samples after 1/8 of that;
  ``ours, uniform sampling`` is the ablation (``prior="uniform"``).
* Relative pose: synthetic scenes (N=2000, r in {0.5, 0.25, 0.1}, 1 px noise, focal 500 px),
  pose error = max(rotation error, translation direction error); mAP@X = mean of the accuracies
  at 5, 10, ..., X degrees (CNe / OANet convention); 1 px threshold for every method.

Baselines missing from the environment are reported as unavailable (install them with
``pip install -r tools/requirements-bench.txt``; kornia with ``--no-deps`` to keep torch).
Writes ``benchmarks/ransac.md`` (date, machine, command, tables); ``main()`` returns its path.

Usage: ``python tools/bench_ransac.py [--trials 100] [--pose-scenes 30] [--out benchmarks/ransac.md]``
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

# On a shared CPU, OpenMP threads that spin while waiting make every torch call 10x slower as soon
# as the cores are oversubscribed; passive waiting keeps the measurement meaningful.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from correspondence.ransac import estimate_relative_pose, find_homography  # noqa: E402
from correspondence.synthetic import (corner_error, homography_problem, relative_pose_problem,  # noqa: E402
                                      rotation_error_deg, translation_error_deg)

THRESHOLD = 3.0
CONFIDENCE = 0.999
CV2_MAX_ITERS = 10_000
SIZE = (640, 480)


def _timed(fn: Callable, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


# ------------------------------------------------------------------ homography methods
def homography_methods() -> Dict[str, Optional[Callable]]:
    """name -> fn(src N x 2 float64, dst) -> H or None (None entry: unavailable, with reason)."""
    import cv2

    methods: Dict[str, Optional[Callable]] = {}
    notes: Dict[str, str] = {}

    def ours(src, dst, prior="consistency"):
        H, _ = find_homography(torch.from_numpy(src).float(), torch.from_numpy(dst).float(),
                               threshold=THRESHOLD, confidence=CONFIDENCE, prior=prior)
        return H.double().numpy()

    methods["ours"] = ours
    methods["ours, uniform sampling"] = lambda src, dst: ours(src, dst, "uniform")
    for name, flag in (("cv2 RANSAC", cv2.RANSAC), ("cv2 USAC_MAGSAC", cv2.USAC_MAGSAC),
                       ("cv2 USAC_ACCURATE", cv2.USAC_ACCURATE)):
        def run(src, dst, flag=flag):
            H, _ = cv2.findHomography(src, dst, flag, THRESHOLD, maxIters=CV2_MAX_ITERS, confidence=CONFIDENCE)
            return H
        methods[name] = run
    try:
        import pydegensac

        def degensac(src, dst):
            H, _ = pydegensac.findHomography(src, dst, THRESHOLD, CONFIDENCE, CV2_MAX_ITERS)
            return H
        methods["pydegensac"] = degensac
    except Exception as e:  # pragma: no cover - depends on the environment
        notes["pydegensac"] = f"unavailable ({type(e).__name__}: {e})"
    try:
        import poselib

        def pl(src, dst):
            H, _ = poselib.estimate_homography(src, dst, {"max_reproj_error": THRESHOLD, "success_prob": CONFIDENCE})
            return H
        methods["poselib"] = pl
    except Exception as e:  # pragma: no cover
        notes["poselib"] = f"unavailable ({type(e).__name__}: {e})"
    try:
        from kornia.geometry.ransac import RANSAC

        kr = RANSAC("homography", inl_th=THRESHOLD, confidence=CONFIDENCE)

        def kornia_h(src, dst):
            H, _ = kr(torch.from_numpy(src).float(), torch.from_numpy(dst).float())
            return H.double().numpy()
        methods["kornia RANSAC"] = kornia_h
    except Exception as e:  # pragma: no cover
        notes["kornia RANSAC"] = f"unavailable ({type(e).__name__}: {e})"
    return methods, notes


def bench_homography(trials: int, seed: int) -> List[dict]:
    methods, notes = homography_methods()
    rows = []
    for n in (500, 2000):
        for ratio in (0.5, 0.2, 0.1):
            rng = np.random.default_rng(seed)
            probs = [homography_problem(rng, n, ratio, noise=1.0, size=SIZE) for _ in range(trials)]
            errs = {name: [] for name in methods}
            times = {name: [] for name in methods}
            for p in probs:  # methods interleaved per problem: the same load for all of them
                for name, fn in methods.items():
                    try:
                        H, dt = _timed(fn, p["src"], p["dst"])
                    except Exception:  # a baseline failing on one problem counts as a failure
                        H, dt = None, float("nan")
                    errs[name].append(corner_error(H, p["H"], SIZE))
                    times[name].append(dt)
            for name in methods:
                rows.append(_row(name, n, ratio, errs[name], times[name]))
            # all problems of the setting in one batched call
            src = torch.from_numpy(np.stack([p["src"] for p in probs])).float()
            dst = torch.from_numpy(np.stack([p["dst"] for p in probs])).float()
            (H, _), dt = _timed(find_homography, src, dst, THRESHOLD, CONFIDENCE)
            errs = [corner_error(H[i].double().numpy(), p["H"], SIZE) for i, p in enumerate(probs)]
            rows.append(_row("ours (batched)", n, ratio, errs, [dt / trials] * trials))
            print(f"N={n} r={ratio}: " + ", ".join(f"{r['method']} {r['success']:.2f}/{r['ms']:.1f}ms"
                                                   for r in rows if r["n"] == n and r["ratio"] == ratio),
                  flush=True)
    for name, why in notes.items():
        rows.append({"method": name, "n": None, "ratio": None, "note": why})
    return rows


def _row(name, n, ratio, errs, times):
    errs = np.asarray(errs)
    return {"method": name, "n": n, "ratio": ratio, "success": float((errs < 3.0).mean()),
            "median_err": float(np.median(errs)), "ms": float(np.nanmedian(times) * 1e3)}


def bench_batch(seed: int, n_prob: int = 64) -> dict:
    import cv2

    rng = np.random.default_rng(seed + 1)
    probs = [homography_problem(rng, 2000, 0.5, noise=1.0, size=SIZE) for _ in range(n_prob)]
    src = torch.from_numpy(np.stack([p["src"] for p in probs])).float()
    dst = torch.from_numpy(np.stack([p["dst"] for p in probs])).float()
    find_homography(src[:2], dst[:2])  # warm-up
    (H, _), t_ours = _timed(find_homography, src, dst, THRESHOLD, CONFIDENCE)
    s_ours = np.mean([corner_error(H[i].double().numpy(), p["H"], SIZE) < 3 for i, p in enumerate(probs)])
    t = time.perf_counter()
    Hc = [cv2.findHomography(p["src"], p["dst"], cv2.USAC_MAGSAC, THRESHOLD, maxIters=CV2_MAX_ITERS,
                             confidence=CONFIDENCE)[0] for p in probs]
    t_cv = time.perf_counter() - t
    s_cv = np.mean([corner_error(h, p["H"], SIZE) < 3 for h, p in zip(Hc, probs)])
    print(f"batch of {n_prob}: ours {t_ours * 1e3:.1f} ms ({s_ours:.2f}), cv2 USAC_MAGSAC loop "
          f"{t_cv * 1e3:.1f} ms ({s_cv:.2f})", flush=True)
    return {"n_prob": n_prob, "ours_ms": t_ours * 1e3, "ours_success": float(s_ours),
            "cv2_ms": t_cv * 1e3, "cv2_success": float(s_cv)}


# ------------------------------------------------------------------ relative pose
def pose_methods():
    import cv2

    methods, notes = {}, {}

    def ours(k0, k1, K, prior="consistency"):
        R, t, _ = estimate_relative_pose(torch.from_numpy(k0).float(), torch.from_numpy(k1).float(),
                                         torch.from_numpy(K).float(), torch.from_numpy(K).float(),
                                         threshold=1.0, confidence=CONFIDENCE, prior=prior)
        return R.double().numpy(), t.double().numpy()
    methods["ours"] = ours
    methods["ours, uniform sampling"] = lambda k0, k1, K: ours(k0, k1, K, "uniform")
    for name, flag in (("cv2 RANSAC", cv2.RANSAC), ("cv2 USAC_MAGSAC", cv2.USAC_MAGSAC)):
        def run(k0, k1, K, flag=flag):
            E, m = cv2.findEssentialMat(k0, k1, K, method=flag, prob=CONFIDENCE, threshold=1.0)
            if E is None:
                return None, None
            best = (-1, None, None)
            for i in range(0, E.shape[0] // 3):  # cv2 may stack several solutions
                n, R, t, _ = cv2.recoverPose(E[3 * i:3 * i + 3], k0, k1, K, mask=m.copy())
                if n > best[0]:
                    best = (n, R, t.ravel())
            return best[1], best[2]
        methods[name] = run
    try:
        import poselib

        def pl(k0, k1, K):
            cam = {"model": "PINHOLE", "width": SIZE[0], "height": SIZE[1],
                   "params": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]]}
            pose, _ = poselib.estimate_relative_pose(k0, k1, cam, cam, {"max_epipolar_error": 1.0,
                                                                        "success_prob": CONFIDENCE}, {})
            return pose.R, pose.t
        methods["poselib"] = pl
    except Exception as e:  # pragma: no cover
        notes["poselib"] = f"unavailable ({type(e).__name__}: {e})"
    return methods, notes


def bench_pose(scenes: int, seed: int) -> List[dict]:
    methods, notes = pose_methods()
    rows = []
    for ratio in (0.5, 0.25, 0.1):
        rng = np.random.default_rng(seed + 2)
        probs = [relative_pose_problem(rng, 2000, ratio, noise=1.0, size=SIZE) for _ in range(scenes)]
        for name, fn in methods.items():
            errs, times = [], []
            for p in probs:
                try:
                    (R, t), dt = _timed(fn, p["kpts0"], p["kpts1"], p["K"])
                except Exception:
                    R, t, dt = None, None, float("nan")
                errs.append(max(rotation_error_deg(R, p["R"]), translation_error_deg(t, p["t"])))
                times.append(dt)
            errs = np.asarray(errs)
            acc = [(errs < th).mean() for th in (5, 10, 15, 20)]
            rows.append({"method": name, "ratio": ratio, "mAP5": acc[0], "mAP10": float(np.mean(acc[:2])),
                         "mAP20": float(np.mean(acc)), "median_err": float(np.median(errs)),
                         "ms": float(np.nanmedian(times) * 1e3)})
        print(f"pose r={ratio}: " + ", ".join(f"{r['method']} {r['mAP5']:.2f}/{r['mAP10']:.2f}/{r['mAP20']:.2f}"
                                               f" {r['ms']:.0f}ms" for r in rows if r["ratio"] == ratio),
              flush=True)
    for name, why in notes.items():
        rows.append({"method": name, "ratio": None, "note": why})
    return rows


# ------------------------------------------------------------------ report
def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except Exception:
        cpu = platform.processor() or "unknown CPU"
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), load average at start {load[0]:.2f}")


def write_report(path: Path, command: str, machine: str, elapsed: float, h_rows, batch, p_rows, trials, scenes):
    lines = ["# Robust estimation benchmark (correspondence.ransac)", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {machine}", f"- command: `{command}`", f"- wall time: {elapsed:.0f} s",
             f"- homography: {trials} trials per setting, threshold {THRESHOLD} px, confidence {CONFIDENCE}, "
             f"OpenCV / pydegensac maxIters {CV2_MAX_ITERS}, poselib and kornia defaults otherwise; "
             "success = mean corner error < 3 px; time = median per problem, the methods interleaved per problem (the same load for all).",
             "- environment: OMP_WAIT_POLICY=PASSIVE (set by the script).",
             f"- relative pose: {scenes} scenes per ratio, N=2000, 1 px threshold, mAP@X = mean accuracy "
             "at 5..X degrees of max(rotation, translation-direction) error.", "",
             "## Homography: success rate / median ms per problem", ""]
    methods = list(dict.fromkeys(r["method"] for r in h_rows if r.get("n")))
    settings = sorted({(r["n"], r["ratio"]) for r in h_rows if r.get("n")}, key=lambda s: (s[0], -s[1]))
    lines.append("| method | " + " | ".join(f"N={n} r={r}" for n, r in settings) + " |")
    lines.append("|---" * (len(settings) + 1) + "|")
    for m in methods:
        cells = []
        for n, ratio in settings:
            r = next(x for x in h_rows if x["method"] == m and x.get("n") == n and x["ratio"] == ratio)
            cells.append(f"{r['success']:.2f} / {r['ms']:.1f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for r in h_rows:
        if "note" in r:
            lines.append(f"\n- {r['method']}: {r['note']}")
    lines += ["", f"## Batch: {batch['n_prob']} problems, N=2000, r=0.5", "",
              "| method | total ms | success |", "|---|---|---|",
              f"| ours, one batched call | {batch['ours_ms']:.1f} | {batch['ours_success']:.2f} |",
              f"| cv2 USAC_MAGSAC, loop | {batch['cv2_ms']:.1f} | {batch['cv2_success']:.2f} |", "",
              "## Relative pose: mAP@5 / @10 / @20 and median ms per pair", "",
              "| method | " + " | ".join(f"r={r}" for r in (0.5, 0.25, 0.1)) + " |", "|---|---|---|---|"]
    for m in dict.fromkeys(r["method"] for r in p_rows if r.get("ratio")):
        cells = []
        for ratio in (0.5, 0.25, 0.1):
            r = next(x for x in p_rows if x["method"] == m and x.get("ratio") == ratio)
            cells.append(f"{r['mAP5']:.2f} / {r['mAP10']:.2f} / {r['mAP20']:.2f} ({r['ms']:.0f} ms)")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for r in p_rows:
        if "note" in r:
            lines.append(f"\n- {r['method']}: {r['note']}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=100, help="homography problems per setting")
    parser.add_argument("--pose-scenes", type=int, default=30, help="relative-pose scenes per inlier ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "ransac.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import cv2
    cv2.setNumThreads(args.threads)
    command = "python tools/bench_ransac.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = _machine()
    t0 = time.perf_counter()
    h_rows = bench_homography(args.trials, args.seed)
    batch = bench_batch(args.seed)
    p_rows = bench_pose(args.pose_scenes, args.seed)
    write_report(args.out, command.strip(), machine, time.perf_counter() - t0, h_rows, batch, p_rows,
                 args.trials, args.pose_scenes)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
