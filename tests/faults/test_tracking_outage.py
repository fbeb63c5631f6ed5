"""Scenario 3: the MLflow tracking server unreachable (every connection reset, by the proxy in
front of it). Down at submission: the job refuses to start, before any training.
Down mid-run: training goes on, metrics are buffered and reach MLflow once it is back."""

from __future__ import annotations

import time

from tests.faults.conftest import FaultStack, logged_step, submit_during
from tests.jobs import (
    STEPS_PER_EPOCH,
    experiment,
    step_history,
    submit,
    tracked_run,
    wait_for,
    worker_starts,
    write_config,
)

OUTAGE_SEC = 15


def test_tracking_down_at_start_refuses_the_job(faults: FaultStack) -> None:
    faults.mlflow.down()
    try:
        started = time.monotonic()
        job = submit(faults.stack, write_config("no-mlflow", experiment("no-mlflow", epochs=1, zero_stage=2)),
                     runtime_env=faults.runtime_env, succeed=False)
        seconds = time.monotonic() - started
    finally:
        faults.mlflow.up()
    output = job.stdout + job.stderr
    assert job.returncode != 0, output[-3000:]
    assert f"MLflow tracking at {faults.mlflow.url} is unavailable" in output, output[-3000:]
    assert not worker_starts(output) and "Traceback" not in output
    print(f"tracking down at start: refused in {seconds:.0f} s")


def test_tracking_down_mid_run_buffers_metrics_until_it_is_back(faults: FaultStack) -> None:
    config = experiment("mlflow-blip", epochs=2, zero_stage=2)
    outage: list[int] = []

    def cut_tracking() -> None:
        if wait_for(lambda: logged_step(faults, "mlflow-blip") >= 1, timeout=300):
            outage.append(logged_step(faults, "mlflow-blip"))
            faults.mlflow.outage(OUTAGE_SEC)

    job = submit_during(faults, "mlflow-blip", config, cut_tracking)

    assert outage, "tracking was not cut"
    assert "buffering metrics and retrying" in job.stdout, job.stdout[-3000:]
    client, run = tracked_run(faults.stack, "mlflow-blip")
    assert run.info.status == "FINISHED"
    assert step_history(client, run.info.run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert "test_video_top1" in run.data.metrics
    print(f"tracking outage: {OUTAGE_SEC} s from step {outage[0]}, every step in MLflow once afterwards")
