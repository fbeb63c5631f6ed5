"""The training job as users run it: ``ray job submit ... pipelines/kinetics.py`` against a Ray head
started by ``ray start --head`` (the local stack), data and checkpoints in its S3 server, tracking
and registry in its MLflow server. DeepSpeed ZeRO-2 (fp32) on 2 CPU workers; a re-submission that
resumes; the registered model's aliases; prediction with the registered model; a ZeRO-3 (bf16)
fine-tune from the registered model to new classes, with a worker killed with SIGKILL mid-run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import fsspec
import pytest

from octvideo.data import write_synthetic_kinetics
from octvideo.train.model_registry import CANDIDATE, CHAMPION, TOP1_TAG
from octvideo.train.run_summary import DESCRIPTION_TAG
from tests.jobs import (
    DATA,
    STEPS_PER_EPOCH,
    checkpoint_registered,
    experiment,
    occurrences,
    stack_with_tiny_data,
    step_history,
    step_lines,
    submit,
    tracked_run,
    training_worker_pids,
    training_workers,
    wait_for,
    worker_starts,
    write_config,
)
from tests.stack import BIN, LocalStack


@pytest.fixture(scope="module")
def stack():
    with stack_with_tiny_data() as stack:
        yield stack


def test_zero2_job_tracks_registers_and_predicts(stack: LocalStack) -> None:
    config = experiment("zero2", epochs=2, zero_stage=2)
    config["tracking"]["system_metrics_every_s"] = 2  # MLflow logs a sample once its interval is over
    job = submit(stack, write_config("zero2", config))
    assert "registered tiny version 1" in job.stdout
    assert_log_is_readable(job.stdout, epochs=2)

    client, run = tracked_run(stack, "zero2")
    assert run.data.params["deepspeed.zero_stage"] == "2" and run.data.params["model.alpha"] == "0.5"
    assert run.data.metrics["model.params"] > 0 and run.data.metrics["model.macs"] > 0
    assert sorted(set(step_history(client, run.info.run_id))) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    for key in ("loss", "lr", "clips_per_s", "data_wait_share", "bad_videos", "epoch/val_clip_top1",
                "epoch/val_video_top1", "test_video_top1", "test_video_top5"):
        assert key in run.data.metrics, key
    # The run page: a description, the three manifests as dataset inputs, rank 0's system metrics.
    description = run.data.tags[DESCRIPTION_TAG]
    assert all(words in description for words in ("oct_i3d_r18", "alpha 0.5", f"{DATA}/train.csv", "2 workers")), description
    contexts = {{t.key: t.value for t in item.tags}["mlflow.data.context"] for item in run.inputs.dataset_inputs}
    assert contexts == {"training", "validation", "test"}
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(run.data.metrics)
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


def assert_log_is_readable(output: str, epochs: int) -> None:
    """One compact line per report (rank 0, every step here) and per epoch; no line repeated per
    report, epoch or storage client; nothing a user cannot act on."""
    assert step_lines(output) == list(range(1, epochs * STEPS_PER_EPOCH + 1)), output[-6000:]
    for epoch in range(1, epochs + 1):
        assert occurrences(output, f"epoch {epoch} done  val video top-1 ") == 1, output[-6000:]
    assert occurrences(output, "  test video top-1 ") == 2  # the last epoch's line and the driver's final line
    assert f"run zero2 done: step {epochs * STEPS_PER_EPOCH}  epoch {epochs}.00  loss " in output
    assert occurrences(output, "using label map") == 1  # the driver's
    for noise in ("TrainingReport(", "Reporting training result", "built successfully", "Setting accelerator to CPU",
                  "No CUDA runtime is found", "all_gather_into_tensor", "untested optimizer"):
        assert noise not in output, noise
    for library_line in ("Found credentials", "Found endpoint for s3"):  # at most once per worker process
        assert occurrences(output, library_line) <= len(training_worker_pids(output)), library_line


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
    assert steps == list(range(1, 10))
    candidate = client.get_model_version_by_alias("tiny", CANDIDATE)
    assert candidate.version == "2"
    expected_champion = "2" if float(candidate.tags[TOP1_TAG]) > champion_top1 else "1"
    assert client.get_model_version_by_alias("tiny", CHAMPION).version == expected_champion


def test_zero3_bf16_fine_tune_resumes_after_a_worker_is_killed(stack: LocalStack) -> None:
    """Start from the registered ``tiny@champion`` (3 classes) on 2 other classes, stem frozen, head
    at 10x, under ZeRO-3 in bf16; one worker SIGKILLed once a checkpoint is registered: Ray Train
    replaces the worker group, which loads the checkpoint, goes on from its step and never reads
    the starting weights again. Every step is in MLflow once, the fp32 weights are gathered from
    the bf16 ZeRO-3 shards, and MLflow and the registry say what the run started from. (One job
    for both stories: each job costs 70 to 100 s of start-up on a 2-core CPU.)"""
    counts = write_synthetic_kinetics("s3://octvideo-demo/tiny2", classes=["rotating_clockwise", "rotating_counterclockwise"],
                             videos_per_class=4, duration=1.5, width=64, height=48)
    config = experiment("finetune", epochs=2, zero_stage=3, precision="bf16", every_steps=1, max_failures=1)
    config["model"].update(pretrained="models:/tiny@champion", freeze=["stem"])
    config["data"].update(train_manifest="s3://octvideo-demo/tiny2/train.csv", val_manifest="s3://octvideo-demo/tiny2/val.csv",
                          test_manifest="s3://octvideo-demo/tiny2/test.csv")
    config["optim"]["lr_mult"] = {"fc": 10.0}
    config["tracking"]["registered_model_name"] = "tiny-finetuned"
    started, killed = time.time(), []

    def kill_after_first_checkpoint() -> None:
        if wait_for(lambda: checkpoint_registered("finetune") and training_workers(started), timeout=400):
            worker = training_workers(started)[0]
            os.kill(worker.pid, signal.SIGKILL)
            killed.append(worker.pid)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    job = submit(stack, write_config("finetune", config))
    killer.join(timeout=1)

    assert killed, "no worker was killed"
    assert "starting from models:/tiny@champion (octvideo); head re-initialised (3 -> 2 classes)" in job.stdout
    # Both ranks of the first worker group read the starting weights; the group that replaced it resumed.
    assert job.stdout.count("starting from the pretrained weights in") == 2, job.stdout[-4000:]
    assert "resumed from" in job.stdout and any(step > 0 for _, _, step in worker_starts(job.stdout))
    client, run = tracked_run(stack, "finetune")
    assert run.info.status == "FINISHED"
    steps_per_epoch = counts["train"] // 2  # 2 workers, 1 clip per batch
    assert step_history(client, run.info.run_id) == list(range(1, 2 * steps_per_epoch + 1))
    assert fsspec.filesystem("s3").exists("octvideo-demo/runs/finetune/model_fp32.pt")
    assert run.data.tags["octvideo.pretrained.source"] == "models:/tiny@champion"
    assert run.data.tags["octvideo.pretrained.head"] == "re-initialised (3 -> 2 classes)"
    assert run.data.params["optim.lr_mult.fc"] == "10.0" and run.data.params["model.freeze"] == '["stem"]'
    version = client.get_model_version_by_alias("tiny-finetuned", CHAMPION)
    assert version.description.startswith("Started from models:/tiny@champion (octvideo); head re-initialised")
