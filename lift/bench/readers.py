"""Benchmark data readers: image pairs with geometric ground truth.

Every reader returns plain records that the benchmark consumes lazily (images are decoded on
first use and never held for the whole data set):

* :class:`HomographyPair` — two images related by a 3 x 3 homography ``H`` mapping image-0
  pixels to image-1 pixels (library convention: top-left pixel centre = (0, 0)). Sources:
  HPatches layout (``<seq>/1.ppm..6.ppm``, ``H_1_2..H_1_6``), Oxford layout (``img1..6.*``,
  ``H1toNp``), and any folder of images with seeded synthetic homographies plus photometric
  change (:func:`synthetic_homography_pairs`).
* :class:`PosePair` — two images with ground-truth intrinsics ``K0, K1`` (3 x 3) and the relative
  pose ``(R, t)`` mapping camera-0 coordinates to camera-1 coordinates (``X1 = R X0 + t``).
  Sources: Strecha ``.camera`` files, COLMAP models (through pycolmap), and seeded synthetic
  piecewise-planar scenes rendered from any photo (:func:`synthetic_pose_pairs`).
* :class:`FlowPair` — two images with a dense forward flow (``H x W x 2``, pixels, image-0 grid)
  and a validity mask: Middlebury ``.flo`` files (MPI-Sintel layout) and the scikit-image
  Middlebury stereo pair (disparity ``d``: ``x_right = x_left - d``).

The Oxford and HPatches homographies are given for pixel centres at integer positions, the
library's convention, so they are used unchanged.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..image import IMAGE_EXTENSIONS, load_image

__all__ = [
    "ImageRef", "HomographyPair", "PosePair", "FlowPair", "Camera",
    "read_homography_sequence", "read_homography_dataset", "find_homography_sequences",
    "synthetic_homography", "synthetic_homography_pairs", "photometric_change",
    "read_strecha_camera", "read_strecha_scene", "read_colmap_cameras", "pose_pairs",
    "read_pose_dataset", "render_planes", "synthetic_pose_pairs",
    "read_flo", "write_flo", "read_sintel_pairs", "stereo_motorcycle_pair", "list_images",
    "homography_from_file",
]

PathLike = Union[str, Path]


# ---------------------------------------------------------------------------- image handles
@dataclass
class ImageRef:
    """A lazily loaded grey image.

    Attributes:
        key: unique identifier (features are cached per key by the benchmark).
        loader: callable returning the grey ``H x W`` uint8 image.
    """

    key: str
    loader: Callable[[], np.ndarray] = field(repr=False)

    def load(self) -> np.ndarray:
        image = self.loader()
        if image.ndim != 2 or image.dtype != np.uint8:
            raise ValueError(f"image loader for {self.key} must return grey uint8 H x W, "
                             f"got {image.dtype} {image.shape}")
        return image

    @classmethod
    def from_path(cls, path: PathLike, max_size: Optional[int] = None) -> "ImageRef":
        path = Path(path)
        key = str(path) if max_size is None else f"{path}@{max_size}"
        return cls(key, lambda: resize_max(load_image(path), max_size)[0])

    @classmethod
    def from_array(cls, key: str, image: np.ndarray) -> "ImageRef":
        return cls(key, lambda: image)


def resize_max(image: np.ndarray, max_size: Optional[int]) -> Tuple[np.ndarray, float]:
    """Downscale so that the long side is at most ``max_size`` (no upscaling).

    Returns ``(image, s)`` with ``s`` the scale applied to pixel-centre coordinates
    (x' = s (x + 0.5) - 0.5 is exact for the area resize; callers that need K use
    :func:`scale_intrinsics`).
    """
    import cv2

    if max_size is None or max(image.shape[:2]) <= max_size:
        return image, 1.0
    s = max_size / float(max(image.shape[:2]))
    w, h = int(round(image.shape[1] * s)), int(round(image.shape[0] * s))
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA), s


def list_images(folder: PathLike, recursive: bool = False) -> List[Path]:
    """Image files of ``folder`` (extensions of :data:`lift.image.IMAGE_EXTENSIONS`), sorted."""
    folder = Path(folder)
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------- homographies
@dataclass
class HomographyPair:
    """Two views related by a homography.

    Attributes:
        name: unique pair name, e.g. ``"boat/1-6"``.
        group: sequence group for aggregation (HPatches ``"i"``/``"v"``, ``"oxford"``,
            ``"synthetic"``).
        sequence: sequence name.
        image0, image1: :class:`ImageRef`.
        H: 3 x 3 float64, maps image-0 pixels to image-1 pixels.
    """

    name: str
    group: str
    sequence: str
    image0: ImageRef
    image1: ImageRef
    H: np.ndarray


def homography_from_file(path: PathLike) -> np.ndarray:
    """Read a 3 x 3 homography written as 9 whitespace-separated numbers; normalised to H[2,2] = 1."""
    values = np.array(Path(path).read_text().split(), dtype=np.float64)
    if values.size != 9:
        raise ValueError(f"{path}: expected 9 numbers for a 3 x 3 homography, got {values.size}")
    H = values.reshape(3, 3)
    if not np.isfinite(H).all() or abs(np.linalg.det(H)) < 1e-12:
        raise ValueError(f"{path}: homography is singular or not finite")
    return H / H[2, 2]


def _find_image(folder: Path, stem: str) -> Optional[Path]:
    for p in sorted(folder.glob(stem + ".*")):
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            return p
    return None


def _sequence_layout(folder: Path) -> Optional[str]:
    if (folder / "H_1_2").is_file() and _find_image(folder, "1") is not None:
        return "hpatches"
    if (folder / "H1to2p").is_file() and _find_image(folder, "img1") is not None:
        return "oxford"
    return None


def read_homography_sequence(folder: PathLike, max_size: Optional[int] = None) -> List[HomographyPair]:
    """Pairs (1, k) of one HPatches or Oxford sequence folder.

    HPatches: ``1.ppm .. 6.ppm`` and ``H_1_k``; Oxford: ``img1.* .. img6.*`` and ``H1tokp``.
    Targets whose image or homography is missing are skipped. With ``max_size`` both images are
    downscaled (long side) and ``H`` is conjugated accordingly.

    Raises:
        ValueError: ``folder`` is not a sequence in either layout.
    """
    folder = Path(folder)
    layout = _sequence_layout(folder)
    if layout is None:
        raise ValueError(f"{folder} is neither an HPatches sequence (1.ppm, H_1_2, ...) nor an "
                         "Oxford sequence (img1.*, H1to2p, ...)")
    ref_stem, name = ("1", "H_1_{}") if layout == "hpatches" else ("img1", "H1to{}p")
    ref = _find_image(folder, ref_stem)
    seq = folder.name
    group = seq.split("_")[0] if layout == "hpatches" and "_" in seq else layout
    pairs = []
    for k in range(2, 100):
        h_path = folder / name.format(k)
        img = _find_image(folder, str(k) if layout == "hpatches" else f"img{k}")
        if not h_path.is_file() or img is None:
            if k > 6:
                break
            continue
        H = homography_from_file(h_path)
        if max_size is not None:
            H = _rescale_homography(H, _image_scale(ref, max_size), _image_scale(img, max_size))
        pairs.append(HomographyPair(f"{seq}/1-{k}", group, seq, ImageRef.from_path(ref, max_size),
                                    ImageRef.from_path(img, max_size), H))
    return pairs


def _image_scale(path: Path, max_size: int) -> float:
    h, w = load_image(path).shape
    return min(1.0, max_size / float(max(h, w)))


def _rescale_homography(H: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """H for images scaled by s0 and s1 (pixel centres: x' = s (x + 0.5) - 0.5)."""
    def scale_mat(s):
        return np.array([[s, 0, 0.5 * s - 0.5], [0, s, 0.5 * s - 0.5], [0, 0, 1.0]])

    out = scale_mat(s1) @ H @ np.linalg.inv(scale_mat(s0))
    return out / out[2, 2]


def find_homography_sequences(root: PathLike) -> List[Path]:
    """Sequence folders (HPatches or Oxford layout) at ``root`` or one level below it."""
    root = Path(root)
    if _sequence_layout(root):
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and _sequence_layout(p))


def read_homography_dataset(root: PathLike, max_size: Optional[int] = None,
                            synthetic_max_size: int = 1024, pairs_per_image: int = 5,
                            max_images: Optional[int] = None, seed: int = 0,
                            pattern: Optional[str] = None, **homography_kw) -> List[HomographyPair]:
    """Read any homography benchmark folder.

    * an HPatches / Oxford sequence folder, or a folder of such sequences (e.g. ``hpatches/``);
    * otherwise a folder of images (searched recursively when the top level holds none): each
      image gives ``pairs_per_image`` synthetic pairs of
      increasing difficulty (:func:`synthetic_homography_pairs`, seeded by ``seed``;
      ``homography_kw`` such as ``max_zoom`` go to :func:`synthetic_homography`). ``pattern``
      (fnmatch on the path relative to ``root``, e.g. ``"img_09*"``) selects images.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no usable image.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no benchmark data at {root}")
    seqs = find_homography_sequences(root)
    if seqs:
        return [p for s in seqs for p in read_homography_sequence(s, max_size)]
    images = (list_images(root) or list_images(root, recursive=True)) if root.is_dir() else [root]
    images = [p for p in images if p.suffix.lower() in IMAGE_EXTENSIONS]
    if pattern is not None and root.is_dir():
        import fnmatch

        images = [p for p in images if fnmatch.fnmatch(p.relative_to(root).as_posix(), pattern)]
    if not images:
        raise FileNotFoundError(f"{root} holds no HPatches/Oxford sequence and no image "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
    if max_images is not None:
        images = images[:max_images]
    refs = [ImageRef.from_path(p, max_size or synthetic_max_size) for p in images]
    return synthetic_homography_pairs(refs, pairs_per_image=pairs_per_image, seed=seed, **homography_kw)


def _inside(points: np.ndarray, w: int, h: int) -> bool:
    return bool((points[:, 0] >= 0).all() and (points[:, 0] <= w - 1).all()
                and (points[:, 1] >= 0).all() and (points[:, 1] <= h - 1).all())


def synthetic_homography(size: Tuple[int, int], rng: np.random.Generator, difficulty: float = 1.0,
                         max_rotation_deg: float = 30.0, max_zoom: float = 2.0,
                         max_perspective: float = 0.15) -> np.ndarray:
    """A random homography whose *inverse* maps the whole output frame inside the input frame.

    Image 1 (same size ``(W, H)`` as image 0) shows the quadrilateral ``Q`` of image 0 obtained by
    rotating the frame by up to ``difficulty * max_rotation_deg``, shrinking it by a zoom in
    ``[1, 1 + difficulty (max_zoom - 1)]``, moving its corners by up to
    ``difficulty * max_perspective`` of the size, and shifting it while it stays inside
    image 0. Hence image 1 has no fill. Returns ``H`` (3 x 3 float64) mapping image-0 pixels to
    image-1 pixels.
    """
    import cv2

    w, h = size
    dst = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    centre = dst.mean(0)
    d = float(np.clip(difficulty, 0.0, 1.0))
    angle = np.deg2rad(rng.uniform(-1, 1) * max_rotation_deg * d)
    zoom = 1.0 + (max_zoom - 1.0) * d * rng.uniform(0.5, 1.0)
    persp = rng.uniform(-1, 1, (4, 2)) * max_perspective * d * np.array([w, h])
    shift_dir = rng.uniform(-1, 1, 2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    for _ in range(60):
        quad = (dst - centre) @ rot.T / zoom + persp / zoom
        room = np.array([w - 1, h - 1]) / 2 - np.abs(quad).max(0)
        if (room >= 0).all():
            quad = quad + centre + shift_dir * room
            if _inside(quad, w, h):
                break
        zoom *= 1.05  # shrink until the rotated quad fits
    else:  # pragma: no cover - 1.05**60 ~ 19x always fits
        raise RuntimeError("could not fit a synthetic homography")
    H10 = cv2.getPerspectiveTransform(dst.astype(np.float32), quad.astype(np.float32))
    H = np.linalg.inv(H10)
    return H / H[2, 2]


def photometric_change(image: np.ndarray, rng: np.random.Generator, difficulty: float = 1.0) -> np.ndarray:
    """Seeded gamma / contrast / brightness change, blur and noise scaled by ``difficulty`` in
    [0, 1] (grey uint8 in/out), using :func:`lift.data.synthetic.photometric_change`."""
    from ..data.synthetic import photometric_change as change

    d = float(np.clip(difficulty, 0.0, 1.0))
    return change(image, rng, gamma_range=(np.exp(-0.4 * d), np.exp(0.4 * d)),
                  contrast_range=(1 - 0.3 * d, 1 + 0.3 * d), brightness=0.15 * d,
                  max_blur=0.3 + 0.9 * d, blur_prob=0.5 * d, max_noise=0.02 * d)


def _warp_loader(ref: ImageRef, H: np.ndarray, seed: int, difficulty: float):
    def load():
        import cv2

        image = ref.load()
        warped = cv2.warpPerspective(image, H, (image.shape[1], image.shape[0]),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        return photometric_change(warped, np.random.default_rng(seed), difficulty)
    return load


def synthetic_homography_pairs(images: Sequence[Union[ImageRef, np.ndarray, PathLike]],
                               pairs_per_image: int = 5, seed: int = 0,
                               max_size: Optional[int] = 1024, **homography_kw) -> List[HomographyPair]:
    """Seeded synthetic pairs: each image gives a sequence of ``pairs_per_image`` warped copies of
    increasing difficulty (k / pairs_per_image for k = 1..n), HPatches-style names
    ``<name>/1-<k+1>``, group ``"synthetic"``.

    Args:
        images: :class:`ImageRef`, grey/colour arrays (converted to grey uint8), or paths.
        seed: base seed; pair (i, k) uses ``seed * 1_000_003 + 1000 i + k``: adding images does
            not change the pairs of the earlier ones.
        max_size: long side for arrays and paths (refs are used as they are).
        homography_kw: passed to :func:`synthetic_homography`.
    """
    refs = []
    for i, im in enumerate(images):
        if isinstance(im, ImageRef):
            refs.append(im)
        elif isinstance(im, np.ndarray):
            refs.append(ImageRef.from_array(f"array{i}", resize_max(_to_gray_uint8(im), max_size)[0]))
        else:
            refs.append(ImageRef.from_path(im, max_size))
    pairs, names = [], set()
    for i, ref in enumerate(refs):
        image = ref.load()
        size = (image.shape[1], image.shape[0])
        name = Path(ref.key.split("@")[0]).stem if not ref.key.startswith("array") else ref.key
        name = name if name not in names else f"{name}-{i}"  # same stem in two sub-folders
        names.add(name)
        for k in range(1, pairs_per_image + 1):
            s = seed * 1_000_003 + 1000 * i + k
            difficulty = k / pairs_per_image
            H = synthetic_homography(size, np.random.default_rng(s), difficulty, **homography_kw)
            warped = ImageRef(f"{ref.key}#syn{seed}-{k}", _warp_loader(ref, H, s + 7, difficulty))
            pairs.append(HomographyPair(f"{name}/1-{k + 1}", "synthetic", name, ref, warped, H))
    return pairs


def _to_gray_uint8(image: np.ndarray) -> np.ndarray:
    from ..image import to_gray_tensor

    return (to_gray_tensor(image)[0].numpy() * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------- cameras / poses
@dataclass
class Camera:
    """Pinhole camera: ``x ~ K (R X + t)`` (world to camera), image size (W, H)."""

    K: np.ndarray
    R: np.ndarray
    t: np.ndarray
    size: Tuple[int, int]

    def scaled(self, s: float) -> "Camera":
        """The camera of the image resized by ``s`` (pixel centres: x' = s (x + 0.5) - 0.5)."""
        K = self.K.copy()
        K[:2] *= s
        K[0, 2] += 0.5 * s - 0.5
        K[1, 2] += 0.5 * s - 0.5
        return Camera(K, self.R, self.t, (int(round(self.size[0] * s)), int(round(self.size[1] * s))))


@dataclass
class PosePair:
    """Two views with ground-truth intrinsics and relative pose ``X1 = R X0 + t``.

    ``t`` has the scale of the ground truth (only its direction is evaluated).
    """

    name: str
    group: str
    image0: ImageRef
    image1: ImageRef
    K0: np.ndarray
    K1: np.ndarray
    R: np.ndarray
    t: np.ndarray


def relative_pose(cam0: Camera, cam1: Camera) -> Tuple[np.ndarray, np.ndarray]:
    """``(R, t)`` with ``X1 = R X0 + t`` from two world-to-camera poses."""
    R = cam1.R @ cam0.R.T
    return R, cam1.t - R @ cam0.t


def read_strecha_camera(path: PathLike) -> Camera:
    """Read a Strecha ``.camera`` file: K (9), distortion (3), R camera-to-world (9), centre C (3),
    width height. Projection ``x ~ K [R^T | -R^T C] X`` (returned as world-to-camera ``R^T``,
    ``-R^T C``). Non-zero radial distortion is refused (the evaluation assumes pinhole)."""
    v = np.array(Path(path).read_text().split(), dtype=np.float64)
    if v.size != 26:
        raise ValueError(f"{path}: a Strecha .camera file has 26 numbers, found {v.size}")
    K, dist, Rc2w, C = v[:9].reshape(3, 3), v[9:12], v[12:21].reshape(3, 3), v[21:24]
    if np.abs(dist).max() > 0:
        raise ValueError(f"{path}: radial distortion {dist} is not supported")
    return Camera(K, Rc2w.T, -Rc2w.T @ C, (int(v[24]), int(v[25])))


def read_strecha_scene(folder: PathLike, max_size: Optional[int] = 1024
                       ) -> Tuple[List[ImageRef], List[Camera]]:
    """Images and cameras of a Strecha scene (``images/*.jpg``, ``gt_dense_cameras/*.camera``),
    downscaled to ``max_size`` (long side) with K scaled to match."""
    folder = Path(folder)
    refs, cams = [], []
    for cam_path in sorted((folder / "gt_dense_cameras").glob("*.camera")):
        img = folder / "images" / cam_path.name[: -len(".camera")]
        if not img.is_file():
            continue
        cam = read_strecha_camera(cam_path)
        s = 1.0 if max_size is None else min(1.0, max_size / max(cam.size))
        refs.append(ImageRef.from_path(img, max_size))
        cams.append(cam.scaled(s))
    if not refs:
        raise FileNotFoundError(f"{folder}: no images/<name> with gt_dense_cameras/<name>.camera")
    return refs, cams


def read_colmap_cameras(model: PathLike, image_dir: PathLike, max_size: Optional[int] = 1024
                        ) -> Tuple[List[ImageRef], List[Camera], List[set]]:
    """Registered images of a COLMAP model (``cameras/images/points3D`` .bin or .txt) through
    pycolmap. Returns (refs, cameras, 3-D point id sets per image, for covisibility).

    Only undistorted pinhole-like models are exact (PINHOLE, SIMPLE_PINHOLE); for others the
    distortion is ignored. COLMAP's pixel-centre offset (0.5) is removed from K.
    """
    import pycolmap

    rec = pycolmap.Reconstruction(str(model))
    refs, cams, points = [], [], []
    for image_id in sorted(rec.images):
        im = rec.images[image_id]
        if hasattr(im, "has_pose") and not im.has_pose:
            continue
        path = Path(image_dir) / im.name
        if not path.is_file():
            continue
        cam = rec.cameras[im.camera_id]
        K = np.array(cam.calibration_matrix(), dtype=np.float64)
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        pose = im.cam_from_world() if callable(im.cam_from_world) else im.cam_from_world
        Rt = np.array(pose.matrix(), dtype=np.float64)
        camera = Camera(K, Rt[:, :3], Rt[:, 3], (int(cam.width), int(cam.height)))
        s = 1.0 if max_size is None else min(1.0, max_size / max(camera.size))
        refs.append(ImageRef.from_path(path, max_size))
        cams.append(camera.scaled(s))
        points.append({p.point3D_id for p in im.points2D if p.has_point3D()})
    if not refs:
        raise FileNotFoundError(f"{model}: no registered image found under {image_dir}")
    return refs, cams, points


def pose_pairs(refs: Sequence[ImageRef], cams: Sequence[Camera], group: str,
               gaps: Iterable[int] = (1, 2), covisible: Optional[Sequence[set]] = None,
               min_covisible: int = 50, max_pairs: Optional[int] = None) -> List[PosePair]:
    """Pose pairs (i, i + gap) of an ordered sequence, or, with ``covisible`` (3-D point id sets),
    every pair sharing at least ``min_covisible`` points. Deterministic order; ``max_pairs``
    keeps an evenly spread subset."""
    n = len(refs)
    if covisible is not None:
        idx = [(i, j) for i in range(n) for j in range(i + 1, n)
               if len(covisible[i] & covisible[j]) >= min_covisible]
    else:
        idx = sorted({(i, i + g) for g in gaps for i in range(n - g)})
    if max_pairs is not None and len(idx) > max_pairs:
        idx = [idx[k] for k in np.linspace(0, len(idx) - 1, max_pairs).round().astype(int)]
    out = []
    for i, j in idx:
        R, t = relative_pose(cams[i], cams[j])
        n0 = Path(refs[i].key.split("@")[0]).stem
        n1 = Path(refs[j].key.split("@")[0]).stem
        out.append(PosePair(f"{group}/{n0}-{n1}", group, refs[i], refs[j], cams[i].K, cams[j].K, R, t))
    return out


def read_pose_dataset(root: PathLike, max_size: Optional[int] = 1024, gaps: Iterable[int] = (1, 2),
                      max_pairs: Optional[int] = None, image_dir: Optional[PathLike] = None
                      ) -> List[PosePair]:
    """Read a relative-pose benchmark folder.

    * a Strecha scene (``images/``, ``gt_dense_cameras/``) or a folder of scenes (recursively);
    * a COLMAP model folder (``cameras.bin|txt``...) with ``image_dir`` (default: ``images/``
      next to the model, or two levels up as in ``<project>/sparse/0``); or a project folder with
      ``sparse/0`` (or ``sparse``) and ``images``.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no benchmark data at {root}")
    scenes = sorted({p.parent.parent for p in root.rglob("*.camera") if p.parent.name == "gt_dense_cameras"})
    pairs: List[PosePair] = []
    for scene in scenes:
        refs, cams = read_strecha_scene(scene, max_size)
        pairs += pose_pairs(refs, cams, scene.name, gaps)
    if scenes:
        return pairs if max_pairs is None else pairs[:max_pairs]
    for model in (root, root / "sparse" / "0", root / "sparse"):
        if any((model / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            candidates = [image_dir] if image_dir else [root / "images", model.parent / "images",
                                                        model.parent.parent / "images"]
            images = next((Path(c) for c in candidates if c and Path(c).is_dir()), None)
            if images is None:
                raise FileNotFoundError(f"COLMAP model at {model} but no image folder; pass image_dir")
            refs, cams, pts = read_colmap_cameras(model, images, max_size)
            return pose_pairs(refs, cams, root.name, covisible=pts, max_pairs=max_pairs)
    raise FileNotFoundError(f"{root}: no Strecha scene (gt_dense_cameras/*.camera) and no COLMAP "
                            "model (cameras.bin/.txt) found")


def render_planes(texture_list: Sequence[np.ndarray], planes: Sequence[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                  K: np.ndarray, R: np.ndarray, t: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Render textured rectangles seen by a pinhole camera (``x ~ K (R X + t)``), nearest wins.

    Args:
        texture_list: grey uint8 textures, one per plane.
        planes: ``(origin, u_axis, v_axis)`` per plane (3-vectors, world units): the texture's
            pixel (a, b) sits at ``origin + a / W_tex * u_axis + b / H_tex * v_axis``.
        K, R, t: camera; size: (W, H) of the rendering.

    Returns:
        grey uint8 ``H x W`` image; pixels that see no plane are 0.
    """
    import cv2

    w, h = size
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(K).T @ R  # world directions
    centre = -R.T @ t
    depth = np.full((h, w), np.inf)
    out = np.zeros((h, w), np.float32)
    for tex, (o, u, v) in zip(texture_list, planes):
        n = np.cross(u, v)
        denom = rays @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = ((o - centre) @ n) / denom
        X = centre + lam[..., None] * rays
        # plane coordinates (a, b) in [0, 1]^2
        gram_inv = np.linalg.inv(np.array([[u @ u, u @ v], [u @ v, v @ v]]))
        ab = np.stack([(X - o) @ u, (X - o) @ v], -1) @ gram_inv.T
        ok = np.isfinite(lam) & (lam > 0) & (ab >= 0).all(-1) & (ab <= 1).all(-1) & (lam < depth)
        th, tw = tex.shape
        mapx = (ab[..., 0] * tw - 0.5).astype(np.float32)
        mapy = (ab[..., 1] * th - 0.5).astype(np.float32)
        sampled = cv2.remap(tex.astype(np.float32), mapx, mapy, cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
        out = np.where(ok, sampled, out)
        depth = np.where(ok, lam, depth)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _rotation(axis_angle: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.Rodrigues(np.asarray(axis_angle, np.float64).reshape(3, 1))[0]


def synthetic_pose_pairs(textures: Sequence[np.ndarray], n_pairs: int = 4, seed: int = 0,
                         size: Tuple[int, int] = (640, 480), max_angle_deg: float = 20.0) -> List[PosePair]:
    """Seeded two-view scenes with exact ground-truth poses, rendered from any photos.

    The scene is a "corner": two textured planes meeting at 90 degrees (a non-planar scene, so
    the essential matrix is well defined) at about 4 units in front of camera 0. Camera 1 looks
    at the corner from a viewpoint rotated by up to ``max_angle_deg`` about the scene centre.
    Textures (grey or colour) are assigned to the two planes cyclically.
    """
    w, h = size
    f = 0.9 * max(w, h)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])
    tex = [_to_gray_uint8(t) for t in textures]
    if not tex:
        raise ValueError("synthetic_pose_pairs needs at least one texture")
    pairs = []
    for k in range(n_pairs):
        rng = np.random.default_rng(seed * 1_000_003 + k)
        t0, t1 = tex[(2 * k) % len(tex)], tex[(2 * k + 1) % len(tex)]
        # two planes through the vertical edge x = 0, z = 4, opening towards the camera
        edge_top, edge_bottom = np.array([0.0, -1.6, 4.0]), np.array([0.0, 1.6, 4.0])
        left = np.array([-2.2, 0.0, -2.2]) / np.sqrt(2) * 1.4
        right = np.array([2.2, 0.0, -2.2]) / np.sqrt(2) * 1.4
        planes = [(edge_top + left, -left, edge_bottom - edge_top),
                  (edge_top, right, edge_bottom - edge_top)]
        centre = np.array([0.0, 0.0, 3.2])
        angle = np.deg2rad(max_angle_deg) * rng.uniform(0.5, 1.0)
        axis = np.array([rng.uniform(-0.3, 0.3), 1.0, rng.uniform(-0.3, 0.3)])
        axis *= angle * rng.choice([-1, 1]) / np.linalg.norm(axis)
        R1 = _rotation(axis)
        t1v = centre - R1 @ centre + rng.uniform(-0.2, 0.2, 3)  # orbit the scene centre
        R0, t0v = np.eye(3), np.zeros(3)
        img0 = render_planes([t0, t1], planes, K, R0, t0v, size)
        img1 = render_planes([t0, t1], planes, K, R1, t1v, size)
        img1 = photometric_change(img1, rng, 0.5)
        name = f"synthetic/{k}"
        pairs.append(PosePair(name, "synthetic", ImageRef.from_array(f"{name}#0", img0),
                              ImageRef.from_array(f"{name}#1", img1), K, K, R1, t1v))
    return pairs


# ---------------------------------------------------------------------------- optical flow
FLO_TAG = 202021.25


@dataclass
class FlowPair:
    """Two views with a dense forward flow ``flow`` (H x W x 2, pixels: image-0 pixel (x, y) is
    at (x + u, y + v) in image 1) and ``valid`` (H x W bool)."""

    name: str
    group: str
    image0: ImageRef
    image1: ImageRef
    flow: np.ndarray
    valid: np.ndarray


def read_flo(path: PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file (float32 tag 202021.25, int32 w, int32 h, h*w*2 float32)
    as an ``H x W x 2`` float32 array (u, v)."""
    data = Path(path).read_bytes()
    if len(data) < 12 or np.frombuffer(data[:4], "<f4")[0] != np.float32(FLO_TAG):
        raise ValueError(f"{path}: not a Middlebury .flo file (bad tag)")
    w, h = np.frombuffer(data[4:12], "<i4")
    if w <= 0 or h <= 0 or len(data) != 12 + 8 * int(w) * int(h):
        raise ValueError(f"{path}: .flo size mismatch (w={w}, h={h}, {len(data)} bytes)")
    return np.frombuffer(data[12:], "<f4").reshape(int(h), int(w), 2).copy()


def write_flo(path: PathLike, flow: np.ndarray) -> Path:
    """Write an ``H x W x 2`` flow as a Middlebury ``.flo`` file (atomically)."""
    import os

    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise ValueError(f"flow must be H x W x 2, got {flow.shape}")
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(np.float32(FLO_TAG).astype("<f4").tobytes())
        f.write(np.array([flow.shape[1], flow.shape[0]], "<i4").tobytes())
        f.write(flow.astype("<f4").tobytes())
    os.replace(tmp, path)
    return path


def read_sintel_pairs(root: PathLike) -> List[FlowPair]:
    """MPI-Sintel-style folders: every ``gt/<frame>.flo`` below ``root`` pairs ``<frame>.png`` with
    the next frame; ``gt/occlusions/<frame>.png`` and ``gt/invalid/<frame>.png`` (non-zero =
    excluded) give the validity mask."""
    pairs = []
    for flo in sorted(Path(root).rglob("gt/*.flo")):
        folder = flo.parent.parent
        m = re.match(r"(.*?)(\d+)$", flo.stem)
        if not m:
            continue
        nxt = f"{m.group(1)}{int(m.group(2)) + 1:0{len(m.group(2))}d}"
        im0, im1 = _find_image(folder, flo.stem), _find_image(folder, nxt)
        if im0 is None or im1 is None:
            continue
        flow = read_flo(flo)
        valid = np.isfinite(flow).all(-1) & (np.abs(flow) < 1e9).all(-1)
        for sub in ("occlusions", "invalid"):
            mask = _find_image(flo.parent / sub, flo.stem)
            if mask is not None:
                valid &= load_image(mask) == 0
        name = "/".join(folder.relative_to(root).parts) if folder != Path(root) else folder.name
        pairs.append(FlowPair(f"{name}/{flo.stem}", folder.parent.name or "flow",
                              ImageRef.from_path(im0), ImageRef.from_path(im1), flow, valid))
    return pairs


def stereo_motorcycle_pair() -> FlowPair:
    """The scikit-image Middlebury 2014 stereo pair (741 x 500) as a flow pair: ``u = -d``,
    ``v = 0`` (``x_right = x_left - d``); unknown disparities (inf) are invalid."""
    from skimage import data as skdata

    left, right, disp = skdata.stereo_motorcycle()
    disp = np.asarray(disp, np.float64)
    valid = np.isfinite(disp)
    flow = np.zeros(disp.shape + (2,), np.float32)
    flow[..., 0] = np.where(valid, -disp, 0.0)
    return FlowPair("motorcycle", "stereo", ImageRef.from_array("motorcycle#left", _to_gray_uint8(left)),
                    ImageRef.from_array("motorcycle#right", _to_gray_uint8(right)), flow, valid)
