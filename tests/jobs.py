"""Training jobs on the local stack, as users submit them: a tiny experiment config, a stack with a
tiny synthetic Kinetics in its S3, ``ray job submit`` of the pipeline, and the MLflow run read back."""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient

from octvideo.data import write_synthetic_kinetics
from octvideo.train.tracking import RUN_NAME_TAG
from tests.stack import LocalStack

DATA = "s3://octvideo-demo/tiny"
STEPS_PER_EPOCH = 3  # 6 training videos, 2 workers, 1 clip per batch
EXPERIMENT = "job-tests"
_WORKER_START = re.compile(r"worker (\d+) of \d+ on node ([0-9a-f]+) \((\w+)\) starts at step (\d+)")
_STEP_LINE = re.compile(
    r"\(RayTrainWorker pid=\d+\)\S* step (\d+)  epoch \d+\.\d\d  loss \d+\.\d{3}  lr \S+  clips/s \d+\.\d  data-wait \d+%"
)
_RAY_REPEATS = re.compile(r"\[repeated (\d+)x across cluster\]")
_WORKER_PID = re.compile(r"\(RayTrainWorker pid=(\d+)\)")


def experiment(
    name: str, *, epochs: int, zero_stage: int, precision: str = "fp32", every_steps: int | None = 2, max_failures: int = 0
) -> dict:
    """A config small enough for CPU workers: Oct-I3D-R18 of width 8 on 4 frames of 32 px."""
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


@contextlib.contextmanager
def stack_with_tiny_data(credentials: dict[str, str] | None = None, multi_node: bool = False) -> Iterator[LocalStack]:
    """A local stack (started with ``credentials`` in its environment, if given; ``multi_node``:
    one that more Ray nodes can join) with 3 classes x 4 synthetic videos under :data:`DATA`;
    this process's fsspec reaches its S3 while it is up."""
    stack = LocalStack(credentials=credentials or {}, multi_node=multi_node)
    s3 = fsspec.get_filesystem_class("s3")
    with pytest.MonkeyPatch.context() as environment:
        try:
            stack.up()
            for key, value in stack.env.items():
                if key.startswith("AWS_"):
                    environment.setenv(key, value)
            s3.clear_instance_cache()  # an S3 filesystem made for another endpoint would be reused
            write_synthetic_kinetics(DATA, classes=3, videos_per_class=4, duration=1.5, width=64, height=48)
            yield stack
        finally:
            stack.remove()
            s3.clear_instance_cache()


def write_config(name: str, config: dict) -> str:
    url = f"s3://octvideo-demo/configs/{name}.yaml"
    with fsspec.open(url, "w") as f:
        yaml.safe_dump(config, f)
    return url


def submit(
    stack: LocalStack, config_url: str, *overrides: str, runtime_env: Path | None = None, succeed: bool = True
) -> subprocess.CompletedProcess:
    """Submit the pipeline with ``config_url`` and ``--set`` overrides (in the stack's runtime env,
    or ``runtime_env``); unless ``succeed`` is false, assert that the job succeeded."""
    args = [item for override in overrides for item in ("--set", override)]
    job = stack.submit("python", "pipelines/kinetics.py", "--config", config_url, *args, runtime_env=runtime_env)
    if succeed:
        assert job.returncode == 0, job.stdout[-6000:] + job.stderr[-3000:]
    return job


def submit_during(
    stack: LocalStack, name: str, config: dict, fault: Callable[[], None], *,
    runtime_env: Path | None = None, succeed: bool = True,
) -> subprocess.CompletedProcess:
    """Submit ``config`` as run ``name`` (as :func:`submit` does) while ``fault`` runs in a thread:
    it waits for its moment, injects the fault, and returns."""
    injector = threading.Thread(target=fault, daemon=True)
    injector.start()
    job = submit(stack, write_config(name, config), runtime_env=runtime_env, succeed=succeed)
    injector.join(timeout=120)
    return job


def tracked_run(stack: LocalStack, name: str):
    """The MLflow client and the one run named ``name``."""
    client = MlflowClient(stack.env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_NAME_TAG}` = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name}"
    return client, runs[0]


def step_history(client: MlflowClient, run_id: str) -> list[int]:
    """The run's ``global_step`` values in the order they were logged."""
    return [int(m.value) for m in sorted(client.get_metric_history(run_id, "global_step"), key=lambda m: m.timestamp)]


def worker_starts(job_output: str) -> list[tuple[int, str, int]]:
    """(rank, Ray node id, first step) of every training worker the job started, in order."""
    return [(int(rank), node, int(step)) for rank, node, _, step in _WORKER_START.findall(job_output)]


def step_lines(job_output: str) -> list[int]:
    """The steps of the workers' compact progress lines (one per report, rank 0) in the job's log, in order."""
    return [int(step) for step in _STEP_LINE.findall(job_output)]


def occurrences(job_output: str, text: str) -> int:
    """Lines of the job's log holding ``text``, counting those Ray's log deduplication folded into
    one "[repeated Nx across cluster]" line."""
    lines = [line for line in job_output.splitlines() if text in line]
    return sum(int(m.group(1)) if (m := _RAY_REPEATS.search(line)) else 1 for line in lines)


def training_worker_pids(job_output: str) -> set[int]:
    """The processes of Ray Train workers that wrote to the job's log."""
    return {int(pid) for pid in _WORKER_PID.findall(job_output)}


def checkpoint_registered(run_name: str) -> bool:
    """Whether Ray Train has registered a reported checkpoint of the run: it writes its snapshot then
    (files alone may belong to a report still under way)."""
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return fs.exists(f"octvideo-demo/runs/{run_name}/checkpoint_manager_snapshot.json")


def wait_for(condition, timeout: float, poll: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


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
