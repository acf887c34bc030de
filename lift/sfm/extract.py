"""SfM step 1: extract local features of a whole image collection into ``features.h5``.

Images stream through a torch ``DataLoader`` (decoding and resizing in ``num_workers`` worker
processes, at most ``num_workers x 2`` decoded images in flight: bounded memory); features are
written one complete HDF5 group at a time to a per-rank part file that is flushed after every
image, so an interrupted run resumes where it stopped. Under ``torchrun`` (``RANK`` /
``WORLD_SIZE`` set) rank r takes images r, r + W, r + 2W, ... and writes
``features.h5.part-r-of-W``; after a barrier rank 0 merges the parts into ``features.h5`` (the
output folder must be shared between machines). One laptop or many nodes: the same code path.

Output layout: hloc's ``features.h5`` (:mod:`lift.h5io`), keypoints in the original image's
pixels (top-left pixel centre (0, 0)) even when images are downscaled with ``resize_max``.
Unreadable images are skipped and listed in the file's root attribute ``failed`` (JSON list of
``[name, reason]``). The root attribute ``extract_conf`` (JSON, :meth:`ExtractConf.signature`)
records the settings that determine the features; resuming into a file (or part file) written
with other settings raises :class:`StaleFeaturesError` instead of mixing two kinds of features
in one file (``--overwrite`` starts afresh). Files without the attribute (written by hloc or
older versions) are resumed as they are.

Extractors are registered by name (:data:`EXTRACTORS`, :func:`register_extractor`): ``lift``,
``sift`` (OpenCV SIFT) and ``rootsift`` (OpenCV SIFT with RootSIFT descriptors).

Example::

    python -m lift.sfm.extract images/ out/features.h5 --extractor sift --max-keypoints 2048
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..features import Features
from ..h5io import (EXTRACT_CONF_ATTR, StaleFeaturesError, atomic_h5, check_extract_conf,
                    list_feature_names, write_features)
from ..image import ImageError, load_image
from ..pipeline import LIFTConfig

__all__ = ["ExtractConf", "EXTRACTORS", "register_extractor", "build_extractor", "ImageDataset",
           "StaleFeaturesError", "extract", "merge_parts", "extract_and_merge", "read_failures", "main"]

Extractor = Callable[[np.ndarray], Features]


@dataclass
class ExtractConf:
    """Extraction settings.

    Attributes:
        extractor: a name in :data:`EXTRACTORS` [lift].
        max_keypoints: keypoints kept per image, best first; <= 0 keeps all [2048].
        resize_max: downscale images whose long side exceeds this many pixels before extraction
            (keypoints are mapped back to the original pixels); ``None`` keeps full size.
        model: LIFT weights (shipped name or .pt path) for the ``lift`` extractor.
        device: torch device for learned extractors.
        num_workers: DataLoader worker processes decoding images [2].
        scale_nms: the ``lift`` extractor's :class:`lift.LIFTConfig` ``scale_nms`` [1]: only
            extrema over the neighbouring scales, one keypoint per blob. The matching default
            (0) keeps keypoints of one location at adjacent scales; in SfM they become
            near-duplicate tracks, and castle-P19 reconstructed broken with them (camera centre
            error 7.7 m against 0.24 m with 1; ``tools/bench_sfm.py``, ``BENCHMARKS.md``).
        subpixel: the ``lift`` extractor's :class:`lift.LIFTConfig` ``subpixel`` ["response"]:
            keypoint positions from the soft-argmax of the detector's continuous response (also
            the matching default), more precise than a quadratic fit to the scores;
            on the benchmark scenes it gives 2-20 % more 3-D points and a lower reprojection
            error than the arg-max of the response it replaced (``tools/bench_sfm.py``;
            ``BENCHMARKS.md``).
        noise_threshold: the ``lift`` extractor's :class:`lift.LIFTConfig` ``noise_threshold``
            (noise-adaptive pre-smoothing, :mod:`lift.denoise`; ``None`` disables) [8.0].
    """

    extractor: str = "lift"
    max_keypoints: int = 2048
    resize_max: Optional[int] = None
    model: str = "default"
    device: Optional[str] = None
    num_workers: int = 2
    scale_nms: int = 1
    subpixel: str = "response"
    noise_threshold: Optional[float] = LIFTConfig.noise_threshold

    def signature(self) -> Dict[str, object]:
        """The settings that determine the features (not ``device`` or ``num_workers``), as
        stored in ``features.h5``. For ``lift``: also ``scale_nms``, ``subpixel`` (with the
        revision of the ``"response"`` estimate, :data:`lift.subpixel.REVISION`), the runtime's
        ``noise_threshold`` (:mod:`lift.denoise`) and the sha1 of the weights file, so that new
        shipped weights under the same name count as a change."""
        sig: Dict[str, object] = {"extractor": self.extractor, "max_keypoints": max(int(self.max_keypoints), 0),
                                  "resize_max": None if self.resize_max is None else int(self.resize_max)}
        if self.extractor == "lift":
            sig.update(model=str(self.model), weights_sha1=_weights_sha1(self.model),
                       scale_nms=int(self.scale_nms), subpixel=str(self.subpixel),
                       noise_threshold=None if self.noise_threshold is None else float(self.noise_threshold))
            if self.subpixel == "response":
                from ..subpixel import REVISION

                sig["subpixel_revision"] = REVISION
        return sig


def _weights_sha1(model: str) -> Optional[str]:
    from ..model import MODEL_NAMES, WEIGHTS_DIR

    path = WEIGHTS_DIR / MODEL_NAMES[model] if model in MODEL_NAMES else Path(model)
    if not path.is_file():
        return None  # loading the extractor reports the missing file
    return hashlib.sha1(path.read_bytes()).hexdigest()


EXTRACTORS: Dict[str, Callable[[ExtractConf], Extractor]] = {}


def register_extractor(name: str):
    """Decorator registering ``factory(conf: ExtractConf) -> (grey uint8 H x W -> Features)``."""
    def deco(factory):
        EXTRACTORS[name] = factory
        return factory
    return deco


def build_extractor(conf: ExtractConf) -> Extractor:
    if conf.extractor not in EXTRACTORS:
        raise ValueError(f"unknown extractor {conf.extractor!r}; registered: {sorted(EXTRACTORS)}")
    return EXTRACTORS[conf.extractor](conf)


@register_extractor("lift")
def _lift(conf: ExtractConf) -> Extractor:
    from ..pipeline import LIFT

    model = LIFT(conf.model, device=conf.device, scale_nms=conf.scale_nms, subpixel=conf.subpixel,
                 noise_threshold=conf.noise_threshold,
                 max_keypoints=conf.max_keypoints if conf.max_keypoints > 0 else None)
    return model.extract


def _opencv_sift(conf: ExtractConf, root: bool) -> Extractor:
    import cv2

    sift = cv2.SIFT_create(nfeatures=max(conf.max_keypoints, 0))

    def run(image: np.ndarray) -> Features:
        kps, desc = sift.detectAndCompute(image, None)
        h, w = image.shape[:2]
        if desc is None or len(kps) == 0:
            return Features.empty((w, h), 128)
        if root:  # RootSIFT (Arandjelovic & Zisserman 2012): L1-normalise, square root
            desc = np.sqrt(desc / np.maximum(desc.sum(1, keepdims=True), 1e-12))
        feats = Features.from_cv2(kps, desc, (w, h))
        order = np.argsort(-feats.scores, kind="stable")
        if conf.max_keypoints > 0:
            order = order[:conf.max_keypoints]
        return feats[order]
    return run


@register_extractor("sift")
def _sift(conf: ExtractConf) -> Extractor:
    return _opencv_sift(conf, root=False)


@register_extractor("rootsift")
def _rootsift(conf: ExtractConf) -> Extractor:
    return _opencv_sift(conf, root=True)


class ImageDataset(Dataset):
    """Decodes (and optionally downscales) images for the DataLoader workers.

    Items: ``{"name", "image": grey uint8 h x w or None, "size": (W, H) of the original,
    "error": reason or None}``.
    """

    def __init__(self, items: Sequence[Tuple[Path, str]], resize_max: Optional[int] = None):
        self.items = list(items)
        self.resize_max = resize_max

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        path, name = self.items[i]
        try:
            image = load_image(path)
        except (ImageError, OSError) as err:
            return {"name": name, "image": None, "size": (0, 0), "error": str(err)}
        h, w = image.shape[:2]
        if self.resize_max and max(h, w) > self.resize_max:
            import cv2

            s = self.resize_max / max(h, w)
            image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))),
                               interpolation=cv2.INTER_AREA)
        return {"name": name, "image": image, "size": (w, h), "error": None}


def _first(batch):
    return batch[0]


def to_original(feats: Features, size: Tuple[int, int]) -> Features:
    """Map features of a resized image back to the original ``size`` = (W, H): pixel centres
    scale about the image corner ((x + 0.5) / s - 0.5), sigma by the mean factor."""
    w, h = size
    fx, fy = w / feats.image_size[0], h / feats.image_size[1]
    if (fx, fy) == (1.0, 1.0):
        return feats
    kp = (feats.keypoints + 0.5) * np.array([fx, fy], np.float32) - 0.5
    return Features(kp, feats.scales * (fx + fy) / 2, feats.oris, feats.scores, feats.descriptors,
                    (w, h), feats.extra)


def dist_info() -> Tuple[int, int]:
    """``(rank, world_size)`` from torchrun's environment (0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def part_path(output: Path, rank: int, world: int) -> Path:
    return output.with_name(f"{output.name}.part-{rank}-of-{world}")


def read_failures(f: h5py.File) -> List[Tuple[str, str]]:
    """Images that failed (``[(name, reason)]``), from a features file's root attribute."""
    return [tuple(x) for x in json.loads(f.attrs.get("failed", "[]"))]


def _open_part(path: Path) -> h5py.File:
    """Open a part file for appending, dropping incomplete groups; a corrupt file (a killed
    writer) is moved aside and started afresh."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        f = h5py.File(path, "a")
    except OSError:
        if not path.exists():
            raise
        path.replace(path.with_name(path.name + ".corrupt"))
        print(f"lift.sfm.extract: {path} was corrupt, moved aside; restarting this part",
              file=sys.stderr)
        return h5py.File(path, "w")
    for name in list_feature_names(f):
        if not f[name].attrs.get("complete", False):
            del f[name]
    return f


def extract(images: Sequence[Tuple[Path, str]], output: Path, conf: ExtractConf = ExtractConf(),
            rank: int = 0, world_size: int = 1, overwrite: bool = False,
            progress: bool = True) -> Path:
    """Extract this rank's share of ``(path, name)`` images into its part file (resumable).

    Images already in ``output`` (the merged file) or in the part are skipped unless
    ``overwrite``. Returns the part file's path; :func:`merge_parts` builds ``output``.
    """
    output = Path(output)
    part = part_path(output, rank, world_size)
    if overwrite and part.exists():
        part.unlink()
    done = set()
    sig = conf.signature()
    if output.exists() and not overwrite:
        try:
            f = h5py.File(output, "r")
        except OSError as err:
            raise StaleFeaturesError(f"{output} is not a readable HDF5 features file ({err}); pass "
                                     "overwrite (--overwrite) to extract afresh") from None
        with f:
            check_extract_conf(f, sig, output)
            done = set(list_feature_names(f))
    mine = [item for i, item in enumerate(images) if i % world_size == rank]
    fresh = not part.exists()
    try:
        _extract_part(part, mine, done, conf, sig, progress,
                      f"extract {conf.extractor}" + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""))
    except BaseException:
        if fresh and part.exists() and not _has_features(part):
            part.unlink()  # nothing written (e.g. missing weights): leave no empty part behind
        raise
    return part


def _has_features(path: Path) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return bool(list_feature_names(f))
    except OSError:
        return False


def _extract_part(part: Path, mine, done: set, conf: ExtractConf, sig: dict, progress: bool,
                  desc: str) -> None:
    extractor = None
    with _open_part(part) as f:
        check_extract_conf(f, sig, part)
        done |= set(list_feature_names(f))
        failed = dict(read_failures(f))
        todo = [(p, n) for p, n in mine if n not in done]
        if todo:
            extractor = build_extractor(conf)
        loader = DataLoader(ImageDataset(todo, conf.resize_max), batch_size=1, shuffle=False,
                            num_workers=conf.num_workers if len(todo) > 1 else 0,
                            collate_fn=_first)
        for item in tqdm(loader, total=len(todo), desc=desc, unit="img", disable=not progress):
            name = item["name"]
            if item["error"] is not None:
                failed[name] = item["error"]
            else:
                failed.pop(name, None)
                with torch.inference_mode():
                    feats = to_original(extractor(item["image"]), item["size"])
                write_features(f, name, feats)
                f[name].attrs["complete"] = True
            f.attrs["failed"] = json.dumps(sorted(failed.items()))
            f.flush()


def merge_parts(output: Path, world_size: int, keep_existing: bool = True) -> Path:
    """Merge the ``world_size`` part files into ``output`` (atomically; the images already in
    ``output`` are kept when ``keep_existing``) and delete the parts."""
    output = Path(output)
    parts = [part_path(output, r, world_size) for r in range(world_size)]
    missing = [str(p) for p in parts if not p.exists()]
    if missing:
        raise FileNotFoundError(f"feature part files missing: {missing}")
    if world_size == 1 and not (keep_existing and output.exists()):
        os.replace(parts[0], output)
        return output
    with atomic_h5(output, keep_existing=keep_existing) as out:
        failed = dict(read_failures(out))
        for p in parts:
            with h5py.File(p, "r") as f:
                sig = f.attrs.get(EXTRACT_CONF_ATTR)
                if sig is not None:
                    out.attrs[EXTRACT_CONF_ATTR] = sig
                for name in list_feature_names(f):
                    if name in out:
                        del out[name]
                    parent = name.rsplit("/", 1)[0] if "/" in name else None
                    if parent:
                        out.require_group(parent)
                    f.copy(f[name], out, name=name)
                    failed.pop(name, None)
                failed.update(dict(read_failures(f)))
        out.attrs["failed"] = json.dumps(sorted(failed.items()))
    for p in parts:
        p.unlink()
    return output


def extract_and_merge(items: Sequence[Tuple[Path, str]], output: Path, conf: ExtractConf = ExtractConf(),
                      overwrite: bool = False, progress: bool = True) -> Path:
    """Extract ``(path, name)`` images into ``output``: :func:`extract` (this rank's share
    under torchrun, all of them otherwise) then :func:`merge_parts` (on rank 0, after a
    barrier, under torchrun). Returns ``output``."""
    rank, world = dist_info()
    extract(items, output, conf, rank, world, overwrite, progress)
    if world > 1:
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            merge_parts(output, world, keep_existing=not overwrite)
        dist.barrier()
        if owned:
            dist.destroy_process_group()
    else:
        merge_parts(output, 1, keep_existing=not overwrite)
    return Path(output)


def main(image_dir: Path, output: Path, conf: ExtractConf = ExtractConf(),
         image_names: Optional[Sequence[str]] = None, overwrite: bool = False,
         progress: bool = True) -> Path:
    """Extract every image under ``image_dir`` (or the given relative ``image_names``) into
    ``output``; under torchrun each rank extracts its share and rank 0 merges. Returns
    ``output``."""
    from ..cli.extract import find_images

    image_dir = Path(image_dir)
    if image_names is None:
        items = find_images([str(image_dir)])
    else:
        items = [(image_dir / n, n) for n in image_names]
    return extract_and_merge(items, output, conf, overwrite, progress)


def _cli(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lift.sfm.extract", description=__doc__.split("\n")[0])
    parser.add_argument("image_dir", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--extractor", default="lift", choices=sorted(EXTRACTORS))
    parser.add_argument("--max-keypoints", type=int, default=2048)
    parser.add_argument("--resize-max", type=int, default=None)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default=None)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--scale-nms", type=int, default=1, help="lift: neighbouring scales a keypoint must beat")
    parser.add_argument("--subpixel", default="response", choices=["response", "quadratic"],
                        help="lift: sub-pixel positions from the continuous detector response or a quadratic fit")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    conf = ExtractConf(args.extractor, args.max_keypoints, args.resize_max, args.model, args.device,
                       args.num_workers, args.scale_nms, args.subpixel)
    try:
        out = main(args.image_dir, args.output, conf, overwrite=args.overwrite)
    except (StaleFeaturesError, FileNotFoundError) as err:
        print(f"python -m lift.sfm.extract: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(_cli())
