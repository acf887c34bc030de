"""Registry of local-feature methods for the benchmark.

A method is a factory ``f(max_keypoints, variant=None, device=None) -> extract`` where
``extract(image)`` takes a grey uint8 ``H x W`` image and returns :class:`lift.Features`
(keypoints sorted by score, at most ``max_keypoints``). Adding a method is one function::

    @register_method("mine", "my detector + descriptor")
    def mine(max_keypoints, variant=None, device=None):
        def extract(image):
            ...
            return Features(...)
        return extract

Method specs are ``name`` or ``name:variant`` (``lift:<weights name>``). A method that cannot run
here (missing weights, missing opencv-contrib module) raises :class:`MethodUnavailable` when it
is loaded; the benchmark reports it as unavailable with the reason instead of failing.

Binary descriptors (ORB, BRISK, AKAZE/MLDB, BoostDesc, TEBLID) are unpacked to +-1 / sqrt(D)
vectors: L2-normalised, and their squared L2 distance is 4 / D times the Hamming distance, so
nearest neighbours under L2 are exactly the Hamming nearest neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ..features import Features

__all__ = ["METHODS", "Method", "MethodUnavailable", "register_method", "load_method",
           "available_methods", "parse_method_list", "DEFAULT_METHODS"]

Extractor = Callable[[np.ndarray], Features]


class MethodUnavailable(RuntimeError):
    """The method cannot run in this environment; ``str(exc)`` is the reason."""


@dataclass
class _Entry:
    factory: Callable[..., Extractor]
    description: str


@dataclass
class Method:
    """A loaded method: ``spec`` (as requested), ``extract(image) -> Features``, description."""

    spec: str
    extract: Extractor
    description: str


METHODS: Dict[str, _Entry] = {}

#: What ``lift-bench`` runs when ``--methods`` is not given.
DEFAULT_METHODS = ("lift", "lift+quadratic", "lift+nodenoise", "sift", "rootsift", "orb", "akaze", "brisk",
                   "sift+vgg", "sift+boost", "sift+teblid")


def register_method(name: str, description: str):
    """Decorator registering a method factory under ``name`` (lower case, no ':')."""
    if ":" in name or name != name.lower():
        raise ValueError(f"method names are lower case without ':', got {name!r}")

    def deco(factory):
        METHODS[name] = _Entry(factory, description)
        return factory
    return deco


def available_methods() -> Dict[str, str]:
    """``{name: description}`` of the registered methods."""
    return {k: v.description for k, v in METHODS.items()}


def parse_method_list(text: str) -> List[str]:
    """``"lift,sift, orb"`` -> ``["lift", "sift", "orb"]`` (order kept, duplicates dropped)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if item and item not in out:
            out.append(item)
    if not out:
        raise ValueError("empty method list")
    return out


def load_method(spec: str, max_keypoints: int = 2048, device=None) -> Method:
    """Instantiate a method from its spec (``name`` or ``name:variant``).

    Raises:
        ValueError: unknown name (the message lists the registered ones).
        MethodUnavailable: the method cannot run here (reason in the message).
    """
    name, _, variant = spec.partition(":")
    name = name.strip().lower()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; registered: {', '.join(METHODS)}")
    if max_keypoints <= 0:
        raise ValueError(f"max_keypoints must be positive, got {max_keypoints}")
    entry = METHODS[name]
    extract = entry.factory(max_keypoints, variant or None, device)
    return Method(spec, extract, entry.description + (f" [{variant}]" if variant else ""))


# ---------------------------------------------------------------------------- OpenCV helpers
def _cv2_create(*names: str):
    """First available OpenCV factory among ``cv2.X`` / ``cv2.xfeatures2d.X`` names."""
    import cv2

    for n in names:
        for mod in (cv2, getattr(cv2, "xfeatures2d", None)):
            fn = getattr(mod, n, None) if mod is not None else None
            if fn is not None:
                return fn
    raise MethodUnavailable(f"OpenCV has no {' / '.join(names)} (install opencv-contrib-python)")


def _top_k(keypoints, k: int):
    if len(keypoints) <= k:
        return list(keypoints)
    order = np.argsort([-kp.response for kp in keypoints], kind="stable")[:k]
    return [keypoints[i] for i in order]


def _to_features(keypoints, descriptors, image: np.ndarray, binary: bool) -> Features:
    """OpenCV output -> :class:`Features` sorted by response (binary descriptors unpacked)."""
    size = (image.shape[1], image.shape[0])
    if descriptors is None or len(keypoints) == 0:
        dim = 0 if descriptors is None else np.asarray(descriptors).shape[-1] * (8 if binary else 1)
        return Features.empty(size, dim or (256 if binary else 128))
    d = np.asarray(descriptors)
    if binary:
        d = np.unpackbits(d.astype(np.uint8), axis=1).astype(np.float32) * 2.0 - 1.0
    feats = Features.from_cv2(keypoints, d, size)
    return feats[np.argsort(-feats.scores, kind="stable")]


def _detect_compute(detector, descriptor, max_keypoints: int, binary: bool) -> Extractor:
    def extract(image: np.ndarray) -> Features:
        kps = _top_k(detector.detect(image, None), max_keypoints)
        if not kps:
            return _to_features([], None, image, binary)
        kps, desc = descriptor.compute(image, kps)
        return _to_features(kps, desc, image, binary)
    return extract


def _sift(max_keypoints: int):
    create = _cv2_create("SIFT_create")
    try:  # exact pixel centres (OpenCV >= 4.8); see conventions: default SIFT is ~0.25 px off
        return create(nfeatures=max_keypoints, enable_precise_upscale=True)
    except TypeError:
        return create(nfeatures=max_keypoints)


# ---------------------------------------------------------------------------- methods
@register_method("sift", "OpenCV SIFT (DoG + 128-d SIFT)")
def sift(max_keypoints, variant=None, device=None):
    det = _sift(max_keypoints)
    return _detect_compute(det, det, max_keypoints, binary=False)


@register_method("rootsift", "OpenCV SIFT with RootSIFT descriptors (Arandjelovic & Zisserman 2012)")
def rootsift(max_keypoints, variant=None, device=None):
    base = sift(max_keypoints)

    def extract(image):
        f = base(image)
        d = f.descriptors / np.maximum(np.abs(f.descriptors).sum(1, keepdims=True), 1e-12)
        f.descriptors = np.sqrt(np.maximum(d, 0)).astype(np.float32)
        return f
    return extract


@register_method("orb", "OpenCV ORB (oriented FAST + rotated BRIEF, 256 bits)")
def orb(max_keypoints, variant=None, device=None):
    det = _cv2_create("ORB_create")(nfeatures=max_keypoints)
    return _detect_compute(det, det, max_keypoints, binary=True)


@register_method("akaze", "OpenCV AKAZE (nonlinear scale space + MLDB, 486 bits)")
def akaze(max_keypoints, variant=None, device=None):
    det = _cv2_create("AKAZE_create")()
    return _detect_compute(det, det, max_keypoints, binary=True)


@register_method("brisk", "OpenCV BRISK (512 bits)")
def brisk(max_keypoints, variant=None, device=None):
    det = _cv2_create("BRISK_create")()
    return _detect_compute(det, det, max_keypoints, binary=True)


# Scale factors for SIFT keypoints given in the OpenCV contrib documentation of each descriptor.
@register_method("sift+vgg", "SIFT keypoints + VGG-120 descriptor (Simonyan et al. 2014, opencv-contrib)")
def sift_vgg(max_keypoints, variant=None, device=None):
    desc = _cv2_create("VGG_create")(scale_factor=6.75)
    return _detect_compute(_sift(max_keypoints), desc, max_keypoints, binary=False)


@register_method("sift+boost", "SIFT keypoints + BinBoost-256 descriptor (Trzcinski et al. 2013, opencv-contrib)")
def sift_boost(max_keypoints, variant=None, device=None):
    desc = _cv2_create("BoostDesc_create")(scale_factor=6.75)
    return _detect_compute(_sift(max_keypoints), desc, max_keypoints, binary=True)


@register_method("sift+teblid", "SIFT keypoints + TEBLID-256 descriptor (Suarez et al. 2021, opencv-contrib)")
def sift_teblid(max_keypoints, variant=None, device=None):
    desc = _cv2_create("TEBLID_create")(6.75)
    return _detect_compute(_sift(max_keypoints), desc, max_keypoints, binary=True)


def _probe_image(size: int = 128) -> np.ndarray:
    import cv2

    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 255, (size // 8, size // 8)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


@register_method("lift", "LIFT (this library); 'lift:<name>' selects named weights")
def lift_method(max_keypoints, variant=None, device=None, **knobs):
    import lift

    fn = getattr(lift, "detect_and_describe", None)
    if fn is None:
        raise MethodUnavailable("lift.detect_and_describe is not available in this build")
    model = variant or "default"

    def extract(image):
        return fn(image, max_keypoints=max_keypoints, device=device, model=model, **knobs)
    try:  # loads the weights once, so a missing file is reported before the run starts
        extract(_probe_image())
    except Exception as exc:  # noqa: BLE001 - any failure makes the method unavailable, with why
        raise MethodUnavailable(f"{type(exc).__name__}: {exc}") from None
    return extract


@register_method("lift+quadratic", "LIFT with sub-pixel positions from a quadratic fit to the "
                 "detector scores (subpixel='quadratic', the default until 2026-12-01); "
                 "'lift+quadratic:<name>' selects weights")
def lift_quadratic_method(max_keypoints, variant=None, device=None):
    return lift_method(max_keypoints, variant, device, subpixel="quadratic")


@register_method("lift+nodenoise", "LIFT without the noise-adaptive pre-smoothing "
                 "(noise_threshold=None, the behaviour until 2026-12-02); 'lift+nodenoise:<name>' "
                 "selects weights")
def lift_nodenoise_method(max_keypoints, variant=None, device=None):
    return lift_method(max_keypoints, variant, device, noise_threshold=None)


@register_method("lift+subpix", "LIFT with subpixel='response' (since 2026-12-01 the same as 'lift', "
                 "kept for old commands); 'lift+subpix:<name>' selects weights")
def lift_subpix_method(max_keypoints, variant=None, device=None):
    return lift_method(max_keypoints, variant, device, subpixel="response")


def time_extraction(extract: Extractor, image: np.ndarray, repeats: int = 5,
                    warmup: int = 2) -> Tuple[float, Features]:
    """Median wall time (seconds) of ``extract(image)`` over ``repeats`` runs after ``warmup``."""
    import time

    feats = None
    for _ in range(warmup):
        feats = extract(image)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        feats = extract(image)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), feats
