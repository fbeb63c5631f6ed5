"""The Oct models against their plain twins (pytorchvideo, torchvision), any alpha, any size."""

import warnings

import pytest
import torch
import torchvision

from octvideo.models import build_model, list_models, load_vanilla_weights

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pytorchvideo.models.hub import i3d_r50, slowfast_r50

ALPHAS = [0.0, 0.125, 0.25, 0.5, 0.75]
PARAMS = {"oct_i3d_r50": 28_043_472, "oct_slowfast_r50": 34_566_488, "oct_resnet50": 25_557_032}


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_parameter_count_is_the_plain_networks_for_every_alpha(name):
    for alpha in ALPHAS:
        assert count(build_model(name, alpha=alpha)) == PARAMS[name], alpha
    assert count(build_model(name, alpha=0.5, octave_pool=(2, 2, 2) if "resnet" not in name else (2, 2))) == PARAMS[name]


def test_plain_twins_have_the_documented_counts():
    assert count(i3d_r50()) == PARAMS["oct_i3d_r50"]
    assert count(slowfast_r50()) == PARAMS["oct_slowfast_r50"]
    assert count(torchvision.models.resnet50()) == PARAMS["oct_resnet50"]


def randomise_norm_statistics(model):
    """Pretrained-like batch-norm state, so the comparison exercises every statistic."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
    return model.eval()


def relative_error(a, b):
    return ((a - b).abs().max() / a.abs().max()).item()


CASES = {
    "oct_i3d_r50": (i3d_r50, lambda: torch.randn(1, 3, 8, 224, 224)),
    "oct_slowfast_r50": (slowfast_r50, lambda: [torch.randn(1, 3, 8, 224, 224), torch.randn(1, 3, 32, 224, 224)]),
    "oct_resnet50": (torchvision.models.resnet50, lambda: torch.randn(2, 3, 224, 224)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_alpha_zero_equals_the_plain_twin(name):
    make_plain, make_input = CASES[name]
    torch.manual_seed(0)
    plain = randomise_norm_statistics(make_plain())
    model = build_model(name)
    load_vanilla_weights(model, plain.state_dict())
    model.eval()
    x = make_input()
    with torch.no_grad():
        expected = plain([t.clone() for t in x] if isinstance(x, list) else x)
        got = model(x)
    assert relative_error(expected, got) < 1e-4


def assemble(conv):
    """Glue an octave layer's four weights back into the plain weight (high channels first)."""
    w = conv.path_weights()
    zeros = lambda o, i: torch.zeros(o, i, *conv.kernel_size)  # noqa: E731
    ih, il = conv.in_split
    oh, ol = conv.out_split
    top = torch.cat([w["hh"], w.get("lh", zeros(oh, il))], dim=1)
    if not ol:
        return top
    bottom = torch.cat([w.get("hl", zeros(ol, ih)), w.get("ll", zeros(ol, il))], dim=1)
    return torch.cat([top, bottom], dim=0)


@pytest.mark.parametrize("alpha", [0.1, 0.5])
def test_vanilla_weights_partition_exactly_into_any_alpha(alpha):
    plain = torchvision.models.resnet50()
    model = build_model("oct_resnet50", alpha=alpha)
    load_vanilla_weights(model, plain.state_dict())
    for ours, theirs in [("layer2.0.conv2", "layer2.0.conv2"), ("layer4.0.conv1", "layer4.0.conv1")]:
        conv = model.get_submodule(ours).conv
        torch.testing.assert_close(assemble(conv), plain.get_submodule(theirs).weight, rtol=0, atol=0)
    bn = model.layer2[0].conv2.bn
    expected = plain.layer2[0].bn2.running_var
    torch.testing.assert_close(torch.cat([bn.high.running_var, bn.low.running_var]), expected, rtol=0, atol=0)


def test_slowfast_laterals_reorder_channels_into_octave_groups():
    plain = slowfast_r50()
    model = build_model("oct_slowfast_r50", alpha=0.5)
    load_vanilla_weights(model, plain.state_dict())
    # res3's first slow conv reads cat(slow 256, lateral 64); its high inputs are slow[:128] + lateral[:32].
    conv = model.slow_layers[1][0].conv1.conv
    source = plain.blocks[2].multipathway_blocks[0].res_blocks[0].branch2.conv_a.weight
    hh = conv.weight_hh
    torch.testing.assert_close(hh[:, :128], source[:64, :128], rtol=0, atol=0)
    torch.testing.assert_close(hh[:, 128:], source[:64, 256:288], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vanilla_weights_load_into_every_model_at_any_alpha(name):
    make_plain, make_input = CASES[name]
    plain = make_plain()
    model = build_model(name, alpha=0.25, last_stage_alpha=0.125)
    load_vanilla_weights(model, plain.state_dict())  # raises unless every tensor is used and filled
    classifier = plain.fc if name == "oct_resnet50" else plain.blocks[-1].proj
    torch.testing.assert_close(model.fc.weight, classifier.weight, rtol=0, atol=0)


def test_mismatched_state_dict_is_a_clear_error():
    model = build_model("oct_resnet50")
    with pytest.raises(ValueError, match="does not match"):
        load_vanilla_weights(model, i3d_r50().state_dict())


TINY = dict(width=16, num_classes=7)


@pytest.mark.parametrize("octave_pool", [(1, 2, 2), (2, 2, 2)])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_video_models_take_odd_sizes(alpha, octave_pool):
    for name in ["oct_i3d_r18", "oct_i3d_r50"]:
        model = build_model(name, alpha=alpha, octave_pool=octave_pool, **TINY)
        assert model(torch.randn(1, 3, 5, 113, 97)).shape == (1, 7)
    model = build_model("oct_slowfast_r14", alpha=alpha, octave_pool=octave_pool, **TINY)
    assert model([torch.randn(1, 3, 3, 97, 113), torch.randn(1, 3, 12, 97, 113)]).shape == (1, 7)
    model = build_model("oct_slowfast_r50", alpha=alpha, octave_pool=octave_pool, **TINY)
    assert model([torch.randn(1, 3, 3, 65, 71), torch.randn(1, 3, 12, 65, 71)]).shape == (1, 7)


@pytest.mark.parametrize("octave_pool", [(1, 2, 2), (2, 2, 2)])
def test_maps_that_shrink_to_a_single_cell(octave_pool):
    """32 x 32 inputs reach 1 x 1 in res5: a one-cell map pools to itself."""
    model = build_model("oct_i3d_r50", alpha=0.5, last_stage_alpha=0.5, octave_pool=octave_pool, **TINY)
    x = torch.randn(2, 3, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_resnet50_takes_odd_sizes(alpha):
    assert build_model("oct_resnet50", alpha=alpha, num_classes=5)(torch.randn(1, 3, 113, 97)).shape == (1, 5)


def test_last_stage_alpha_is_a_parameter():
    default = build_model("oct_i3d_r18", alpha=0.5, **TINY)
    assert default.layer4[-1].conv2.conv.out_split.low == 0
    octave = build_model("oct_i3d_r18", alpha=0.5, last_stage_alpha=0.5, **TINY)
    assert octave.layer4[-1].conv2.conv.out_split.low > 0
    assert octave(torch.randn(1, 3, 4, 64, 64)).shape == (1, 7)


def test_training_step_reaches_every_weight():
    model = build_model("oct_slowfast_r14", alpha=0.5, **TINY)
    loss = model(model.example_input(frames=4, size=64, batch=2)).logsumexp(1).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_registry():
    assert {"oct_i3d_r50", "oct_slowfast_r50", "oct_resnet50", "oct_i3d_r18", "oct_slowfast_r14"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model name 'oct_i3d_r5'.*oct_i3d_r50"):
        build_model("oct_i3d_r5")
    with pytest.raises(ValueError, match="alpha"):
        build_model("oct_i3d_r50", alpha=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("oct_slowfast_r50", num_classes=0)
