"""OctConv3d and a whole Oct-I3D on CUDA.

A layer on CUDA computes what the same layer computes on the CPU, forward and backward, in fp32
and under autocast (bf16, fp16), with contiguous and channels-last-3d tensors; and on CUDA the fused
function matches the layer computed path by path. The layers, odd input size, helpers and the
autocast tolerances are those of ``tests/nn/test_autocast.py`` (errors relative to the reference's
largest magnitude). fp32 runs with TF32 off, so the two sides differ only in summation order:
allowed 1e-4.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from nn.test_autocast import LAYERS_3D, ODD_3D, TOLERANCE, assert_close_to_scale, forward_backward, layer_and_input

from octvideo.models import build_model
from octvideo.nn import Octave, OctConv3d, octave_map

DEVICE = "cuda"
FP32_TOLERANCE = 1e-4
PRECISIONS = pytest.mark.parametrize(
    "dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "autocast-bf16", "autocast-fp16"]
)
MEMORY_FORMATS = pytest.mark.parametrize(
    "memory_format", [torch.contiguous_format, torch.channels_last_3d], ids=["contiguous", "channels-last"]
)
LAYERS = pytest.mark.parametrize("kwargs", list(LAYERS_3D.values()), ids=list(LAYERS_3D))


@pytest.fixture(autouse=True)
def full_fp32_convolutions(monkeypatch: pytest.MonkeyPatch) -> None:
    """cuDNN runs fp32 convolutions in TF32 by default (a 10-bit mantissa); the fp32 checks need fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def on_cuda(x: Octave, memory_format: torch.memory_format) -> Octave:
    return octave_map(lambda t: t.to(DEVICE, memory_format=memory_format), x)


def check(outs, grads, want_outs, want_grads, dtype: torch.dtype | None) -> None:
    assert all(t.dtype == (dtype or torch.float32) for t in outs)
    assert all(g.dtype == torch.float32 for g in grads)  # fp32 inputs and weights get fp32 gradients
    tol = FP32_TOLERANCE if dtype is None else TOLERANCE[dtype]
    for got, want in zip(outs + grads, want_outs + want_grads):
        assert_close_to_scale(got, want, tol)


@PRECISIONS
@MEMORY_FORMATS
@LAYERS
def test_cuda_matches_cpu(kwargs, memory_format, dtype):
    conv, x = layer_and_input(OctConv3d, kwargs, ODD_3D)
    want_outs, want_grads = forward_backward(conv, conv, x, dtype)
    conv_cuda = copy.deepcopy(conv).to(DEVICE, memory_format=memory_format)
    outs, grads = forward_backward(conv_cuda, conv_cuda, on_cuda(x, memory_format), dtype)
    assert all(t.is_cuda for t in outs + grads)
    check(outs, grads, want_outs, want_grads, dtype)


@PRECISIONS
@MEMORY_FORMATS
@LAYERS
def test_fused_matches_path_by_path_on_cuda(kwargs, memory_format, dtype):
    conv, x = layer_and_input(OctConv3d, kwargs, ODD_3D)
    conv = conv.to(DEVICE, memory_format=memory_format)
    x = on_cuda(x, memory_format)
    outs, grads = forward_backward(conv, conv, x, dtype)
    want_outs, want_grads = forward_backward(conv.path_by_path, conv, x, dtype)
    check(outs, grads, want_outs, want_grads, dtype)


@MEMORY_FORMATS
@pytest.mark.parametrize("autocast", [True, False], ids=["autocast", "bf16-weights"])
def test_oct_i3d_r50_trains_in_bf16(autocast, memory_format):
    """Autocast, or the model itself in bf16 (how DeepSpeed's bf16 mode runs it)."""
    torch.manual_seed(0)
    model = build_model("oct_i3d_r50", alpha=0.5).to(DEVICE, memory_format=memory_format)
    x = torch.randn(2, 3, 8, 224, 224, device=DEVICE).to(memory_format=memory_format)
    if not autocast:
        model, x = model.bfloat16(), x.bfloat16()
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), torch.tensor([0, 1], device=DEVICE))
    loss.backward()

    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
