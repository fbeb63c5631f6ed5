"""Accuracy: clip-level top-k, and video-level top-k over multi-view test clips.

Video level (PySlowFast's multi-view test): the softmax of every view of a video (its clips x
crops) is averaged, and the average is ranked. :func:`evaluate` runs a model over one rank's
shard of a split and sums per-video scores across ranks, so the result is exact whatever the
number of ranks: the padding a :class:`~octvideo.data.ShardSampler` adds (videos repeated to
even out the shards) is masked out. Shards hold whole videos, so each is decoded once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from octvideo.data import KineticsLoader
from octvideo.train.distributed import Collectives

TOP_K = (1, 5)


def topk_hits(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K) -> list[torch.Tensor]:
    """How many rows of ``scores`` ``(N, C)`` have their label among their ``k`` best classes, per
    ``k`` (``k`` beyond ``C`` counts as ``C``), as 0-d tensors on ``scores``' device (no sync)."""
    if scores.ndim != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"need scores (N, C) and labels (N,), got {tuple(scores.shape)} and {tuple(labels.shape)}")
    best = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = best == labels[:, None]
    return [hits[:, : min(k, scores.shape[1])].any(dim=1).sum() for k in ks]


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOP_K) -> list[int]:
    """:func:`topk_hits` as ints."""
    return [int(n) for n in topk_hits(scores, labels, ks)]


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
    inputs: Callable[[torch.Tensor], Any],
    collectives: Collectives,
    ks: Sequence[int] = TOP_K,
) -> Evaluation:
    """Clip-level and video-level top-k and the video-level confusion matrix of ``forward`` over
    a non-shuffled loader's split, summed over all ranks (every rank must call it: ZeRO-3
    forwards and the sums are collective). ``inputs`` turns a uint8 batch into the model's input
    on the worker's device. Scores are summed on that device, straight into per-video rows."""
    if loader.sampler.shuffle:
        raise ValueError("evaluate needs a loader in split order (shuffle=False)")
    device = collectives.device
    num_items, num_videos = len(loader.dataset), loader.dataset.num_videos
    sums = torch.zeros(num_videos, num_classes, device=device)
    counts = torch.zeros(num_videos, device=device)
    labels = torch.full((num_videos,), -1, dtype=torch.long, device=device)
    clip_hits = torch.zeros(len(ks) + 1, dtype=torch.float64, device=device)  # correct per k, then clips
    position = loader.sampler.rank * loader.sampler.shard_size
    for batch in loader:
        size = len(batch["label"])
        keep = (torch.arange(position, position + size) < num_items).to(device, non_blocking=True)  # drop the padding
        position += size
        logits = forward(inputs(batch["clip"])).float()[keep]
        batch_labels = batch["label"].to(device, non_blocking=True)[keep]
        video_index = batch["video_index"].to(device, non_blocking=True)[keep]
        clip_hits += torch.stack([*topk_hits(logits, batch_labels, ks), torch.tensor(len(batch_labels), device=device)])
        sums.index_add_(0, video_index, logits.softmax(dim=1))
        counts.index_add_(0, video_index, torch.ones_like(video_index, dtype=counts.dtype))
        labels.index_put_((video_index,), batch_labels)
    for tensor in (sums, counts, clip_hits):
        collectives.sum_(tensor)
    collectives.max_(labels)
    clip_hits, sums, counts, labels = clip_hits.cpu(), sums.cpu(), counts.cpu(), labels.cpu()
    metrics = {f"clip_top{k}": float(n / clip_hits[-1]) for k, n in zip(ks, clip_hits[:-1])}
    metrics.update({f"video_{name}": value for name, value in video_accuracy(sums, counts, labels, ks).items()})
    seen = counts > 0
    return Evaluation(metrics, confusion_matrix(labels[seen], sums[seen].argmax(dim=1), num_classes))
