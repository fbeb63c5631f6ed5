"""Scenario 1: training workers SIGKILLed at random steps, three times in a 12-step run; and scenario 7:
no credential of the job's environment in MLflow, the job logs or the saved config."""

from __future__ import annotations

import os
import random
import signal
import time

import fsspec
from mlflow.tracking import MlflowClient

from tests.faults.conftest import FaultStack, logged_step, submit_during
from tests.jobs import (
    EXPERIMENT,
    STEPS_PER_EPOCH,
    experiment,
    step_history,
    tracked_run,
    training_workers,
    wait_for,
    worker_starts,
)

EPOCHS = 4
EVERY_STEPS = 2


def kill_steps(rng: random.Random, total: int) -> list[int]:
    """3 random steps in 2..total-2, at least 2 apart: each kill lands after the previous restart
    has made new progress, and before the run ends."""
    while True:
        steps = sorted(rng.sample(range(2, total - 1), 3))
        if all(b - a >= 2 for a, b in zip(steps, steps[1:])):
            return steps


def test_workers_killed_at_random_steps_resume_and_log_every_step_once(faults: FaultStack) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    targets = kill_steps(rng, EPOCHS * STEPS_PER_EPOCH)
    config = experiment("kills", epochs=EPOCHS, zero_stage=2, every_steps=EVERY_STEPS, max_failures=3)
    kills: list[int] = []  # the step MLflow had reached at each kill

    def kill_at_targets() -> None:
        since, last = time.time(), 0
        for target in targets:
            # MLflow's step moves again only once the new workers are past the previous kill.
            step = max(target, last + 1)

            def restarted(step: int = step, since: float = since) -> bool:
                return logged_step(faults, "kills") >= step and bool(training_workers(since))

            if not wait_for(restarted, timeout=300):
                return
            last = logged_step(faults, "kills")
            kills.append(last)
            victim = rng.choice(training_workers(since))
            since = time.time()
            os.kill(victim.pid, signal.SIGKILL)

    job = submit_during(faults, "kills", config, kill_at_targets)
    context = f"seed {seed}, kill targets {targets}, killed at steps {kills}"

    assert len(kills) == 3, context
    client, run = tracked_run(faults.stack, "kills")
    assert run.info.status == "FINISHED", context
    # The same optimizer steps as an undisturbed run, each in MLflow once.
    assert step_history(client, run.info.run_id) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), context
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), context
    # Each restart resumed from the last checkpoint before its kill: never more than EVERY_STEPS lost.
    resumed = [step for rank, _, step in worker_starts(job.stdout) if rank == 0][1:]
    assert len(resumed) == 3, context
    for killed_at, resumed_at in zip(kills, resumed):
        assert 0 <= killed_at - resumed_at <= EVERY_STEPS, context
    print(f"worker kills: {context}, resumed at {resumed}")


def test_no_credential_in_mlflow_job_logs_or_saved_config(faults: FaultStack) -> None:
    """Runs after the fault jobs of this package: scans every run of the experiment, its params,
    tags, metric names and artifacts; the logs of every job on the stack; the stack's Ray and
    MLflow logs; and what the runs wrote to S3 besides checkpoints."""
    secrets = list(faults.credentials.values())
    client = MlflowClient(faults.stack.env["MLFLOW_TRACKING_URI"])
    found: list[str] = []

    def scan(text: str, where: str) -> None:
        found.extend(f"{where} holds {secret[:12]}..." for secret in secrets if secret in text)

    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([experiment_id])
    assert runs
    for run in runs:
        scan(repr(run.data.params) + repr(run.data.tags) + repr(sorted(run.data.metrics)), f"run {run.info.run_name}")
        folder = client.download_artifacts(run.info.run_id, "", dst_path=str(faults.stack.folder / "scan" / run.info.run_id))
        for root, _, names in os.walk(folder):
            for name in names:
                scan(open(os.path.join(root, name), "rb").read().decode("latin-1"), f"artifact {name}")

    for root, _, names in os.walk(faults.stack.folder):
        for name in names:
            path = os.path.join(root, name)
            if name.endswith((".log", ".out", ".err")) and "faults_runtime_env" not in name:
                scan(open(path, "rb").read().decode("latin-1"), os.path.relpath(path, faults.stack.folder))

    fs = fsspec.filesystem("s3")
    for path in fs.find("octvideo-demo/runs"):
        if not path.endswith(".pt"):
            scan(fs.cat(path).decode("latin-1"), f"s3://{path}")
    assert not found, found
