"""One convolution call for every octave path and plain layer, on the fastest CPU backend.

PyTorch picks a CPU convolution backend by a size rule: for fp32 at batch 1 with a
kernel at most 3 wide and ``N*C*D*H <= 20480`` it takes its own im2col + GEMM path
(``slow_conv3d``) instead of oneDNN. The octave split makes many layers that small
(at alpha 0.5, 104 of Oct-I3D-R50's 137 convolution calls at batch 1; 23 of the plain
network's 53). Measured on an Intel Xeon (2 vCPUs) at batch 1, oneDNN runs those with a
kernel wider than 1 two to six times faster (a (1, 32, 8, 56, 56) input through a
1x3x3 kernel: 11.5 ms against 2.0 ms). For 1x1x1 kernels the im2col path is a plain
GEMM and wins on contiguous inputs, but loses on channels-last ones, which it copies to
contiguous and back (a (1, 32, 8, 56, 56) input to 128 channels: 2.4 ms against 1.3).
So at batch 1 on CPU in fp32, kernels wider than 1 and channels-last inputs go to
oneDNN; everything else keeps PyTorch's choice (at batch 2 and above it is oneDNN already).
Under ``torch.compile`` the plain call is traced, so that Inductor sees a convolution.
``torch.utils.flop_counter`` counts the oneDNN call as the convolution it is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils import flop_counter

from .grid import memory_format_of

_ONEDNN_CONVOLUTION = torch.ops.aten.mkldnn_convolution


def _takes_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        not torch.compiler.is_compiling()
        and x.shape[0] == 1
        and x.numel() > 0  # PyTorch's own call says what is wrong with an empty input
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and (any(k > 1 for k in weight.shape[2:]) or memory_format_of(x) != torch.contiguous_format)
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


def convolution(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv2d`` / ``F.conv3d`` (by ``x``'s rank), on oneDNN where PyTorch's size rule would
    pick its slower im2col path (see the module docstring). Differentiable either way."""
    if _takes_onednn(x, weight):
        return _ONEDNN_CONVOLUTION(x, weight, bias, list(padding), list(stride), list(dilation), groups)
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    return conv(x, weight, bias, stride, padding, dilation, groups)


def _onednn_convolution_flops(x_shape, w_shape, _bias, _padding, _stride, _dilation, _groups, *, out_shape) -> int:
    return flop_counter.conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


if _ONEDNN_CONVOLUTION not in flop_counter.flop_registry:  # PyTorch has no formula for it (2.14)
    flop_counter.register_flop_formula(_ONEDNN_CONVOLUTION)(_onednn_convolution_flops)
