"""ACS conversion: derived identities between a converted 3D model and its 2D source.

Derivation (zero padding, eval mode). Take a 2D conv with a square kernel W (K x K, padding P) and a
volume of depth 1. The axial view (1, K, K) is the 2D conv. The coronal view (K, 1, K) slides its
first kernel axis along depth; with one slice only its row P meets data, so it is the 2D conv with
W's row P kept and every other row zeroed. The sagittal view (K, K, 1) puts W's first axis on depth
and its second on height; again only row P meets data, now running down the image: the 2D conv
with a kernel whose column P holds W's row P. Batch norm, ReLU, max pooling (-inf padding) and
average pooling without padded counts act per position and keep depth 1, and the global pool of one
slice is the 2D global pool. So the ACS model on a one-slice volume equals the 2D model whose convs
use those masked kernels, channel by channel.

For D identical slices and a slice far enough from the ends that no padding reaches it, each depth
tap of the coronal and sagittal kernels sees the same slice, so the rows are *summed*: coronal =
the kernel with all rows summed into row P, sagittal = the row sums placed as column P.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from ct25d.errors import Ct25dError
from ct25d.models.acs import ConvFrom2d, convert_to_3d

torch.manual_seed(0)


def tiny_resnext() -> nn.Module:
    """A ResNeXt (grouped 3x3 convs, cardinality 4) small enough for a unit test."""
    return ResNet(Bottleneck, [1, 1, 1, 1], cardinality=4, base_width=4, num_classes=3, stem_width=16)


def randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial batch-norm statistics so that channel order mistakes show."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def equivalent_2d(model: nn.Module, summed: bool) -> nn.Module:
    """The 2D model a one-slice (`summed=False`) or depth-constant (`summed=True`) volume sees."""
    twin = copy.deepcopy(model)
    converted = convert_to_3d(model, "acs")
    for name, module in twin.named_modules():
        if not isinstance(module, nn.Conv2d) or module.kernel_size[0] == 1:
            continue
        acs = converted.get_submodule(name)
        assert isinstance(acs, ConvFrom2d)
        k, p = module.kernel_size[0], module.padding[0]
        w = module.weight.data
        row = w.sum(2) if summed else w[:, :, p]  # (out, in, K)
        new = w.clone()
        for axis, channels, _, _ in acs.views:
            if axis == 3:  # coronal
                new[channels] = 0
                new[channels, :, p] = row[channels]
            elif axis == 4:  # sagittal
                new[channels] = 0
                new[channels, :, :, p] = row[channels]
        assert new.shape[-1] == k
        module.weight.data = new
    return twin


@pytest.mark.parametrize("make", [lambda: timm.create_model("resnet18", num_classes=3), tiny_resnext])
def test_one_slice_volume_equals_masked_kernel_2d_model(make):
    model = randomise_bn(make())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out3d = convert_to_3d(model, "acs").eval()(x.unsqueeze(2))
        expected = equivalent_2d(model, summed=False)(x)
        plain = model(x)
    torch.testing.assert_close(out3d, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(out3d, plain, atol=1e-3)  # the identity is not the trivial one


def test_identical_slices_equal_row_summed_2d_model_inside_the_volume():
    net = randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1, groups=4),
            nn.ReLU(),  # grouped: 3 outputs per group
            nn.Conv2d(12, 12, 5, padding=2, groups=12),  # depthwise: whole groups per view
        )
    )
    x = torch.randn(1, 3, 20, 20)
    volume = x.unsqueeze(2).expand(-1, -1, 9, -1, -1).contiguous()
    with torch.no_grad():
        out3d = convert_to_3d(net, "acs").eval()(volume)
        expected = equivalent_2d(net, summed=True)(x)
    # The receptive field reaches 1 + 1 + 2 slices; the middle slice (4 of 0..8) sees no padding.
    torch.testing.assert_close(out3d[:, :, 4], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out3d[:, :, 0], expected, atol=1e-3)  # the end slices do see padding


def test_two_and_a_half_d_equals_slice_wise_2d_on_any_volume():
    model = randomise_bn(timm.create_model("resnet10t", num_classes=0))
    volume = torch.randn(2, 3, 5, 64, 64)
    with torch.no_grad():
        converted = convert_to_3d(model, "2.5d").eval()
        features3d = converted.forward_features(volume)  # (B, C, D, h, w)
        per_slice = torch.stack([model.forward_features(volume[:, :, d]) for d in range(5)], 2)
        pooled = converted(volume)
    torch.testing.assert_close(features3d, per_slice, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, per_slice.mean((2, 3, 4)), rtol=1e-4, atol=1e-4)


def test_i3d_on_identical_slices_equals_2d_inside_the_volume():
    net = randomise_bn(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, groups=2),
        )
    )
    x = torch.randn(1, 3, 16, 16)
    volume = x.unsqueeze(2).expand(-1, -1, 7, -1, -1)
    with torch.no_grad():
        out = convert_to_3d(net, "i3d").eval()(volume)
        torch.testing.assert_close(out[:, :, 3], net(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["acs", "2.5d", "i3d"])
def test_grouped_convs_convert_and_keep_every_parameter(mode):
    model = tiny_resnext()
    converted = convert_to_3d(model, mode)
    assert sum(p.numel() for p in converted.parameters()) == sum(p.numel() for p in model.parameters())
    # Same names and shapes: a 2D state dict (ImageNet, Stage-1 best.pt) loads as it is.
    converted.load_state_dict(model.state_dict())
    assert not any(isinstance(m, nn.Conv2d | nn.BatchNorm2d) for m in converted.modules())
    out = converted(torch.randn(2, 3, 16, 32, 32))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in converted.parameters())


def test_non_square_kernels_convert():
    net = nn.Sequential(
        nn.Conv2d(3, 6, (1, 7), padding=(0, 3)),
        nn.Conv2d(6, 6, (7, 1), padding=(3, 0)),
        nn.Conv2d(6, 6, 3, padding="same"),
    )
    out = convert_to_3d(net, "acs")(torch.randn(1, 3, 8, 12, 12))
    assert out.shape == (1, 6, 8, 12, 12)


def test_unequal_strides_are_refused_with_the_layer_name():
    net = nn.Sequential(nn.Conv2d(3, 6, 3, stride=(1, 2), padding=1))
    with pytest.raises(Ct25dError, match=r"^0: ACS needs equal strides"):
        convert_to_3d(net, "acs")
    convert_to_3d(net, "2.5d")  # in-plane only: any stride


def test_views_that_disagree_name_the_layer():
    net = nn.Sequential(nn.Conv2d(3, 6, 4, stride=4))  # a patchify stem: fine only for sizes divisible by 4
    converted = convert_to_3d(net, "acs")
    assert converted(torch.randn(1, 3, 8, 8, 8)).shape == (1, 6, 2, 2, 2)
    with pytest.raises(Ct25dError, match="0: the ACS views give different output shapes"):
        converted(torch.randn(1, 3, 6, 8, 8))


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.PixelShuffle(2), nn.Dropout2d()))
    with pytest.raises(Ct25dError, match=r"1\.1: layer Dropout2d has no 3D conversion"):
        convert_to_3d(net)
