"""Training: crop geometry, losses, metrics, the four stages, exact resume and 2-process DDP,
on a tiny synthetic patch file generated from skimage photos (data/make_fixtures.py)."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lift.data import QuadrupletDataset, cut_patches
from lift.glue import blur_downsample, extract_patches_pyramid, build_pyramid
from lift.model import LIFTModel
from lift.training.crops import PatchGeometry, crop_patches, detector_input, half_image, score_offsets
from lift.training.losses import classification_loss, hardest_negative_loss
from lift.training.metrics import fpr95, roc_auc
from lift.training.stages import make_stage
from lift.training.trainer import TrainConfig, Trainer
from lift.training.validation import collate, evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory):
    from lift.data.fixtures import make_tiny_synthetic

    return make_tiny_synthetic(tmp_path_factory.mktemp("train") / "tiny.h5")


def _datasets(path, seed=0):
    tr = QuadrupletDataset(path, split="train", seed=seed, in_memory=True, as_float=False)
    va = QuadrupletDataset(path, split="val", seed=1, in_memory=True, as_float=False)
    return tr, va


def _stage(name, init=None):
    torch.manual_seed(0)
    model = LIFTModel() if init is None else init
    return make_stage(name, model, PatchGeometry(128, 12.0))


# ---------------------------------------------------------------------------- geometry
def test_half_image_equals_runtime_pyramid_step():
    """Both are the [1, 4, 6, 4, 1]/16 Gaussian (replicate border) + 2 x 2 box decimation,
    checked against a direct separable-convolution implementation."""
    import torch.nn.functional as F

    x = torch.rand(3, 1, 37, 50)
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    ref = F.pad(x, (2, 2, 2, 2), mode="replicate")
    ref = F.conv2d(F.conv2d(ref, k.view(1, 1, 1, 5)), k.view(1, 1, 5, 1))
    ref = F.avg_pool2d(ref, 2, ceil_mode=True)
    assert torch.allclose(blur_downsample(x), ref, atol=1e-6)
    assert torch.allclose(half_image(x), ref, atol=1e-6)


def test_training_crop_reproduces_inference_crop(photo):
    """A crop cut from a stored 128 px patch must show what the runtime cuts from the image at
    the same keypoint, scale and angle (same centre, same rotation sense, same support)."""
    import cv2

    img = cv2.GaussianBlur(photo, (0, 0), 1.5)
    kp = np.array([[200.3, 180.7, 3.0, 0.0], [150.0, 260.2, 4.5, 0.0], [260.0, 200.0, 2.5, 0.0]])
    oris = torch.tensor([0.4, -2.0, 1.3])
    stored = torch.from_numpy(cut_patches(img, kp)).float()[:, None] / 255
    geom = PatchGeometry(128, 12.0)
    ours = crop_patches(geom.pyramid(stored), geom, 32, oris=oris)
    gray = torch.from_numpy(img).float()[None, None] / 255
    ref = extract_patches_pyramid(build_pyramid(gray, 3), torch.tensor(kp[:, :2]).float(),
                                  torch.tensor(kp[:, 2]).float(), oris, 32, 6.0)
    err = (ours - ref).abs().mean(dim=(1, 2, 3))
    spread = ref.std(dim=(1, 2, 3))
    assert (err < 0.25 * spread).all(), (err, spread)
    # a wrong rotation sense would be far off
    wrong = crop_patches(geom.pyramid(stored), geom, 32, oris=-oris)
    assert ((wrong - ref).abs().mean(dim=(1, 2, 3)) > 2 * err).all()


def test_detector_window_is_centred_on_the_keypoint():
    geom = PatchGeometry(128, 12.0)
    model = LIFTModel()
    x = detector_input(torch.rand(2, 1, 128, 128), geom, model.detector.px_per_sigma)
    assert x.shape[-1] == 23
    smap = model.detector(x)
    sl, origin, cell = score_offsets(smap.shape[-1], x.shape[-1], model.detector.border, geom, 3)
    centre_cell = (sl.stop - sl.start - 1) / 2
    assert origin + centre_cell * cell == pytest.approx(geom.centre)
    assert cell == pytest.approx(128 / 23)


# ---------------------------------------------------------------------------- losses, metrics
def test_fpr95_counts_negatives_below_the_95_percent_threshold():
    pos = np.arange(1, 101) / 100.0  # 95 % recall threshold = 0.95
    neg = np.array([0.5, 0.94, 0.95, 0.96, 2.0])
    d = np.r_[pos, neg]
    y = np.r_[np.ones(100), np.zeros(5)]
    assert fpr95(d, y) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        fpr95(pos, np.ones(100))
    assert roc_auc([0.1, 0.2, 0.9, 0.8], [0, 0, 1, 1]) == pytest.approx(1.0)


def test_hardest_negative_loss_uses_the_closest_wrong_match_and_anchor_swap():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    p = torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    out = hardest_negative_loss(a, p, margin=1.0, anchor_swap=False)
    d = torch.cdist(a, p)
    row_neg = torch.stack([d[0, 1], d[1, 0], d[2, 1]])
    want = torch.relu(1.0 + d.diagonal() - row_neg).mean()
    assert out["loss"].item() == pytest.approx(want.item(), abs=1e-3)
    swap = hardest_negative_loss(a, p, margin=1.0, anchor_swap=True)
    col_neg = torch.stack([d[1, 0], d[0, 1], d[0, 2]])
    want = torch.relu(1.0 + d.diagonal() - torch.minimum(row_neg, col_neg)).mean()
    assert swap["loss"].item() == pytest.approx(want.item(), abs=1e-3)
    # rows with the same label are never negatives
    same = hardest_negative_loss(a, p, labels=torch.tensor([0, 0, 1]), anchor_swap=False)
    assert same["neg"].item() > out["neg"].item()


def test_classification_loss_is_zero_for_separated_scores():
    s = torch.tensor([1.5, 2.0, -1.2, -3.0])
    kp = torch.tensor([True, True, False, False])
    assert classification_loss(s, kp).item() == 0.0
    assert classification_loss(-s, kp).item() == pytest.approx(((2.5 + 3.0) / 2 + (2.2 + 4.0) / 2) / 2)


# ---------------------------------------------------------------------------- stages
@pytest.mark.parametrize("name,trains", [("desc", {"descriptor"}), ("ori", {"orientation"}),
                                         ("det", {"detector"}),
                                         ("joint", {"detector", "descriptor"})])
def test_each_stage_updates_only_its_networks(tiny_h5, name, trains):
    tr, _ = _datasets(tiny_h5)
    stage = _stage(name)
    before = {k: v.clone() for k, v in stage.model.state_dict().items()}
    opt = torch.optim.Adam(stage.trainable(), lr=1e-2)
    out = stage(collate([tr[i] for i in range(12)]), torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    opt.step()
    after = stage.model.state_dict()
    for net in ("detector", "orientation", "descriptor"):
        changed = any(not torch.equal(before[k], after[k]) for k in before
                      if k.startswith(net + ".") and after[k].is_floating_point())
        assert changed == (net in trains), (net, changed)


def test_descriptor_training_lowers_the_loss_on_held_out_batch(tiny_h5, tmp_path):
    tr, va = _datasets(tiny_h5)
    stage = _stage("desc")
    probe = collate([tr[i] for i in range(32)])
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    stage.eval()
    with torch.no_grad():
        start = stage(probe, gen())["loss"].item()
    cfg = TrainConfig(steps=25, batch_size=16, lr=3e-3, val_every=0, ckpt_every=100,
                      progress=False, log_every=5)
    Trainer(stage, tr, None, tmp_path, cfg).run()
    stage.eval()
    with torch.no_grad():
        end = stage(probe, gen())["loss"].item()
    assert end < 0.8 * start, (start, end)
    assert LIFTModel.load(tmp_path / "model.pt").meta["stages"]["desc"]["steps"] == 25
    metrics = evaluate(stage, va, 50)
    assert 0.0 <= metrics["fpr95_gt"] <= 1.0 and metrics["items"] > 0


def _losses(path):
    with open(path / "log.csv") as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_resume_continues_exactly(tiny_h5, tmp_path):
    tr, va = _datasets(tiny_h5)
    cfg = dict(steps=6, batch_size=16, lr=2e-3, val_every=0, ckpt_every=3, log_every=1,
               progress=False)
    Trainer(_stage("desc"), tr, va, tmp_path / "a", TrainConfig(**cfg)).run()

    class Interrupted(Trainer):
        def train_step(self, step):
            out = super().train_step(step)
            if step == 2:  # as if SIGTERM arrived during the third step
                self._stop = True
            return out

    tr2, va2 = _datasets(tiny_h5)
    t = Interrupted(_stage("desc"), tr2, va2, tmp_path / "b", TrainConfig(**cfg))
    t.run()
    assert torch.load(tmp_path / "b/checkpoint.pt", weights_only=False)["step"] == 3
    torch.manual_seed(123)  # a fresh process would have other global RNG state
    resumed = Trainer(_stage("desc"), tr2, va2, tmp_path / "b", TrainConfig(**cfg), resume=True)
    assert resumed.step == 3
    resumed.run()
    a, b = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 7))
    for s in range(1, 7):
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), s
    wa = LIFTModel.load(tmp_path / "a/model.pt").descriptor.state_dict()
    wb = LIFTModel.load(tmp_path / "b/model.pt").descriptor.state_dict()
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def test_two_process_gloo_training(tiny_h5, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: a rendezvous on a free port (a fixed port can be taken by another run)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lift.training.cli", "--stage", "desc",
           "--data", str(tiny_h5), "--output", str(tmp_path), "--steps", "3",
           "--batch-size", "16", "--val-every", "0", "--no-progress", "--log-every", "1"]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if res.returncode != 0:  # the ranks' own error lines first: torchrun's summary hides them
        causes = [ln for ln in res.stderr.splitlines()
                  if any(w in ln for w in ("Error", "error:", "terminate", "what()", "Abort"))]
        pytest.fail("two-process training failed:\n" + "\n".join(causes[-30:]) + "\n...\n" + res.stderr[-3000:])
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert ck["step"] == 3 and ck["world"] == 2
    assert sorted(_losses(tmp_path)) == [1, 2, 3]
    torch.manual_seed(0)
    init = LIFTModel().descriptor.state_dict()
    trained = LIFTModel.load(tmp_path / "model.pt").descriptor.state_dict()
    assert any(not torch.allclose(init[k].float(), trained[k].float()) for k in init)


def test_orientation_equivariance_term_adds_to_the_loss(tiny_h5):
    tr, _ = _datasets(tiny_h5)
    batch = collate([tr[i] for i in range(8)])
    torch.manual_seed(0)
    model = LIFTModel()
    plain = make_stage("ori", model, PatchGeometry(128, 12.0))(batch, torch.Generator().manual_seed(3))
    eq = make_stage("ori", model, PatchGeometry(128, 12.0), equivariance_weight=2.0)(
        batch, torch.Generator().manual_seed(3))
    assert 0.0 < eq["equivariance"].item() <= 2.0
    assert eq["loss"].item() == pytest.approx(plain["loss"].item() + 2 * eq["equivariance"].item(),
                                              rel=1e-5)


def test_orientation_detection_noise_shifts_each_crop_within_bounds(tiny_h5):
    tr, _ = _datasets(tiny_h5)
    batch = collate([tr[i] for i in range(8)])
    torch.manual_seed(0)
    geom = PatchGeometry(128, 12.0)
    seen = []

    def stage_with(**kw):
        st = make_stage("ori", LIFTModel(), geom, equivariance_weight=1.0, **kw)
        inner = st.orient
        st.orient = lambda pyr, off=None, frame=None, scales=None: (
            seen.append((off, scales)), inner(pyr, off, frame, scales))[1]
        return st

    exact = stage_with()(batch, torch.Generator().manual_seed(3))
    assert [s for s in seen] == [(None, None), (None, None)]
    seen.clear()
    noisy = stage_with(ori_jitter_xy=0.5, ori_jitter_scale=0.1)(batch, torch.Generator().manual_seed(3))
    (off1, scl1), (off2, scl2) = seen
    assert off1.shape == (16, 2) and scl1.shape == (16,)
    for off, scl in seen:  # +- 0.5 sigma per axis, 2^+-0.1 in scale, and not all tiny
        assert off.abs().max() <= 0.5 * geom.sigma + 1e-6 and off.abs().max() > 0.3 * geom.sigma
        assert (scl.log2().abs() <= 0.1 + 1e-6).all() and scl.log2().abs().max() > 0.05
    assert not torch.allclose(off1, off2)  # independent per frame, as two detections are
    assert noisy["loss"].item() != pytest.approx(exact["loss"].item(), rel=1e-6)
    with pytest.raises(ValueError, match="ori_jitter"):
        make_stage("ori", LIFTModel(), geom, ori_jitter_xy=-0.1)


def test_quarter_turn_term_sees_exactly_rotated_crops(tiny_h5):
    from lift.training.crops import crop_patches

    tr, _ = _datasets(tiny_h5)
    batch = collate([tr[i] for i in range(8)])
    geom = PatchGeometry(128, 12.0)
    x = batch["patches"][:, 0].float() / 255.0
    pyr = geom.pyramid(x, 32)
    frame = torch.linspace(-3.0, 3.0, len(x))
    a = crop_patches(pyr, geom, 32, None, frame)
    b = crop_patches(pyr, geom, 32, None, frame + math.pi / 2)
    # the same pixel values, turned by a quarter: what makes the term an exact target
    err = min((torch.rot90(a, k, dims=(2, 3)) - b).abs().max().item() for k in (1, 3))
    assert err < 1e-4
    torch.manual_seed(0)
    model = LIFTModel()
    plain = make_stage("ori", model, geom)(batch, torch.Generator().manual_seed(3))
    quarter = make_stage("ori", model, geom, quarter_weight=2.0)(batch, torch.Generator().manual_seed(3))
    assert 0.0 < quarter["quarter"].item() <= 2.0
    assert quarter["loss"].item() == pytest.approx(plain["loss"].item() + 2 * quarter["quarter"].item(),
                                                   rel=1e-5)


def test_rot90_augmentation_turns_each_patch_about_its_centre(tiny_h5):
    tr, _ = _datasets(tiny_h5)
    batch = collate([tr[i] for i in range(6)])
    torch.manual_seed(0)
    stage = make_stage("det", LIFTModel(), PatchGeometry(128, 12.0), rot90=True)
    x, b, score, off, is_kp, cls, _ = stage.classify(batch, torch.Generator().manual_seed(5))
    turns = torch.randint(0, 4, (len(x),), generator=torch.Generator().manual_seed(5))
    plain = batch["patches"].transpose(0, 1).reshape(len(x), 1, 128, 128)
    assert (turns > 0).any()
    for xi, pi, t in zip(x, plain, turns):
        assert torch.equal(xi, torch.rot90(pi, int(t), dims=(-2, -1)))
    # without a generator (validation) nothing is turned
    assert torch.equal(stage.classify(batch)[0], plain)


def test_fresh_replaces_only_the_named_network(tiny_h5, tmp_path):
    """``lift-train --init W --fresh orientation``: a new orientation network of the current
    architecture, the other networks exactly W's (and frozen by the ``ori`` stage)."""
    import copy

    from lift.model import FAST_CONFIG
    from lift.training.cli import main

    old = copy.deepcopy(FAST_CONFIG)
    old["orientation"]["kernels"] = [6, 5, 3]  # the first shipped architecture
    torch.manual_seed(5)
    init = LIFTModel(old)
    init.save(tmp_path / "init.pt")
    main(["--stage", "ori", "--data", str(tiny_h5), "--init", str(tmp_path / "init.pt"),
          "--fresh", "orientation", "--output", str(tmp_path / "run"), "--steps", "2",
          "--batch-size", "16", "--val-every", "0", "--no-progress"])
    out = LIFTModel.load(tmp_path / "run/model.pt")
    assert out.orientation.config["kernels"] == [6, 5, 4]
    for net in ("descriptor", "detector"):
        a, b = getattr(init, net).state_dict(), getattr(out, net).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), net
    with pytest.raises(SystemExit):
        main(["--stage", "ori", "--data", str(tiny_h5), "--fresh", "orientation",
              "--output", str(tmp_path / "bad"), "--steps", "1"])
