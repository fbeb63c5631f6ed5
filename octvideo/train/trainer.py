"""The training logic of one worker, free of Ray: steps, metric windows, evaluation, bad-video
accounting, checkpoints and the fp32 export, over whatever process group the caller set up.

Ray Train runs it through :func:`octvideo.train.loop.train_loop_per_worker`, which supplies the
process group and a :class:`Run` that reports to Ray and uploads checkpoints; the harness
(:mod:`octvideo.train.harness`) runs it under a plain ``torch.distributed`` group with a
:class:`Run` on local disk, to prove the GPU path without Ray.

    Trainer(config, run, datasets, tracker).fit()

Reports (``run.report``, every rank, the same number of times; rank 0's metrics count):

* every ``tracking.log_every_steps`` optimizer steps: ``loss``, ``lr``, ``clips_per_s`` (all ranks),
  ``epoch`` (epochs done, fractional), ``global_step``, ``skipped_steps`` (steps DeepSpeed skipped
  on non-finite gradients), ``data_wait_share`` (share of step time spent waiting for batches),
  ``bad_videos`` and ``videos_tried`` (distinct videos the ranks' loaders met, all ranks together);
  with a checkpoint every ``checkpoint.every_steps`` steps;
* at each epoch end, with a checkpoint: the same plus ``val_clip_top1/5`` and
  ``val_video_top1/5``; after the last epoch also ``test_clip_top1/5`` and ``test_video_top1/5``.

Resuming: the engine loads the checkpoint and training goes on from its epoch and batch; the
sampler starts the epoch after the batches already done, so they are not loaded again.

Batch norm: running statistics are averaged over the ranks before every evaluation and before
the export, so every rank evaluates the same network and the export is the run's, not rank 0's.

Log (rank 0): one line per report and one per epoch (:mod:`octvideo.train.report_lines`).

Tracking: the tracker (:class:`~octvideo.train.tracking.Tracker`) is used on rank 0 only (the
others get a :class:`~octvideo.train.tracking.NullTracker`): every
report's metrics by global step, each epoch's by epoch, the node's system metrics while
:meth:`Trainer.fit` runs, the test's confusion matrix and
per-class accuracy as figures, and the training split's unreadable videos (URL -> reason, with
those its Kinetics CSV lists but that have no file, counted as ``missing_videos``) as
``bad_videos.json``. Past ``data.max_bad_fraction`` of the videos tried by all ranks, every rank
stops at the epoch's end with the same :class:`~octvideo.data.dataset.TooManyBadVideos`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from octvideo.data import DeviceInput, KineticsDataset, KineticsLoader
from octvideo.train.checkpoint import TrainState
from octvideo.train.config import ExperimentConfig
from octvideo.train.distributed import Collectives
from octvideo.train.engine import build_engine, fp32_state_dict
from octvideo.train.evaluate import Evaluation, evaluate
from octvideo.train.finetune import describe_finetuning, frozen_batch_norms, keep_statistics
from octvideo.train.plots import plot_confusion_matrix, plot_per_class_accuracy
from octvideo.train.report_lines import epoch_line, step_line
from octvideo.train.tracking import NullTracker, Tracker

if TYPE_CHECKING:
    from octvideo.data.ray_ingest import RayDataLoader

logger = logging.getLogger(__name__)

#: ``datasets(mode)``: the dataset of split ``mode`` ("train", "val" or "test").
Datasets = Callable[[str], KineticsDataset]


class Run(Protocol):
    """What a worker's training needs from whatever runs it."""

    node: str

    def start_weights(self, config: ExperimentConfig) -> Mapping[str, torch.Tensor] | None:
        """The starting weights of a fresh run with ``model.pretrained``
        (:mod:`octvideo.train.pretrained`); None when the run has a checkpoint to resume from."""

    def restore(self, engine: Any) -> TrainState | None:
        """Load the run's latest checkpoint into ``engine``; None when there is none (collective)."""

    def report(self, metrics: Mapping[str, float], engine: Any, state: TrainState | None) -> None:
        """Report ``metrics``; with a checkpoint of ``engine`` at ``state`` unless None (collective)."""

    def write_weights(self, state: Mapping[str, torch.Tensor]) -> str:
        """Store the run's fp32 weights (rank 0 only); returns where they went."""


class StepWindow:
    """Step timings and losses since the last report, kept on the device (no sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.micro_batches = self.clips = 0
        self.data_seconds = 0.0
        self.started = time.perf_counter()

    def add(self, loss: torch.Tensor, clips: int) -> None:
        self.loss_sum += loss.detach()
        self.micro_batches += 1
        self.clips += clips

    def summary(self, collectives: Collectives) -> dict[str, float]:
        """Metrics over all ranks (collective)."""
        elapsed = time.perf_counter() - self.started
        loss_sum, micro_batches, clips, data_seconds, seconds = collectives.sum_values(
            [self.loss_sum, self.micro_batches, self.clips, self.data_seconds, elapsed]
        )
        return {
            "loss": loss_sum / max(micro_batches, 1.0),
            "clips_per_s": clips / max(seconds / collectives.world_size, 1e-9),
            "data_wait_share": data_seconds / max(seconds, 1e-9),
        }


def run_bad_video_counts(loader: KineticsLoader | RayDataLoader, collectives: Collectives) -> tuple[int, int]:
    """Distinct videos that all ranks' ``loader`` tried, and found bad (collective, fixed size:
    two flags per video of the split, merged with one element-wise maximum)."""
    flags = torch.stack([loader.tracker.tried, loader.tracker.bad]).to(collectives.device, torch.uint8)
    tried, bad = collectives.max_(flags).sum(dim=1).tolist()
    return int(tried), int(bad)


class Trainer:
    """One worker's share of a training run (see the module docstring)."""

    def __init__(self, config: ExperimentConfig, run: Run, datasets: Datasets, tracker: Tracker | None = None) -> None:
        self.config, self.run, self.datasets = config, run, datasets
        torch.manual_seed(config.seed)
        collectives = Collectives("cpu")  # rank and world size only; the device comes with the engine
        self.rank, self.world_size = collectives.rank, collectives.world_size
        self.tracker: Tracker = tracker if tracker is not None and self.rank == 0 else NullTracker()
        self.train_loader = self._train_loader(datasets("train"))
        accumulation = config.optim.grad_accumulation
        self.steps_per_epoch = len(self.train_loader) // accumulation
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"an epoch of {len(self.train_loader)} batches per worker is shorter than grad_accumulation={accumulation}; "
                "use fewer workers, a smaller batch or less accumulation"
            )
        self.batches_per_epoch = self.steps_per_epoch * accumulation  # an epoch ends on an optimizer step
        manifest = self.train_loader.dataset.manifest
        self.num_classes = config.model.num_classes or manifest.num_classes
        start = run.start_weights(config) if config.model.pretrained is not None else None
        self.engine = build_engine(config, self.num_classes, self.steps_per_epoch, start)
        self.frozen_norms = frozen_batch_norms(self.engine.module, config.model.freeze, config.model.freeze_bn_stats)
        if self.rank == 0 and describe_finetuning(config):
            logger.info("fine-tuning: %s", describe_finetuning(config))
        self.device = self.engine.device  # the module's device: batches, metrics and collectives go there
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed clip sizes: pick the fastest kernels once
        self.collectives = Collectives(self.device)
        self.inputs = DeviceInput(
            self.device, getattr(self.engine.module, "speed_ratio", None),
            channels_last=config.model.memory_format == "channels_last",
        )
        self.state = run.restore(self.engine) or TrainState()
        self.val_loader = self._eval_loader("val")
        self.window = StepWindow(self.device)

    def _loader(self, dataset: KineticsDataset, batch_size: int) -> KineticsLoader:
        """Workers that live as long as the loader; pinned batches when the engine will be on a
        GPU (DeepSpeed trains on one whenever the worker sees one)."""
        data = self.config.data
        return KineticsLoader(
            dataset, batch_size, num_workers=data.workers, rank=self.rank, world_size=self.world_size,
            pin_memory=torch.cuda.is_available(), persistent_workers=True,
            prefetch_factor=data.prefetch_factor if data.workers else None,
        )

    def _train_loader(self, dataset: KineticsDataset) -> KineticsLoader | RayDataLoader:
        """The training split through DataLoader workers, or decoded by Ray Data actors (``data.ingest``)."""
        data, batch_size = self.config.data, self.config.optim.batch_size_per_worker
        if data.ingest == "dataloader":
            return self._loader(dataset, batch_size)
        from octvideo.data.ray_ingest import RayDataLoader  # needs a Ray cluster

        return RayDataLoader(
            dataset, batch_size, rank=self.rank, world_size=self.world_size, decoders=data.decoders,
            decoder_resources=data.decoder_resources, prefetch_batches=data.prefetch_factor,
        )

    def _eval_loader(self, mode: str) -> KineticsLoader:
        dataset = self.datasets(mode)
        views = dataset.views_per_video  # whole videos per batch: each is decoded once
        return self._loader(dataset, views * max(1, self.config.optim.batch_size_per_worker // views))

    def fit(self) -> None:
        """Train from the restored position to the last epoch, test, and export the weights;
        rank 0's system metrics go to the tracker meanwhile."""
        logger.info(
            "worker %d of %d on node %s (%s) starts at step %d",
            self.rank, self.world_size, self.run.node, self.device, self.engine.global_steps,
        )
        fetcher = self.train_loader.dataset.fetcher
        if self.rank == 0 and fetcher is not None:
            logger.info(
                "each process that decodes training clips fetches up to %d remote videos ahead (at most %d MiB)",
                fetcher.max_videos, fetcher.bound_bytes >> 20,
            )
        if self.state.epoch >= self.config.optim.epochs:
            logger.info("the run's checkpoint is at its last epoch (%d): nothing to train", self.state.epoch)
        with self.tracker.system_metrics():
            while self.state.epoch < self.config.optim.epochs:
                self.train_epoch()
                self.end_epoch()
            self.finish()

    def train_epoch(self) -> None:
        """The rest of the current epoch's batches, reporting every ``log_every_steps`` steps."""
        engine, state, config = self.engine, self.state, self.config
        engine.train()
        keep_statistics(self.frozen_norms)
        self.train_loader.set_epoch(state.epoch, skip_batches=state.batch_in_epoch)
        batches = iter(self.train_loader)
        self.window.reset()
        every = config.checkpoint.every_steps
        for index in range(state.batch_in_epoch, self.batches_per_epoch):
            waited = time.perf_counter()
            batch = next(batches)
            self.window.data_seconds += time.perf_counter() - waited
            logits = engine(self.inputs(batch["clip"]))
            loss = F.cross_entropy(logits.float(), batch["label"].to(self.device, non_blocking=True))
            engine.backward(loss)
            engine.step()
            self.window.add(loss, len(batch["label"]))
            if (index + 1) % config.optim.grad_accumulation or index + 1 == self.batches_per_epoch:
                continue
            step = engine.global_steps
            checkpoint_now = every is not None and step % every == 0
            if checkpoint_now or step % config.tracking.log_every_steps == 0:
                self.state = TrainState(step, state.epoch, index + 1)
                self._report(self._step_metrics(), checkpoint=checkpoint_now)
                self.window.reset()

    def _step_metrics(self) -> dict[str, float]:
        tried, bad = run_bad_video_counts(self.train_loader, self.collectives)
        return {
            **self.window.summary(self.collectives), "lr": float(self.engine.get_lr()[0]),
            "bad_videos": float(bad), "videos_tried": float(tried),
        }

    def end_epoch(self) -> None:
        """Judge the epoch's bad videos over all ranks, validate (and test after the last epoch),
        then report with a checkpoint."""
        metrics = self._step_metrics()
        self._check_bad_videos(int(metrics["videos_tried"]), int(metrics["bad_videos"]))
        metrics["missing_videos"] = float(len(self.train_loader.dataset.manifest.missing))
        metrics.update(self._evaluate(self.val_loader, "val")[0])
        self.state = TrainState(self.engine.global_steps, self.state.epoch + 1, 0)
        if self.state.epoch == self.config.optim.epochs:
            test_metrics, test = self._evaluate(self._eval_loader("test"), "test")
            metrics.update(test_metrics)
            if self.rank == 0:  # figures are drawn only where they are logged
                class_names = self.train_loader.dataset.manifest.class_names
                self.tracker.log_figure(plot_confusion_matrix(test.confusion, class_names), "plots/test_confusion_matrix.png")
                self.tracker.log_figure(plot_per_class_accuracy(test.confusion, class_names), "plots/test_per_class_accuracy.png")
        self.tracker.log_epoch_metrics(metrics, self.state.epoch)
        self._report(metrics, checkpoint=True)
        if self.rank == 0:
            logger.info("%s", epoch_line(self.state.epoch, metrics))

    def _check_bad_videos(self, tried: int, bad: int) -> None:
        """Raise the same TooManyBadVideos on every rank past the run's limit; rank 0 logs the
        run's bad videos. The reports are gathered here only, once an epoch."""
        reports: dict[str, Any] = {}
        for rank_reports in self.collectives.gather_objects(self.train_loader.tracker.reports):
            reports.update(rank_reports)
        self.train_loader.tracker.judge(tried, bad, reports.values(), final=True)
        missing = self.train_loader.dataset.manifest.missing  # skipped from the start: not in the share
        if reports or missing:
            self.tracker.log_bad_videos({**dict.fromkeys(missing, "not found"), **{u: r.reason for u, r in reports.items()}})

    def _evaluate(self, loader: KineticsLoader, prefix: str) -> tuple[dict[str, float], Evaluation]:
        self.collectives.average_batch_norm_stats(self.engine.module, self.frozen_norms)
        self.engine.eval()
        evaluation = evaluate(self.engine, loader, self.num_classes, inputs=self.inputs, collectives=self.collectives)
        return {f"{prefix}_{name}": value for name, value in evaluation.metrics.items()}, evaluation

    def _report(self, metrics: dict[str, float], *, checkpoint: bool) -> None:
        metrics = {
            **metrics,
            "epoch": self.state.epoch + self.state.batch_in_epoch / self.batches_per_epoch,
            "global_step": float(self.engine.global_steps),
            "skipped_steps": float(self.engine.skipped_steps),
        }
        self.tracker.log_metrics(metrics, self.engine.global_steps)
        self.run.report(metrics, self.engine, self.state if checkpoint else None)
        if self.rank == 0:
            logger.info("%s", step_line(metrics))

    def finish(self) -> None:
        """Export the fp32 weights (rank 0 writes them) and send what tracking still holds."""
        self.collectives.average_batch_norm_stats(self.engine.module, self.frozen_norms)
        state = fp32_state_dict(self.engine)
        if self.rank == 0:
            logger.info("wrote fp32 weights (%d tensors) to %s", len(state), self.run.write_weights(state))
        self.tracker.flush()  # what a tracking outage held back, before this process ends
