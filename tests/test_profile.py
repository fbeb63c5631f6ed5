"""The profiler reproduces the paper's cost tables through torch.utils.flop_counter."""

import pytest

from octvideo.cli import main
from octvideo.models import build_model
from octvideo.profile import format_profile, profile_by_name, profile_model


@pytest.mark.parametrize("alpha,paper_gmacs", [(0.0, 4.1), (0.125, 3.6), (0.25, 3.1), (0.5, 2.4), (0.75, 1.9)])
def test_oct_resnet50_reproduces_table_2(alpha, paper_gmacs):
    model = build_model("oct_resnet50", alpha=alpha)
    profile = profile_model(model, model.example_input(size=224))
    assert round(profile.total_macs / 1e9, 1) == paper_gmacs


def test_oct_i3d_r50_kinetics_ratio():
    # Chen et al. 2019, Kinetics table: Oct-I3D alpha = 0.1 costs 25.6 GFLOPs against I3D's 28.1.
    profile, baseline = profile_by_name("oct_i3d_r50", 0.1, frames=8, size=224)
    assert profile.total_macs / baseline.total_macs == pytest.approx(25.6 / 28.1, abs=0.015)
    assert profile.total_params == baseline.total_params == 28_043_472


def test_per_layer_and_stage_figures_add_up():
    profile, baseline = profile_by_name("oct_i3d_r18", 0.5, frames=4, size=64, width=16, num_classes=10)
    assert sum(profile.stage_macs.values()) == profile.total_macs
    assert sum(layer.macs for layer in profile.layers) == profile.total_macs
    assert sum(profile.stage_params.values()) == profile.total_params
    # res3 and res4 run at alpha = 0.5: their activations shrink to (1 - 0.75 * 0.5) of the plain ones.
    # (res2 of this basic-block net gains a shortcut convolution where it enters the octave split.)
    for stage in ["layer2", "layer3"]:
        ratio = profile.stage_activations(stage) / baseline.stage_activations(stage)
        assert ratio == pytest.approx(0.625, abs=0.01)
    table = format_profile(profile, baseline, per_layer=True)
    assert "layer1.0.conv1.conv" in table and "MAC ratio" in table


def test_profile_command_prints_a_table(capsys):
    assert main(["profile", "--model", "oct_slowfast_r14", "--alpha", "0.5", "--frames", "4", "--size", "64", "--width", "16"]) == 0
    out = capsys.readouterr().out
    assert "slow_layers" in out and "total" in out and "multiply-accumulates" in out


def test_profile_command_rejects_bad_arguments(capsys):
    assert main(["profile", "--model", "oct_i3d", "--alpha", "0.5"]) == 2
    assert "unknown model name" in capsys.readouterr().err
    assert main(["profile", "--model", "oct_i3d_r18", "--alpha", "1.2"]) == 2
    assert "alpha must be in [0, 1)" in capsys.readouterr().err
