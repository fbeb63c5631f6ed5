"""OctConv against the paper's definition, on every kind of layer and odd sizes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from octvideo.nn import OctaveBatchNorm, OctConv2d, OctConv3d, octave_add, octave_cat, split_channels


def octave_input(channels: int, alpha: float, size, octave_pool=(1, 2, 2), batch: int = 2):
    split = split_channels(channels, alpha)
    high = torch.randn(batch, split.high, *size)
    if not split.low:
        return high
    low_size = [math.ceil(s / f) for s, f in zip(size, octave_pool)]
    return high, torch.randn(batch, split.low, *low_size)


def reference(conv, x):
    """The paper's four paths written out with separate convolutions (stride 1)."""
    conv_fn = F.conv3d if conv.dims == 3 else F.conv2d
    pool_fn = F.avg_pool3d if conv.dims == 3 else F.avg_pool2d
    x_h, x_l = x
    kw = dict(padding=conv.padding)
    y_h = conv_fn(x_h, conv.weight_hh, **kw)
    up = F.interpolate(conv_fn(x_l, conv.weight_lh, **kw), scale_factor=conv.octave_pool, mode="nearest")
    y_h = y_h + up[(..., *[slice(0, s) for s in y_h.shape[2:]])]
    pooled = pool_fn(x_h, conv.octave_pool, conv.octave_pool, ceil_mode=True)
    y_l = conv_fn(x_l, conv.weight_ll, **kw) + conv_fn(pooled, conv.weight_hl, **kw)
    return y_h, y_l


@pytest.mark.parametrize("size", [(4, 8, 8), (5, 7, 7), (9, 113, 97)])
@pytest.mark.parametrize("octave_pool", [(1, 2, 2), (2, 2, 2)])
def test_four_paths_match_the_paper(size, octave_pool):
    conv = OctConv3d(16, 24, (3, 3, 3), 0.5, 0.25, padding=1, octave_pool=octave_pool)
    x = octave_input(16, 0.5, size, octave_pool, batch=1)
    y_h, y_l = conv(x)
    r_h, r_l = reference(conv, x)
    assert y_h.shape == r_h.shape and y_h.shape[2:] == size
    assert y_l.shape[2:] == tuple(math.ceil(s / f) for s, f in zip(size, octave_pool))
    torch.testing.assert_close(y_h, r_h, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y_l, r_l, rtol=1e-4, atol=1e-5)


def test_2d_matches_the_paper_on_odd_sizes():
    conv = OctConv2d(32, 32, 3, 0.25, 0.25, padding=1)
    x = octave_input(32, 0.25, (7, 13), octave_pool=(2, 2))
    for got, want in zip(conv(x), reference(conv, x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_alpha_zero_is_a_plain_convolution():
    conv = OctConv3d(8, 16, (3, 3, 3), stride=(1, 2, 2), padding=1, bias=True)
    plain = nn.Conv3d(8, 16, 3, stride=(1, 2, 2), padding=1, bias=True)
    plain.weight.data.copy_(conv.weight_hh)
    plain.bias.data.copy_(conv.bias_h)
    x = torch.randn(2, 8, 5, 17, 15)
    torch.testing.assert_close(conv(x), plain(x))


@pytest.mark.parametrize("alpha_in,alpha_out", [(0, 0.5), (0.5, 0.5), (0.5, 0), (0.125, 0.75)])
@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_equals_the_plain_layer(alpha_in, alpha_out, groups, bias):
    conv = OctConv3d(64, 32, (3, 3, 3), alpha_in, alpha_out, padding=1, groups=groups, bias=bias)
    plain = nn.Conv3d(64, 32, 3, padding=1, groups=groups, bias=bias)
    assert sum(p.numel() for p in conv.parameters()) == sum(p.numel() for p in plain.parameters())


def test_depthwise_keeps_the_count_and_drops_cross_paths():
    conv = OctConv3d(32, 32, 3, 0.5, 0.5, padding=1, groups=32)
    assert set(conv.path_weights()) == {"hh", "ll"}
    assert sum(p.numel() for p in conv.parameters()) == nn.Conv3d(32, 32, 3, groups=32, bias=False).weight.numel()


ODD = (5, 9, 7)


@pytest.mark.parametrize(
    "kwargs,octave_pool",
    [
        (dict(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), (1, 2, 2)),  # stride == octave factor
        (dict(kernel_size=3, stride=(2, 2, 2), padding=1), (1, 2, 2)),  # temporal stride too
        (dict(kernel_size=3, stride=(1, 2, 2), padding=1), (2, 2, 2)),  # stride != octave factor
        (dict(kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=4), (1, 2, 2)),
        (dict(kernel_size=3, padding=1, groups=32), (1, 2, 2)),  # depthwise
        (dict(kernel_size=(7, 1, 1), stride=(4, 1, 1), padding=(3, 0, 0)), (1, 2, 2)),  # a SlowFast lateral
    ],
)
@pytest.mark.parametrize("size", [ODD, (9, 113, 97)])
def test_odd_sizes_keep_the_octave_grid(kwargs, octave_pool, size):
    alpha_out = 0.5
    conv = OctConv3d(32, 32, alpha_in=0.5, alpha_out=alpha_out, octave_pool=octave_pool, **kwargs)
    y_h, y_l = conv(octave_input(32, 0.5, size, octave_pool, batch=1))
    stride = conv.stride
    assert tuple(y_h.shape[2:]) == tuple(math.ceil(s / st) for s, st in zip(size, stride))
    assert tuple(y_l.shape[2:]) == tuple(math.ceil(s / f) for s, f in zip(y_h.shape[2:], octave_pool))


@pytest.mark.parametrize("alpha_in,alpha_out", [(0, 0.5), (0.5, 0)])
def test_transition_layers_on_odd_sizes(alpha_in, alpha_out):
    conv = OctConv3d(32, 16, 3, alpha_in, alpha_out, stride=(1, 2, 2), padding=1)
    out = conv(octave_input(32, alpha_in, ODD))
    high = out[0] if isinstance(out, tuple) else out
    assert tuple(high.shape[2:]) == (5, 5, 4)
    assert isinstance(out, tuple) == (alpha_out > 0)


def test_gradients_reach_all_four_paths():
    conv = OctConv3d(16, 16, 3, 0.5, 0.5, padding=1)
    bn = OctaveBatchNorm(conv.out_split)
    y_h, y_l = bn(conv(octave_input(16, 0.5, ODD)))
    (y_h.square().mean() + y_l.square().mean()).backward()
    for name, weight in conv.path_weights().items():
        assert weight.grad is not None and weight.grad.abs().sum() > 0, name


def test_pair_helpers():
    a = octave_input(8, 0.5, (2, 4, 4))
    b = octave_input(8, 0.5, (2, 4, 4))
    high, low = octave_add(a, b)
    torch.testing.assert_close(high, a[0] + b[0])
    high, low = octave_cat([a, b])
    assert high.shape[1] == 8 and low.shape[1] == 8
    with pytest.raises(ValueError, match="plain tensor"):
        octave_add(a, a[0])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(alpha_in=1.0), "alpha_in"),
        (dict(alpha_out=-0.1), "alpha_out"),
        (dict(groups=3), "not divisible by groups"),
        (dict(alpha_in=0.1, alpha_out=0.1, groups=4), "not divisible by groups"),
        (dict(alpha_in=0.5, alpha_out=0.5, padding=0), "same"),
        (dict(octave_pool=(1, 1, 1)), "octave_pool"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    args = dict(kernel_size=3, padding=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        OctConv3d(32, 32, **args)


def test_wrong_input_is_a_clear_error():
    conv = OctConv3d(16, 16, 3, 0.5, 0.5, padding=1)
    with pytest.raises(ValueError, match=r"expects \(high, low\) channels \(8, 8\)"):
        conv(torch.randn(1, 16, 4, 8, 8))
    with pytest.raises(ValueError, match="low-frequency input has size"):
        conv((torch.randn(1, 8, 4, 8, 8), torch.randn(1, 8, 4, 8, 8)))


def layer_macs_and_memory(alpha: float, octave_pool) -> tuple:
    conv = OctConv3d(64, 64, 3, alpha, alpha, padding=1, octave_pool=octave_pool)
    x = octave_input(64, alpha, (8, 16, 16), octave_pool, batch=1)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = conv(x)
    outputs = out if isinstance(out, tuple) else (out,)
    return counter.get_total_flops() / 2, sum(t.numel() for t in outputs)


@pytest.mark.parametrize(
    "alpha,paper_macs,paper_memory",
    [(0.125, 0.82, 0.91), (0.25, 0.67, 0.81), (0.5, 0.44, 0.63), (0.75, 0.30, 0.44)],
)
def test_single_layer_cost_reproduces_table_1(alpha, paper_macs, paper_memory):
    plain_macs, plain_memory = layer_macs_and_memory(0.0, (1, 2, 2))
    macs, memory = layer_macs_and_memory(alpha, (1, 2, 2))
    assert macs / plain_macs == pytest.approx(1 - 1.5 * alpha + 0.75 * alpha**2, rel=1e-9)
    assert memory / plain_memory == pytest.approx(1 - 0.75 * alpha, rel=1e-9)
    assert round(macs / plain_macs, 2) == pytest.approx(paper_macs, abs=0.011)
    assert round(memory / plain_memory, 2) == pytest.approx(paper_memory, abs=0.011)


@pytest.mark.parametrize("alpha", [0.125, 0.25, 0.5, 0.75])
def test_spatiotemporal_pooling_cost(alpha):
    plain_macs, _ = layer_macs_and_memory(0.0, (2, 2, 2))
    macs, memory = layer_macs_and_memory(alpha, (2, 2, 2))
    assert macs / plain_macs == pytest.approx(1 - 1.75 * alpha + 0.875 * alpha**2, rel=1e-9)


@pytest.mark.parametrize("alpha_in", [0.0, 0.5])
@pytest.mark.parametrize("octave_pool,stride", [((1, 2, 2), 1), ((2, 2, 2), 1), ((1, 2, 2), (1, 2, 2))])
@pytest.mark.parametrize("size", [(2, 3, 5), (2, 4, 8)])
def test_gradients_are_exact(alpha_in, octave_pool, stride, size):
    """The custom backward passes (pooled convolution, fast pooling, upsample-add) against numerical derivatives."""
    conv = OctConv3d(4, 4, 3, alpha_in, 0.5, padding=1, stride=stride, octave_pool=octave_pool, bias=True).double()
    x = octave_input(4, alpha_in, size, octave_pool, batch=1)
    inputs = tuple(t.double().requires_grad_() for t in (x if isinstance(x, tuple) else (x,)))

    def flat(*args):
        out = conv(args[0] if len(args) == 1 else tuple(args))
        return torch.cat([t.flatten() for t in out])

    params = tuple(conv.parameters())
    assert torch.autograd.gradcheck(lambda *a: flat(*a[: len(inputs)]), inputs + params)


@pytest.mark.parametrize("size", [(2, 4, 8), ODD, (1, 1, 1)])
def test_bfloat16_on_cpu_at_any_size(size):
    """PyTorch has no bfloat16 CPU kernel for avg_pool3d; the octave grid needs none."""
    conv = OctConv3d(8, 8, 3, 0.5, 0.5, padding=1, stride=(1, 2, 2))
    x = octave_input(8, 0.5, size, batch=2)
    expected = conv(x)
    conv_bf16 = conv.to(torch.bfloat16)
    x_bf16 = tuple(t.to(torch.bfloat16).requires_grad_() for t in x)
    got = conv_bf16(x_bf16)
    (got[0].float().sum() + got[1].float().sum()).backward()
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.float(), e, rtol=0.05, atol=0.05)
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in x_bf16)
