"""The training job as users run it: ``ray job submit ... pipelines/kinetics.py`` against a Ray head
started by ``ray start --head`` (the local stack), data and checkpoints in its S3 server, tracking
and registry in its MLflow server. DeepSpeed ZeRO-2 (fp32) and ZeRO-3 (bf16) on 2 CPU workers; a worker killed
with SIGKILL mid-run; a re-submission that resumes; the registered model's aliases; prediction
with the registered model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import fsspec
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from octvideo.data import write_synthetic_kinetics
from octvideo.train.registry import CANDIDATE, CHAMPION, TOP1_TAG
from octvideo.train.tracking import RUN_NAME_TAG
from tests.stack import BIN, LocalStack

DATA = "s3://octvideo-demo/tiny"
STEPS_PER_EPOCH = 3  # 6 training videos, 2 workers, 1 clip per batch
EXPERIMENT = "job-tests"


def experiment(
    name: str, *, epochs: int, zero_stage: int, precision: str = "fp32", every_steps: int = 2, max_failures: int = 0
) -> dict:
    return {
        "model": {"name": "oct_i3d_r18", "alpha": 0.5, "width": 8, "dropout": 0.0},
        "data": {
            "train_manifest": f"{DATA}/train.csv", "val_manifest": f"{DATA}/val.csv", "test_manifest": f"{DATA}/test.csv",
            "clip": {"num_frames": 4, "sampling_rate": 2, "train_short_side": [32, 40], "crop": 32,
                     "eval_short_side": 32, "eval_crop": 32, "test_clips": 2, "test_crops": 1},
            "workers": 0,
        },
        "optim": {"lr": 0.01, "epochs": epochs, "warmup_epochs": 0, "batch_size_per_worker": 1},
        "deepspeed": {"zero_stage": zero_stage, "precision": precision},
        "scaling": {"num_workers": 2, "cpus_per_worker": 1},
        "checkpoint": {"storage_path": "s3://octvideo-demo/runs", "name": name, "every_steps": every_steps,
                       "keep_last": 2, "max_failures": max_failures},
        "tracking": {"experiment": EXPERIMENT, "registered_model_name": "tiny", "log_every_steps": 1},
    }


@pytest.fixture(scope="module")
def stack():
    stack = LocalStack()
    with pytest.MonkeyPatch.context() as environment:
        try:
            stack.up()
            for key, value in stack.env.items():  # this process's fsspec reaches the stack's S3 too
                if key.startswith("AWS_"):
                    environment.setenv(key, value)
            write_synthetic_kinetics(DATA, classes=3, videos_per_class=4, duration=1.5, width=64, height=48)
            yield stack
        finally:
            stack.remove()


def write_config(name: str, config: dict) -> str:
    url = f"s3://octvideo-demo/configs/{name}.yaml"
    with fsspec.open(url, "w") as f:
        yaml.safe_dump(config, f)
    return url


def submit(stack: LocalStack, config_url: str, *overrides: str) -> subprocess.CompletedProcess:
    args = [item for override in overrides for item in ("--set", override)]
    job = stack.submit("python", "pipelines/kinetics.py", "--config", config_url, *args)
    assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-3000:]
    return job


def tracked_run(stack: LocalStack, name: str):
    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}"
    return client, runs[0]


def step_history(client: MlflowClient, run_id: str) -> list[int]:
    return [int(m.value) for m in sorted(client.get_metric_history(run_id, "global_step"), key=lambda m: m.timestamp)]


def test_zero2_job_tracks_registers_and_predicts(stack: LocalStack) -> None:
    job = submit(stack, write_config("zero2", experiment("zero2", epochs=2, zero_stage=2)))
    assert "registered tiny version 1" in job.stdout

    client, run = tracked_run(stack, "zero2")
    assert run.data.params["deepspeed.zero_stage"] == "2" and run.data.params["model.alpha"] == "0.5"
    assert run.data.metrics["model.params"] > 0 and run.data.metrics["model.macs"] > 0
    assert sorted(set(step_history(client, run.info.run_id))) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for key in ("loss", "lr", "clips_per_s", "data_wait_share", "bad_videos", "epoch/val_clip_top1",
                "epoch/val_video_top1", "test_video_top1", "test_video_top5"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    artifacts |= {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"config.yaml", "label_map.json", "plots/training_curves.png", "plots/epoch_curves.png", "plots/test_confusion_matrix.png",
            "plots/test_per_class_accuracy.png"} <= artifacts

    version = client.get_model_version_by_alias("tiny", CANDIDATE)
    assert version.version == "1" and version.run_id == run.info.run_id
    assert client.get_model_version_by_alias("tiny", CHAMPION).version == "1"  # the first is champion
    assert float(version.tags[TOP1_TAG]) == pytest.approx(run.data.metrics["test_video_top1"])

    fs = fsspec.filesystem("s3")
    assert fs.exists("octvideo-demo/runs/zero2/model_fp32.pt")
    assert len(fs.glob("octvideo-demo/runs/zero2/checkpoint_2*")) == 2  # keep_last, in the shared storage

    video = sorted(fs.glob("octvideo-demo/tiny/test/*/*.mp4"))[0]
    predicted = subprocess.run(
        [str(BIN / "octvideo"), "predict", "--model", "models:/tiny@champion", f"s3://{video}"],
        env=stack.client_env, capture_output=True, text=True, timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert video.split("/")[-1] in predicted.stdout
    assert sum(name in predicted.stdout for name in ("moving_left", "moving_right", "moving_up")) == 3  # top-5 of 3


def test_resubmitting_resumes_the_run_and_moves_the_candidate(stack: LocalStack) -> None:
    """Same run name, one more epoch: training goes on from the last step, in the same MLflow run,
    and the new version becomes candidate; champion moves only if its test top-1 is higher."""
    client, before = tracked_run(stack, "zero2")
    champion_top1 = float(client.get_model_version_by_alias("tiny", CHAMPION).tags[TOP1_TAG])

    job = submit(stack, write_config("zero2", experiment("zero2", epochs=3, zero_stage=2)))
    assert "resumed from" in job.stdout

    client, after = tracked_run(stack, "zero2")
    assert after.info.run_id == before.info.run_id
    steps = step_history(client, after.info.run_id)
    assert steps[-STEPS_PER_EPOCH:] == [7, 8, 9] and sorted(set(steps)) == list(range(1, 10))
    candidate = client.get_model_version_by_alias("tiny", CANDIDATE)
    assert candidate.version == "2"
    expected_champion = "2" if float(candidate.tags[TOP1_TAG]) > champion_top1 else "1"
    assert client.get_model_version_by_alias("tiny", CHAMPION).version == expected_champion


def training_workers(job_started: float) -> list[psutil.Process]:
    """The Ray Train worker actors (not their DataLoader children) started after ``job_started``."""
    found = []
    for process in psutil.process_iter(["cmdline", "create_time"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::RayTrainWorker") and process.info["create_time"] >= job_started:
            parent = process.parent()
            if parent is None or not (parent.cmdline() or [""])[0].startswith("ray::RayTrainWorker"):
                found.append(process)
    return found


def test_zero3_bf16_worker_killed_mid_run_resumes_from_checkpoint(stack: LocalStack) -> None:
    """SIGKILL one worker once a checkpoint is registered: Ray Train replaces the worker group, which loads
    the checkpoint and goes on from its step; the run ends at the same step count as an
    undisturbed one, and every step is in MLflow."""
    config = write_config("zero3", experiment("zero3", epochs=2, zero_stage=3, precision="bf16", every_steps=1, max_failures=1))
    started = time.time()
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        fs = fsspec.filesystem("s3")
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            fs.invalidate_cache()
            # Ray Train writes its snapshot once it has registered a reported checkpoint (files
            # alone may belong to a report still under way).
            if fs.exists("octvideo-demo/runs/zero3/checkpoint_manager_snapshot.json"):
                workers = training_workers(started)
                if workers:
                    os.kill(workers[0].pid, signal.SIGKILL)
                    killed.append(workers[0].pid)
                    return
            time.sleep(0.5)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    job = submit(stack, config)
    killer.join(timeout=1)

    assert killed, "no worker was killed"
    assert "resumed from" in job.stdout
    client, run = tracked_run(stack, "zero3")
    steps = step_history(client, run.info.run_id)
    assert max(steps) == 2 * STEPS_PER_EPOCH and sorted(set(steps)) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    resumed_at = next(i for i in range(1, len(steps)) if steps[i] <= steps[i - 1])
    assert steps[resumed_at] > 1  # continued from a checkpoint, not from zero
    assert run.info.status == "FINISHED"
    assert fsspec.filesystem("s3").exists("octvideo-demo/runs/zero3/model_fp32.pt")  # gathered from bf16 ZeRO-3 shards
