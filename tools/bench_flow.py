"""Dense alignment benchmark: RANSAC-Flow (ours) against classical optical flow and homographies.

    python tools/bench_flow.py            # full run -> benchmarks/flow.md
    python tools/bench_flow.py --quick    # fewer pairs (a smoke run)

Data (ground truth on the first image's grid, pixel ``p`` of image 0 -> ``p + flow[p]`` in image 1):

* (a) Sintel ``../shared/data/flow/sintel/{clean,final}/{easy,medium,hard}``: frame_0002 ->
  frame_0003 with ``gt/frame_0002.flo``; pixels marked in ``gt/invalid`` are excluded
  (occluded pixels count: their flow is defined).
* (b) ``skimage.data.stereo_motorcycle()`` (Middlebury 2014, 741 x 500): left -> right,
  ``x_right = x_left - d`` so the flow is ``(-d, 0)``; pixels with ``d = inf`` are excluded.
* (d) two-plane synthetic ("folded page", :func:`two_plane_pair`): the halves of a held-out photo
  move by two homographies that disagree by 25-50 px at the fold: the multi-homography ablation.
* (c) synthetic: the held-out photos (``CSet14``, ``CSet5``; never used for training), long side
  512, each warped by a seeded random homography (corners moved up to 12 % of the side) plus a
  smooth non-rigid field (std 4 px) and photometric change
  (:func:`correspondence.training.flow_data.random_benchmark_warp`, seed = photo index).

Metrics on valid pixels: AEPE (px) and PCK@1/3/5 (fraction with end-point error below 1/3/5
px), averaged over pairs; time = median seconds per pair on 2 threads (torch and OpenCV).

Methods (one run): ours (coarse multi-homography + fine network + variational refinement, the
defaults of ``RansacFlow``), ours with one homography and ours without the variational
refinement (ablations), coarse only (one homography / multi-homography), SIFT + RANSAC homography
(cv2.SIFT 4000, ratio 0.8, cv2.findHomography RANSAC 3 px), cv2 DIS (medium preset), Farneback
(pyr 0.5, 5 levels, window 15) and DeepFlow (cv2.optflow). Homography-only methods extend their
flow over the whole image.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep

import argparse  # noqa: E402
import inspect  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable, Dict, List  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"

from correspondence.ransac_flow import RansacFlow  # noqa: E402
from correspondence.training.flow_data import photo_paths, random_benchmark_warp  # noqa: E402


# ---------------------------------------------------------------------------- data
def read_flo(path: Path) -> np.ndarray:
    """Middlebury ``.flo`` -> ``H x W x 2`` float32."""
    with open(path, "rb") as f:
        tag = np.fromfile(f, np.float32, 1)[0]
        if abs(tag - 202021.25) > 1e-3:
            raise ValueError(f"{path} is not a .flo file")
        w, h = np.fromfile(f, np.int32, 2)
        return np.fromfile(f, np.float32, 2 * w * h).reshape(h, w, 2)


def sintel_pairs(quick: bool):
    root = SHARED / "flow" / "sintel"
    if not root.is_dir():
        return []
    out = []
    for render in (("clean",) if quick else ("clean", "final")):
        for level in ("easy", "medium", "hard"):
            d = root / render / level
            if not (d / "gt" / "frame_0002.flo").is_file():
                continue
            im0 = cv2.cvtColor(cv2.imread(str(d / "frame_0002.png")), cv2.COLOR_BGR2RGB)
            im1 = cv2.cvtColor(cv2.imread(str(d / "frame_0003.png")), cv2.COLOR_BGR2RGB)
            flow = read_flo(d / "gt" / "frame_0002.flo")
            inv_path = d / "gt" / "invalid" / "frame_0002.png"
            valid = np.ones(flow.shape[:2], bool)
            if inv_path.is_file():
                valid = cv2.imread(str(inv_path), cv2.IMREAD_GRAYSCALE) == 0
            out.append((f"sintel/{render}/{level}", im0, im1, flow, valid))
    return out


def motorcycle_pairs():
    from skimage import data

    left, right, disp = data.stereo_motorcycle()
    valid = np.isfinite(disp)
    flow = np.zeros(disp.shape + (2,), np.float32)
    flow[..., 0] = -np.where(valid, disp, 0)
    return [("motorcycle", left, right, flow, valid)]


def synthetic_pairs(quick: bool):
    root = SHARED / "photos"
    if not root.is_dir():
        return []
    paths = photo_paths(root, "heldout")[: 5 if quick else None]
    out = []
    for i, p in enumerate(paths):
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        s = 512 / max(img.shape[:2])
        if s < 1:
            img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
        if min(img.shape[:2]) < 96:
            continue
        target, flow, valid, _ = random_benchmark_warp(img, np.random.default_rng(i))
        out.append((f"synthetic/{p.stem}", img, target, flow, valid))
    return out


def _apply_h(H, xs, ys):
    den = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    return ((H[0, 0] * xs + H[0, 1] * ys + H[0, 2]) / den,
            (H[1, 0] * xs + H[1, 1] * ys + H[1, 2]) / den)


def two_plane_pair(img: np.ndarray, rng: np.random.Generator):
    """A "folded page": the left half of the photo moves by homography H1, the right half by
    H2 (their disagreement at the fold is 25-50 px, beyond the fine network's range), so one
    homography cannot explain the pair. Where both halves land on the same target pixel the
    left one is in front; hidden source pixels are invalid."""
    h, w = img.shape[:2]
    c = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float32)
    Hs = []
    for _ in range(2):
        d = c + rng.uniform(-0.06, 0.06, (4, 2)) * [w, h]
        Hs.append(cv2.getPerspectiveTransform(c, d.astype(np.float32)).astype(np.float64))
    shift = rng.uniform(25, 50) * rng.choice([-1, 1], 2)
    Hs[1] = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]]) @ Hs[1]
    half = (w - 1) / 2
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    target = np.zeros_like(img)
    owner = np.full((h, w), -1)
    for k in (1, 0):  # the left half (k = 0) is drawn last: in front
        bx, by = _apply_h(np.linalg.inv(Hs[k]), xs, ys)
        ok = (bx >= 0) & (bx <= w - 1) & (by >= 0) & (by <= h - 1) & ((bx <= half) if k == 0 else (bx > half))
        warped = cv2.remap(img, bx.astype(np.float32), by.astype(np.float32), cv2.INTER_LINEAR)
        target[ok] = warped[ok]
        owner[ok] = k
    flow = np.zeros((h, w, 2), np.float32)
    valid = np.zeros((h, w), bool)
    for k in (0, 1):
        qx, qy = _apply_h(Hs[k], xs, ys)
        mine = (xs <= half) if k == 0 else (xs > half)
        inside = (qx >= 0) & (qx <= w - 1) & (qy >= 0) & (qy <= h - 1)
        qi = np.clip(np.round(qx), 0, w - 1).astype(int), np.clip(np.round(qy), 0, h - 1).astype(int)
        seen = owner[qi[1], qi[0]] == k
        flow[mine] = np.stack([qx - xs, qy - ys], -1)[mine]
        valid |= mine & inside & seen
    return target, flow, valid


def two_plane_pairs(quick: bool):
    root = SHARED / "photos"
    if not root.is_dir():
        return []
    out = []
    for i, p in enumerate(photo_paths(root, "heldout")[: 4 if quick else 10]):
        img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        s = 512 / max(img.shape[:2])
        img = cv2.resize(img, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else img
        if min(img.shape[:2]) < 96:
            continue
        target, flow, valid = two_plane_pair(img, np.random.default_rng(1000 + i))
        out.append((f"two-plane/{p.stem}", img, target, flow, valid))
    return out


# ---------------------------------------------------------------------------- methods
def _grey(img):
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img


def _homography_flow(H, w, h):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    den = H[2, 0] * xs + H[2, 1] * ys + H[2, 2]
    qx = (H[0, 0] * xs + H[0, 1] * ys + H[0, 2]) / den
    qy = (H[1, 0] * xs + H[1, 1] * ys + H[1, 2]) / den
    return np.stack([qx - xs, qy - ys], -1).astype(np.float32)


def methods(model: str) -> Dict[str, Callable]:
    ours = RansacFlow(model=model, max_homographies=3)
    ours1 = RansacFlow(model=model, max_homographies=1, features=ours.features)
    ours_nv = RansacFlow(model=model, max_homographies=3, features=ours.features, refine=None)
    coarse1 = RansacFlow(model=None, max_homographies=1, features=ours.features, refine=None)
    coarse3 = RansacFlow(model=None, max_homographies=3, features=ours.features, refine=None)
    sift = cv2.SIFT_create(4000)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    deep = cv2.optflow.createOptFlow_DeepFlow()

    def sift_h(a, b):
        g0, g1 = _grey(a), _grey(b)
        k0, d0 = sift.detectAndCompute(g0, None)
        k1, d1 = sift.detectAndCompute(g1, None)
        H = None
        if d0 is not None and d1 is not None and len(k0) >= 4 and len(k1) >= 4:
            pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d0, d1, k=2)
            good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < 0.8 * m[1].distance]
            if len(good) >= 4:
                p0 = np.float32([k0[m.queryIdx].pt for m in good])
                p1 = np.float32([k1[m.trainIdx].pt for m in good])
                H, _ = cv2.findHomography(p0, p1, cv2.RANSAC, 3.0)
        h, w = g0.shape
        return np.zeros((h, w, 2), np.float32) if H is None else _homography_flow(H, w, h)

    return {
        "ours (multi-H + fine + variational)": lambda a, b: ours(a, b).flow,
        "ours, 1 homography": lambda a, b: ours1(a, b).flow,
        "ours without the variational refinement": lambda a, b: ours_nv(a, b).flow,
        "coarse only, 1 homography": lambda a, b: coarse1(a, b).flow,
        "coarse only, multi-H": lambda a, b: coarse3(a, b).flow,
        "SIFT + RANSAC homography": sift_h,
        "cv2 DIS (medium)": lambda a, b: dis.calc(_grey(a), _grey(b), None),
        "Farneback": lambda a, b: cv2.calcOpticalFlowFarneback(_grey(a), _grey(b), None, 0.5, 5,
                                                               15, 3, 5, 1.2, 0),
        "DeepFlow": lambda a, b: deep.calc(_grey(a), _grey(b), None),
    }


def evaluate(flow: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> Dict[str, float]:
    flow = np.nan_to_num(flow, nan=0.0, posinf=0.0, neginf=0.0)
    err = np.linalg.norm(flow - gt, axis=-1)[valid]
    return {"aepe": float(err.mean()), "pck1": float(np.mean(err < 1)),
            "pck3": float(np.mean(err < 3)), "pck5": float(np.mean(err < 5))}


# ---------------------------------------------------------------------------- report
def _machine() -> str:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                   if line.startswith("model name"))
    except Exception:
        cpu = platform.processor() or "unknown CPU"
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), OpenCV {cv2.__version__} "
            f"({cv2.getNumThreads()} threads), load average at start {os.getloadavg()[0]:.2f}")


def run(sets: Dict[str, list], fns: Dict[str, Callable]) -> Dict[str, Dict[str, dict]]:
    results: Dict[str, Dict[str, dict]] = {}
    for set_name, pairs in sets.items():
        results[set_name] = {}
        for name, fn in fns.items():
            rows, times = [], []
            for _, a, b, gt, valid in pairs:
                t0 = time.perf_counter()
                try:
                    flow = fn(a, b)
                except ValueError:  # e.g. no homography found: identity flow counts as failure
                    flow = np.zeros_like(gt)
                times.append(time.perf_counter() - t0)
                rows.append(evaluate(flow, gt, valid))
            res = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            res["time"] = float(np.median(times))
            res["pairs"] = len(pairs)
            results[set_name][name] = res
            print(f"{set_name:10s} {name:28s} " + " ".join(f"{k}={v:.3f}" for k, v in res.items()),
                  flush=True)
    return results


def write_report(path: Path, results, command: str, machine: str, wall: float, model: str) -> Path:
    # the settings "ours" runs with: RansacFlow's defaults (read without loading any network)
    defaults = {k: v.default for k, v in inspect.signature(RansacFlow).parameters.items()}
    lines = ["# Dense alignment benchmark (RANSAC-Flow)", "",
             f"- date: {datetime.now().isoformat(timespec='seconds')}",
             f"- machine: {machine}", f"- command: `{command}`", f"- wall time: {wall:.0f} s",
             f"- fine-network weights: `{model}`; ours = `correspondence.ransac_flow.RansacFlow` "
             f"defaults (coarse size {defaults['coarse_size']}, {len(defaults['scales'])} source scales, "
             f"fine size {defaults['fine_size']}, up to {defaults['max_homographies']} homographies, "
             f"matchability threshold {defaults['matchability_threshold']:g}, refinement "
             f"{defaults['refine']!r} over {defaults['refine_levels']} levels).",
             "- metrics on valid ground-truth pixels, averaged over pairs; time = median s per "
             "pair, 2 threads. Protocol: module docstring of `tools/bench_flow.py`.", ""]
    for set_name, res in results.items():
        n = next(iter(res.values()))["pairs"]
        lines += [f"## {set_name} ({n} pair{'s' if n != 1 else ''})", "",
                  "| method | AEPE px | PCK@1 | PCK@3 | PCK@5 | s / pair |", "|---|---|---|---|---|---|"]
        for name, r in res.items():
            lines.append(f"| {name} | {r['aepe']:.2f} | {r['pck1']:.3f} | {r['pck3']:.3f} | "
                         f"{r['pck5']:.3f} | {r['time']:.2f} |")
        lines.append("")
    tmp = path.with_suffix(".md.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text("\n".join(lines))
    os.replace(tmp, path)
    return path


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Sintel clean only, 5 synthetic pairs")
    parser.add_argument("--model", default="default", help="fine-network weights")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "flow.md")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    command = "python tools/bench_flow.py " + " ".join(argv if argv is not None else sys.argv[1:])
    machine = _machine()
    t0 = time.perf_counter()
    sets = {"Sintel": sintel_pairs(args.quick), "motorcycle stereo": motorcycle_pairs(),
            "synthetic held-out": synthetic_pairs(args.quick),
            "two-plane synthetic (multi-homography ablation)": two_plane_pairs(args.quick)}
    sets = {k: v for k, v in sets.items() if v}
    results = run(sets, methods(args.model))
    path = write_report(args.out, results, command.strip(), machine, time.perf_counter() - t0,
                        args.model)
    print(path)
    return path


if __name__ == "__main__":
    main()
