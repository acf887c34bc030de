"""Tiny generated data fixtures for tests and smoke runs (e.g. a few ``lift-train`` steps).

Nothing generated here is committed: tests call these functions into a temporary folder;
``python data/make_fixtures.py OUT_DIR`` writes all of them into OUT_DIR.

Fixtures:
    * ``brown/``: a Brown/UBC-layout patch set (``patches0000.bmp``, ``patches0001.bmp``,
      ``info.txt``, ``m50_200_200_0.txt``) with 100 3-D points x 3 views = 300 patches (so the
      second bitmap is partly filled), views = the point's texture with a random shift and noise.
    * ``photos/``: 3 photos from ``skimage.data`` (camera, coins, brick: installed everywhere).
    * ``tiny_synthetic.h5``: a real synthetic-builder file from those photos (a few hundred
      128 x 128 patches; the shape of file ``lift-train`` smoke tests need).
    * ``colmap_text/``: a COLMAP text model (3 views of a textured plane related by homographies)
      with its ``images/``, for the colmap builder's model-folder path.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

BROWN_POINTS, BROWN_VIEWS = 100, 3


def make_brown_fixture(root, n_points: int = BROWN_POINTS, views: int = BROWN_VIEWS,
                       seed: int = 0) -> Path:
    """Write a Brown/UBC-layout folder; returns it. Patch k belongs to point k // views."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = n_points * views
    tiles = np.zeros((n, 64, 64), np.uint8)
    for p in range(n_points):
        base = cv2.GaussianBlur(rng.uniform(0, 255, (80, 80)).astype(np.float32), (0, 0), 2.0)
        base = (base - base.min()) / max(np.ptp(base), 1e-6) * 255
        for v in range(views):
            dx, dy = rng.integers(0, 16, 2)
            t = base[dy:dy + 64, dx:dx + 64] + rng.normal(0, 8, (64, 64))
            tiles[p * views + v] = np.clip(t, 0, 255).astype(np.uint8)
    per = 256
    for b in range((n + per - 1) // per):
        sheet = np.zeros((1024, 1024), np.uint8)
        for k in range(b * per, min(n, (b + 1) * per)):
            r, c = (k % per) // 16, k % 16
            sheet[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] = tiles[k]
        cv2.imwrite(str(root / f"patches{b:04d}.bmp"), sheet)
    point = np.arange(n) // views
    (root / "info.txt").write_text("".join(f"{pid} 0\n" for pid in point))
    lines = []
    for _ in range(200):  # half matching, half non-matching pairs
        a, b = rng.integers(0, n, 2)
        if rng.random() < 0.5:
            b = point[a] * views + (a % views + 1) % views
        lines.append(f"{a} {point[a]} 0 {b} {point[b]} 0 0\n")
    (root / "m50_200_200_0.txt").write_text("".join(lines))
    return root


def make_photos(folder) -> Path:
    """Write 3 grey photos from skimage.data into ``folder``; returns it."""
    from skimage import color, data

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("camera", "coins", "brick"):
        img = getattr(data, name)()
        if img.ndim == 3:
            img = (color.rgb2gray(img) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{name}.png"), img)
    return folder


def make_tiny_synthetic(path, photos=None, seed: int = 0) -> Path:
    """A small real synthetic patch file (brick.png held out as 'test'); returns its path."""
    from .synthetic import build_synthetic

    path = Path(path)
    photos = Path(photos) if photos is not None else make_photos(path.parent / "photos")
    return build_synthetic(photos, path, groups_per_photo=1, tracks_per_group=24, views=(2, 3),
                           negatives_per_view=6, test_photos=("brick.*",), val_fraction=0.2,
                           seed=seed, progress=False)


def _quat_from_rot(r: np.ndarray) -> np.ndarray:
    w = np.sqrt(max(1e-12, 1.0 + np.trace(r))) / 2.0
    return np.array([w, (r[2, 1] - r[1, 2]) / (4 * w), (r[0, 2] - r[2, 0]) / (4 * w),
                     (r[1, 0] - r[0, 1]) / (4 * w)])


def make_colmap_text_model(root, seed: int = 0):
    """Three pinhole views of a textured plane z = 0 and a COLMAP text model of them.

    Returns (model folder, image folder, ground truth): the ground truth dict maps
    ``point3D_id`` to ``{image name: (x, y)}`` in the library's pixel convention.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "model").mkdir(parents=True, exist_ok=True)
    w, h, f = 480, 360, 500.0
    k = np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
    tex = cv2.GaussianBlur(rng.uniform(0, 255, (400, 400)).astype(np.float32), (0, 0), 3.0)
    tex = cv2.normalize(tex, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    # texture pixel (u, v) <-> plane point X = ((u - 200) / 200, (v - 200) / 200, 0)
    plane_from_tex = np.array([[1 / 200, 0, -1.0], [0, 1 / 200, -1.0], [0, 0, 1.0]])
    poses = []
    for i, (yaw, tx) in enumerate([(0.0, 0.0), (0.15, -0.4), (-0.15, 0.4)]):
        c, s = np.cos(yaw), np.sin(yaw)
        r = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # world -> camera rotation
        t = np.array([tx, 0.0, 2.5])
        hom = k @ np.stack([r[:, 0], r[:, 1], t], 1) @ plane_from_tex  # tex -> image (centres)
        img = cv2.warpPerspective(tex, hom, (w, h), flags=cv2.INTER_LINEAR)
        cv2.imwrite(str(root / "images" / f"view{i}.png"), img)
        poses.append((r, t, f"view{i}.png"))
    # 3-D points: SIFT detections of view 0 back-projected to the plane
    sift = cv2.SIFT_create(nfeatures=60)
    kp0 = [kp.pt for kp in sift.detect(cv2.imread(str(root / "images/view0.png"), 0), None)]
    kp0 = np.unique(np.round(np.array(kp0), 2), axis=0)
    r0, t0, _ = poses[0]
    h0 = k @ np.stack([r0[:, 0], r0[:, 1], t0], 1)
    xy_plane = cv2.perspectiveTransform(kp0[None].astype(np.float64), np.linalg.inv(h0))[0]
    obs = {i: [] for i in range(3)}
    truth = {}
    for pid, (X, Y) in enumerate(xy_plane, start=1):
        truth[pid] = {}
        for i, (r, t, name) in enumerate(poses):
            p = k @ (r @ np.array([X, Y, 0.0]) + t)
            x, y = p[0] / p[2], p[1] / p[2]
            if 20 <= x < w - 20 and 20 <= y < h - 20:
                obs[i].append((x, y, pid))
                truth[pid][name] = (x, y)
    truth = {pid: v for pid, v in truth.items() if len(v) >= 2}  # tracks need 2 views
    obs = {i: [o for o in obs[i] if o[2] in truth] for i in obs}
    lines_img, lines_pts = [], {pid: [] for pid in truth}
    for i, (r, t, name) in enumerate(poses):
        q = _quat_from_rot(r)
        lines_img.append(f"{i + 1} {' '.join(map(str, q))} {' '.join(map(str, t))} 1 {name}")
        # COLMAP puts the top-left pixel centre at (0.5, 0.5)
        lines_img.append(" ".join(f"{x + 0.5} {y + 0.5} {pid}" for x, y, pid in obs[i]))
        for j, (_, _, pid) in enumerate(obs[i]):
            lines_pts[pid].append(f"{i + 1} {j}")
    m = root / "model"
    (m / "cameras.txt").write_text(f"1 PINHOLE {w} {h} {f} {f} {w / 2 + 0.5} {h / 2 + 0.5}\n")
    (m / "images.txt").write_text("\n".join(lines_img) + "\n")
    (m / "points3D.txt").write_text("".join(
        f"{pid} {X} {Y} 0 128 128 128 0.1 {' '.join(lines_pts[pid])}\n"
        for pid, (X, Y) in enumerate(xy_plane, start=1) if pid in truth))
    (m / "rigs.txt").write_text("1 1 CAMERA 1\n")
    (m / "frames.txt").write_text("".join(
        f"{i + 1} 1 {' '.join(map(str, _quat_from_rot(r)))} {' '.join(map(str, t))} 1 CAMERA 1 "
        f"{i + 1}\n" for i, (r, t, _) in enumerate(poses)))
    return m, root / "images", truth


def make_all(out_dir) -> Path:
    """Write every fixture into ``out_dir``; returns it."""
    out = Path(out_dir)
    make_brown_fixture(out / "brown")
    make_tiny_synthetic(out / "tiny_synthetic.h5", make_photos(out / "photos"))
    make_colmap_text_model(out / "colmap_text")
    return out
