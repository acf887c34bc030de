"""Benchmark of the learned outlier filter (correspondence.cne) against robust estimators.

Protocol (issue "Learned outlier filter (CNe)"), all methods in one run:

* Synthetic scenes: ``correspondence.synthetic.relative_pose_problem`` (640 x 480, focal 500 px,
  N=2000, inlier ratio 0.5 / 0.25 / 0.1, 1 px noise, uniform outliers), ``--scenes`` per ratio
  (100 by default). The network never saw these scenes (its synthetic training pairs come from
  a different generator and seeds).
* Real pairs: the held-out Strecha scenes entry-P10 and castle-P19 (ground-truth cameras, images
  downscaled 3x to 1024 x 683, pairs at most 3 images apart, OpenCV SIFT 2000 keypoints,
  single nearest neighbour without ratio test, as the CNe paper), from
  ``runs/cne/real_test.npz`` (built by ``python -m correspondence.training.cne_data`` if missing).
* Pose error = max(rotation error, translation direction error) in degrees; mAP@X = mean of the
  accuracies at 5, 10, ..., X degrees (CNe / OANet convention); AUC@X = area under the recall
  curve up to X degrees (SuperGlue convention, ``lift.bench.metrics.pose_auc``).
* Time: median wall time per pair on ``--threads`` (2) threads, ``OMP_WAIT_POLICY=PASSIVE``.
* Methods: our RANSAC (``estimate_relative_pose``), ``cv2.findEssentialMat`` USAC_MAGSAC,
  poselib (when installed; anchors from ``tools/bench_ransac.py``, 1 px threshold); CNe with the
  weighted eight-point (``relative_pose_cne(method="cne")``) and CNe + our RANSAC on the kept
  matches (``method="cne+ransac"``), also with ``second_hypothesis=True`` (a second RANSAC
  problem on all matches in the same batched call, the better MSAC score on all matches
  wins). For real pairs with two intrinsics the single-K anchors get
  image-1 keypoints re-expressed with ``K0`` (``K0 K1^-1 x1``; the same rays).
* CNe inference time for N=2000: the network pass ``filter_matches`` runs (``CNeNet.infer``, default
  precision) and the whole ``filter_matches`` call, with the float32 paths as anchors in the same
  interleaved rounds (median and 10th percentile of 100), measured twice: in a child process with
  the default OpenMP environment (how users run it; the headline figure) and in this process
  under ``OMP_WAIT_POLICY=PASSIVE``.

Writes ``benchmarks/cne.md``; ``main()`` returns its path.

Usage: ``python tools/bench_cne.py [--scenes 100] [--weights correspondence/weights/cne_default.pt]``
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

_ORIG_OMP = os.environ.get("OMP_WAIT_POLICY")
# before torch: spinning OpenMP threads inflate the other methods' timings (the per-pair
# comparisons); the inference timing also runs in a child process with the user's default
# OpenMP environment (``--inference-only``), where this is not set
if "--inference-only" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_ransac import CONFIDENCE, SIZE, _machine, _timed, pose_methods  # noqa: E402

from correspondence.cne import _prepare, default_weights_path, filter_matches, inference_dtype, load_cne, \
    relative_pose_cne  # noqa: E402
from correspondence.synthetic import relative_pose_problem, rotation_error_deg, translation_error_deg  # noqa: E402
from correspondence.training.cne import map_at  # noqa: E402
from correspondence.training.cne_data import TEST_STRECHA, build_real_cache, load_real_cache  # noqa: E402
from lift.bench.metrics import pose_auc  # noqa: E402
from lift.bench.report import _atomic_write_bytes  # noqa: E402

RATIOS = (0.5, 0.25, 0.1)
ANCHORS = ("ours", "cv2 USAC_MAGSAC", "poselib")


def methods(model) -> Dict[str, Callable]:
    """name -> fn(k0, k1, K0, K1) -> (R, t)."""
    base, notes = pose_methods()
    out: Dict[str, Callable] = {}
    for name in ANCHORS:
        if name not in base:
            continue
        fn = base[name]

        def run(k0, k1, K0, K1, fn=fn):
            if not np.allclose(K0, K1):
                h = np.c_[k1, np.ones(len(k1))] @ (K0 @ np.linalg.inv(K1)).T
                k1 = h[:, :2] / h[:, 2:]
            return fn(np.ascontiguousarray(k0), np.ascontiguousarray(k1), K0)
        out["RANSAC (ours)" if name == "ours" else name] = run

    def cne(k0, k1, K0, K1, method, **kw):
        R, t, _ = relative_pose_cne(torch.from_numpy(k0).float(), torch.from_numpy(k1).float(),
                                    torch.from_numpy(K0).float(), torch.from_numpy(K1).float(),
                                    method=method, model=model, threshold=1.0, confidence=CONFIDENCE, **kw)
        return R.double().numpy(), t.double().numpy()
    out["CNe (weighted 8-point)"] = lambda k0, k1, K0, K1: cne(k0, k1, K0, K1, "cne")
    out["CNe + RANSAC (ours)"] = lambda k0, k1, K0, K1: cne(k0, k1, K0, K1, "cne+ransac")
    out["CNe + RANSAC, second hypothesis (ours)"] = lambda k0, k1, K0, K1: cne(
        k0, k1, K0, K1, "cne+ransac", second_hypothesis=True)
    return out, notes


def evaluate(fns: Dict[str, Callable], probs: List[dict], label: str) -> List[dict]:
    """Every method on every problem, the methods interleaved per problem (so that a change of
    machine load during the run hits all of them alike and the time ratios stay meaningful)."""
    errs = {name: [] for name in fns}
    times = {name: [] for name in fns}
    for p in probs:
        for name, fn in fns.items():
            try:
                (R, t), dt = _timed(fn, p["kpts0"], p["kpts1"], p["K0"], p["K1"])
            except Exception:  # a method failing on one pair counts as a failure
                R, t, dt = None, None, float("nan")
            errs[name].append(max(rotation_error_deg(R, p["R"]), translation_error_deg(t, p["t"])))
            times[name].append(dt)
    rows = []
    for name in fns:
        e = np.asarray(errs[name])
        auc = pose_auc(e, (5.0, 10.0, 20.0))
        rows.append({"method": name, "set": label, **map_at(e), "auc5": auc[5.0], "auc10": auc[10.0],
                     "auc20": auc[20.0], "median_err": float(np.median(e)),
                     "ms": float(np.nanmedian(times[name]) * 1e3), "n": len(probs)})
        r = rows[-1]
        print(f"{label}: {name}: mAP {r['map5']:.2f}/{r['map10']:.2f}/{r['map20']:.2f} "
              f"AUC {r['auc5']:.2f}/{r['auc10']:.2f}/{r['auc20']:.2f} {r['ms']:.0f} ms", flush=True)
    return rows


def inference_times(model, n: int = 2000, runs: int = 100) -> Dict[str, tuple]:
    """``(median, 10th percentile)`` ms per call on one pair of ``n`` correspondences, over
    ``runs`` interleaved rounds (the four calls share the machine's noise; the 10th percentile
    is the least disturbed rounds on a shared machine):

    * ``"filter_matches"``: :func:`correspondence.cne.filter_matches` from pixels and K (what
      users call; normalisation included), default precision;
    * ``"network"``: its network pass, ``model.infer`` with the default ``precision="auto"``;
    * ``"network float32"``: ``model.infer(precision="float32")``;
    * ``"forward"``: the float32 training forward ``model(x)`` under ``inference_mode``
      (what ``filter_matches`` ran before the inference path).
    """
    p = relative_pose_problem(np.random.default_rng(1), n, 0.25, noise=1.0, size=SIZE)
    k0, k1 = torch.from_numpy(p["kpts0"]).float(), torch.from_numpy(p["kpts1"]).float()
    K = torch.from_numpy(p["K"]).float()
    x = _prepare(k0, k1, K, K, None, None, None, None, None)[0]  # the network input filter_matches builds
    calls = {"filter_matches": lambda: filter_matches(k0, k1, K, K, model=model),
             "network": lambda: model.infer(x),
             "network float32": lambda: model.infer(x, precision="float32"),
             "forward": lambda: model(x)}
    ts = {k: [] for k in calls}
    with torch.inference_mode():
        for _ in range(3):
            for fn in calls.values():
                fn()
        for _ in range(runs):
            for k, fn in calls.items():
                t = time.perf_counter()
                fn()
                ts[k].append(time.perf_counter() - t)
    return {k: (float(np.median(v) * 1e3), float(np.percentile(v, 10) * 1e3)) for k, v in ts.items()}


def inference_times_default_env(weights: Path, threads: int) -> Dict[str, tuple]:
    """:func:`inference_times` in a child process with the OpenMP environment users run in
    (this script's ``OMP_WAIT_POLICY=PASSIVE`` removed; an ``OMP_WAIT_POLICY`` that the caller
    had set before the script started is kept)."""
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if _ORIG_OMP is not None:
        env["OMP_WAIT_POLICY"] = _ORIG_OMP
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--inference-only",
                          "--weights", str(weights), "--threads", str(threads)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return {k: tuple(v) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def synthetic_sets(scenes: int, seed: int) -> Dict[str, List[dict]]:
    out = {}
    for ratio in RATIOS:
        rng = np.random.default_rng(seed + 2)  # the same scenes as tools/bench_ransac.py
        probs = [relative_pose_problem(rng, 2000, ratio, noise=1.0, size=SIZE) for _ in range(scenes)]
        for p in probs:
            p["K0"] = p["K1"] = p["K"]
        out[f"synthetic r={ratio}"] = probs
    return out


def real_set(path: Path) -> List[dict]:
    if not path.is_file():
        build_real_cache(path.parent, train_scenes=())
    pairs = load_real_cache(path)
    for p in pairs:
        for k in ("kpts0", "kpts1", "K0", "K1", "R", "t"):
            p[k] = np.asarray(p[k], np.float64)
    return pairs


def write_report(path: Path, command: str, machine: str, elapsed: float, rows: List[dict], notes, inf_ms: dict,
                 weights: Path, meta: dict, scenes: int, n_real: int):
    sets = list(dict.fromkeys(r["set"] for r in rows))
    d, q = inf_ms["default"], inf_ms["passive"]
    lines = ["# Learned outlier filter benchmark (correspondence.cne)", "",
             f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {machine}", f"- command: `{command}`", f"- wall time: {elapsed:.0f} s",
             f"- weights: `{weights.relative_to(ROOT) if weights.is_relative_to(ROOT) else weights}` "
             f"(step {meta.get('step', '?')})",
             f"- synthetic: {scenes} scenes per inlier ratio (640 x 480, f = 500 px, N = 2000, 1 px noise, "
             "uniform outliers; the scenes of tools/bench_ransac.py); real: "
             f"{n_real} held-out pairs of Strecha {' and '.join(TEST_STRECHA)} (SIFT 2000, nearest neighbour, "
             "no ratio test; images 1024 x 683), never seen in training.",
             "- pose error = max(rotation, translation-direction) error; mAP@X = mean accuracy at 5..X degrees "
             "(CNe convention); AUC@X = area under the recall curve to X degrees; 1 px threshold for every "
             "RANSAC; time = median per pair, the methods interleaved per pair (same load for all), environment OMP_WAIT_POLICY=PASSIVE (set by the script).",
             f"- CNe inference, N = 2000 correspondences, {torch.get_num_threads()} threads, in a child process "
             f"with the default OpenMP environment (as users run it): **{d['network'][0]:.1f} ms** (10th "
             f"percentile {d['network'][1]:.1f} ms) the network pass as `filter_matches` runs it (`CNeNet.infer`, "
             f"precision \"auto\" = {str(inference_dtype('auto')).replace('torch.', '')} here), "
             f"{d['filter_matches'][0]:.1f} ms ({d['filter_matches'][1]:.1f}) the whole `filter_matches` call "
             f"(pixels + K to weights); anchors in the same rounds: {d['network float32'][0]:.1f} ms "
             f"({d['network float32'][1]:.1f}) `infer(precision=\"float32\")`, {d['forward'][0]:.1f} ms "
             f"({d['forward'][1]:.1f}) the float32 training forward `model(x)`, which `filter_matches` ran before "
             "(medians and 10th percentiles of 100 interleaved rounds). Under this script's OMP_WAIT_POLICY=PASSIVE "
             "(idle OpenMP threads sleep at once, so each of the network's ~90 small parallel operations wakes them): "
             f"{q['network'][0]:.1f} ms ({q['network'][1]:.1f}) the network, {q['filter_matches'][0]:.1f} ms "
             f"({q['filter_matches'][1]:.1f}) `filter_matches`.",
             "- CNe + RANSAC: `relative_pose_cne(method=\"cne+ransac\")`, our RANSAC on the matches the network "
             "keeps, sampled by its weights; \"second hypothesis\": `second_hypothesis=True`, the same batched call "
             "also solves each pair on all its matches (sampled by weight + `second_floor`, default 0.1) and the pose with the higher MSAC "
             "score on all matches is returned.", ""]
    for s in sets:
        lines += [f"## {s}", "", "| method | mAP@5 | mAP@10 | mAP@20 | AUC@5 | AUC@10 | AUC@20 | median err (deg) "
                  "| ms / pair |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["set"] == s:
                lines.append(f"| {r['method']} | {r['map5']:.2f} | {r['map10']:.2f} | {r['map20']:.2f} | "
                             f"{r['auc5']:.2f} | {r['auc10']:.2f} | {r['auc20']:.2f} | {r['median_err']:.2f} | "
                             f"{r['ms']:.0f} |")
        lines.append("")
    for name, why in notes.items():
        lines.append(f"- {name}: {why}")
    _atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenes", type=int, default=100, help="synthetic scenes per inlier ratio")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=default_weights_path())
    ap.add_argument("--real", type=Path, default=ROOT / "runs" / "cne" / "real_test.npz")
    ap.add_argument("--no-real", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "cne.md")
    ap.add_argument("--inference-only", action="store_true",
                    help="print the inference timings as JSON and exit (used by the script itself)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.inference_only:
        print(json.dumps(inference_times(load_cne(args.weights))))
        return args.out
    import cv2
    cv2.setNumThreads(args.threads)
    command = "python tools/bench_cne.py " + " ".join(sys.argv[1:] if argv is None else argv)
    machine = _machine()
    model = load_cne(args.weights)
    meta = torch.load(args.weights, map_location="cpu", weights_only=True).get("meta", {})
    t0 = time.perf_counter()
    inf_ms = {"default": inference_times_default_env(args.weights, args.threads),
              "passive": inference_times(model)}
    for env, times in inf_ms.items():
        print(f"CNe inference N=2000 (median / p10, {env} OpenMP wait policy): "
              + ", ".join(f"{k} {v[0]:.1f} / {v[1]:.1f} ms" for k, v in times.items()), flush=True)
    fns, notes = methods(model)
    rows = []
    for label, probs in synthetic_sets(args.scenes, args.seed).items():
        rows += evaluate(fns, probs, label)
    n_real = 0
    if not args.no_real:
        pairs = real_set(args.real)
        n_real = len(pairs)
        rows += evaluate(fns, pairs, "real: Strecha " + " + ".join(TEST_STRECHA))
    write_report(args.out, command.strip(), machine, time.perf_counter() - t0, rows, notes, inf_ms,
                 Path(args.weights).resolve(), meta, args.scenes, n_real)
    print(f"wrote {args.out}")
    return args.out


if __name__ == "__main__":
    main()
