"""A small synthetic multi-view scene with known cameras, for tests and demos of the SfM pipeline.

The scene is the inside corner of a box: three textured squares of side ``L`` (the floor z = 0
and the walls x = 0 and y = 0, textured with skimage's photos) seen by cameras placed on an arc
in the positive octant and looking at the corner. A concave corner never occludes itself, so each
view is an exact composition of three homography warps (``cv2.warpPerspective``); no renderer is
needed. Cameras: pinhole, ``x ~ K (R X + t)``, pixel centres at integer positions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np

__all__ = ["look_at", "render_corner_scene"]


def look_at(center: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera rotation of a camera at ``center`` looking at ``target`` (x right,
    y down, z forward, world ``up`` pointing up in the image)."""
    z = np.asarray(target, float) - np.asarray(center, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z])


def _textures(size: int):
    import cv2
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea()]
    out = []
    for p in photos:
        g = cv2.cvtColor(p, cv2.COLOR_RGB2GRAY)
        h, w = g.shape
        s = min(h, w)
        g = g[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA))
    return out


def render_corner_scene(out_dir: Union[str, Path], num_views: int = 6,
                        image_size: Tuple[int, int] = (400, 300), focal: float = 320.0,
                        side: float = 1.0, texture_size: int = 512,
                        arc_degrees: float = 50.0) -> Dict[str, Dict[str, np.ndarray]]:
    """Render ``num_views`` grey views into ``out_dir/view_XX.png``.

    Returns ``{name: {"K", "R" (world-to-camera), "t", "center"}}``.
    """
    import cv2

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = image_size
    K = np.array([[focal, 0, (w - 1) / 2], [0, focal, (h - 1) / 2], [0, 0, 1.0]])
    L = side
    s = L / texture_size
    # plane: origin O, texture axes a (u) and b (v): P = O + s (u a + v b)
    planes = [(np.zeros(3), np.array([1.0, 0, 0]), np.array([0, 1.0, 0])),   # floor z = 0
              (np.array([0, 0, L]), np.array([0, 1.0, 0]), np.array([0, 0, -1.0])),  # wall x = 0
              (np.array([0, 0, L]), np.array([1.0, 0, 0]), np.array([0, 0, -1.0]))]  # wall y = 0
    textures = _textures(texture_size)
    target = np.array([0.35, 0.35, 0.3]) * L
    radius, height = 1.6 * L, 1.1 * L
    angles = np.radians(45.0 + np.linspace(-arc_degrees / 2, arc_degrees / 2, num_views))
    cams = {}
    for i, a in enumerate(angles):
        c = np.array([radius * np.cos(a), radius * np.sin(a), height + 0.15 * L * np.sin(3 * a)])
        R = look_at(c, target)
        t = -R @ c
        img = np.zeros((h, w), np.uint8)
        for (O, ax, bx), tex in zip(planes, textures):
            H = K @ np.column_stack([R @ (s * ax), R @ (s * bx), R @ O + t])
            # texture pixel centres at integers: texture (u, v) <-> P = O + s ((u + .5) a + (v + .5) b)
            H = H @ np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
            warped = cv2.warpPerspective(tex, H, (w, h), flags=cv2.INTER_LINEAR)
            mask = cv2.warpPerspective(np.full_like(tex, 255), H, (w, h), flags=cv2.INTER_NEAREST)
            img[mask > 0] = warped[mask > 0]
        name = f"view_{i:02d}.png"
        cv2.imwrite(str(out_dir / name), img)
        cams[name] = {"K": K, "R": R, "t": t, "center": c}
    return cams
