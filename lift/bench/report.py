"""Benchmark outputs: JSON results, Markdown tables and matplotlib figures.

All writers are atomic (temporary file + ``os.replace``). Figures use the non-interactive Agg
backend, so they work on headless machines.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

__all__ = ["run_metadata", "write_json", "read_json", "markdown_report", "plot_mma",
           "plot_pose_recall", "plot_matches", "write_report"]


def _atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return path


def _clean(obj):
    """JSON-safe copy: numpy scalars/arrays to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json(obj: dict, path: Path) -> Path:
    """Write ``obj`` as indented JSON (inf/NaN become null), atomically."""
    return _atomic_write_bytes(Path(path), json.dumps(_clean(obj), indent=1).encode())


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def run_metadata(command: str) -> dict:
    """Date (UTC), machine, library versions and git commit for a results file."""
    import cv2
    import torch

    try:
        import lift

        version = lift.__version__
    except Exception:  # pragma: no cover
        version = "unknown"
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001 - git may be absent
        commit = None
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"command": command,
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                        "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()},
            "versions": {"lift": version, "torch": torch.__version__, "opencv": cv2.__version__,
                         "numpy": np.__version__, "python": platform.python_version()},
            "git_commit": commit}


def _fmt(v, pct: bool = False, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _unavailable(results: dict) -> List[str]:
    return [f"- {spec}: unavailable ({m['reason']})" for spec, m in results["methods"].items()
            if m["status"] != "ok"]


def _homography_tables(results: dict) -> str:
    ok = {s: m for s, m in results["methods"].items() if m["status"] == "ok"}
    rows = []
    for spec, m in ok.items():
        s = m["summary"]
        acc = s["homography_accuracy"]
        rows.append([spec] + [_fmt(s["mma"][t - 1], True) for t in (1, 3, 5, 10)]
                    + [_fmt(acc[k], True) for k in ("1", "3", "5")]
                    + [_fmt(s["repeatability"], True), _fmt(s["matching_score"], True),
                       _fmt(s["keypoints_mean"], digits=0), _fmt(s["matches_mean"], digits=0),
                       _fmt(s["time_ms_median"], digits=0)])
    out = [_table(["method", "MMA@1", "MMA@3", "MMA@5", "MMA@10", "H acc@1", "H acc@3", "H acc@5",
                   "rep.", "M.S.", "kpts", "matches", "ms/img"], rows)]
    groups = sorted({g for m in ok.values() for g in m["summary"]["mma_by_group"]})
    if len(groups) > 1:
        out.append("\nMMA@3 (%) by group:\n")
        out.append(_table(["method"] + groups, [[s] + [_fmt(m["summary"]["mma_by_group"].get(g, [None] * 3)[2], True)
                                                        for g in groups] for s, m in ok.items()]))
    targets = sorted({t for m in ok.values() for t in m["summary"].get("mma_by_target", {})})
    n_seq = len({r["sequence"] for m in ok.values() for r in m["pairs"]})
    if len(targets) > 1 and n_seq > 1:
        out.append(f"\nMMA@3 (%) by target image, mean over {n_seq} sequences (harder to the right):\n")
        out.append(_table(["method"] + targets,
                          [[s] + [_fmt(m["summary"]["mma_by_target"].get(t, [None] * 3)[2], True)
                                  for t in targets] for s, m in ok.items()]))
    pair_names = [r["pair"] for r in next(iter(ok.values()))["pairs"]] if ok else []
    if ok and len(pair_names) <= 30:
        out.append("\nMMA@3 (%) per pair (mutual-NN matches):\n")
        per = {s: {r["pair"]: r for r in m["pairs"]} for s, m in ok.items()}
        out.append(_table(["method"] + pair_names,
                          [[s] + [_fmt(per[s][p]["mma"][2], True) for p in pair_names] for s in ok]))
        out.append("\nMean corner error (px) per pair after robust estimation:\n")
        out.append(_table(["method"] + pair_names,
                          [[s] + [_fmt(per[s][p]["corner_error"], digits=2) for p in pair_names] for s in ok]))
        if all("inlier_gt_error_median" in per[s][p] for s in ok for p in pair_names):
            out.append("\nMedian ground-truth reprojection error (px) of the robust inliers (a check "
                       "of the ground truth: well above 1 px for every method means the given "
                       "homography and the images disagree):\n")
            out.append(_table(["method"] + pair_names,
                              [[s] + [_fmt(per[s][p]["inlier_gt_error_median"], digits=2)
                                      for p in pair_names] for s in ok]))
    return "\n".join(out)


def _pose_tables(results: dict) -> str:
    rows = []
    for spec, m in results["methods"].items():
        if m["status"] != "ok":
            continue
        s = m["summary"]
        rows.append([spec] + [_fmt(s["pose_auc"][k], True) for k in ("5", "10", "20")]
                    + [_fmt(s["epipolar_precision"], True), _fmt(s["keypoints_mean"], digits=0),
                       _fmt(s["matches_mean"], digits=0), _fmt(s["time_ms_median"], digits=0)])
    return _table(["method", "AUC@5°", "AUC@10°", "AUC@20°", "epi. prec.", "kpts", "matches", "ms/img"], rows)


def _speed_tables(results: dict) -> str:
    rows = [[spec, _fmt(m["summary"]["time_ms_median"], digits=1), _fmt(m["summary"]["keypoints_mean"], digits=0)]
            for spec, m in results["methods"].items() if m["status"] == "ok"]
    return _table(["method", "median ms / image", "keypoints"], rows)


def markdown_report(results: dict, title: Optional[str] = None) -> str:
    """A Markdown section: settings line, main table, per-group / per-pair tables, unavailable
    methods and the provenance (date, machine, command)."""
    task = results["task"]
    st = results["settings"]
    lines = [f"## {title or task.capitalize() + ' benchmark'}", ""]
    meta = results.get("meta")
    if meta:
        lines += [f"- date: {meta['date']}; commit: {meta.get('git_commit') or 'n/a'}",
                  f"- machine: {meta['machine']['cpu']} ({meta['machine']['cpu_count']} CPUs, "
                  f"torch threads {meta['machine']['torch_threads']}"
                  + (f", load average {meta['machine']['load_average']} at the end of the run"
                     if meta["machine"].get("load_average") is not None else "")
                  + f"), {meta['machine']['platform']}",
                  "- versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
                  f"- command: `{meta['command']}`"]
    lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in st.items()))
    lines.append("")
    if task == "homography":
        lines.append("Percentages. MMA: mutual-NN matches within t px of the ground truth (D2-Net); "
                     "H acc: mean corner error ≤ t px after robust estimation; rep./M.S.: "
                     f"repeatability and matching score at {st['eps']} px (LIFT); ms/img: median "
                     "extraction time after 2 warm-up images.\n")
        lines.append(_homography_tables(results))
    elif task == "pose":
        lines.append("AUC of the relative-pose error (max of rotation and translation-direction "
                     "angle) up to 5/10/20°, in %; epi. prec.: matches within "
                     f"{st['epipolar_threshold']} px (Sampson) of the ground-truth epipolar geometry.\n")
        lines.append(_pose_tables(results))
    else:
        lines.append(_speed_tables(results))
    missing = _unavailable(results)
    if missing:
        lines += ["", "Not run:", *missing]
    return "\n".join(lines) + "\n"


def plot_mma(results: dict, path: Path) -> Path:
    """MMA-vs-threshold curves, one line per method (overall, and per group when several)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ok = {s: m for s, m in results["methods"].items() if m["status"] == "ok"}
    groups = sorted({g for m in ok.values() for g in m["summary"]["mma_by_group"]})
    panels = [("overall", None)] + ([(g, g) for g in groups] if len(groups) > 1 else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    th = results["settings"]["mma_thresholds"]
    for ax, (label, g) in zip(axes[0], panels):
        for spec, m in ok.items():
            curve = m["summary"]["mma"] if g is None else m["summary"]["mma_by_group"].get(g)
            if curve is not None:
                ax.plot(th, curve, marker="o", ms=3, lw=1.5, label=spec)
        ax.set_title(label)
        ax.set_xlabel("threshold (px)")
        ax.set_ylim(0, 1)
        ax.set_xlim(th[0], th[-1])
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MMA")
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def plot_pose_recall(results: dict, path: Path, max_error: float = 20.0) -> Path:
    """Cumulative pose-error curves (fraction of pairs with error <= e, e in degrees), one line
    per method: the curves whose normalised areas are the AUC@5/10/20 numbers."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    grid = np.linspace(0, max_error, 201)
    for spec, m in results["methods"].items():
        if m["status"] != "ok":
            continue
        e = np.array([np.inf if r["pose_error"] is None else r["pose_error"] for r in m["pairs"]], float)
        ax.plot(grid, (e[None, :] <= grid[:, None]).mean(1), lw=1.5, label=spec)
    ax.set_xlabel("pose error (deg)")
    ax.set_ylabel("fraction of pairs")
    ax.set_ylim(0, 1)
    ax.set_xlim(0, max_error)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save_figure(fig, Path(path))


def _save_figure(fig, path: Path, dpi: int = 110) -> Path:
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt.close(fig)
    return _atomic_write_bytes(path, buf.getvalue())


def plot_matches(image0: np.ndarray, image1: np.ndarray, kpts0: np.ndarray, kpts1: np.ndarray,
                 matches: np.ndarray, correct: np.ndarray, path: Path, title: str = "",
                 max_lines: int = 400) -> Path:
    """Side-by-side picture: correct matches green, incorrect red (at most ``max_lines``, an
    evenly spread subset)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    h = max(image0.shape[0], image1.shape[0])
    canvas = np.zeros((h, image0.shape[1] + image1.shape[1]), np.uint8)
    canvas[:image0.shape[0], :image0.shape[1]] = image0
    canvas[:image1.shape[0], image0.shape[1]:] = image1
    idx = np.arange(len(matches))
    if len(idx) > max_lines:
        idx = idx[np.linspace(0, len(idx) - 1, max_lines).round().astype(int)]
    fig_w = 10.0
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * h / canvas.shape[1] + 0.5))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=255)
    if len(idx):
        p0 = kpts0[matches[idx, 0]]
        p1 = kpts1[matches[idx, 1]] + [image0.shape[1], 0]
        ok = np.asarray(correct, bool)[idx]
        segs = np.stack([p0, p1], 1)
        for sel, colour in ((~ok, "red"), (ok, "lime")):
            ax.add_collection(LineCollection(segs[sel], colors=colour, linewidths=0.6, alpha=0.8))
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_figure(fig, Path(path), dpi=80)


def write_report(results: dict, output: Path) -> Dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``mma.png`` (homography) or
    ``pose_recall.png`` (pose) under ``output``; returns the paths by kind."""
    output = Path(output)
    paths = {"json": write_json(results, output / "results.json"),
             "markdown": _atomic_write_bytes(output / "results.md", markdown_report(results).encode())}
    has_ok = any(m["status"] == "ok" for m in results["methods"].values())
    if results["task"] == "homography" and has_ok:
        paths["mma"] = plot_mma(results, output / "mma.png")
    if results["task"] == "pose" and has_ok:
        paths["pose_recall"] = plot_pose_recall(results, output / "pose_recall.png")
    return paths
