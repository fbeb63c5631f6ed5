"""Octave layers under ``torch.autocast`` on CPU: they compute in the autocast dtype, as a plain
convolution does, and return each gradient in its tensor's own dtype (fp32 weights get fp32 grads).

The fused function (ungrouped layers) is checked against the same layer computed path by path on
plain autograd ops (``OctConv.path_by_path``) and against the paper's four paths
(``test_octconv.reference``), all under the same autocast. This torch's CPU autocast runs
convolutions in fp16 too, so bf16 and fp16 are both tested.

Tolerances are on the error relative to the reference's largest magnitude. Both sides cast the
same inputs and weights, but round at different points (the fused layer pools the cast input,
the paths pool before casting), so they
differ by a few ulps of the output. Measured, against the paths, the paper and fp32 without
autocast alike: up to 7.5e-3 in bf16 (8-bit mantissa) and 9.4e-4 in fp16 (11-bit); allowed 3e-2
and 5e-3.
"""

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from octvideo.models import build_model
from octvideo.nn import Octave, OctaveBatchNorm, OctConv, OctConv2d, OctConv3d, unpack

from .test_octconv import octave_input, reference

DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 5e-3}


def assert_close_to_scale(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    """``|got - want| <= tol * max|want|`` everywhere (an elementwise relative error breaks near zero)."""
    want = want.detach().float()
    error = (got.detach().float().to(want.device) - want).abs().max().item()
    scale = want.abs().max().item()
    assert error <= tol * scale, f"max error {error:.3g} > {tol} * {scale:.3g}"


def forward_backward(
    layer: Callable[[Octave], Octave], conv: OctConv, x: Octave, dtype: torch.dtype | None = None
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``layer(x)``, under autocast to ``dtype`` on ``x``'s device if given, and a backward with fixed
    random output gradients: the outputs, then the gradients of the inputs and of ``conv``'s parameters."""
    inputs = tuple(t.detach().clone().requires_grad_() for t in unpack(x) if t is not None)
    conv.zero_grad()
    with torch.autocast(inputs[0].device.type, dtype=dtype, enabled=dtype is not None):
        out = layer(inputs[0] if len(inputs) == 1 else inputs)
    outs = list(out) if isinstance(out, tuple) else [out]
    generator = torch.Generator().manual_seed(0)  # on the CPU: the same gradients on every device
    torch.autograd.backward(outs, [torch.randn(o.shape, generator=generator).to(o) for o in outs])
    return outs, [t.grad for t in inputs] + [p.grad for p in conv.parameters()]


def spec(in_channels: int, out_channels: int, alpha_in: float, alpha_out: float, **kwargs) -> dict:
    """OctConv arguments: a 3 x 3 (x 3) "same" layer unless ``kwargs`` say otherwise."""
    layer = dict(in_channels=in_channels, out_channels=out_channels, kernel_size=3, padding=1)
    return dict(layer, alpha_in=alpha_in, alpha_out=alpha_out, **kwargs)


LAYERS_3D = {
    "0->a": spec(8, 16, 0.0, 0.5),
    "a->a": spec(16, 16, 0.5, 0.5),
    "a->0": spec(16, 8, 0.5, 0.0),
    "a->b bias": spec(16, 16, 0.25, 0.75, bias=True),
    "stride=octave": spec(16, 16, 0.5, 0.5, kernel_size=(1, 3, 3), padding=(0, 1, 1), stride=(1, 2, 2)),
    "stride 2,2,2": spec(16, 16, 0.5, 0.5, stride=2),
    "0->a stride": spec(8, 16, 0.0, 0.5, stride=(1, 2, 2)),
    "octave 2,2,2": spec(16, 16, 0.5, 0.5, octave_pool=(2, 2, 2)),
}
LAYERS_2D = {
    "0->a": spec(8, 16, 0.0, 0.5),
    "a->a": spec(16, 16, 0.5, 0.5),
    "a->0 stride": spec(16, 8, 0.5, 0.0, stride=2),
}
ODD_3D, ODD_2D = (5, 9, 7), (9, 13)
LAYERS = [(OctConv3d, kwargs, ODD_3D) for kwargs in LAYERS_3D.values()] + [
    (OctConv2d, kwargs, ODD_2D) for kwargs in LAYERS_2D.values()
]
LAYER_IDS = [f"3d {name}" for name in LAYERS_3D] + [f"2d {name}" for name in LAYERS_2D]


def layer_and_input(cls: type, kwargs: dict, size: tuple[int, ...]) -> tuple[OctConv, Octave]:
    torch.manual_seed(0)
    conv = cls(**kwargs)
    return conv, octave_input(kwargs["in_channels"], kwargs["alpha_in"], size, conv.octave_pool)


@DTYPES
@pytest.mark.parametrize("cls,kwargs,size", LAYERS, ids=LAYER_IDS)
def test_fused_matches_path_by_path(cls, kwargs, size, dtype):
    conv, x = layer_and_input(cls, kwargs, size)
    outs, grads = forward_backward(conv, conv, x, dtype)
    want_outs, want_grads = forward_backward(conv.path_by_path, conv, x, dtype)

    assert all(t.dtype == dtype for t in outs)
    assert all(g.dtype == torch.float32 for g in grads)  # fp32 inputs and weights get fp32 gradients
    for got, want in zip(outs + grads, want_outs + want_grads):
        assert_close_to_scale(got, want, TOLERANCE[dtype])


@DTYPES
@pytest.mark.parametrize("cls,size", [(OctConv3d, ODD_3D), (OctConv2d, ODD_2D)], ids=["3d", "2d"])
def test_fused_matches_the_paper_and_fp32(cls, size, dtype):
    conv, x = layer_and_input(cls, spec(16, 16, 0.5, 0.5), size)  # the paper's four paths: a -> a, stride 1
    outs, grads = forward_backward(conv, conv, x, dtype)
    paper_outs, paper_grads = forward_backward(lambda inputs: reference(conv, inputs), conv, x, dtype)
    fp32_outs, fp32_grads = forward_backward(conv, conv, x)
    for got, want in zip(2 * (outs + grads), paper_outs + paper_grads + fp32_outs + fp32_grads):
        assert_close_to_scale(got, want, TOLERANCE[dtype])


@DTYPES
@pytest.mark.parametrize("groups", [4, 16], ids=["grouped", "depthwise"])
def test_grouped_layers_and_batch_norm(groups, dtype):
    """Grouped layers run path by path on autocast's own ops; batch norm takes the low-precision output."""
    conv, x = layer_and_input(OctConv3d, spec(16, 16, 0.5, 0.5, groups=groups), ODD_3D)
    layer = torch.nn.Sequential(conv, OctaveBatchNorm(conv.out_split))
    outs, grads = forward_backward(layer, conv, x, dtype)
    fp32_outs, fp32_grads = forward_backward(layer, conv, x)

    assert all(t.dtype == dtype for t in outs)
    assert all(g.dtype == torch.float32 for g in grads)
    for got, want in zip(outs + grads, fp32_outs + fp32_grads):
        assert_close_to_scale(got, want, TOLERANCE[dtype])


@DTYPES
def test_whole_model_trains_under_autocast(dtype):
    torch.manual_seed(0)
    model = build_model("oct_i3d_r18", alpha=0.5, width=8, num_classes=3)
    with torch.autocast("cpu", dtype=dtype):
        logits = model(torch.randn(2, 3, 4, 32, 32))
        loss = F.cross_entropy(logits, torch.tensor([0, 2]))
    loss.backward()

    assert logits.dtype == dtype and torch.isfinite(logits).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all(), name
