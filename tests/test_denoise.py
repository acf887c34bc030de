"""Noise-adaptive pre-smoothing (lift.denoise) and its effect in the runtime."""
import cv2
import numpy as np
import pytest
import torch

from lift.denoise import adaptive_smooth, gaussian_blur, noise_level

skimage_data = pytest.importorskip("skimage.data")


def _camera() -> np.ndarray:
    return cv2.resize(skimage_data.camera(), (480, 480), interpolation=cv2.INTER_AREA)


def _noisy(image: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(image + rng.normal(0.0, std, image.shape), 0, 255).astype(np.uint8)


def _t(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_noise_level_recovers_added_noise(device):
    smooth = cv2.GaussianBlur(_camera(), (0, 0), 2.0)  # next to no texture at the pixel scale
    batch = torch.cat([_t(smooth), _t(_noisy(smooth, 10.0)), _t(_noisy(smooth, 30.0))]).to(device)
    est = noise_level(batch).cpu().numpy()
    assert est[0] < 1.0
    np.testing.assert_allclose(est[1:], [10.0, 30.0], rtol=0.12)  # clipping at 0 / 255 lowers it a little
    assert noise_level(torch.zeros(2, 1, 2, 2)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        noise_level(torch.zeros(1, 3, 8, 8))


def test_gaussian_blur_matches_opencv():
    img = _camera().astype(np.float32) / 255.0
    for sigma in (0.4, 1.3):
        r = int(np.ceil(3 * sigma))
        ref = cv2.GaussianBlur(img, (2 * r + 1, 2 * r + 1), sigma, borderType=cv2.BORDER_REFLECT_101)
        out = gaussian_blur(_t(img * 255.0), sigma)[0, 0].numpy()
        np.testing.assert_allclose(out, ref, atol=2e-6)
    x = _t(img * 255)
    assert gaussian_blur(x, 0.0) is x


def test_adaptive_smooth_leaves_clean_images_alone():
    clean = _camera()
    noisy = _noisy(clean, 40.0)
    batch = torch.cat([_t(clean), _t(noisy)])
    out, sigma = adaptive_smooth(batch, threshold=8.0)
    assert sigma[0] == 0 and torch.equal(out[0], batch[0])
    level = float(noise_level(batch[1:]))
    assert float(sigma[1]) == pytest.approx(level / (2 * np.sqrt(np.pi) * 8.0), rel=1e-5)
    # the white noise left after the blur has a std near the threshold
    left = out[1] - gaussian_blur(batch[:1], float(sigma[1]))[0]
    assert 6.5 < 255.0 * float(left.std()) < 10.0 < 30.0 < level  # measured 9.1
    with pytest.raises(ValueError):
        adaptive_smooth(batch, threshold=0.0)


def test_runtime_matches_noisy_images_better():
    """A photo and its rotated copy with heavy noise (std 40): with the shipped weights the
    noise-adaptive smoothing gives more correct matches than without it; on a clean image it
    changes nothing."""
    from correspondence import match_descriptors
    from lift import detect_and_describe
    from lift.model import LIFTModel

    try:
        model = LIFTModel.load("default")
    except (FileNotFoundError, ValueError):
        pytest.skip("shipped weights missing")
    img = _camera()
    H = cv2.getRotationMatrix2D((240, 240), 20, 1.0)
    warped = _noisy(cv2.warpAffine(img, H, (480, 480)), 40.0)
    Hh = np.vstack([H, [0, 0, 1]])

    def correct(**kw):
        f0 = detect_and_describe(img, model=model, max_keypoints=1000, **kw)
        f1 = detect_and_describe(warped, model=model, max_keypoints=1000, **kw)
        m, _ = match_descriptors(f0.descriptors, f1.descriptors)
        m = np.asarray(m)
        p = cv2.perspectiveTransform(f0.keypoints[m[:, 0]][None].astype(np.float64), Hh)[0]
        return int((np.linalg.norm(p - f1.keypoints[m[:, 1]], axis=1) < 3).sum()), f1

    on, f_on = correct()
    off, f_off = correct(noise_threshold=None)
    assert on > 1.3 * off  # measured: 299 against 205
    assert np.median(f_on.scales) > np.median(f_off.scales)
    a = detect_and_describe(img, model=model, max_keypoints=500)
    b = detect_and_describe(img, model=model, max_keypoints=500, noise_threshold=None)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    with pytest.raises(ValueError, match="noise_threshold"):
        detect_and_describe(img, model=model, noise_threshold=-1.0)
