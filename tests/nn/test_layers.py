"""Companion layers that stand in for PyTorch's: same values and gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from octvideo.nn import FramePairMaxPool


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
