"""The whole SfM pipeline: extract -> pairs -> match -> verify -> reconstruct.

Every step writes a file that the next one reads (hloc's hand-off files, so hloc and COLMAP users
can take over at any step)::

    OUTPUT_DIR/features.h5   hloc features (lift.sfm.extract)
    OUTPUT_DIR/pairs.txt     hloc pairs (lift.sfm.pairs)
    OUTPUT_DIR/matches.h5    hloc matches (lift.sfm.match)
    OUTPUT_DIR/database.db   COLMAP database with verified two-view geometries and the keypoints
                             of verified tracks refined (lift.sfm.verify, correspondence.refine)
    OUTPUT_DIR/sparse/0..    COLMAP binary models, largest first (lift.sfm.reconstruct)

A step whose output exists is skipped (re-running resumes), unless its settings changed since
it ran: ``features.h5`` records its extraction settings, ``OUTPUT_DIR/lift-sfm.json`` those of
every finished step (:func:`step_settings`), and a step whose recorded settings differ from the
requested ones is recomputed, with every step after it (a notice names the changed settings). ``overwrite``
recomputes all. Outputs without a record (e.g. hloc files dropped into the folder) count as
finished.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py

from ..cli.extract import find_images
from ..colmap.compat import ModelStats, model_stats, read_model
from ..colmap.database import CameraSpec
from ..h5io import list_feature_names, read_extract_conf
from . import extract, match, pairs, reconstruct, verify
from .errors import SfMError

__all__ = ["SfMConfig", "SfMResult", "run", "step_settings", "STATE_FILE"]

#: per-step settings of the finished steps, in the output folder
STATE_FILE = "lift-sfm.json"


@dataclass
class SfMConfig:
    """Settings of every step (see each step's conf)."""

    extract: extract.ExtractConf = field(default_factory=extract.ExtractConf)
    pairs: str = "exhaustive"
    match: match.MatchConf = field(default_factory=match.MatchConf)
    verify: verify.VerifyConf = field(default_factory=verify.VerifyConf)
    camera: CameraSpec = field(default_factory=CameraSpec)
    fix_intrinsics: Optional[bool] = None  # None: fixed exactly when camera params are given
    min_num_matches: int = 15
    seed: int = 0
    #: COLMAP mapper threads (-1: all cores). Only 1 thread gives the same model on every run:
    #: with several, COLMAP's parallel steps make runs differ (sacre_coeur with SIFT at 2048
    #: keypoints, one database: 8 or 2 of 10 images registered from run to run)
    mapper_threads: int = -1


@dataclass
class SfMResult:
    """Paths written, per-stage wall times (s; 0 for skipped steps), skipped images
    (``[(name, reason)]``) and statistics of the largest model."""

    output_dir: Path
    features: Path
    pairs: Path
    matches: Path
    database: Path
    model: Path
    timings: Dict[str, float]
    failed: List[Tuple[str, str]]
    stats: ModelStats


def step_settings(conf: SfMConfig) -> Dict[str, dict]:
    """What each step's output depends on, per step (JSON-able; devices, worker counts and
    progress output are left out: they do not change the results)."""
    fix = conf.camera.params is not None if conf.fix_intrinsics is None else conf.fix_intrinsics
    verify_conf = {k: v for k, v in asdict(conf.verify).items() if k not in ("device", "batch_pairs")}
    return {"extract": conf.extract.signature(),
            "pairs": {"pairs": conf.pairs},
            "match": {"method": conf.match.method, "ratio": conf.match.ratio},
            "verify": {**verify_conf, "camera": asdict(conf.camera)},
            "reconstruct": {"fix_intrinsics": fix, "min_num_matches": conf.min_num_matches,
                            "seed": conf.seed, "mapper_threads": conf.mapper_threads}}


def _read_state(path: Path) -> Optional[Dict[str, dict]]:
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable record: trust no step
    return state if isinstance(state, dict) else {}


def _write_state(path: Path, state: Dict[str, dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _changes(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def _features_state(path: Path, names: List[str]) -> Tuple[Optional[dict], bool]:
    """``(recorded extraction settings or None, every image of names is in the file or listed
    as failed)`` of a features file, read in one opening; ``(None, False)`` when it is missing
    or unreadable (extraction then reports it)."""
    if not path.exists():
        return None, False
    try:
        with h5py.File(path, "r") as f:
            have = set(list_feature_names(f)) | {n for n, _ in extract.read_failures(f)}
            return read_extract_conf(f), set(names) <= have
    except OSError:
        return None, False


def run(image_dir: Path, output_dir: Path, conf: SfMConfig = SfMConfig(), overwrite: bool = False,
        progress: bool = True, verbose: bool = False) -> Optional[SfMResult]:
    """Run the pipeline on the images under ``image_dir`` (searched recursively).

    Under ``torchrun`` every rank extracts its share of the images; rank 0 merges and runs
    the other steps, the other ranks return ``None`` after extraction.

    Raises:
        SfMError: no images, fewer than 2 readable images, no matched pairs, or nothing
            reconstructs.
        FileNotFoundError: ``image_dir`` does not exist.
    """
    image_dir, out = Path(image_dir), Path(output_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"no image folder at {image_dir}")
    conf.camera.make_camera(640, 480)  # fail early on a bad camera model / parameter count
    items = find_images([str(image_dir)])
    if not items:
        raise SfMError(f"no images found under {image_dir}")
    if len(items) < 2:
        raise SfMError(f"found a single image under {image_dir}; structure from motion needs at least 2")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"features": out / "features.h5", "pairs": out / "pairs.txt",
             "matches": out / "matches.h5", "database": out / "database.db"}
    timings: Dict[str, float] = {}
    settings = step_settings(conf)
    state_path = out / STATE_FILE
    recorded = None if overwrite else _read_state(state_path)
    state: Dict[str, dict] = dict(recorded or {})
    rank = extract.dist_info()[0]

    def changed(stage: str, exists: bool, old: Optional[dict] = None) -> bool:
        """The output of ``stage`` exists but was made with other settings (notice printed);
        ``old``: the settings it was made with, if known from elsewhere than the record."""
        if not exists:
            return False
        if old is None:
            if recorded is None:  # no record: first run, older version, foreign files
                return False
            old = recorded.get(stage)  # None: the record misses this step
        if old == settings[stage]:
            return False
        if rank == 0:
            why = "not recorded" if old is None else _changes(old, settings[stage])
            print(f"lift-sfm: {stage} settings changed ({why}); recomputing {stage} and the "
                  "steps after it", file=sys.stderr)
        return True

    def timed(stage: str, done: bool, fn) -> None:
        t = time.perf_counter()
        if overwrite or not done:
            if rank == 0 and stage in state and stage != "extract":
                # unrecorded while it runs: a crash inside the step cannot leave a stale record
                # (extraction resumes from its part files and checks their settings itself;
                # ranks > 0 read the record before rank 0 can change it)
                del state[stage]
                _write_state(state_path, state)
            fn()
            timings[stage] = time.perf_counter() - t
        else:
            timings[stage] = 0.0
        state[stage] = settings[stage]
        if rank == 0:
            _write_state(state_path, state)

    names = [n for _, n in items]
    # extraction: the features file records its own settings (lift.sfm.extract)
    recorded_extract, complete = _features_state(paths["features"], names)
    stale = changed("extract", paths["features"].exists(), recorded_extract)
    timed("extract", complete and not stale,
          lambda: extract.main(image_dir, paths["features"], conf.extract, names,
                               overwrite or stale, progress))
    if extract.dist_info()[0] != 0:
        return None  # torchrun: ranks > 0 only extract; rank 0 carries on
    with h5py.File(paths["features"], "r") as f:
        failed = [x for x in extract.read_failures(f) if x[0] in set(names)]
        good = list_feature_names(f)
    if len(good) < 2:
        raise SfMError(f"only {len(good)} of {len(items)} images could be read; need at least 2"
                       + "".join(f"\n  skipped {n}: {e}" for n, e in failed))
    # later steps are redone whenever an earlier one ran
    redo = overwrite or timings["extract"] > 0
    redo = redo or changed("pairs", paths["pairs"].exists())
    timed("pairs", paths["pairs"].exists() and not redo,
          lambda: pairs.main(paths["features"], paths["pairs"], conf.pairs))
    if not pairs.parse_pairs(paths["pairs"]):
        raise SfMError(f"no image pairs to match ({conf.pairs})")
    redo = redo or timings["pairs"] > 0
    redo = redo or changed("match", paths["matches"].exists())
    timed("match", paths["matches"].exists() and not redo,
          lambda: match.main(paths["pairs"], paths["features"], paths["matches"], conf.match, redo, progress))
    redo = redo or timings["match"] > 0
    redo = redo or changed("verify", paths["database"].exists())
    timed("verify", paths["database"].exists() and not redo,
          lambda: verify.main(paths["features"], paths["pairs"], paths["matches"], paths["database"],
                              conf.camera, conf.verify, True, progress, image_dir))
    redo = redo or timings["verify"] > 0
    fix = conf.camera.params is not None if conf.fix_intrinsics is None else conf.fix_intrinsics
    redo = redo or changed("reconstruct", (out / "sparse" / "0").is_dir())
    timed("reconstruct", (out / "sparse" / "0").is_dir() and not redo,
          lambda: reconstruct.main(paths["database"], image_dir, out, fix, conf.min_num_matches,
                                   overwrite=True, seed=conf.seed, verbose=verbose,
                                   num_threads=conf.mapper_threads))
    model = out / "sparse" / "0"
    stats = model_stats(read_model(model), num_images=len(good))
    return SfMResult(out, paths["features"], paths["pairs"], paths["matches"], paths["database"],
                     model, timings, failed, stats)
