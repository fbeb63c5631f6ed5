"""Multi-node training on one machine: the local stack's Ray head (2 CPUs) and more Ray nodes that
join it with ``ray start --address`` (``cluster/local/add-node.sh``), as separate processes with
their own raylets.

* Two workers placed with ``SPREAD`` on the head and a 1-CPU node; that node is killed (SIGKILL of
  all its processes) after the first checkpoint, and the job goes on on the head.
* ``data.ingest: ray_data``: both workers train on the head while their clips are decoded on a
  CPU-only decode node (no CPU for training, two ``decode`` slots). That node is killed after the
  first checkpoint and a new one joins, as an autoscaler replaces a preempted machine: the decode
  actors restart there and the run goes on without a training worker restarting.
"""

from __future__ import annotations

import re
import time

import fsspec
import pytest

from tests.jobs import (
    STEPS_PER_EPOCH,
    checkpoint_registered,
    experiment,
    stack_with_tiny_data,
    step_history,
    submit_during,
    tracked_run,
    wait_for,
    worker_starts,
)
from tests.stack import LocalStack, is_loopback, is_ray_process


@pytest.fixture(scope="module")
def stack():
    with stack_with_tiny_data(multi_node=True) as stack:
        yield stack


def test_only_ray_listens_beyond_the_loopback_in_a_multi_node_stack(stack: LocalStack) -> None:
    """Ray keeps a cluster on the loopback only when it has one node (tests/test_local_stack.py);
    with more, its own gRPC ports face the network (token auth guards them), and nothing else does."""
    outside = {(command, port) for command, address, port in stack.listeners() if not is_loopback(address)}
    assert outside and all(is_ray_process(command) for command, _ in outside), outside
    ports = {port for _, _, port in stack.listeners()}
    assert {stack.ports["S3"], stack.ports["MLFLOW"], stack.ports["RAY_DASHBOARD"]} <= ports
    assert not {port for _, port in outside} & {stack.ports["S3"], stack.ports["MLFLOW"], stack.ports["RAY_DASHBOARD"]}


def test_workers_on_two_nodes_checkpoint_to_s3_and_survive_losing_a_node(stack: LocalStack) -> None:
    node, node_id = stack.add_node(cpus=1)
    config = experiment("multinode", epochs=2, zero_stage=2, every_steps=1, max_failures=1)
    config["scaling"]["placement_strategy"] = "SPREAD"
    killed_at: list[float] = []

    def kill_node_after_first_checkpoint() -> None:
        if wait_for(lambda: checkpoint_registered("multinode"), timeout=400):
            stack.kill_node(node)
            killed_at.append(time.monotonic())

    job = submit_during(stack, "multinode", config, kill_node_after_first_checkpoint)
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


def test_ray_data_decodes_on_a_cpu_only_node_and_survives_losing_it(stack: LocalStack) -> None:
    decode_node, decode_id = stack.add_node(cpus=0, resources={"decode": 2})
    config = experiment("raydata", epochs=2, zero_stage=0, every_steps=1, max_failures=0)
    config["data"].update(ingest="ray_data", decoders=1, decoder_resources={"decode": 1})
    replacement: list[str] = []

    def replace_decode_node_after_first_checkpoint() -> None:
        if wait_for(lambda: checkpoint_registered("raydata"), timeout=400):
            stack.kill_node(decode_node)
            replacement.append(stack.add_node(cpus=0, resources={"decode": 2})[1])

    job = submit_during(stack, "raydata", config, replace_decode_node_after_first_checkpoint)
    assert replacement, "the decode node was not replaced"

    # Training stayed on the head (the decode nodes offer no CPU), and no worker restarted.
    starts = worker_starts(job.stdout)
    assert len(starts) == 2 and {node for _, node, _ in starts}.isdisjoint({decode_id, replacement[0]}), starts
    # Each rank's epochs were decoded on the decode nodes: the first one, then its replacement.
    decoded = [set(re.findall(r"node ([0-9a-f]+) \(\d+\)", line)) for line in job.stdout.splitlines()
               if "batches decoded by Ray Data on" in line]
    assert len(decoded) == 2 * 2, job.stdout[-4000:]  # a line per rank and epoch
    assert set().union(*decoded) <= {decode_id, replacement[0]}, decoded
    assert decode_id in decoded[0] and replacement[0] in decoded[-1], decoded

    client, run = tracked_run(stack, "raydata")
    assert run.info.status == "FINISHED"
    assert step_history(client, run.info.run_id) == list(range(1, 2 * STEPS_PER_EPOCH + 1))
    assert run.data.metrics["bad_videos"] == 0 and run.data.metrics["videos_tried"] == 6
