"""The job's side of a pretrained start (``octvideo.train.pretrained``): checkpoint files and
registered models read on the driver, each unreadable source a one-line ConfigError, a registered
model's classifier re-initialised when its classes are not the data's, and the starting weights
written to and read back from the run's folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from octvideo.models import build_model
from octvideo.train.config import ClipConfig, ConfigError, parse_config
from octvideo.train.model_registry import register_trained_model
from octvideo.train.pretrained import read_start, start_file, start_from_source, write_start

OPTIONS = {"alpha": 0.5, "width": 8, "num_classes": 3}
CLASSES = ["archery", "bowling", "cooking"]


def experiment(folder: Path, source: str, **pretrained) -> object:
    return parse_config({
        "model": {"name": "oct_i3d_r18", **{k: v for k, v in OPTIONS.items() if k != "num_classes"},
                  "pretrained": {"source": source, **pretrained}},
        "data": {"train_manifest": "train.txt", "val_manifest": "val.txt"},
        "checkpoint": {"storage_path": str(folder / "runs"), "name": "run"},
    })


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, torch.nn.Module]:
    """A SQLite MLflow store holding ``models:/tiny`` (3 classes), and the registered network."""
    folder = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("pretrained", artifact_location=(folder / "a").as_uri())).info.run_id
    clip = ClipConfig(num_frames=4, sampling_rate=4, train_short_side=(32, 40), crop=32, eval_short_side=32, eval_crop=32)
    model = build_model("oct_i3d_r18", **OPTIONS)
    register_trained_model(model, tracking_uri=uri, registered_name="tiny", run_id=run_id, build_kwargs=OPTIONS,
                           label_map={name: i for i, name in enumerate(CLASSES)}, clip=clip, test_top1=0.5,
                           global_step=1)
    return uri, model


def fresh() -> torch.nn.Module:
    torch.manual_seed(7)
    return build_model("oct_i3d_r18", **OPTIONS)


@pytest.mark.parametrize("classes, head", [(CLASSES, "loaded"), (["a", "b", "c"], "re-initialised (3 -> 3 classes)")])
def test_a_registered_model_keeps_its_classifier_only_for_its_own_classes(store, tmp_path, classes, head) -> None:
    uri, registered = store
    model = fresh()
    untrained_fc = model.fc.weight.clone()
    loaded = start_from_source(model, experiment(tmp_path, "models:/tiny@champion"), classes, uri)
    assert loaded.format == "octvideo" and loaded.head == head
    expected_fc = registered.fc.weight if head == "loaded" else untrained_fc
    assert torch.equal(model.fc.weight, expected_fc)
    assert torch.equal(model.layer2[0].conv1.conv.weight_hh, registered.layer2[0].conv1.conv.weight_hh)


def test_a_checkpoint_file_starts_the_run_and_its_weights_go_to_the_run_folder(tmp_path) -> None:
    source = build_model("oct_i3d_r18", **OPTIONS)
    torch.save({"model_state": source.state_dict()}, tmp_path / "ckpt.pyth")
    config = experiment(tmp_path, str(tmp_path / "ckpt.pyth"))
    model = fresh()
    assert start_from_source(model, config, CLASSES, None).head == "loaded"
    assert write_start(model.state_dict(), config) == start_file(config) == f"{tmp_path}/runs/run/pretrained_start.pt"
    weights = read_start(config)
    assert all(torch.equal(weights[k], v) for k, v in source.state_dict().items())


def test_unreadable_sources_are_one_line_config_errors(store, tmp_path) -> None:
    uri, _ = store
    (tmp_path / "noise.pt").write_bytes(b"\x00\x01garbage" * 100)
    torch.save(build_model("oct_i3d_r18", **OPTIONS), tmp_path / "pickled_module.pt")  # torch.save(model), not its state
    (tmp_path / "folder.pt").mkdir()
    cases = {
        str(tmp_path / "missing.pt"): "checkpoint {tmp}/missing.pt does not exist",
        str(tmp_path / "folder.pt"): "{tmp}/folder.pt is a folder; name the checkpoint file",
        str(tmp_path / "noise.pt"): "{tmp}/noise.pt is not a readable PyTorch checkpoint (",
        str(tmp_path / "pickled_module.pt"): "{tmp}/pickled_module.pt holds pickled objects, not only tensors (",
        "models:/tiny@nope": "cannot load models:/tiny@nope from",
        "models:/other@champion": "Registered Model with name=other not found",
    }
    for source, expected in cases.items():
        with pytest.raises(ConfigError) as error:
            start_from_source(fresh(), experiment(tmp_path, source), CLASSES, uri)
        message = str(error.value)
        assert message.startswith("model.pretrained.source: ") and "\n" not in message, message
        assert expected.format(tmp=tmp_path) in message, message


def test_a_checkpoint_that_does_not_fit_is_a_config_error_naming_the_source(tmp_path) -> None:
    torch.save(build_model("oct_i3d_r18", alpha=0.25, width=8, num_classes=3).state_dict(), tmp_path / "a25.pt")
    with pytest.raises(ConfigError, match=r"^model\.pretrained\.source: \S+/a25\.pt is an octave model whose frequency split"):
        start_from_source(fresh(), experiment(tmp_path, str(tmp_path / "a25.pt")), CLASSES, None)
    torch.save(build_model("oct_i3d_r18", **{**OPTIONS, "num_classes": 5}).state_dict(), tmp_path / "five.pt")
    with pytest.raises(ConfigError, match=r"five\.pt has a 5-class head and the model 3 classes; with head: keep"):
        start_from_source(fresh(), experiment(tmp_path, str(tmp_path / "five.pt"), head="keep"), CLASSES, None)
