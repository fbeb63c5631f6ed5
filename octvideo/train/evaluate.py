"""Accuracy: clip-level top-k, and video-level top-k over multi-view test clips.

Video level (PySlowFast's multi-view test): the softmax of every view of a video (its clips x
crops) is averaged, and the average is ranked. :func:`evaluate` runs a model over one rank's
shard of a split and sums per-video scores across ranks, so the result is exact whatever the
number of ranks: the padding a :class:`~octvideo.data.ShardSampler` adds (items repeated to even
out the shards) is masked out, and a video whose views straddle two ranks' shards is summed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from octvideo.data import KineticsLoader, model_input

TOP_K = (1, 5)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K) -> list[int]:
    """How many rows of ``scores`` ``(N, C)`` have their label among their ``k`` best classes, per
    ``k`` (``k`` beyond ``C`` counts as ``C``)."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"need scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    best = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = best == labels[:, None]
    return [int(hits[:, : min(k, scores.shape[1])].any(dim=1).sum()) for k in ks]


def accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}``: the share of rows whose label is among the top k."""
    if len(labels) == 0:
        raise ValueError("accuracy of no samples")
    return {f"top{k}": n / len(labels) for k, n in zip(ks, topk_correct(scores, labels, ks))}


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]``."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def video_scores(
    logits: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor, num_videos: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-video sums of the views' softmax ``(num_videos, C)``, view counts and labels
    (-1 for videos with no view), from views ``logits`` ``(N, C)`` grouped by ``video_index``."""
    probs = logits.float().softmax(dim=1)
    sums = torch.zeros(num_videos, probs.shape[1]).index_add_(0, video_index, probs)
    counts = torch.zeros(num_videos).index_add_(0, video_index, torch.ones(len(video_index)))
    video_labels = torch.full((num_videos,), -1, dtype=torch.long).index_put_((video_index,), labels)
    return sums, counts, video_labels


def video_accuracy(
    sums: torch.Tensor, counts: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K
) -> dict[str, float]:
    """Top-k of the averaged softmax of every video that has at least one view."""
    seen = counts > 0
    return accuracy(sums[seen] / counts[seen, None], labels[seen], ks)


def multiview_accuracy(
    logits: torch.Tensor, labels: torch.Tensor, video_index: torch.Tensor, ks: Sequence[int] = TOP_K
) -> dict[str, float]:
    """Video-level top-k of views ``logits`` ``(N, C)`` grouped by ``video_index``."""
    num_videos = int(video_index.max()) + 1
    return video_accuracy(*video_scores(logits, labels, video_index, num_videos), ks)


@dataclass(frozen=True)
class Evaluation:
    """What :func:`evaluate` measured: ``metrics`` (``clip_top1``, ..., ``video_top1``, ...) and
    the video-level ``confusion`` matrix (counts, ``[true class, predicted class]``)."""

    metrics: dict[str, float]
    confusion: np.ndarray


@torch.no_grad()
def evaluate(
    forward: Callable[[Any], torch.Tensor],
    loader: KineticsLoader,
    num_classes: int,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    speed_ratio: int | None = None,
    ks: Sequence[int] = TOP_K,
) -> Evaluation:
    """Clip-level and video-level top-k and the video-level confusion matrix of ``forward`` over
    a non-shuffled loader's split, summed over all ranks of the default process group when there
    is one (every rank must call it: ZeRO-3 forwards are collective)."""
    if loader.sampler.shuffle:
        raise ValueError("evaluate needs a loader in split order (shuffle=False)")
    num_items, num_videos = len(loader.dataset), len(loader.dataset.manifest)
    first = loader.sampler.rank * len(loader.sampler)
    sums = torch.zeros(num_videos, num_classes)
    counts = torch.zeros(num_videos)
    labels = torch.full((num_videos,), -1, dtype=torch.long)
    clip_hits = torch.zeros(len(ks) + 1)  # correct per k, then clips
    position = first
    for batch in loader:
        size = len(batch["label"])
        keep = torch.arange(position, position + size) < num_items  # drop the sampler's padding
        position += size
        logits = forward(model_input(batch["clip"].to(device), speed_ratio, dtype=dtype)).float().cpu()
        logits, batch_labels = logits[keep], batch["label"][keep]
        clip_hits += torch.tensor([*topk_correct(logits, batch_labels, ks), len(batch_labels)], dtype=torch.float)
        batch_sums, batch_counts, batch_video_labels = video_scores(
            logits, batch_labels, batch["video_index"][keep], num_videos
        )
        sums += batch_sums
        counts += batch_counts
        labels = torch.maximum(labels, batch_video_labels)
    if dist.is_available() and dist.is_initialized():
        for tensor in (sums, counts, clip_hits):
            dist.all_reduce(tensor)
        dist.all_reduce(labels, op=dist.ReduceOp.MAX)
    metrics = {f"clip_top{k}": float(n / clip_hits[-1]) for k, n in zip(ks, clip_hits[:-1])}
    metrics.update({f"video_{name}": value for name, value in video_accuracy(sums, counts, labels, ks).items()})
    seen = counts > 0
    return Evaluation(metrics, confusion_matrix(labels[seen], sums[seen].argmax(dim=1), num_classes))
