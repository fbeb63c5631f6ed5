"""Multi-node training on one machine: the local stack's Ray head (2 CPUs) and a second Ray node
(1 CPU) that joins it with ``ray start --address`` (``cluster/local/add-node.sh``), as separate
processes with their own raylets. Two workers placed with ``SPREAD``; the second node is killed
(SIGKILL of all its processes) after the first checkpoint, and the job goes on on the head."""

from __future__ import annotations

import threading
import time

import fsspec
import pytest

from tests.jobs import (
    STEPS_PER_EPOCH, checkpoint_registered, experiment, stack_with_tiny_data, step_history, submit, tracked_run,
    wait_for, worker_starts, write_config,
)
from tests.stack import LocalStack

@pytest.fixture(scope="module")
def stack():
    with stack_with_tiny_data() as stack:
        yield stack


def test_workers_on_two_nodes_checkpoint_to_s3_and_survive_losing_a_node(stack: LocalStack) -> None:
    node, node_id = stack.add_node(cpus=1)
    config = experiment("multinode", epochs=2, zero_stage=2, every_steps=1, max_failures=1)
    config["scaling"]["placement_strategy"] = "SPREAD"
    killed_at: list[float] = []

    def kill_node_after_first_checkpoint() -> None:
        if wait_for(lambda: checkpoint_registered("multinode"), timeout=400):
            stack.kill_node(node)
            killed_at.append(time.monotonic())

    killer = threading.Thread(target=kill_node_after_first_checkpoint, daemon=True)
    killer.start()
    job = submit(stack, write_config("multinode", config))
    killer.join(timeout=1)
    assert killed_at, "the second node was not killed"

    starts = worker_starts(job.stdout)
    first = {rank: node_ for rank, node_, step in starts if step == 0}
    resumed = {rank: node_ for rank, node_, step in starts if step > 0}
    # Both nodes trained: one worker on each from the start (the head is the node that is not node_id).
    assert sorted(first) == [0, 1] and node_id in first.values() and len(set(first.values())) == 2, starts
    head_id = next(node_ for node_ in first.values() if node_ != node_id)
    # After the loss, both workers run on the head and start from the checkpoint in S3, which holds
    # the optimizer shard that the lost node's worker wrote (ZeRO-2 partitions it by rank).
    assert sorted(resumed) == [0, 1] and set(resumed.values()) == {head_id}, starts
    assert "resumed from octvideo-demo/runs/multinode/checkpoint_" in job.stdout

    client, run = tracked_run(stack, "multinode")
    assert run.info.status == "FINISHED"
    steps = step_history(client, run.info.run_id)
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # each step once, none missing

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    last = sorted(fs.glob("octvideo-demo/runs/multinode/checkpoint_2*"))[-1]
    shards = {path.rsplit("/", 1)[-1] for path in fs.find(last)}
    assert {"zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= shards
    assert fs.exists("octvideo-demo/runs/multinode/model_fp32.pt")
    assert not list((stack.folder / node).rglob("*optim_states.pt"))  # nothing kept on the lost node
