"""The runtime's inference copies of the patch networks compute what the trained networks do."""
import copy

import pytest
import torch

from lift.inference import FastReLU, inference_net
from lift.layers import normalize_patches
from lift.model import FAST_CONFIG, PAPER_CONFIG, LIFTModel


def _trained_like(config):
    torch.manual_seed(0)
    model = LIFTModel(config)
    for mod in model.modules():  # non-trivial batch-norm statistics to fold
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("config", [FAST_CONFIG, PAPER_CONFIG], ids=["fast", "paper"])
def test_inference_copies_equal_the_networks(config):
    model = _trained_like(config)
    for name in ("orientation", "descriptor"):
        net = getattr(model, name)
        fast = inference_net(net)
        size = net.input_size
        x = torch.rand(37, 1, size, size)
        with torch.no_grad():
            ref = net(x)
            std = normalize_patches(x)[..., :fast.crop, :fast.crop]
            got = fast.forward_standardized(std.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)
        assert not any(p.requires_grad for p in fast.parameters())
        assert all(p.requires_grad for p in net.parameters())  # the model is left alone


def test_space_to_depth_and_block_ghh_rewrites_are_exact():
    """The shipped architecture's first convolutions (6 x 6, stride 2) become 3 x 3 convolutions
    on the space-to-depth input, and the orientation network's GHH reads contiguous blocks of
    permuted units: the inference copy gives the network's output from either input form."""
    from lift.inference import BlockGHH, SpaceToDepthConv
    from lift.layers import ghh

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 10, 6, stride=2)
    x = torch.randn(9, 1, 32, 32)
    s2d = SpaceToDepthConv(conv)
    with torch.no_grad():
        ref = conv(x)
        torch.testing.assert_close(s2d(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s2d(torch.nn.functional.pixel_unshuffle(x, 2)), ref, atol=1e-5, rtol=1e-5)
    assert not SpaceToDepthConv.applies(torch.nn.Conv2d(1, 4, 5, stride=2))  # odd kernel
    assert not SpaceToDepthConv.applies(torch.nn.Conv2d(1, 4, 6, stride=1))
    block = BlockGHH(4, 4)
    h = torch.randn(33, 1600)
    perm = block.permutation(1600)
    assert sorted(perm.tolist()) == list(range(1600))
    torch.testing.assert_close(block(h[:, perm]), ghh(h, 4, 4), atol=0, rtol=0)
    from lift.layers import ghh_piece_major, piece_major_order  # the same along any dimension
    maps = torch.randn(5, 16, 7, 3)  # the detector's 16 channels (one output)
    torch.testing.assert_close(ghh_piece_major(maps[:, piece_major_order(16, 4, 4)], 4, 4, dim=1),
                               ghh(maps, 4, 4, dim=1), atol=0, rtol=0)
    model = _trained_like(FAST_CONFIG)
    for name in ("orientation", "descriptor"):
        fast = inference_net(getattr(model, name))
        assert fast.space_to_depth == 2 and isinstance(fast.features[0], SpaceToDepthConv)
        p = normalize_patches(torch.rand(21, 1, 32, 32))
        with torch.no_grad():
            want = getattr(model, name).forward_standardized(p)
            got = fast.forward_standardized(
                torch.nn.functional.pixel_unshuffle(p, 2).contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    assert isinstance(inference_net(model.orientation).act1, BlockGHH)
    paper = _trained_like(PAPER_CONFIG)  # stride 1: no space-to-depth form
    assert inference_net(paper.descriptor).space_to_depth == 1


def test_orientation_reads_only_its_receptive_window():
    """With kernels (6, 5, 3) (the orientation network of lift 0.1's first weights) floor pooling
    never reads the last 4 rows and columns of a 32 px patch: the inference copy says so, and
    changing those pixels (after standardisation) changes nothing."""
    cfg = copy.deepcopy(FAST_CONFIG)
    cfg["orientation"]["kernels"] = [6, 5, 3]
    model = _trained_like(cfg)
    fast = inference_net(model.orientation)
    assert fast.crop == 28
    assert inference_net(model.descriptor).crop == 32
    x = normalize_patches(torch.rand(5, 1, 32, 32))
    y = x.clone()
    y[..., 28:, :] = 9.0
    y[..., :, 28:] = -9.0
    with torch.no_grad():
        torch.testing.assert_close(model.orientation.forward_standardized(x),
                                   model.orientation.forward_standardized(y))


def test_fast_config_orientation_sees_the_whole_patch():
    """FAST_CONFIG's orientation network (kernels 6, 5, 4) covers all 32 x 32 pixels: a change
    in the bottom-right corner alone moves its output."""
    model = _trained_like(FAST_CONFIG)
    assert inference_net(model.orientation).crop == 32
    x = normalize_patches(torch.rand(5, 1, 32, 32))
    y = x.clone()
    y[..., 28:, 28:] = 9.0
    with torch.no_grad():
        diff = (model.orientation.forward_standardized(x)
                - model.orientation.forward_standardized(y)).abs().amax()
    assert diff > 1e-3


def test_fast_relu_and_bfloat16_copy():
    x = torch.randn(1000).bfloat16()
    torch.testing.assert_close(FastReLU()(x.clone()), torch.relu(x))
    x32 = torch.randn(1000)
    torch.testing.assert_close(FastReLU()(x32.clone()), torch.relu(x32))
    model = _trained_like(FAST_CONFIG)
    fast = inference_net(model.descriptor, torch.bfloat16)
    p = normalize_patches(torch.rand(64, 1, 32, 32))
    with torch.no_grad():
        d = torch.nn.functional.normalize(fast.forward_standardized(
            p.bfloat16().contiguous(memory_format=torch.channels_last)).float(), dim=1)
        ref = model.descriptor.forward_standardized(p)
    assert (d * ref).sum(1).min() > 0.99


def test_negligible_weights_are_zero_in_the_copy():
    """Weights decayed to (sub)normal dust are zeroed in the inference copy (x86 CPUs are
    10-100x slower on subnormal arithmetic), without changing the output."""
    from lift.inference import NEGLIGIBLE_WEIGHT

    model = _trained_like(FAST_CONFIG)
    with torch.no_grad():
        model.orientation.fc1.weight[:7, :] = 1e-39  # subnormal float32
        model.orientation.fc1.bias[:7] = 3e-25
    fast = inference_net(model.orientation)
    for p in fast.parameters():
        assert not ((p != 0) & (p.abs() < NEGLIGIBLE_WEIGHT)).any()
    moved = fast.act1.permutation(fast.fc1.out_features) < 7  # the copy's rows are permuted (BlockGHH)
    assert moved.sum() == 7
    assert (fast.fc1.weight[moved] == 0).all() and (fast.fc1.bias[moved] == 0).all()
    assert model.orientation.fc1.weight[0, 0] == 1e-39  # the model itself is left alone
    x = torch.rand(16, 1, 32, 32)
    with torch.no_grad():
        ref = model.orientation(x)
        got = fast.forward_standardized(normalize_patches(x).contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_standardized_window_matches_normalize_then_crop(dtype):
    """The runtime's fused standardisation equals ``normalize_patches`` (statistics over the
    whole patch), then the top-left crop, then the cast; faint texture on a bright patch
    survives (standardised before the cast); an empty batch gives an empty result."""
    from lift.inference import standardized_window

    torch.manual_seed(0)
    x = torch.rand(40, 1, 32, 32, dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    x[:5] = 0.9 + 0.002 * x[:5]  # faint texture near white
    x[5] = 0.3  # a flat patch: zero spread -> (about) zeros, not NaN
    for crop in (32, 28):
        got = standardized_window(x, crop, dtype)
        assert got.dtype == dtype and got.shape == (40, 1, crop, crop)
        ref = normalize_patches(x.double())[..., :crop, :crop]
        # (float32 input: 0.9 + 0.002 u is itself stored with ~5e-8 error, 1e-4 of its spread)
        tol = {torch.float64: dict(atol=1e-9, rtol=1e-9), torch.float32: dict(atol=5e-4, rtol=1e-3),
               torch.bfloat16: dict(atol=2e-2, rtol=1e-2)}[dtype]
        textured = torch.arange(40) != 5
        torch.testing.assert_close(got[textured].double(), ref[textured].double(), **tol)
        assert got[:5].float().std() > 0.9  # unit spread, not flattened to a constant
        # the flat patch stays flat: float rounding of its mean is not blown up to unit spread
        assert torch.isfinite(got.float()).all() and got[5].abs().max() < 0.05
    assert standardized_window(x[:0], 32, dtype).shape == (0, 1, 32, 32)
