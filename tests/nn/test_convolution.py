"""The backend choice for CPU convolutions: same numbers as PyTorch's own call, counted alike."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from octvideo.nn.convolution import convolution


class CalledOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: set = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


CASES = [  # (batch, kernel, channels-last, goes to oneDNN)
    (1, (1, 3, 3), False, True),
    (1, (3, 1, 1), False, True),
    (1, (1, 1, 1), True, True),
    (1, (1, 1, 1), False, False),  # a plain GEMM on PyTorch's own path
    (2, (1, 3, 3), False, False),  # PyTorch picks oneDNN itself
]


@pytest.mark.parametrize("batch,kernel,channels_last,onednn", CASES)
def test_convolution_matches_pytorch_forward_and_backward(batch, kernel, channels_last, onednn):
    torch.manual_seed(0)
    x = torch.randn(batch, 16, 4, 10, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    w = torch.randn(24, 16, *kernel) * 0.1
    b = torch.randn(24)
    padding = tuple(k // 2 for k in kernel)
    args = ((1, 1, 1), padding, (1, 1, 1))
    xs, ws = (x.clone().requires_grad_(), w.clone().requires_grad_()), (x.clone().requires_grad_(), w.clone().requires_grad_())
    with CalledOps() as called:
        y = convolution(xs[0], xs[1], b, *args)
    expected = F.conv3d(ws[0], ws[1], b, 1, padding)
    assert (torch.ops.aten.mkldnn_convolution in called.ops) == onednn
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(expected)
    y.backward(grad)
    expected.backward(grad)
    for got, want in zip(xs, ws):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)


def test_the_flop_counter_counts_a_onednn_convolution_like_any_other():
    x, w = torch.randn(1, 16, 4, 10, 10), torch.randn(24, 16, 1, 3, 3)
    counts = []
    for conv in (lambda: convolution(x, w, None, (1, 1, 1), (0, 1, 1), (1, 1, 1)), lambda: F.conv3d(x, w, None, 1, (0, 1, 1))):
        with FlopCounterMode(display=False) as counter:
            conv()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] == 2 * 24 * 16 * 9 * 4 * 10 * 10
