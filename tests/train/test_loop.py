"""Training through ``octvideo.train.job`` on a local Ray: 2 workers, DeepSpeed ZeRO on CPU, a tiny
synthetic Kinetics. Checks reports, checkpoints in the storage path, consolidated fp32 weights
and resuming a run by its name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from octvideo.data import write_synthetic_kinetics
from octvideo.train.config import ExperimentConfig, parse_config
from octvideo.train.deepspeed_config import deepspeed_config
from octvideo.train.network import build_network
from octvideo.train.tracking import NullTracker

ray = pytest.importorskip("ray")

STEPS_PER_EPOCH = 3  # 6 training videos, 2 workers, 1 clip per batch


class FileTracker(NullTracker):
    """Appends every logged report to a JSON-lines file (picklable, for Ray workers)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")


class FailingTracker(FileTracker):
    """A FileTracker that raises once, on rank 0, when asked to log ``fail_at`` (a worker failure)."""

    def __init__(self, path: str, fail_at: int) -> None:
        super().__init__(path)
        self.fail_at, self.marker = fail_at, path + ".failed"

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if step == self.fail_at and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise RuntimeError("injected worker failure")
        super().log_metrics(metrics, step)


def read_tracked(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kinetics")
    counts = write_synthetic_kinetics(str(root / "data"), classes=3, videos_per_class=4, duration=1.5, width=64, height=48)
    assert counts["train"] == 2 * STEPS_PER_EPOCH
    return root / "data"


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    # Workers may not import this test module: ship FileTracker by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def experiment(dataset: Path, storage: Path, name: str, *, epochs: int, zero_stage: int = 2) -> ExperimentConfig:
    return parse_config(
        {
            "model": {"name": "oct_i3d_r18", "alpha": 0.5, "width": 8, "dropout": 0.0},
            "data": {
                "train_manifest": str(dataset / "train.csv"),
                "val_manifest": str(dataset / "val.csv"),
                "test_manifest": str(dataset / "test.csv"),
                "clip": {
                    "num_frames": 4, "sampling_rate": 2, "train_short_side": [32, 40], "crop": 32,
                    "eval_short_side": 32, "eval_crop": 32, "test_clips": 2, "test_crops": 1,
                },
                "workers": 0,
            },
            "optim": {"lr": 0.01, "epochs": epochs, "warmup_epochs": 0, "batch_size_per_worker": 1, "clip_grad_norm": 5.0},
            "deepspeed": {"zero_stage": zero_stage, "precision": "fp32"},
            "scaling": {"num_workers": 2, "cpus_per_worker": 1},
            "checkpoint": {"storage_path": str(storage), "name": name, "every_steps": 2, "keep_last": 2, "max_failures": 0},
            "tracking": {"log_every_steps": 1},
        }
    )


def test_deepspeed_config_follows_the_experiment(dataset: Path, tmp_path: Path) -> None:
    config = experiment(dataset, tmp_path, "unused", epochs=2, zero_stage=3)
    options = deepspeed_config(config)
    assert options["zero_optimization"] == {"stage": 3, "overlap_comm": True, "contiguous_gradients": True}
    assert options["gradient_clipping"] == 5.0
    assert options["train_micro_batch_size_per_gpu"] == 1 and options["gradient_accumulation_steps"] == 1
    assert options["zero_allow_untested_optimizer"] is True  # SGD under ZeRO
    assert "torch_autocast" not in options and "bf16" not in options

    def with_deepspeed(**update):
        return config.model_copy(update={"deepspeed": config.deepspeed.model_copy(update=update)})

    # bf16 is autocast over fp32 weights (DeepSpeed's bf16 mode would cast batch norm too);
    # gradients are reduced in fp32 unless communication_dtype says otherwise.
    autocast = deepspeed_config(with_deepspeed(precision="bf16"))["torch_autocast"]
    assert autocast == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert "bf16" not in deepspeed_config(with_deepspeed(precision="bf16"))
    low = deepspeed_config(with_deepspeed(precision="bf16", communication_dtype="bf16"))["torch_autocast"]
    assert "octvideo.nn.octconv.OctConv3d" in low["lower_precision_safe_modules"]
    zero0 = deepspeed_config(with_deepspeed(zero_stage=0, reduce_bucket_size=10**7))
    assert zero0["zero_optimization"] == {"stage": 0}


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_training_reports_checkpoints_and_exports_fp32_weights(
    dataset: Path, tmp_path: Path, local_ray: None, zero_stage: int
) -> None:
    from octvideo.train.job import prepare_job, run_job

    tracked = tmp_path / "tracked.jsonl"
    config = experiment(dataset, tmp_path / "runs", f"zero{zero_stage}", epochs=2, zero_stage=zero_stage)
    outcome = run_job(prepare_job(config, tracker=FileTracker(str(tracked))))

    metrics = outcome.result.metrics
    assert metrics["global_step"] == 2 * STEPS_PER_EPOCH and metrics["epoch"] == 2
    for key in ("loss", "lr", "clips_per_s", "data_wait_share", "bad_videos", "val_clip_top1",
                "val_video_top5", "test_clip_top1", "test_video_top1", "test_video_top5"):
        assert key in metrics, key
    assert 0 <= metrics["data_wait_share"] <= 1 and metrics["clips_per_s"] > 0 and metrics["bad_videos"] == 0
    assert metrics["test_video_top5"] == 1.0  # 3 classes

    steps = [row["global_step"] for row in read_tracked(tracked)]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step (an epoch's last step: with its end)

    run = tmp_path / "runs" / f"zero{zero_stage}"
    checkpoints = sorted(p for p in run.glob("checkpoint_*") if p.is_dir())
    assert len(checkpoints) == 2  # keep_last
    shards = sorted(p.name for p in (checkpoints[-1] / "deepspeed").glob("*optim_states.pt"))
    assert shards == [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)]

    assert outcome.weights_path == str(run / "model_fp32.pt")
    state = torch.load(outcome.weights_path, map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state.values() if t.is_floating_point())
    model = build_network(config.model, num_classes=3)
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 4, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_rerun_with_the_same_name_resumes(dataset: Path, tmp_path: Path, local_ray: None) -> None:
    from octvideo.train.job import prepare_job, run_job

    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    run_job(prepare_job(experiment(dataset, tmp_path, "resumed", epochs=1), tracker=FileTracker(str(first))))
    outcome = run_job(prepare_job(experiment(dataset, tmp_path, "resumed", epochs=2), tracker=FileTracker(str(second))))

    assert [row["global_step"] for row in read_tracked(first)][-1] == STEPS_PER_EPOCH
    resumed = read_tracked(second)
    assert [row["global_step"] for row in resumed] == [4, 5, 6]  # continues, not from zero
    assert resumed[0]["epoch"] == pytest.approx(1 + 1 / STEPS_PER_EPOCH)
    assert outcome.result.metrics["global_step"] == 2 * STEPS_PER_EPOCH
    assert os.path.exists(outcome.weights_path)


def test_failed_worker_resumes_mid_epoch(dataset: Path, tmp_path: Path, local_ray: None) -> None:
    """A failure after the step-2 checkpoint (2 of the epoch's 3 batches done): the replaced
    workers load it, skip the 2 batches done and go on from step 3."""
    from octvideo.train.job import prepare_job, run_job

    tracked = tmp_path / "tracked.jsonl"
    config = experiment(dataset, tmp_path, "failing", epochs=1)
    config = config.model_copy(update={"checkpoint": config.checkpoint.model_copy(update={"max_failures": 1})})
    outcome = run_job(prepare_job(config, tracker=FailingTracker(str(tracked), fail_at=3)))

    assert os.path.exists(f"{tracked}.failed")
    assert [row["global_step"] for row in read_tracked(tracked)] == [1, 2, 3]
    assert outcome.result.metrics["global_step"] == STEPS_PER_EPOCH
    assert outcome.result.metrics["epoch"] == 1


def run_pipeline(config_text: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``pipelines/kinetics.py`` on ``config_text``, with a Ray address that nothing answers: any
    attempt at cluster work would hang or fail differently."""
    config = tmp_path / "experiment.yaml"
    config.write_text(config_text)
    script = Path(__file__).resolve().parents[2] / "pipelines" / "kinetics.py"
    return subprocess.run(
        [sys.executable, str(script), "--config", str(config), *args], capture_output=True, text=True,
        timeout=120, cwd=tmp_path, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"},
    )


def test_pipeline_rejects_a_bad_config_before_cluster_work(tmp_path: Path) -> None:
    completed = run_pipeline("data: {train_manifest: a.csv, val_manifest: b.csv}\n", tmp_path,
                             "--set", "optim.lrr=1", "--set", "model.alpha=2")
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "optim.lrr: unknown key" in lines[0] and "model.alpha" in lines[0]


def test_pipeline_rejects_a_missing_pretrained_source_before_cluster_work(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("")
    (tmp_path / "b.csv").write_text("")
    completed = run_pipeline("data: {train_manifest: a.csv, val_manifest: b.csv}\nmodel: {pretrained: /nowhere.pt}\n", tmp_path)
    assert completed.returncode == 2
    assert "model.pretrained.source: checkpoint /nowhere.pt does not exist" in completed.stderr


def test_pipeline_rejects_a_missing_manifest_before_cluster_work(tmp_path: Path) -> None:
    completed = run_pipeline(f"data: {{train_manifest: {tmp_path}/missing.csv, val_manifest: b.csv}}\n", tmp_path)
    assert completed.returncode == 2
    assert "data.train_manifest" in completed.stderr and "missing.csv does not exist" in completed.stderr


def test_pipeline_refuses_to_start_without_its_tracking_server(dataset: Path, tmp_path: Path) -> None:
    text = yaml.safe_dump({"data": {"train_manifest": str(dataset / "train.csv"), "val_manifest": str(dataset / "val.csv")},
                           "tracking": {"tracking_uri": "http://127.0.0.1:1"}})
    completed = run_pipeline(text, tmp_path)
    assert completed.returncode == 2
    assert "MLflow tracking at http://127.0.0.1:1 is unavailable" in completed.stderr
