"""A convolution over concatenated, average-pooled inputs that keeps no pooled copy for backward.

Octave layers convolve pooled tensors: pool(X_H) on the H->L path, and in strided
layers the stride-pooled X_H and X_L on every path. Written with plain ops,
autograd keeps each pooled copy (and the concatenation feeding the fused low-output
convolution) alive until backward: a quarter of the high-frequency input per layer,
enough to lift Oct-I3D's activation memory from about 0.63 to 0.86 of the plain
network at alpha = 0.5. Here only the unpooled inputs and the weights are kept
(the network keeps them anyway, so they cost nothing extra); the pooling and the
concatenations, cheap memory-bound steps, are redone in backward. The convolution
itself is never recomputed.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .octave import octave_downsample

Factors = Tuple[Tuple[int, ...], ...]


def _pool(x: torch.Tensor, factors: Factors) -> torch.Tensor:
    for factor in factors:
        x = octave_downsample(x, factor)
    return x


def _conv_input(tensors: Sequence[torch.Tensor], factors: Sequence[Factors]) -> torch.Tensor:
    pooled = [_pool(x, f) for x, f in zip(tensors, factors)]
    return pooled[0] if len(pooled) == 1 else torch.cat(pooled, dim=1)


def _weight(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    return weights[0] if len(weights) == 1 else torch.cat(list(weights), dim=1)


class _PooledConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, bias, factors, padding, dilation, n_inputs, *tensors):
        inputs, weights = tensors[:n_inputs], tensors[n_inputs:]
        ctx.save_for_backward(*tensors)
        ctx.factors, ctx.padding, ctx.dilation, ctx.n_inputs = factors, padding, dilation, n_inputs
        ctx.has_bias = bias is not None
        conv = F.conv3d if inputs[0].dim() == 5 else F.conv2d
        return conv(_conv_input(inputs, factors), _weight(weights), bias, 1, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        n = ctx.n_inputs
        inputs, weights = saved[:n], saved[n:]
        needs_input = ctx.needs_input_grad[5 : 5 + n]
        needs_weight = ctx.needs_input_grad[5 + n :]
        with torch.enable_grad():  # only the cheap pooling is recorded, to route gradients back through it
            leaves = [x.detach().requires_grad_(need) for x, need in zip(inputs, needs_input)]
            conv_input = _conv_input(leaves, ctx.factors)
        with torch.no_grad():
            weight = _weight(weights)
        dims = len(ctx.padding)
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad, conv_input.detach(), weight, [weight.shape[0]] if ctx.has_bias else None,
            [1] * dims, list(ctx.padding), list(ctx.dilation), False, [0] * dims, 1,
            [any(needs_input), any(needs_weight), ctx.has_bias and ctx.needs_input_grad[0]],
        )
        input_grads: List[Optional[torch.Tensor]] = [None] * n
        wanted = [x for x, need in zip(leaves, needs_input) if need]
        if wanted:
            found = iter(torch.autograd.grad(conv_input, wanted, grad_input))
            input_grads = [next(found) if need else None for need in needs_input]
        weight_grads: List[Optional[torch.Tensor]] = [None] * len(weights)
        if grad_weight is not None:
            weight_grads = list(grad_weight.split([w.shape[1] for w in weights], dim=1))
        return (grad_bias, None, None, None, None, *input_grads, *weight_grads)


def pooled_conv(
    inputs: Sequence[Tuple[torch.Tensor, Sequence[Sequence[int]]]],
    weights: Sequence[torch.Tensor],
    bias: Optional[torch.Tensor],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> torch.Tensor:
    """``conv(cat([pool(x, *factors) for x, factors in inputs]), cat(weights), bias)``, stride 1, groups 1.

    Each input is average-pooled by its factors in turn (ceil rounding), then all are
    concatenated along channels, as are the weights along their input channels.
    """
    tensors = [x for x, _ in inputs]
    factors = tuple(tuple(tuple(int(f) for f in factor) for factor in fs) for _, fs in inputs)
    return _PooledConv.apply(bias, factors, tuple(padding), tuple(dilation), len(tensors), *tensors, *weights)
