"""load_pretrained against checkpoints written by the real libraries (torchvision, pytorchvideo and
this project), saved with ``torch.save`` and read back with ``torch.load(..., weights_only=True)``
as the project's reader does. The hub cannot be reached, so the weights are random (with random,
pretrained-like batch-norm state); what is checked is that they land where they belong and that
the converted network computes what the source network computes."""

import warnings

import pytest
import torch
import torchvision

from octvideo.models import PretrainedLoad, build_model, load_pretrained
from octvideo.nn import OctConv

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from pytorchvideo.models.hub import i3d_r50, slowfast_r50

SIZE = 64  # spatial size of every clip / image: res5 maps are 2 x 2
TINY = {"width": 8}  # this project's own models, small: oct_i3d_r50 at width 8 (R50 blocks, 1/64 of the weights)
INFLATED = "torchvision (2-D, inflated: centre)"


def randomise(model, seed=0):
    """Pretrained-like batch-norm state (so every statistic matters), eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=generator) * 0.2 - 0.1)
    return model.eval()


def relative_error(expected, got):
    return ((expected - got).abs().max() / expected.abs().max()).item()


def roundtrip(obj, path):
    """What a checkpoint file gives the project's reader."""
    torch.save(obj, path)
    return torch.load(path, weights_only=True)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_tensors(expected, got, skip=()):
    assert set(expected) == set(got)
    for key in expected:
        if not key.startswith(skip):
            torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0, msg=key)


def assert_untouched(fc, before):
    torch.testing.assert_close(fc.weight, before["fc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(fc.bias, before["fc.bias"], rtol=0, atol=0)


def groups(x):
    """The tensors of an octave feature: [plain] or [high, low]."""
    return [x] if isinstance(x, torch.Tensor) else list(x)


def boring(frame, frames):
    """A clip of one frame repeated ``frames`` times."""
    return frame.unsqueeze(2).repeat(1, 1, frames, 1, 1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these forwards are small, and on a shared 2-core machine two threads
    wait on each other (a 4 x 64 x 64 Oct-I3D-R50 forward: 0.15 s on one thread, 3-5 s on two
    under load). Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- the sources, each built once and written in its library's format ----------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="module")
def torchvision_r50(files):
    torch.manual_seed(0)
    net = randomise(torchvision.models.resnet50(), seed=1)
    return net, roundtrip(net.state_dict(), files / "resnet50.pth")


@pytest.fixture(scope="module")
def pytorchvideo_i3d(files):
    """pytorchvideo's i3d_r50 with its head pool sized for 8 x 64 x 64 clips."""
    torch.manual_seed(1)
    net = randomise(i3d_r50(head_pool_kernel_size=(4, 2, 2)), seed=2)
    state = net.state_dict()
    return net, roundtrip(state, files / "i3d_r50.pyth"), roundtrip({"model_state": state}, files / "I3D_8x8_R50.pyth")


@pytest.fixture(scope="module")
def pytorchvideo_slowfast(files):
    """pytorchvideo's slowfast_r50 with its head pools sized for 8 + 32 frames of 64 x 64."""
    torch.manual_seed(2)
    net = randomise(slowfast_r50(head_pool_kernel_sizes=((8, 2, 2), (32, 2, 2))), seed=3)
    return net, roundtrip({"model_state": net.state_dict()}, files / "SLOWFAST_8x8_R50.pyth")


@pytest.fixture(scope="module")
def octvideo_r50_2d(files):
    """This project's 2-D Oct-ResNet-50 at alpha 0.5 (a model trained on images)."""
    torch.manual_seed(3)
    net = randomise(build_model("oct_resnet50", alpha=0.5), seed=4)
    return net, roundtrip(net.state_dict(), files / "oct_resnet50_a0.5.pt")


@pytest.fixture(scope="module")
def octvideo_tiny(files):
    """This project's own small video models (5 classes) at alpha 0.5 and 0, by alpha."""
    nets = {}
    for alpha in (0.5, 0.0):
        torch.manual_seed(4)
        net = randomise(build_model("oct_i3d_r50", alpha=alpha, num_classes=5, **TINY), seed=5)
        nets[alpha] = (net, roundtrip(net.state_dict(), files / f"oct_i3d_r50_w8_a{alpha}.pt"))
    return nets


# --- 1. every kind of source loads ---------------------------------------------------------------


@pytest.mark.parametrize("alpha, format", [(0.0, "torchvision"), (0.5, "auto")])
def test_torchvision_resnet50_inflates_into_oct_i3d_r50(torchvision_r50, alpha, format):
    _, state = torchvision_r50
    model = build_model("oct_i3d_r50", alpha=alpha)
    before = snapshot(model)
    result = load_pretrained(model, state, format=format)
    assert result == PretrainedLoad(INFLATED, "re-initialised (1000 -> 400 classes)")
    assert result.head_reinitialised
    assert_untouched(model.fc, before)  # 1000 ImageNet classes do not fit 400: the fresh head stays

    # The 5x7x7 stem: the 2-D kernel in the middle slice, zeros elsewhere.
    stem = model.stem.conv.weight_hh
    assert stem.shape == (64, 3, 5, 7, 7)
    torch.testing.assert_close(stem[:, :, 2], state["conv1.weight"], rtol=0, atol=0)
    assert not stem[:, :, [0, 1, 3, 4]].any()
    # A 3x1x1 block convolution between octave features: each path is its block of the plain weight.
    conv = model.layer1[1].conv1.conv
    assert conv.kernel_size == (3, 1, 1)
    plain = state["layer1.1.conv1.weight"]
    oh, ih = conv.out_split.high, conv.in_split.high
    assert (oh, ih) == ((32, 128) if alpha else (64, 256))
    torch.testing.assert_close(conv.weight_hh[:, :, 1], plain[:oh, :ih], rtol=0, atol=0)
    assert not conv.weight_hh[:, :, [0, 2]].any()
    if alpha:
        torch.testing.assert_close(conv.weight_ll[:, :, 1], plain[oh:, ih:], rtol=0, atol=0)
        torch.testing.assert_close(conv.weight_hl[:, :, 1], plain[oh:, :ih], rtol=0, atol=0)
    # Batch norm: copied, split per channel.
    bn = model.layer3[0].conv1.bn
    expected = state["layer3.0.bn1.running_var"]
    got = torch.cat([bn.high.running_var] + ([bn.low.running_var] if alpha else []))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_torchvision_resnet50_loads_into_oct_resnet50_as_is(torchvision_r50):
    net, state = torchvision_r50
    model = build_model("oct_resnet50")
    assert load_pretrained(model, state) == PretrainedLoad("torchvision", "loaded")
    model.eval()
    image = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert relative_error(net(image), model(image)) < 1e-4


def test_octave_2d_model_inflates_into_oct_i3d_r50_of_its_alpha(octvideo_r50_2d):
    _, state = octvideo_r50_2d
    model = build_model("oct_i3d_r50", alpha=0.5, num_classes=1000)
    assert load_pretrained(model, state) == PretrainedLoad("octvideo (2-D, inflated: centre)", "loaded")
    conv = model.layer1[1].conv1.conv
    for path in ("hh", "hl", "lh", "ll"):
        weight = getattr(conv, f"weight_{path}")
        torch.testing.assert_close(weight[:, :, 1], state[f"layer1.1.conv1.conv.weight_{path}"], rtol=0, atol=0)
        assert not weight[:, :, [0, 2]].any()
    assert_same_tensors({k: v for k, v in state.items() if "bn" in k or "fc" in k},
                        {k: v for k, v in model.state_dict().items() if "bn" in k or "fc" in k})


@pytest.mark.parametrize(
    "wrapped, alpha", [(False, 0.5), (True, 0.5), (True, 0.0)], ids=["state_dict-a0.5", "hub-a0.5", "hub-a0"]
)
def test_pytorchvideo_i3d_r50_loads(pytorchvideo_i3d, alpha, wrapped):
    net, bare, hub = pytorchvideo_i3d
    model = build_model("oct_i3d_r50", alpha=alpha)
    assert load_pretrained(model, hub if wrapped else bare) == PretrainedLoad("pytorchvideo i3d", "loaded")
    torch.testing.assert_close(model.stem.conv.weight_hh, bare["blocks.0.conv.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight, bare["blocks.6.proj.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.layer3[2].conv3.bn.high.running_mean,
                               bare["blocks.4.res_blocks.2.branch2.norm_c.running_mean"][: 1024 - int(alpha * 1024)],
                               rtol=0, atol=0)
    if alpha == 0:  # the same function as the source network
        model.eval()
        clip = torch.randn(1, 3, 8, SIZE, SIZE)
        with torch.no_grad():
            assert relative_error(net(clip), model(clip)) < 1e-4


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_pytorchvideo_slowfast_r50_loads(pytorchvideo_slowfast, alpha):
    net, checkpoint = pytorchvideo_slowfast
    state = checkpoint["model_state"]
    model = build_model("oct_slowfast_r50", alpha=alpha)
    assert load_pretrained(model, checkpoint) == PretrainedLoad("pytorchvideo slowfast", "loaded")
    torch.testing.assert_close(model.fast_stem[0].conv.weight_hh, state["blocks.0.multipathway_blocks.1.conv.weight"],
                               rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight, state["blocks.6.proj.weight"], rtol=0, atol=0)
    if alpha == 0:
        model.eval()
        clips = [torch.randn(1, 3, 8, SIZE, SIZE), torch.randn(1, 3, 32, SIZE, SIZE)]
        with torch.no_grad():
            expected = net([c.clone() for c in clips])
            assert relative_error(expected, model(clips)) < 1e-4


@pytest.mark.parametrize("name", ["oct_i3d_r50", "oct_i3d_r18"])
def test_own_octave_model_fills_its_own_architecture_and_alpha(octvideo_tiny, files, name):
    if name == "oct_i3d_r50":
        net, state = octvideo_tiny[0.5]
    else:
        net = randomise(build_model(name, alpha=0.5, num_classes=5, **TINY))
        state = roundtrip(net.state_dict(), files / f"{name}.pt")
    model = build_model(name, alpha=0.5, num_classes=5, **TINY)
    assert load_pretrained(model, state) == PretrainedLoad("octvideo", "loaded")
    assert_same_tensors(state, model.state_dict())
    model.eval()
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), net(clip), rtol=0, atol=0)


def assemble(conv):
    """An octave layer's path weights glued back into one plain weight (high channels first)."""
    w = conv.path_weights()

    def zeros(o, i):
        return torch.zeros(o, i, *conv.kernel_size)

    (ih, il), (oh, ol) = conv.in_split, conv.out_split
    top = torch.cat([w["hh"], w.get("lh", zeros(oh, il))], dim=1)
    if not ol:
        return top
    return torch.cat([top, torch.cat([w.get("hl", zeros(ol, ih)), w.get("ll", zeros(ol, il))], dim=1)], dim=0)


def test_own_plain_model_splits_into_alpha_one_half(octvideo_tiny):
    _, state = octvideo_tiny[0.0]
    model = build_model("oct_i3d_r50", alpha=0.5, num_classes=5, **TINY)
    assert load_pretrained(model, state) == PretrainedLoad("octvideo", "loaded")
    convs = {name: m for name, m in model.named_modules() if isinstance(m, OctConv)}
    assert any(conv.out_split.low for conv in convs.values())
    for name, conv in convs.items():  # every octave weight partitions the plain one
        torch.testing.assert_close(assemble(conv), state[f"{name}.weight_hh"], rtol=0, atol=0, msg=name)
    bn = model.layer2[0].conv1.bn
    torch.testing.assert_close(torch.cat([bn.high.running_mean, bn.low.running_mean]),
                               state["layer2.0.conv1.bn.high.running_mean"], rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight, state["fc.weight"], rtol=0, atol=0)


# --- 2. inflation: a boring video (one frame repeated) gives the 2-D network's output -------------


@pytest.fixture(scope="module")
def twins_2d(torchvision_r50, octvideo_r50_2d):
    """The 2-D network and the checkpoint an Oct-I3D is inflated from, per case."""
    tv_net, tv_state = torchvision_r50
    split = build_model("oct_resnet50", alpha=0.5)
    load_pretrained(split, tv_state)
    return {
        "torchvision-a0": (0.0, tv_net, tv_state),
        "torchvision-a0.5": (0.5, split.eval(), tv_state),  # the vanilla path: split and inflated
        "octvideo-a0.5": (0.5, *octvideo_r50_2d),  # the octave path: inflated only
    }


@pytest.fixture(scope="module")
def frame():
    return torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def inflated_i3d(twins_2d):
    """``(case, rule)`` -> the Oct-I3D-R50 inflated from that case's checkpoint, each built once."""
    built = {}

    def get(case, rule):
        if (case, rule) not in built:
            alpha, _, state = twins_2d[case]
            model = build_model("oct_i3d_r50", alpha=alpha, num_classes=1000)
            result = load_pretrained(model, state, inflate=rule)
            assert result.format.endswith(f"(2-D, inflated: {rule})") and result.head == "loaded"
            built[case, rule] = model.eval()
        return built[case, rule]

    return get


@pytest.mark.parametrize("case", ["torchvision-a0", "torchvision-a0.5", "octvideo-a0.5"])
def test_centre_inflation_on_a_boring_video_gives_the_2d_logits(twins_2d, inflated_i3d, frame, case):
    _, net_2d, _ = twins_2d[case]
    model = inflated_i3d(case, "centre")
    with torch.no_grad():
        expected = net_2d(frame)
        for frames in (4, 7):
            assert relative_error(expected, model(boring(frame, frames))) < 1e-4, frames


def stage_outputs(model, x):
    """The features after the stem and each stage, as ``forward_features`` computes them (for a
    torchvision ResNet, its equivalents)."""
    if isinstance(model, torchvision.models.ResNet):
        x = model.relu(model.bn1(model.conv1(x)))
        out = {"stem": x, "layer1": model.layer1(model.maxpool(x))}
        stages = [model.layer2, model.layer3, model.layer4]
    else:
        x = model.stem(x)
        out = {"stem": x, "layer1": model.layer1(model.stem_pool(x))}
        stages = [lambda y: model.layer2(model.temporal_pool(y)), model.layer3, model.layer4]
    for name, stage in zip(["layer2", "layer3", "layer4"], stages):
        out[name] = stage(out[list(out)[-1]])
    return out


# Mean inflation spreads each 2-D kernel over its temporal taps, so an output frame equals the 2-D
# output only where no tap of its receptive field reads temporal zero padding. In Oct-I3D-R50 on a
# 40-frame clip: the 5-tap stem reaches the padding from the 2 first/last frames (frames 2-37 match),
# res2's three 3-tap blocks 3 more (5-34); the frame-pair pool halves that (3-16 of 20), then res3's
# two, res4's three and res5's one 3-tap blocks leave res3 5-14, res4 8-11 and res5 frames 9-10.
# (Deeper in, frames a little outside these ranges match numerically too, as the padding's effect
# fades through the blocks; the ranges are what the receptive fields guarantee.) The clip's logits
# average every frame, the padded ones included, so they do not match.
FRAMES = 40
MATCHING = {"stem": (2, 37), "layer1": (5, 34), "layer2": (5, 14), "layer3": (8, 11), "layer4": (9, 10)}


@pytest.mark.parametrize("case", ["torchvision-a0", "octvideo-a0.5"])
def test_mean_inflation_matches_away_from_temporal_padding_only(twins_2d, inflated_i3d, frame, case):
    alpha, net_2d, _ = twins_2d[case]
    model = inflated_i3d(case, "mean")
    with torch.no_grad():
        expected = stage_outputs(net_2d, frame)
        got = stage_outputs(model, boring(frame, FRAMES))
        for stage, (first, last) in MATCHING.items():
            octave = alpha and stage not in ("stem", "layer4")  # the stem and res5 run at alpha 0
            assert len(groups(got[stage])) == len(groups(expected[stage])) == (2 if octave else 1)
            for e, g in zip(groups(expected[stage]), groups(got[stage])):

                def error(t, e=e, g=g):
                    return relative_error(e, g[:, :, t])

                for t in range(first, last + 1):
                    assert error(t) < 1e-4, (stage, t)
                # the clip's first and last frames read the padding, and are another output
                assert error(0) > 1e-2 and error(g.shape[2] - 1) > 1e-2, stage
        # the stem's range is tight: one frame further out, a tap reads the padding
        assert relative_error(expected["stem"], got["stem"][:, :, 1]) > 1e-2
        assert relative_error(expected["stem"], got["stem"][:, :, FRAMES - 2]) > 1e-2
        features = got["layer4"]
        logits = model.fc(model.pool(features))
        assert torch.equal(logits, model(boring(frame, FRAMES)))
        assert relative_error(net_2d(frame), logits) > 1e-3  # 10x the tolerance; 4 of res5's 20 frames are off
        assert relative_error(net_2d(frame), model(boring(frame, 8))) > 1e-2  # a short clip: every frame is off
        # ... and centre inflation on the same clip does give the 2-D logits
        centre = inflated_i3d(case, "centre")
        assert relative_error(net_2d(frame), centre(boring(frame, FRAMES))) < 1e-4


# --- 3. the classifier ---------------------------------------------------------------------------


@pytest.mark.parametrize("source_alpha", [0.5, 0.0], ids=["octave_source", "plain_source"])
def test_head_auto_keeps_the_fresh_classifier_when_class_counts_differ(octvideo_tiny, source_alpha):
    _, state = octvideo_tiny[source_alpha]
    model = build_model("oct_i3d_r50", alpha=source_alpha, num_classes=3, **TINY)
    before = snapshot(model)
    result = load_pretrained(model, state)
    assert result == PretrainedLoad("octvideo", "re-initialised (5 -> 3 classes)") and result.head_reinitialised
    assert_untouched(model.fc, before)
    assert_same_tensors(state, {**model.state_dict(), "fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"]},
                        skip=("fc.",))


def test_head_auto_with_a_real_library_checkpoint(pytorchvideo_i3d):
    _, bare, _ = pytorchvideo_i3d
    model = build_model("oct_i3d_r50", alpha=0.5, num_classes=10)
    before = snapshot(model)
    assert load_pretrained(model, bare) == PretrainedLoad("pytorchvideo i3d", "re-initialised (400 -> 10 classes)")
    assert_untouched(model.fc, before)
    torch.testing.assert_close(model.stem.conv.weight_hh, bare["blocks.0.conv.weight"], rtol=0, atol=0)


def test_head_keep_demands_the_same_class_count(octvideo_tiny):
    _, state = octvideo_tiny[0.5]
    model = build_model("oct_i3d_r50", alpha=0.5, num_classes=3, **TINY)
    assert_clear_error(model, state, r"5-class head and the model 3 classes", head="keep")
    same = build_model("oct_i3d_r50", alpha=0.5, num_classes=5, **TINY)
    assert load_pretrained(same, state, head="keep") == PretrainedLoad("octvideo", "loaded")
    torch.testing.assert_close(same.fc.weight, state["fc.weight"], rtol=0, atol=0)


@pytest.mark.parametrize("source_alpha", [0.5, 0.0], ids=["octave_source", "plain_source"])
def test_head_reset_leaves_the_classifier_even_when_counts_agree(octvideo_tiny, source_alpha):
    _, state = octvideo_tiny[source_alpha]
    model = build_model("oct_i3d_r50", alpha=0.5, num_classes=5, **TINY)
    before = snapshot(model)
    assert load_pretrained(model, state, head="reset") == PretrainedLoad("octvideo", "re-initialised (5 -> 5 classes)")
    assert_untouched(model.fc, before)
    torch.testing.assert_close(model.stem.conv.weight_hh, state["stem.conv.weight_hh"], rtol=0, atol=0)
    torch.testing.assert_close(model.layer4[1].conv2.bn.high.running_var,
                               state["layer4.1.conv2.bn.high.running_var"], rtol=0, atol=0)


# --- 4. sources that cannot fill the model: one clear line, the model untouched -------------------


def assert_clear_error(model, source, match, **kwargs):
    before = snapshot(model)
    with pytest.raises(ValueError, match=match) as err:
        load_pretrained(model, source, **kwargs)
    assert "\n" not in str(err.value)
    assert_same_tensors(before, model.state_dict())


def test_pytorchvideo_slowfast_cannot_start_i3d(pytorchvideo_slowfast):
    assert_clear_error(build_model("oct_i3d_r50"), pytorchvideo_slowfast[1],
                       r"pytorchvideo slowfast checkpoint; it cannot start oct_i3d_r50")


def test_torchvision_resnet_cannot_start_slowfast(torchvision_r50):
    assert_clear_error(build_model("oct_slowfast_r50"), torchvision_r50[1],
                       r"torchvision ResNet checkpoint; it cannot start oct_slowfast_r50")


def test_own_models_of_the_other_architecture(octvideo_r50_2d, octvideo_tiny, files):
    assert_clear_error(build_model("oct_slowfast_r14", alpha=0.5, width=16), octvideo_r50_2d[1],
                       r"octvideo ResNet checkpoint; it cannot start oct_slowfast_r14")
    assert_clear_error(build_model("oct_slowfast_r14", width=16, num_classes=5), octvideo_tiny[0.0][1],
                       r"octvideo ResNet checkpoint; it cannot start oct_slowfast_r14")
    slowfast = roundtrip(build_model("oct_slowfast_r14", width=16, num_classes=5).state_dict(), files / "sf.pt")
    assert_clear_error(build_model("oct_i3d_r50", num_classes=5, **TINY), slowfast,
                       r"octvideo SlowFast checkpoint; it cannot start oct_i3d_r50")


def test_video_checkpoints_cannot_start_a_2d_model(pytorchvideo_i3d, octvideo_tiny):
    model = build_model("oct_resnet50")
    for state in (pytorchvideo_i3d[1], octvideo_tiny[0.0][1]):
        assert_clear_error(model, state, r"3-D \(video\) network; it cannot start the 2-D oct_resnet50")


def test_octave_model_of_another_alpha(octvideo_tiny):
    model = build_model("oct_i3d_r50", alpha=0.25, num_classes=5, **TINY)
    assert_clear_error(
        model, octvideo_tiny[0.5][1], r"frequency split differs from the model's \(.*alpha 0\.5; the model's: \d+, alpha 0\.25\)"
    )
    plain = build_model("oct_i3d_r50", num_classes=5, **TINY)
    assert_clear_error(plain, octvideo_tiny[0.5][1], r"alpha 0\.5; the model's: 0, alpha 0\)")


@pytest.mark.parametrize(
    "source, match",
    [
        ({"foo.weight": torch.zeros(2, 2), "foo.bias": torch.zeros(2)}, r"not a checkpoint of a known network \(keys foo"),
        ([torch.zeros(2)], r"holds no state dict .* but a list"),
        ({}, r"holds an empty mapping"),
    ],
    ids=["unrelated_dict", "list", "empty_dict"],
)
def test_what_is_no_known_state_dict(files, source, match):
    assert_clear_error(build_model("oct_i3d_r50", **TINY), roundtrip(source, files / "other.pt"), match)


def test_an_optimizer_state_is_not_a_state_dict(files):
    net = build_model("oct_i3d_r50", **TINY)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 2, 32, 32)).sum().backward()
    optimizer.step()
    state = roundtrip(optimizer.state_dict(), files / "optimizer.pt")
    assert_clear_error(build_model("oct_i3d_r50", **TINY), state, r"is not a state dict: entries state, param_groups")


def test_the_configured_format_must_be_the_files(pytorchvideo_i3d):
    _, bare, hub = pytorchvideo_i3d
    model = build_model("oct_i3d_r50")
    for source in (bare, hub):
        assert_clear_error(model, source, r"is a pytorchvideo i3d checkpoint, not torchvision as configured",
                           format="torchvision")
    assert load_pretrained(model, hub, format="pytorchvideo").format == "pytorchvideo i3d"


def test_partial_checkpoints_name_what_is_missing(torchvision_r50, octvideo_tiny):
    partial = {k: v for k, v in torchvision_r50[1].items() if not k.startswith("layer4.2.")}
    assert_clear_error(build_model("oct_resnet50"), partial, r"does not match the model: missing \['layer4\.2\.")
    octave = {k: v for k, v in octvideo_tiny[0.5][1].items() if not k.startswith("layer2.1.conv2.")}
    assert_clear_error(build_model("oct_i3d_r50", alpha=0.5, num_classes=5, **TINY), octave,
                       r"does not match the model: missing \['layer2\.1\.conv2\.")
    headless = {k: v for k, v in torchvision_r50[1].items() if not k.startswith("fc.")}
    assert_clear_error(build_model("oct_resnet50"), headless, r"has no classifier \(fc\.weight\)")


def test_a_model_as_source_must_share_the_octave_pooling():
    source = build_model("oct_i3d_r18", alpha=0.5, num_classes=3, **TINY)
    same = build_model("oct_i3d_r18", alpha=0.5, num_classes=3, **TINY)
    assert load_pretrained(same, source) == PretrainedLoad("octvideo", "loaded")
    assert_same_tensors(source.state_dict(), same.state_dict())
    spatio_temporal = build_model("oct_i3d_r18", alpha=0.5, num_classes=3, octave_pool=(2, 2, 2), **TINY)
    assert_clear_error(spatio_temporal, source, r"trained with octave_pool \(1, 2, 2\) and the model has \(2, 2, 2\)")


def test_a_basic_block_model_says_why_a_plain_checkpoint_cannot_fill_it():
    plain = build_model("oct_i3d_r18", num_classes=3, **TINY).state_dict()
    octave = build_model("oct_i3d_r18", alpha=0.5, num_classes=3, **TINY)
    assert_clear_error(octave, plain, r"no shortcut convolution at layer1\.0\.downsample")


@pytest.mark.parametrize("option", [{"format": "torch"}, {"head": "bogus"}, {"inflate": "bogus"}])
def test_options_are_checked(option):
    model = build_model("oct_i3d_r18", alpha=0.5, num_classes=3, **TINY)
    with pytest.raises(ValueError, match=f"{next(iter(option))} must be one of"):
        load_pretrained(model, model.state_dict(), **option)
