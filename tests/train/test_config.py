"""Experiment files: validated before any cluster work, every problem named by its key."""

import pytest

from octvideo.train.config import ConfigError, config_to_dict, flatten, load_config

MINIMAL = """
model: {name: oct_i3d_r18, alpha: 0.5, width: 16}
data: {train_manifest: memory://k/train.csv, val_manifest: memory://k/val.csv}
"""


def write(tmp_path, text, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_and_overrides(tmp_path):
    config = load_config(write(tmp_path, MINIMAL), ["optim.lr=0.05", "model.alpha=0.25", "deepspeed.zero_stage=2"])
    assert config.model.alpha == 0.25 and config.optim.lr == 0.05 and config.deepspeed.zero_stage == 2
    assert config.data.clip.num_frames == 8 and config.data.clip.sampling_rate == 8
    flat = flatten(config_to_dict(config))
    assert flat["optim.lr"] == 0.05 and flat["model.name"] == "oct_i3d_r18"


@pytest.mark.parametrize(
    "text,overrides,message",
    [
        (MINIMAL + "optim: {lr: 0.1, lrr: 0.2}\n", [], r"optim\.lrr: unknown key"),
        (MINIMAL, ["optim.lr=fast"], r"optim\.lr: Input should be a valid number"),
        (MINIMAL, ["model.alpha=1.0"], r"model\.alpha: Input should be less than 1"),
        (MINIMAL, ["model.name=oct_i3d_r5"], r"model\.name: .*unknown model 'oct_i3d_r5'"),
        (MINIMAL, ["deepspeed.zero_stage=4"], r"deepspeed\.zero_stage"),
        (MINIMAL, ["deepspeed.offload_params=true"], "offload_params needs zero_stage 3"),
        (MINIMAL, ["deepspeed.precision=fp16"], "fp16 needs GPUs"),
        (MINIMAL, ["scaling.use_gpu=true", "scaling.gpus_per_worker=0.5"], r"scaling: gpus_per_worker must be 1 with use_gpu \(got 0\.5\)"),
        (MINIMAL, ["scaling.use_gpu=true", "scaling.gpus_per_worker=2"], r"scaling: gpus_per_worker must be 1 with use_gpu \(got 2\)"),
        (MINIMAL, ["deepspeed.precision=fp32", "deepspeed.communication_dtype=bf16"], r"communication_dtype bf16 needs precision bf16"),
        (MINIMAL, ["model.memory_format=nhwc"], r"model\.memory_format: Input should be 'contiguous' or 'channels_last'"),
        (MINIMAL, ["data.clip.flip_prob=2"], r"data\.clip\.flip_prob: Input should be less than or equal to 1"),
        (MINIMAL, ["data.clip.crop=400"], "crop 400 is larger"),
        ("model: {name: oct_i3d_r18}\n", [], r"data: Field required"),
        (MINIMAL, ["optim.lr"], "not of the form key.sub=value"),
        (MINIMAL, ["model.alpha.x=1"], r"model\.alpha is not a section"),
    ],
)
def test_bad_configs_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), overrides)


def test_several_problems_are_reported_together(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, MINIMAL), ["optim.lr=-1", "scaling.num_workers=0"])
    assert "optim.lr" in str(error.value) and "scaling.num_workers" in str(error.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
    assert {p.name for p in configs} >= {
        "demo.yaml", "i3d_r50_k400.yaml", "oct_i3d_r50_k400.yaml", "slowfast_r50_k400.yaml", "oct_slowfast_r50_k400.yaml"
    }
    for path in configs:
        load_config(str(path))
