"""Collect the training record of the default weights next to them (small files only).

    python tools/plot_training.py runs/train lift/weights

Reads ``<run>/log.csv`` and ``<run>/val.jsonl`` of the stage runs (``desc_a``, ``desc``, ``ori``,
``det``, ``joint``, ``det2``, ``det3``, ``ori2``, ``ori3``, ``ori4``, ``ori5``, ``ori6``, in that order) and writes
into the output folder (a run whose folder is missing keeps its rows of the existing
``training_log.csv``, so a record survives the deletion of old run folders):
``training_log.csv`` (training loss every 50 steps and every validation, one row per (stage,
step)), ``training_curves.png`` (loss and validation metrics per stage), and returns the PNG path.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

RUNS = ("desc_a", "desc", "ori", "det", "joint", "det2", "det3", "ori2", "ori3", "ori4", "ori5", "ori6")
METRICS = ("fpr95_gt", "fpr95_ori", "ori_err_deg", "fpr95_chain", "det_auc")


def _existing(path: Path):
    """Rows of an earlier ``training_log.csv`` by run (numbers parsed, blanks dropped)."""
    out = {}
    if path.is_file():
        with open(path) as f:
            for r in csv.DictReader(f):
                row = {"run": r["run"], "step": int(r["step"])}
                for k in ("time_s", "loss", *METRICS):
                    if r.get(k):
                        row[k] = float(r[k])
                if "loss" not in row:  # a validation row: every metric key present
                    row.update({k: row.get(k) for k in METRICS})
                out.setdefault(r["run"], []).append(row)
    return out


def collect(runs_dir: Path, previous=None):
    rows = []
    previous = previous or {}
    for run in RUNS:
        d = runs_dir / run
        if not (d / "log.csv").is_file():
            rows.extend(previous.get(run, []))
            continue
        with open(d / "log.csv") as f:
            for r in csv.DictReader(f):
                if int(r["step"]) % 50 == 0:
                    rows.append({"run": run, "step": int(r["step"]), "time_s": float(r["time"]),
                                 "loss": float(r["loss"])})
        if (d / "val.jsonl").is_file():
            for line in (d / "val.jsonl").read_text().splitlines():
                v = json.loads(line)
                rows.append({"run": run, "step": v["step"],
                             **{k: v.get(k) for k in METRICS}})
    return rows


def main(argv=None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    runs_dir, out = Path(argv[0]), Path(argv[1])
    rows = collect(runs_dir, _existing(out / "training_log.csv"))
    keys = ["run", "step", "time_s", "loss", *METRICS]
    with open(out / "training_log.csv", "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else
                            (round(r[k], 5) if isinstance(r.get(k), float) else r[k]))
                        for k in keys})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in RUNS if any(x["run"] == r for x in rows)]
    fig, axes = plt.subplots(2, len(runs), figsize=(3.2 * len(runs), 5), squeeze=False)
    for j, run in enumerate(runs):
        tr = [r for r in rows if r["run"] == run and "loss" in r]
        va = [r for r in rows if r["run"] == run and "loss" not in r]
        axes[0, j].plot([r["step"] for r in tr], [r["loss"] for r in tr], "k-")
        axes[0, j].set_title(f"{run}: training loss", fontsize=9)
        for m in METRICS:
            pts = [(r["step"], r[m]) for r in va if r.get(m) is not None]
            if not pts or m == "ori_err_deg":
                continue
            axes[1, j].plot(*zip(*pts), "o-", ms=3, label=m)
        axes[1, j].set_title(f"{run}: validation", fontsize=9)
        axes[1, j].set_xlabel("step")
        axes[1, j].set_yscale("log")
        axes[1, j].legend(fontsize=6)
    fig.tight_layout()
    png = out / "training_curves.png"
    fig.savefig(png, dpi=70)
    print(png)
    return png


if __name__ == "__main__":
    main()
