"""``octvideo predict`` end to end: a tiny random model registered in a SQLite store, real videos."""

from __future__ import annotations

import re

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch._dynamo.utils import counters

from octvideo.cli import main
from octvideo.models import build_model
from octvideo.predict import load_registered_model, predict_video
from octvideo.train.config import ClipConfig
from octvideo.train.model_registry import register_trained_model
from tests.data.videos import HTML_ERROR_PAGE, write_bytes, write_video

TOP_K_LINE = re.compile(r"  (\d\.\d{4})  (\w+)")  # the CLI's line for one class: probability, label
LABELS = {"archery": 0, "bowling": 1, "cooking": 2, "dancing": 3, "eating": 4, "fencing": 5}


@pytest.fixture
def registered(tmp_path, monkeypatch) -> str:
    """The tracking URI of a store holding ``models:/tiny@champion``."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("predict")).info.run_id
    clip = ClipConfig(
        num_frames=4, sampling_rate=4, train_short_side=(32, 40), crop=32, eval_short_side=32, eval_crop=32,
        test_clips=2, test_crops=3,
    )
    model = build_model("oct_i3d_r18", alpha=0.5, width=8, num_classes=len(LABELS))
    register_trained_model(
        model, tracking_uri=uri, registered_name="tiny", run_id=run_id,
        build_kwargs={"alpha": 0.5, "width": 8, "num_classes": len(LABELS)}, label_map=LABELS, clip=clip,
        test_top1=0.2, global_step=1,
    )
    return uri


def test_predict_cli_prints_top5_and_reports_broken_videos(tmp_path, registered, capsys):
    good = [write_video(tmp_path / f"v{i}.mp4", num_frames=45 + 30 * i) for i in range(2)]
    broken = write_bytes(tmp_path / "broken.mp4", HTML_ERROR_PAGE)
    missing = tmp_path / "missing.mp4"
    argv = ["predict", "--model", "models:/tiny@champion", "--tracking-uri", registered]
    status = main([*argv, str(good[0]), str(broken), str(missing), str(good[1])])
    out, err = capsys.readouterr()
    assert status == 1
    blocks = out.strip().split("\n")
    assert blocks[0] == str(good[0]) and blocks[6] == str(good[1]) and len(blocks) == 12
    for lines in (blocks[1:6], blocks[7:12]):
        rows = [TOP_K_LINE.fullmatch(line) for line in lines]
        assert all(rows), lines
        probs = [float(row[1]) for row in rows]
        assert probs == sorted(probs, reverse=True) and all(row[2] in LABELS for row in rows)
    errors = err.strip().split("\n")
    assert len(errors) == 2 and "Traceback" not in err
    assert errors[0].startswith(f"octvideo predict: error: {broken}: not a video")
    assert errors[1].startswith(f"octvideo predict: error: {missing}: not found")

    assert main([*argv, str(good[0]), "--clips", "1", "--crops", "1", "--top-k", "2"]) == 0
    assert len(capsys.readouterr().out.strip().split("\n")) == 3


def test_views_average_to_a_distribution(tmp_path, registered):
    loaded = load_registered_model("models:/tiny@champion", registered)
    assert loaded.class_names == list(LABELS) and loaded.clip.test_clips == 2
    video = write_video(tmp_path / "v.mp4", num_frames=60)
    top = predict_video(loaded, str(video), top_k=len(LABELS))
    assert sorted(name for name, _ in top) == sorted(LABELS)
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-5)


def printed_top_k(out: str) -> dict[str, float]:
    """Label -> probability from the CLI's lines for one video."""
    return {row[2]: float(row[1]) for row in TOP_K_LINE.finditer(out)}


def test_compiled_model_predicts_what_the_eager_one_does(tmp_path, registered, capsys):
    """``--compile`` compiles once (the costly part: tens of seconds) and prints what the eager
    model does, to the 4 digits printed."""
    video = write_video(tmp_path / "v.mp4", num_frames=60)
    argv = ["predict", "--model", "models:/tiny@champion", "--tracking-uri", registered, "--top-k", str(len(LABELS))]
    assert main([*argv, str(video)]) == 0
    eager = printed_top_k(capsys.readouterr().out)
    counters.clear()
    assert main([*argv, "--compile", str(video)]) == 0
    out = capsys.readouterr().out
    if torch.backends.mkldnn.is_available():  # frozen: the weights were prepared for oneDNN once
        assert counters["inductor"]["mkldnn_conv_weight_pack_matcher_count"] > 0, dict(counters["inductor"])
    assert out.startswith(f"{video}\n")
    compiled = printed_top_k(out)
    assert compiled.keys() == eager.keys() == set(LABELS)
    assert all(compiled[name] == pytest.approx(p, abs=1.5e-4) for name, p in eager.items())


def test_unknown_model_is_one_line_and_status_2(registered, capsys):
    assert main(["predict", "--model", "models:/tiny@nope", "--tracking-uri", registered, "x.mp4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("octvideo predict: error: cannot load models:/tiny@nope") and err.count("\n") == 1
