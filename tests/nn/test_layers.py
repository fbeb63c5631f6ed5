"""Companion layers that stand in for PyTorch's: same values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from octvideo.nn import FramePairMaxPool, StemMaxPool


@pytest.mark.parametrize("frames", [8, 7])
@pytest.mark.parametrize("channels_last", [False, True])
def test_frame_pair_max_pool_is_max_pool_3d(frames, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 5, frames, 6, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    y = FramePairMaxPool()(ours)
    expected = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))(theirs)
    assert torch.equal(y, expected)
    grad = torch.randn_like(expected)
    y.backward(grad)
    expected.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)


def test_frame_pair_max_pool_of_one_frame_is_a_shape_error():
    with pytest.raises(RuntimeError, match="at least 2 frames"):
        FramePairMaxPool()(torch.randn(1, 4, 1, 6, 6))


@pytest.mark.parametrize("size", [(8, 12, 10), (3, 7, 9), (2, 1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stem_max_pool_is_max_pool_3d(size, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 5, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    expected = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))(x)
    with torch.no_grad():
        assert torch.equal(StemMaxPool()(x), expected)
    ours = x.clone().requires_grad_()
    y = StemMaxPool()(ours)
    assert torch.equal(y, expected)
    y.backward(torch.ones_like(y))
    assert ours.grad.sum() == y.numel()


@pytest.mark.parametrize("size", [(12, 10), (7, 9)])
def test_stem_max_pool_in_2d_is_max_pool_2d(size):
    x = torch.randn(2, 5, *size)
    assert torch.equal(StemMaxPool()(x), nn.MaxPool2d(3, 2, 1)(x))
