"""Regenerate the built-in sample pair in ``lift/assets/`` (used by ``lift-match`` with no
arguments and by the README's first command).

Source: ``skimage.data.astronaut()`` (NASA photo, public domain). View 1 is view 0 warped by the
homography stored in ``sample_H.txt`` (maps view-0 pixels to view-1 pixels, top-left pixel
centre = (0, 0)) with a brightness/contrast change and mild noise.

    python tools/make_assets.py
"""
from pathlib import Path

import cv2
import numpy as np
from skimage import data

OUT = Path(__file__).resolve().parents[1] / "lift" / "assets"


def main() -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    img0 = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)  # 512 x 512
    h, w = img0.shape[:2]
    ang = np.deg2rad(25.0)
    c = np.array([w / 2 - 0.5, h / 2 - 0.5])
    s = 0.8
    rot = np.array([[s * np.cos(ang), -s * np.sin(ang)], [s * np.sin(ang), s * np.cos(ang)]])
    H = np.eye(3)
    H[:2, :2] = rot
    H[:2, 2] = c - rot @ c + np.array([12.0, -8.0])
    H[2, :2] = [2e-4, -1e-4]
    H /= H[2, 2]
    img1 = cv2.warpPerspective(img0, H, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    rng = np.random.default_rng(0)
    img1 = np.clip(img1.astype(np.float32) * 0.8 + 20 + rng.normal(0, 3, img1.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(str(OUT / "sample0.jpg"), img0, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(OUT / "sample1.jpg"), img1, [cv2.IMWRITE_JPEG_QUALITY, 90])
    np.savetxt(OUT / "sample_H.txt", H)
    return OUT


if __name__ == "__main__":
    print(main())
