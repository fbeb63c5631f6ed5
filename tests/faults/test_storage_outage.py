"""Scenario 2: the S3 server unreachable mid-run (every connection reset, by the proxy in front
of it): for a few seconds, the run retries and finishes; for good, the run fails
with one clear message within its configured bound instead of hanging."""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import FaultStack, submit_during
from tests.jobs import (
    STEPS_PER_EPOCH,
    checkpoint_registered,
    experiment,
    step_history,
    tracked_run,
    wait_for,
    worker_starts,
)

OUTAGE_SEC = 8


def test_a_short_storage_outage_is_retried_through(faults: FaultStack) -> None:
    config = experiment("s3-blip", epochs=2, zero_stage=2, every_steps=2)  # max_failures 0: no restart allowed
    resets: list[int] = []

    def cut_storage() -> None:
        if wait_for(lambda: checkpoint_registered("s3-blip"), timeout=300):
            resets.append(faults.s3.outage(OUTAGE_SEC))

    job = submit_during(faults, "s3-blip", config, cut_storage)

    assert resets, "storage was not cut"
    assert resets[0] > 0  # the run met the outage
    assert len(worker_starts(job.stdout)) == 2  # without a restart
    client, run = tracked_run(faults.stack, "s3-blip")
    assert run.info.status == "FINISHED"
    assert step_history(client, run.info.run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    print(f"short storage outage: {OUTAGE_SEC} s, {resets[0]} connections reset, run finished without a restart")


@pytest.mark.parametrize("fault", ["down", "silent"])
def test_storage_gone_for_good_fails_the_run_within_its_bound(faults: FaultStack, fault: str) -> None:
    """S3 down (every connection reset) or silent (connections accepted, nothing answered: a
    black-holed path). Silent, without bounded requests, a read would wait on botocore's and s3fs's
    timeouts and retries for many minutes, and the other ranks at the next collective."""
    bound, name = 10, f"s3-{fault}"
    config = experiment(name, epochs=2, zero_stage=2, every_steps=2)
    config["data"]["storage_timeout_s"] = bound
    config["checkpoint"]["storage_timeout_s"] = bound
    cut: list[float] = []
    start, end = (faults.s3.down, faults.s3.up) if fault == "down" else (faults.s3.freeze, faults.s3.thaw)

    def cut_storage() -> None:
        if wait_for(lambda: checkpoint_registered(name), timeout=300):
            start()
            cut.append(time.monotonic())

    try:
        job = submit_during(faults, name, config, cut_storage, succeed=False)
        failed_after = time.monotonic() - cut[0]
    finally:
        end()
    # One line from the pipeline; `ray job submit` repeats the job's last lines when it fails.
    errors = sorted({line for line in (job.stdout + job.stderr).splitlines() if line.startswith("kinetics.py: error:")})
    assert job.returncode != 0 and len(errors) == 1, errors
    assert "StorageUnavailable: storage unavailable" in errors[0], errors[0]
    if fault == "silent":
        assert faults.s3.url.split("//")[1] in errors[0], errors[0]  # the endpoint that did not answer
    print(f"storage {fault} for good: failed {failed_after:.0f} s after the cut: {errors[0][:300]}")
    assert failed_after < 90
    _, run = tracked_run(faults.stack, name)
    assert run.info.status == "FAILED"
