"""Octave Convolution (Chen et al., "Drop an Octave", ICCV 2019, arXiv 1904.05049) in 2-D and 3-D.

Four paths between a high-frequency group H (full resolution) and a low-frequency
group L (downsampled by the octave factor)::

    Y_H = f(X_H; W_HH) + upsample(f(X_L; W_LH))
    Y_L = f(X_L; W_LL) + f(pool(X_H); W_HL)

with average pooling and nearest upsampling. The four weights are a partition of
the plain convolution's weight along its output and input channels (the paper's
Fig. 2(b)), high channels first, so the parameter count equals the plain layer's for
every alpha and pretrained plain weights can be split into an octave layer exactly.

Strided layers follow the official code: the inputs are average-pooled by the
stride and the paths run at stride 1; when the stride equals the octave factor the
L->H path lands on the high output grid directly and needs no upsampling.

Implementation: ungrouped layers run as one autograd function (``octconv_function``):
the four path convolutions, no pooled copies kept for backward, gradients accumulated
in place. Every convolution, plain layers' too, runs on the CPU backend that
``convolution`` picks. Grouped and depthwise layers
run path by path on plain autograd ops. With ``alpha_in == alpha_out == 0`` the layer is exactly a
plain strided convolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .convolution import convolution
from .grid import add_upsampled_, downsample, low_size
from .octave import Octave, OctaveChannels, as_channels, pack, unpack
from .octconv_function import Geometry, fused_octave_conv

IntOrTuple = int | Sequence[int]
ChannelSpec = int | Sequence[int]


def _ntuple(value: IntOrTuple, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(int(v) for v in value)
    if len(value) != n:
        raise ValueError(f"{name} needs {n} values, got {value}")
    return value


class OctConv(nn.Module):
    """Octave convolution for ``dims`` spatial dimensions (use :class:`OctConv2d` / :class:`OctConv3d`).

    ``in_channels`` / ``out_channels`` are totals split by ``alpha_in`` / ``alpha_out``
    (``low = int(alpha * channels)``), or explicit ``(high, low)`` pairs where a
    network concatenates features whose splits were made separately.
    The input is a tensor when the input has no low group, else ``(high, low)``;
    the output likewise.
    """

    dims: int = 0

    def __init__(
        self,
        in_channels: ChannelSpec,
        out_channels: ChannelSpec,
        kernel_size: IntOrTuple,
        alpha_in: float = 0.0,
        alpha_out: float = 0.0,
        stride: IntOrTuple = 1,
        padding: IntOrTuple = 0,
        dilation: IntOrTuple = 1,
        groups: int = 1,
        bias: bool = False,
        octave_pool: IntOrTuple | None = None,
    ) -> None:
        super().__init__()
        n = self.dims
        self.in_split = as_channels(in_channels, alpha_in, "alpha_in")
        self.out_split = as_channels(out_channels, alpha_out, "alpha_out")
        self.kernel_size = _ntuple(kernel_size, n, "kernel_size")
        self.stride = _ntuple(stride, n, "stride")
        self.padding = _ntuple(padding, n, "padding")
        self.dilation = _ntuple(dilation, n, "dilation")
        default_pool = (1,) * (n - 2) + (2, 2)
        self.octave_pool = _ntuple(default_pool if octave_pool is None else octave_pool, n, "octave_pool")
        if any(f < 1 for f in self.octave_pool) or all(f == 1 for f in self.octave_pool):
            raise ValueError(f"octave_pool must downsample at least one dimension, got {self.octave_pool}")
        self.groups = int(groups)
        self.depthwise = self._check_groups()
        if self.is_octave:
            self._check_size_preserving()

        # One weight per path; a path whose input or output group is empty does not exist, and a
        # depthwise layer has no cross-frequency paths.
        ih, il = self.in_split
        oh, ol = self.out_split
        cross = not self.depthwise
        self.weight_hh = self._weight(oh, ih)
        self.weight_hl = self._weight(ol, ih) if ih and ol and cross else None
        self.weight_lh = self._weight(oh, il) if il and oh and cross else None
        self.weight_ll = self._weight(ol, il) if il and ol else None
        self.bias_h = nn.Parameter(torch.empty(oh)) if bias else None
        self.bias_l = nn.Parameter(torch.empty(ol)) if bias and ol else None
        self.reset_parameters()

    # -- construction ---------------------------------------------------------------------------

    def _weight(self, out_channels: int, in_channels: int) -> nn.Parameter:
        in_per_group = 1 if self.depthwise else in_channels // self.groups
        return nn.Parameter(torch.empty(out_channels, in_per_group, *self.kernel_size))

    def _check_groups(self) -> bool:
        g = self.groups
        ih, il = self.in_split
        oh, ol = self.out_split
        if g < 1:
            raise ValueError(f"groups must be positive, got {g}")
        if g > 1 and g == self.in_split.total == self.out_split.total:
            if (ih, il) != (oh, ol):
                raise ValueError(
                    f"depthwise OctConv needs the same split in and out, got in {tuple(self.in_split)} "
                    f"and out {tuple(self.out_split)} (use alpha_in == alpha_out)"
                )
            return True
        for name, c in (("in_channels", self.in_split.total), ("out_channels", self.out_split.total)):
            if c % g:
                raise ValueError(f"{name}={c} is not divisible by groups={g}")
        for name, c in (("high in", ih), ("low in", il), ("high out", oh), ("low out", ol)):
            if c % g:
                raise ValueError(
                    f"the {name} group has {c} channels, not divisible by groups={g}: "
                    "choose alpha so that int(alpha * channels) is a multiple of groups"
                )
        return False

    def _check_size_preserving(self) -> None:
        # The octave grid (low = ceil(high / factor)) survives a layer only if the layer maps
        # size n to ceil(n / stride): odd kernels with "same" padding.
        for k, p, d in zip(self.kernel_size, self.padding, self.dilation):
            if d * (k - 1) != 2 * p:
                raise ValueError(
                    f"an octave layer needs 'same' padding (padding = dilation * (kernel_size - 1) / 2), "
                    f"got kernel_size={self.kernel_size}, padding={self.padding}, dilation={self.dilation}"
                )

    def reset_parameters(self) -> None:
        """Initialise as the plain convolution would (fan-in of the whole layer), then split."""
        fan_in = (self.in_split.total // self.groups) * math.prod(self.kernel_size)
        if self.depthwise:
            fan_in = math.prod(self.kernel_size)
        bound = 1.0 / math.sqrt(fan_in)
        for w in self.path_weights().values():
            # kaiming_uniform_(a=sqrt(5)) on the plain weight is uniform(-bound, bound).
            nn.init.uniform_(w, -bound, bound)
        for b in (self.bias_h, self.bias_l):
            if b is not None:
                nn.init.uniform_(b, -bound, bound)

    # -- introspection --------------------------------------------------------------------------

    @property
    def is_octave(self) -> bool:
        return self.in_split.low > 0 or self.out_split.low > 0

    def path_weights(self) -> dict:
        """The existing paths' weights by name: ``hh``, ``hl`` (H->L), ``lh`` (L->H), ``ll``."""
        paths = {"hh": self.weight_hh, "hl": self.weight_hl, "lh": self.weight_lh, "ll": self.weight_ll}
        return {name: w for name, w in paths.items() if w is not None}

    def extra_repr(self) -> str:
        s = (
            f"in={tuple(self.in_split)}, out={tuple(self.out_split)}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}" + (" (depthwise)" if self.depthwise else "")
        if self.is_octave:
            s += f", octave_pool={self.octave_pool}"
        return s

    # -- forward --------------------------------------------------------------------------------

    def _conv(self, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, stride, groups: int):
        return convolution(x, w, bias, stride, self.padding, self.dilation, groups)

    def forward(self, x: Octave) -> Octave:
        x_h, x_l = unpack(x)
        self._check_input(x_h, x_l)
        if not self.is_octave:
            return self._conv(x_h, self.weight_hh, self.bias_h, self.stride, self.groups)
        if self.groups > 1:
            return self.path_by_path(x)
        geometry = Geometry(self.stride, self.octave_pool, self.padding, self.dilation)
        return pack(*fused_octave_conv(x_h, x_l, self.path_weights(), self.bias_h, self.bias_l, geometry))

    def path_by_path(self, x: Octave) -> Octave:
        """The layer's four (or two) paths one by one, on plain autograd ops.

        Grouped and depthwise layers always run this way; for an ungrouped layer it computes
        what the fused function does, and is the reference that function is tested against.
        """
        x_h, x_l = unpack(x)
        one = (1,) * self.dims
        if any(s != 1 for s in self.stride):
            x_l_on_grid = x_l
            x_h = downsample(x_h, self.stride)
            x_l = None if x_l is None else downsample(x_l, self.stride)
        else:
            x_l_on_grid = None
        if self.depthwise:
            y_h = self._conv(x_h, self.weight_hh, self.bias_h, one, self.in_split.high)
            return pack(y_h, self._conv(x_l, self.weight_ll, self.bias_l, one, self.in_split.low))
        y_h = self._conv(x_h, self.weight_hh, self.bias_h, one, self.groups)
        y_l = None
        if self.out_split.low:
            y_l = self._conv(downsample(x_h, self.octave_pool), self.weight_hl, self.bias_l, one, self.groups)
            if x_l is not None:
                y_l = y_l.add_(self._conv(x_l, self.weight_ll, None, one, self.groups))
        if self.weight_lh is not None:
            if self.stride == self.octave_pool:
                y_h = y_h.add_(self._conv(x_l_on_grid, self.weight_lh, None, one, self.groups))
            else:
                y_h = add_upsampled_(y_h, self._conv(x_l, self.weight_lh, None, one, self.groups), self.octave_pool)
        return pack(y_h, y_l)

    def _check_input(self, x_h: torch.Tensor, x_l: torch.Tensor | None) -> None:
        if x_h.dim() != self.dims + 2:
            raise ValueError(f"{type(self).__name__} expects {self.dims + 2}-D input, got shape {tuple(x_h.shape)}")
        got = OctaveChannels(x_h.shape[1], 0 if x_l is None else x_l.shape[1])
        if got != self.in_split:
            raise ValueError(
                f"{type(self).__name__} expects (high, low) channels {tuple(self.in_split)}, got {tuple(got)}"
            )
        if x_l is not None:
            expected = low_size(x_h.shape[2:], self.octave_pool)
            if tuple(x_l.shape[2:]) != expected:
                raise ValueError(
                    f"low-frequency input has size {tuple(x_l.shape[2:])}, expected {expected} for high size "
                    f"{tuple(x_h.shape[2:])} and octave_pool={self.octave_pool}"
                )


class OctConv2d(OctConv):
    """2-D octave convolution; ``octave_pool`` defaults to ``(2, 2)``."""

    dims = 2


class OctConv3d(OctConv):
    """3-D octave convolution; ``octave_pool`` ``(1, 2, 2)`` (spatial, default) or ``(2, 2, 2)``."""

    dims = 3
