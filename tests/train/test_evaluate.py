"""Clip-level and multi-view video-level accuracy on hand-made scores."""

from __future__ import annotations

import pytest
import torch

from octvideo.train.evaluate import accuracy, multiview_accuracy, topk_correct, video_accuracy, video_scores


def test_topk_correct_counts_label_among_best_k() -> None:
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 1, 0])
    assert topk_correct(scores, labels, ks=(1, 2, 5)) == [1, 2, 3]  # k past the classes: all


def test_accuracy_is_a_share() -> None:
    scores = torch.tensor([[2.0, 1.0], [0.0, 1.0], [3.0, 0.0], [0.0, 5.0]])
    assert accuracy(scores, torch.tensor([0, 0, 0, 1])) == {"top1": 0.75, "top5": 1.0}


def test_accuracy_rejects_bad_shapes_and_no_samples() -> None:
    with pytest.raises(ValueError):
        accuracy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_multiview_averages_softmax_per_video() -> None:
    # Video 0 (label 0): one confident wrong view, two mildly right ones -> softmax mean is right,
    # although the logits' mean is wrong. Video 1 (label 2): both views right. Views interleaved.
    logits = torch.tensor(
        [[0.0, 9.0, 0.0], [0.0, 0.0, 4.0], [2.5, 0.0, 0.0], [0.0, 0.0, 3.0], [2.5, 0.0, 0.0]]
    )
    labels = torch.tensor([0, 2, 0, 2, 0])
    video_index = torch.tensor([0, 1, 0, 1, 0])
    assert logits[video_index == 0].mean(0).argmax() == 1
    assert multiview_accuracy(logits, labels, video_index, ks=(1,)) == {"top1": 1.0}
    assert accuracy(logits, labels, ks=(1,)) == {"top1": 0.8}


def test_video_scores_add_up_across_parts() -> None:
    """Summing two parts' scores (as ranks do) equals scoring all views at once."""
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([3, 3, 1, 1, 1, 0])
    video_index = torch.tensor([0, 0, 2, 2, 2, 3])  # video 1 has no view
    whole = video_scores(logits, labels, video_index, num_videos=4)
    first, second = (video_scores(logits[s], labels[s], video_index[s], 4) for s in (slice(0, 3), slice(3, 6)))
    sums, counts = first[0] + second[0], first[1] + second[1]
    merged_labels = torch.maximum(first[2], second[2])
    torch.testing.assert_close(sums, whole[0])
    assert counts.tolist() == [2.0, 0.0, 3.0, 1.0]
    assert merged_labels.tolist() == [3, -1, 1, 0]
    assert video_accuracy(sums, counts, merged_labels) == multiview_accuracy(logits, labels, video_index)
