"""The one line a failed job prints: which error Ray Train's failure carries, named for the user."""

from __future__ import annotations

from botocore.exceptions import EndpointConnectionError
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from octvideo.train.job import training_failure

SNAPSHOT_URL = "http://127.0.0.1:9/bucket/runs/r/checkpoint_manager_snapshot.json"


def test_the_controller_failing_to_write_run_state_is_a_storage_outage() -> None:
    # Ray Train's controller writes its snapshot to the run storage after every report: when the
    # object store is down, that write can fail before any worker's bounded retries run out.
    line = training_failure(ControllerError(EndpointConnectionError(endpoint_url=SNAPSHOT_URL)))
    assert line.startswith("training failed: StorageUnavailable: storage unavailable: Ray Train saving the run state")
    assert SNAPSHOT_URL in line and "reachable from every node" in line


def test_a_worker_error_is_reported_as_it_is_with_its_rank() -> None:
    failures = {1: ValueError("bad batch"), 0: EndpointConnectionError(endpoint_url=SNAPSHOT_URL)}
    line = training_failure(WorkerGroupError("two workers failed", failures))
    assert line.startswith("training failed on rank 0: StorageUnavailable: storage unavailable: rank 0's storage call")
    line = training_failure(WorkerGroupError("one worker failed", {1: ValueError("bad batch")}))
    assert line == "training failed on rank 1: ValueError: bad batch"
