"""Fine-tuning controls in the training logic, two ranks under gloo, at every ZeRO stage: a run
starts from the converted pretrained weights, frozen parts keep their weights and batch-norm
statistics, the head trains at its learning-rate multiple, the export holds it all, and a
resumed run restarts from its checkpoint without reading the starting weights again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from octvideo.models import build_model, load_pretrained
from octvideo.train.checkpoint import load_weights
from octvideo.train.config import ConfigError, parse_config
from octvideo.train.finetune import check_parts, learning_rate_multiplier
from octvideo.train.harness import LocalRun, harness_config, parse_args, synthetic_datasets
from octvideo.train.network import build_network
from octvideo.train.pretrained import START_FILE, write_start
from octvideo.train.trainer import Trainer
from tests.conftest import free_port

FROZEN = ("stem", "layer1")
CLASSES = 3  # the source has 5: the head is re-initialised


def _harness_args(folder: Path, zero_stage: int) -> Any:
    return parse_args([
        "--device", "cpu", "--world-size", "2", "--model", "oct_i3d_r18", "--width", "8", "--classes", str(CLASSES),
        "--size", "32", "--frames", "4", "--batch", "2", "--steps", "2", "--log-every", "1", "--precision", "bf16",
        "--zero-stage", str(zero_stage), "--folder", str(folder), "--output", str(folder / "result.json"),
    ])


def _config(args: Any, folder: Path, epochs: int, source: Path):
    raw = harness_config(args, folder, epochs).model_dump(mode="json")
    raw["model"].update(pretrained={"source": str(source)}, freeze=list(FROZEN))
    raw["optim"]["lr_mult"] = {"fc": 10.0}
    raw["checkpoint"]["name"] = "run"
    return parse_config(raw)


def _worker(rank: int, folder: str, source: str, port: int, zero_stage: int) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        args, root = _harness_args(Path(folder), zero_stage), Path(folder)
        first = _config(args, root, 1, Path(source))
        if rank == 0:  # the driver's part (octvideo.train.job.prepare_job)
            torch.manual_seed(first.seed)
            model = build_network(first.model, CLASSES)
            load_pretrained(model, torch.load(source, weights_only=True))
            write_start(model.state_dict(), first)
        dist.barrier()
        run_folder = root / "run"
        trainer = Trainer(first, LocalRun(run_folder, rank), synthetic_datasets(args))
        groups = [(g["lr"], len(g["params"])) for g in trainer.engine.optimizer.param_groups]
        trainer.fit()
        dist.barrier()
        if rank == 0:
            (run_folder / START_FILE).rename(root / "start_moved_away.pt")  # a resume must not need it
        dist.barrier()
        resumed = Trainer(_config(args, root, 2, Path(source)), LocalRun(run_folder, rank), synthetic_datasets(args))
        resumed_at = resumed.state.global_step
        resumed.fit()
        if rank == 0:
            (root / "result.json").write_text(json.dumps({"groups": groups, "resumed_at": resumed_at}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "pretrained" model of the same network with 5 classes, saved as a run's export is."""
    torch.manual_seed(1)
    model = build_model("oct_i3d_r18", alpha=0.5, width=8, num_classes=5)
    for module in model.modules():  # statistics that training would not produce by chance
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("source") / "model_fp32.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
def test_fine_tuning_at_every_zero_stage(zero_stage: int, source: Path, tmp_path: Path) -> None:
    port = free_port()
    mp.spawn(_worker, args=(str(tmp_path), str(source), port, zero_stage), nprocs=2)
    result = json.loads((tmp_path / "result.json").read_text())
    start = load_weights(open(tmp_path / "start_moved_away.pt", "rb"))
    pretrained = torch.load(source, weights_only=True)
    exported = load_weights(open(tmp_path / "run" / "model_fp32.pt", "rb"))

    # The start is the source, but for the re-initialised 3-class head.
    assert start["fc.weight"].shape[0] == CLASSES
    assert all(torch.equal(start[k], v) for k, v in pretrained.items() if not k.startswith("fc."))
    # Frozen parts: weights and batch-norm statistics exactly as loaded, after two epochs.
    frozen = [k for k in start if k.split(".")[0] in FROZEN]
    assert frozen and all(torch.equal(exported[k], start[k]) for k in frozen), [k for k in frozen if not torch.equal(exported[k], start[k])]
    # The rest trained; the head at 10x the learning rate, in a group of its own.
    assert not torch.equal(exported["layer2.0.conv1.conv.weight_hh"], start["layer2.0.conv1.conv.weight_hh"])
    assert not torch.equal(exported["fc.weight"], start["fc.weight"])
    rates = sorted({lr for lr, _ in result["groups"]})
    assert len(rates) == 2 and rates[1] == pytest.approx(10 * rates[0])
    # The second Trainer resumed from the first's checkpoint (its starting weights were gone).
    assert result["resumed_at"] == 2


def test_parts_are_checked_against_the_model() -> None:
    model = build_model("oct_i3d_r18", alpha=0.5, width=8, num_classes=3)
    base = {"data": {"train_manifest": "a.csv", "val_manifest": "b.csv"}}
    check_parts(model, parse_config({**base, "model": {"freeze": ["stem", "layer1.0"]}, "optim": {"lr_mult": {"fc": 10}}}))
    with pytest.raises(ConfigError) as error:
        bad_parts = {"model": {"freeze": ["stem", "layer9"]}, "optim": {"lr_mult": {"stem.conv": 2, "head": 10}}}
        check_parts(model, parse_config({**base, **bad_parts}))
    message = str(error.value)
    assert "model.freeze: oct_i3d_r18 has no part 'layer9'" in message and "its parts: fc, layer1" in message
    assert "optim.lr_mult: 'stem.conv' is frozen (model.freeze: 'stem')" in message
    assert "optim.lr_mult: oct_i3d_r18 has no part 'head'" in message


def test_the_most_specific_part_sets_the_learning_rate() -> None:
    lr_mult = {"layer4": 2.0, "layer4.1": 5.0, "fc": 10.0}
    assert learning_rate_multiplier("layer4.0.conv1.conv.weight_hh", lr_mult) == 2.0
    assert learning_rate_multiplier("layer4.1.conv1.conv.weight_hh", lr_mult) == 5.0
    assert learning_rate_multiplier("layer40.weight", lr_mult) == 1.0
    assert learning_rate_multiplier("fc.bias", lr_mult) == 10.0
