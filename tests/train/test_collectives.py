"""Collectives live in one module and run on the worker's device; bad-video accounting has a
fixed size; batch-norm statistics are pooled over ranks (two gloo processes)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from octvideo.data import BadVideo, BadVideoTracker, TooManyBadVideos
from octvideo.train.distributed import Collectives
from tests.conftest import free_port

PACKAGE = Path(__file__).resolve().parents[2] / "octvideo"
COLLECTIVE_CALL = re.compile(
    r"\b(?:dist|torch\.distributed)\.(all_reduce|all_gather\w*|broadcast\w*|reduce\w*|all_to_all\w*|barrier|scatter|gather\w*)\("
)


def test_only_the_collectives_module_calls_torch_distributed() -> None:
    calls = {
        str(path.relative_to(PACKAGE)): COLLECTIVE_CALL.findall(path.read_text())
        for path in PACKAGE.rglob("*.py")
    }
    assert {path: found for path, found in calls.items() if found and path != "train/distributed.py"} == {}
    assert calls["train/distributed.py"]  # the search itself finds them


def test_a_tensor_on_another_device_is_refused() -> None:
    collectives = Collectives("meta")
    with pytest.raises(ValueError, match="a collective got a tensor on cpu; this worker's collectives run on meta"):
        collectives._on_device(torch.zeros(2))


def test_bad_video_accounting_has_the_size_of_the_split() -> None:
    tracker = BadVideoTracker(num_videos=1000, max_bad_fraction=0.5, min_videos_tried=1)
    for start in range(0, 1000, 10):
        bad = [BadVideo(start, f"s3://b/{start}.mp4", "corrupt", "corrupt")] if start % 100 == 0 else []
        tracker.update({"video_index": torch.arange(start, start + 10), "bad": bad})
    assert tracker.num_tried == 1000 and int(tracker.bad.sum()) == 10 and len(tracker.reports) == 10
    assert tracker.tried.shape == tracker.bad.shape == (1000,)  # whatever the number of batches or epochs
    with pytest.raises(TooManyBadVideos, match="3 of 4 videos tried are unreadable"):
        tracker.judge(4, 3, tracker.reports.values(), final=True)


def _pool_batch_norm(rank: int, port: int, path: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    norm = nn.BatchNorm3d(3)
    norm.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]) * (rank + 1))
    norm.running_var.copy_(torch.tensor([1.0, 4.0, 9.0]) * (rank + 1))
    Collectives("cpu").average_batch_norm_stats(nn.Sequential(norm))
    torch.save({"mean": norm.running_mean, "var": norm.running_var}, f"{path}.{rank}")
    dist.destroy_process_group()


def test_batch_norm_statistics_are_pooled_over_ranks(tmp_path: Path) -> None:
    port = free_port()
    mp.spawn(_pool_batch_norm, args=(port, str(tmp_path / "stats")), nprocs=2)
    ranks = [torch.load(tmp_path / f"stats.{rank}") for rank in (0, 1)]
    base_mean, base_var = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 4.0, 9.0])
    means, variances = [base_mean, 2 * base_mean], [base_var, 2 * base_var]
    pooled_mean = (means[0] + means[1]) / 2
    pooled_var = (variances[0] + means[0] ** 2 + variances[1] + means[1] ** 2) / 2 - pooled_mean**2
    for stats in ranks:  # the same on both ranks, and the pooled moments of the two
        torch.testing.assert_close(stats["mean"], pooled_mean)
        torch.testing.assert_close(stats["var"], pooled_var)
