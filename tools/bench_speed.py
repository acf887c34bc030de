"""Speed benchmark: ``lift.detect_and_describe`` vs ``cv2.SIFT_create(2048).detectAndCompute``.

Protocol: the same 640 x 480 grey photos (scikit-image's data module, resized), 2 threads for
both libraries, one warm-up call per image, then ``--repeats`` rounds in which SIFT and lift each
run over all images; the median per-image wall time of each and the median of the paired
(same image, same round) time ratios; keypoint counts reported (lift also at SIFT's keypoint
count). The same protocol then runs on a second set, real photos from ``../shared/data`` never
used for training (skipped without it), on which SIFT finds more of its 2048 keypoints, and the
headline pair again in two fresh processes, with and without glibc keeping freed memory
(``KEEP_FREED_MEMORY``), with the page faults of each library. OpenMP's
wait policy is the library default unless ``--omp-wait-policy`` says otherwise.
A stage breakdown of lift (scale space + NMS, orientation, descriptors) is measured with the same
protocol. Writes a Markdown report.

    python tools/bench_speed.py --output benchmarks/speed.md
"""
from __future__ import annotations

import os

import sys

# OpenMP's wait policy must be fixed before torch is imported. The default is what users get
# (libgomp spins briefly, then sleeps); ``--omp-wait-policy PASSIVE`` (sleep at once) is kinder
# to a loaded shared machine but adds a thread wake-up to every parallel torch op.
for _i, _a in enumerate(sys.argv):
    if _a == "--omp-wait-policy" and _i + 1 < len(sys.argv):
        os.environ["OMP_WAIT_POLICY"] = sys.argv[_i + 1]
    elif _a.startswith("--omp-wait-policy="):
        os.environ["OMP_WAIT_POLICY"] = _a.split("=", 1)[1]

import argparse
import datetime as dt
import platform
import statistics
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import lift
from lift import LIFT, LIFTModel

IMAGES = ["astronaut", "coffee", "chelsea", "camera", "rocket", "brick"]
#: the second image set: photos with ground truth in ../shared/data never used for training (the
#: held-out test photos of the synthetic training set, and the first images of the Oxford pairs)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
REAL_GLOBS = ["photos/Urban100/img_09[1-9].png", "photos/Urban100/img_100.png", "homography/*/img1.*"]


def photos(size=(640, 480)):
    from skimage import data

    out = []
    for name in IMAGES:
        im = getattr(data, name)()
        if im.ndim == 3:
            im = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
        out.append(cv2.resize(im, size, interpolation=cv2.INTER_AREA))
    return out


def load_model(name: str):
    """``(LIFTModel, description)``: the named weights, or a seeded random-init model of the same
    architecture (and cost) when the weights file is absent."""
    try:
        return LIFTModel.load(name), f"weights `{name}`"
    except FileNotFoundError:
        torch.manual_seed(0)
        return LIFTModel().eval(), "random-init weights (shipped weights absent; same architecture and cost)"


TABLE_HEAD = ["| method | median ms / image | keypoints / image | time vs SIFT (medians) | time vs SIFT (paired) |",
              "|---|---:|---:|---:|---:|"]


def table_rows(rows):
    """Markdown rows of ``(name, ms, keypoints, ratio of medians, paired ratio)`` (NaN: blank)."""
    return [f"| {name} | {t:.1f} | {'' if np.isnan(n) else f'{n:.0f}'} | {r:.2f}x | "
            f"{'' if np.isnan(rp) else f'{rp:.2f}x'} |" for name, t, n, r, rp in rows]


def real_photos(size=(640, 480)):
    """The held-out real photos (see ``REAL_GLOBS``) resized to ``size`` grey, or [] without
    ``../shared``."""
    files = sorted(f for g in REAL_GLOBS for f in SHARED.glob(g))
    out = []
    for f in files:
        im = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
        if im is not None:
            out.append(cv2.resize(im, size, interpolation=cv2.INTER_AREA))
    return out


#: glibc malloc settings under which freed memory is kept for reuse instead of being returned to
#: the kernel (and faulted back in, zeroed, on the next large allocation)
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(4 << 30)}


def allocator_check(args):
    """The headline pair (SIFT, lift) measured twice more in child processes, once in this
    process's environment and once with :data:`KEEP_FREED_MEMORY`, with the minor page faults
    per image of each library. Returns ``{env name: result dict}``."""
    import json

    out = {}
    for name, extra in (("default", {}), ("keep_freed", KEEP_FREED_MEMORY)):
        env = dict(os.environ, **extra)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-pair", "--model", args.model,
               "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--max-keypoints", str(args.max_keypoints)]
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"allocator check failed: {res.stderr[-2000:]}")
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def child_pair(args) -> None:
    """``--child-pair``: the SIFT / lift pair of the headline table in this process; prints one
    JSON line (median ms, paired ratio, minor page faults per image)."""
    import json
    import resource

    images = photos()
    ex = LIFT(load_model(args.model)[0], max_keypoints=args.max_keypoints)
    sift = cv2.SIFT_create(args.max_keypoints)
    faults = {"sift": 0, "lift": 0}

    def counted(name, fn):
        def run(im):
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            fn(im)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        return run
    fns = {"sift": counted("sift", lambda im: sift.detectAndCompute(im, None)),
           "lift": counted("lift", lambda im: ex.extract(im))}
    res = paired_ms(fns, images, args.repeats)
    calls = len(images) * (args.repeats + 1)
    print(json.dumps({"sift_ms": res["sift"][0], "lift_ms": res["lift"][0], "paired": res["lift"][1],
                      "sift_faults": faults["sift"] / calls, "lift_faults": faults["lift"] / calls}))


def paired_ms(fns, images, repeats, pause=0.05):
    """Median ms per image of each function in ``fns`` (name -> fn) and the median over all
    (round, image) pairs of its time ratio to the first function on the same image in the same
    round. Every round runs each function over all images in turn (so that a change of machine
    load hits all of them alike), with a ``pause`` (s) between functions so that threads still
    spin-waiting after one library's last call do not slow down the other's first."""
    names = list(fns)
    for im in images:
        for name in names:
            fns[name](im)
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            time.sleep(pause)
            for im in images:
                t = time.perf_counter()
                fns[name](im)
                times[name].append(time.perf_counter() - t)
    ref = np.array(times[names[0]])
    return {name: (1000 * statistics.median(times[name]),
                   float(np.median(np.array(times[name]) / ref))) for name in names}


def median_ms(fn, images, repeats):
    for im in images:
        fn(im)
    times = []
    for _ in range(repeats):
        for im in images:
            t = time.perf_counter()
            fn(im)
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def stage_times(ex: LIFT, images, repeats):
    """Median ms of detection, orientation and description (the pipeline's own internals)."""
    det, ori, desc = [], [], []
    for r in range(repeats + 1):
        for im in images:
            with torch.inference_mode():
                g = lift.to_gray_tensor(im)[None]
                t0 = time.perf_counter()
                kp, sc, _ = ex._detect(g, [None])[0]
                t1 = time.perf_counter()
                pyr = ex._pyramid(g, float(sc.max()))
                b = torch.zeros(len(kp), dtype=torch.long)
                o = ex._orientations(pyr, kp, sc, b)
                t2 = time.perf_counter()
                ex._descriptors(pyr, kp, sc, o, b)
                t3 = time.perf_counter()
            if r:
                det.append(t1 - t0), ori.append(t2 - t1), desc.append(t3 - t2)
    return [1000 * statistics.median(x) for x in (det, ori, desc)]


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", type=Path, default=Path("benchmarks/speed.md"))
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-keypoints", type=int, default=2048)
    ap.add_argument("--omp-wait-policy", default=None,
                    help="OMP_WAIT_POLICY for this run (ACTIVE / PASSIVE; default: as set in the "
                         "environment, else OpenMP's default)")
    ap.add_argument("--child-pair", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    if args.child_pair:
        return child_pair(args)
    images = photos()
    model, note = load_model(args.model)
    ex = LIFT(model, max_keypoints=args.max_keypoints)
    sift = cv2.SIFT_create(args.max_keypoints)
    rows = []
    load0 = os.getloadavg()[0]
    n_sift = np.mean([len(sift.detect(im, None)) for im in images])
    n_lift = np.mean([len(ex.extract(im)) for im in images])
    same_n = LIFT(model, max_keypoints=int(round(n_sift)))
    quadfit = LIFT(model, max_keypoints=args.max_keypoints, subpixel="quadratic")
    res = paired_ms({"sift": lambda im: sift.detectAndCompute(im, None),
                     "lift": lambda im: ex.extract(im),
                     "lift_same_n": lambda im: same_n.extract(im),
                     "lift_quad": lambda im: quadfit.extract(im)}, images, args.repeats)
    t_sift = res["sift"][0]
    rows.append(("cv2 SIFT detectAndCompute", t_sift, n_sift, 1.0, 1.0))
    rows.append(("lift detect_and_describe", res["lift"][0], n_lift, res["lift"][0] / t_sift,
                 res["lift"][1]))
    rows.append((f"lift, max_keypoints = SIFT's mean count ({n_sift:.0f})", res["lift_same_n"][0],
                 np.mean([len(same_n.extract(im)) for im in images]),
                 res["lift_same_n"][0] / t_sift, res["lift_same_n"][1]))
    rows.append(("lift, subpixel='quadratic' (quadratic fit, the default until 2026-12-01)",
                 res["lift_quad"][0], n_lift, res["lift_quad"][0] / t_sift, res["lift_quad"][1]))
    paper = LIFT(LIFTModel(lift.model.PAPER_CONFIG).eval(), max_keypoints=args.max_keypoints)
    t_paper = median_ms(lambda im: paper.extract(im), images[:2], 1)
    rows.append(("lift, paper architecture (random init; 25 px detector, 64 px patches)", t_paper,
                 float("nan"), t_paper / t_sift, float("nan")))
    alloc = allocator_check(args)
    real = real_photos()
    if real:
        n_sift_real = np.mean([len(sift.detect(im, None)) for im in real])
        res_real = paired_ms({"sift": lambda im: sift.detectAndCompute(im, None),
                              "lift": lambda im: ex.extract(im)}, real, args.repeats)
    det, ori, desc = stage_times(ex, images, args.repeats)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))
    lines = [
        "# Speed: lift vs OpenCV SIFT",
        "",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; commit `{commit}`",
        f"- machine: {platform.processor() or platform.machine()}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset (OpenMP default)')} "
        f"(torch {torch.__version__}, OpenCV {cv2.__version__}); shared machine, compare ratios",
        f"- command: `{cmd}`",
        f"- images: {len(images)} scikit-image photos ({', '.join(IMAGES)}) resized to 640x480 grey; "
        f"one warm-up per image, then {args.repeats} rounds in which every method runs over all "
        "images in turn (50 ms pause between methods); median per-image wall time, and the "
        "median of the ratios to SIFT's time on the same image in the same round (the paired "
        "ratio: robust to load changes during the run)",
        f"- lift model: {note}",
        f"- load average (1 min) at start / end: {load0:.2f} / {os.getloadavg()[0]:.2f}",
        "",
    ] + TABLE_HEAD + table_rows(rows) + [""]
    if real:
        t_s, t_l = res_real["sift"][0], res_real["lift"][0]
        lines += [f"The same protocol on {len(real)} real photos never used for training "
                  "(`../shared/data`: Urban100 img_091-100, the held-out test photos of the "
                  "synthetic training set, and the first images of the Oxford boat and iguazu "
                  "pairs; 640x480 grey), where SIFT finds more of its 2048 keypoints:", ""]
        lines += TABLE_HEAD + table_rows([
            ("cv2 SIFT detectAndCompute", t_s, n_sift_real, 1.0, 1.0),
            ("lift detect_and_describe", t_l, np.mean([len(ex.extract(im)) for im in real]),
             t_l / t_s, res_real["lift"][1])]) + [""]
    else:
        lines += [f"(The second image set, real photos from `{SHARED}`, is absent on this machine.)", ""]
    d, k = alloc["default"], alloc["keep_freed"]
    lines += ["Memory allocator: both libraries lose time to page faults when glibc returns freed "
              "memory to the kernel and the next large allocation faults it back in, zeroed. The "
              "pair of the first table, measured again in two fresh processes (same protocol): in "
              "this environment and with "
              + " ".join(f"`{a}={b}`" for a, b in KEEP_FREED_MEMORY.items())
              + " (freed memory kept for reuse: faster, at the cost of a resident set that stays "
              "at its peak):", "",
              "| environment | SIFT ms | SIFT page faults / image | lift ms | lift page faults / image | time vs SIFT (paired) |",
              "|---|---:|---:|---:|---:|---:|",
              f"| as above | {d['sift_ms']:.1f} | {d['sift_faults']:.0f} | {d['lift_ms']:.1f} | "
              f"{d['lift_faults']:.0f} | {d['paired']:.2f}x |",
              f"| freed memory kept | {k['sift_ms']:.1f} | {k['sift_faults']:.0f} | {k['lift_ms']:.1f} | "
              f"{k['lift_faults']:.0f} | {k['paired']:.2f}x |", ""]
    lines += ["Where lift's time goes (median ms / image of each stage alone, measured in a "
              "separate pass after the table above, lift only: compare the stages with each other; "
              "the machine's speed drifts between passes):", "",
              "| stage | ms |", "|---|---:|",
              f"| scale space + detector + NMS + refinement | {det:.1f} |",
              f"| orientation (patch sampling + network) | {ori:.1f} |",
              f"| descriptors (patch sampling + network) | {desc:.1f} |", ""]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines))
    print("\n".join(lines))
    return args.output


if __name__ == "__main__":
    main()
