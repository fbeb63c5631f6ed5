"""The forward and backward of an (ungrouped) octave convolution, written once as one autograd function.

Why not plain autograd ops: an octave layer is three convolutions around cheap
pooling, upsampling and adds. Left to autograd, those cheap steps cost more than
the convolutions they serve at small alpha: autograd keeps a pooled copy of X_H for
backward (a quarter of the input, per layer), materialises the pooled path's
gradient at full resolution and then adds it to the H->H path's gradient in
another pass. Here:

* forward runs the four paths in three convolutions: H->H; H->L over pool(X_H); L->L and
  L->H as one convolution of X_L with the two weights stacked along the output channels
  (on an Intel Xeon at batch 1, channels-last, 1 to 4 % faster for the whole network
  than two, and the same in training). The L->L part is added into the H->L output and
  the L->H part into the H->H output, in place, through a broadcast view. (One
  convolution over ``cat(pool(X_H), X_L)`` with ``[W_HL | W_LL]`` pays two copies, of
  the inputs and of the weights, every call: on an Intel Xeon, 2 threads, two
  convolutions and an add were up to 2.4x faster at batch 1 and up to 1.3x at batch 2
  training, a few percent slower in some channels-last cases);
* only X_H, X_L and the weights are kept (the network keeps them anyway); the
  pooling is redone in backward, the convolutions never are;
* backward accumulates the pooled path's gradient straight into the H->H path's
  input gradient, through a broadcast view.

When no gradient is needed (inference), the forward runs alone, without the
function's bookkeeping; each convolution runs on the backend ``convolution`` picks.

Strided layers follow the official code: inputs are average-pooled by the stride
and the paths run at stride 1; when the stride equals the octave factor, L->H reads
X_L directly and lands on the high grid without upsampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .convolution import convolution
from .grid import add_down_adjoint_, add_upsampled_, block_sum, down_adjoint, downsample


@dataclass(frozen=True)
class Geometry:
    stride: tuple[int, ...]
    octave_pool: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def strided(self) -> bool:
        return any(s != 1 for s in self.stride)

    @property
    def lh_on_grid(self) -> bool:
        """L->H reads X_L and lands on the (strided) high grid directly."""
        return self.stride == self.octave_pool


def _conv(x, w, b, geometry: Geometry):
    n = len(geometry.padding)
    return convolution(x, w, b, (1,) * n, geometry.padding, geometry.dilation)


def _conv_backward(grad, x, w, has_bias: bool, geometry: Geometry, mask):
    n = len(geometry.padding)
    return torch.ops.aten.convolution_backward(
        grad, x, w, [w.shape[0]] if has_bias else None, [1] * n, list(geometry.padding),
        list(geometry.dilation), False, [0] * n, 1, list(mask),
    )


def _forward(g: Geometry, b_h, b_l, x_h, x_l, w_hh, w_hl, w_lh, w_ll) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The layer's output, without autograd: what the function's forward computes, and all
    that runs when no gradient is needed (inference)."""
    xs_h = downsample(x_h, g.stride)
    xs_l = None if x_l is None else downsample(x_l, g.stride)
    y_h = _conv(xs_h, w_hh, b_h, g)
    y_ll, y_lh = _from_low(g, x_l, xs_l, w_ll, w_lh)
    y_l = None
    if w_hl is not None:  # an ungrouped layer with a low output has H->L, and L->L if it has a low input
        y_l = _conv(downsample(xs_h, g.octave_pool), w_hl, b_l, g)
        if y_ll is not None:
            y_l.add_(y_ll)
    if y_lh is not None:
        if g.lh_on_grid:
            y_h.add_(y_lh)
        else:
            add_upsampled_(y_h, y_lh, g.octave_pool)
    return y_h, y_l


def _from_low(g: Geometry, x_l, xs_l, w_ll, w_lh) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The L->L and L->H outputs. Both read the same input unless L->H lands on the strided grid,
    and then run as one convolution with the two weights stacked along the output channels:
    one call of twice the width instead of two small ones."""
    if w_ll is None or w_lh is None or g.lh_on_grid:
        y_ll = None if w_ll is None else _conv(xs_l, w_ll, None, g)
        y_lh = None if w_lh is None else _conv(x_l if g.lh_on_grid else xs_l, w_lh, None, g)
        return y_ll, y_lh
    both = _conv(xs_l, torch.cat([w_ll, w_lh]), None, g)
    return both[:, : w_ll.shape[0]], both[:, w_ll.shape[0] :]


class _OctaveConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, geometry, b_h, b_l, x_h, x_l, w_hh, w_hl, w_lh, w_ll):
        y_h, y_l = _forward(geometry, b_h, b_l, x_h, x_l, w_hh, w_hl, w_lh, w_ll)
        ctx.geometry, ctx.has_bias = geometry, (b_h is not None, b_l is not None)
        ctx.save_for_backward(x_h, x_l, w_hh, w_hl, w_lh, w_ll)
        # No None output: torch.compile cannot trace a backward that is handed a None gradient.
        return y_h if y_l is None else (y_h, y_l)

    @staticmethod
    def backward(ctx, grad_h, grad_l=None):
        g = ctx.geometry
        x_h, x_l, w_hh, w_hl, w_lh, w_ll = ctx.saved_tensors
        need = dict(zip(["b_h", "b_l", "x_h", "x_l", "w_hh", "w_hl", "w_lh", "w_ll"], ctx.needs_input_grad[1:]))
        xs_h = downsample(x_h, g.stride)
        xs_l = None if x_l is None else downsample(x_l, g.stride)
        out = dict.fromkeys(need)

        # H->H; its input gradient is the buffer the pooled path's gradient is added into.
        gxs_h, out["w_hh"], out["b_h"] = _conv_backward(
            grad_h, xs_h, w_hh, ctx.has_bias[0], g, (need["x_h"], need["w_hh"], ctx.has_bias[0] and need["b_h"])
        )
        gxs_l = None  # gradient w.r.t. the stride-pooled X_L
        gx_l_direct = None  # gradient w.r.t. X_L itself (L->H on grid)

        if w_hl is not None and grad_l is not None:
            g_pooled, out["w_hl"], out["b_l"] = _conv_backward(
                grad_l, downsample(xs_h, g.octave_pool), w_hl, ctx.has_bias[1], g,
                (need["x_h"], need["w_hl"], ctx.has_bias[1] and need["b_l"]),
            )
            if gxs_h is not None:
                add_down_adjoint_(gxs_h, g_pooled, g.octave_pool)
            if w_ll is not None:
                gxs_l, out["w_ll"], _ = _conv_backward(grad_l, xs_l, w_ll, False, g, (need["x_l"], need["w_ll"], False))

        if w_lh is not None:
            source = x_l if g.lh_on_grid else xs_l
            grad_lh = grad_h if g.lh_on_grid else block_sum(grad_h, g.octave_pool)
            g_source, out["w_lh"], _ = _conv_backward(grad_lh, source, w_lh, False, g, (need["x_l"], need["w_lh"], False))
            if g_source is None:
                pass
            elif g.lh_on_grid:
                gx_l_direct = g_source
            else:
                gxs_l = g_source if gxs_l is None else gxs_l.add_(g_source)

        if gxs_h is not None:
            out["x_h"] = down_adjoint(gxs_h, x_h.shape, g.stride) if g.strided else gxs_h
        if x_l is not None and need["x_l"]:
            gx_l = None
            if gxs_l is not None:
                gx_l = down_adjoint(gxs_l, x_l.shape, g.stride) if g.strided else gxs_l
            if gx_l_direct is not None:
                gx_l = gx_l_direct if gx_l is None else gx_l.add_(gx_l_direct)
            out["x_l"] = gx_l
        return (None, out["b_h"], out["b_l"], out["x_h"], out["x_l"], out["w_hh"], out["w_hl"], out["w_lh"], out["w_ll"])


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast runs a convolution of ``x`` in, or None when autocast is off on ``x``'s device."""
    device = x.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def fused_octave_conv(
    x_h: torch.Tensor,
    x_l: torch.Tensor | None,
    weights: dict,
    bias_h: torch.Tensor | None,
    bias_l: torch.Tensor | None,
    geometry: Geometry,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(Y_H, Y_L)`` of an ungrouped octave layer; ``weights`` maps path names (hh, hl, lh, ll) to weights.

    Under ``torch.autocast`` the layer computes in the autocast dtype, as a plain convolution
    would: inputs, weights and biases are cast once, here, and the function runs with autocast
    off (what ``torch.amp.custom_fwd(cast_inputs=...)`` does, for the input's device type).
    The casts are autograd ops, so each gradient comes back in its tensor's own dtype.
    """
    tensors = (bias_h, bias_l, x_h, x_l, weights["hh"], weights.get("hl"), weights.get("lh"), weights.get("ll"))
    dtype = _autocast_dtype(x_h)
    if dtype is None:
        return _run(geometry, tensors)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        # Autocast's rule: float64 is left alone.
        return t if t is None or t.dtype == torch.float64 else t.to(dtype)

    with torch.autocast(x_h.device.type, enabled=False):
        return _run(geometry, tuple(map(cast, tensors)))


def _run(geometry: Geometry, tensors: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Through the autograd function when a gradient is needed, else the forward alone."""
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        return _forward(geometry, *tensors)
    outputs = _OctaveConv.apply(geometry, *tensors)
    return (outputs, None) if isinstance(outputs, torch.Tensor) else outputs
