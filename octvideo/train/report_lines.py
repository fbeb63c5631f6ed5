"""A training run's reports as short log lines (:class:`~octvideo.train.trainer.Trainer`'s
metrics, see its module docstring): one per report, one per epoch, one for the run.

    step 12  epoch 1.50  loss 1.234  lr 0.0100  clips/s 20.1  data-wait 3%
    epoch 2 done  val video top-1 0.412 top-5 0.801  clip top-1 0.385 top-5 0.774
"""

from __future__ import annotations

from collections.abc import Mapping


def step_line(metrics: Mapping[str, float]) -> str:
    """Progress at a report: step, epochs done, loss, learning rate, throughput, data wait, and the
    steps DeepSpeed skipped and the bad videos met, when there are any."""
    parts = [
        f"step {int(metrics['global_step'])}",
        f"epoch {metrics['epoch']:.2f}",
        f"loss {metrics['loss']:.3f}",
        f"lr {metrics['lr']:.4g}",
        f"clips/s {metrics['clips_per_s']:.1f}",
        f"data-wait {metrics['data_wait_share']:.0%}",
    ]
    if metrics.get("skipped_steps"):
        parts.append(f"skipped steps {int(metrics['skipped_steps'])}")
    if metrics.get("bad_videos"):
        parts.append(f"bad videos {int(metrics['bad_videos'])} of {int(metrics['videos_tried'])}")
    return "  ".join(parts)


def accuracy_line(metrics: Mapping[str, float]) -> str:
    """Top-1 / top-5 of the splits evaluated in ``metrics`` (``val``, ``test``), by video and by clip."""
    parts = []
    for split in ("val", "test"):
        if f"{split}_video_top1" in metrics:
            parts.append(
                f"{split} video top-1 {metrics[f'{split}_video_top1']:.3f} top-5 {metrics[f'{split}_video_top5']:.3f}"
                f"  clip top-1 {metrics[f'{split}_clip_top1']:.3f} top-5 {metrics[f'{split}_clip_top5']:.3f}"
            )
    return "  ".join(parts)


def epoch_line(epoch: int, metrics: Mapping[str, float]) -> str:
    """An epoch's end: its validation accuracy (and the test's, after the last epoch)."""
    return f"epoch {epoch} done  {accuracy_line(metrics)}"


def run_line(metrics: Mapping[str, float] | None) -> str:
    """A run's last report: where training ended and the accuracy it reached."""
    if not metrics:
        return "none reported"
    return f"{step_line(metrics)}  {accuracy_line(metrics)}".rstrip()
