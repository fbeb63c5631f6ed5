"""The per-worker training function of a Ray Train ``TorchTrainer``, with DeepSpeed.

``train_loop_per_worker({"config": config_to_dict(config), ...})`` runs on every worker: it
builds the model, wraps it with ``deepspeed.initialize`` on the process group Ray Train created,
resumes from the run's latest checkpoint if there is one, trains on this rank's shard, evaluates
each epoch, and finally tests (video level, multi-view) on the test split.

Reports (``ray.train.report``, every rank, the same number of times; rank 0's metrics count):

* every ``tracking.log_every_steps`` optimizer steps: ``loss``, ``lr``, ``clips_per_s`` (all ranks),
  ``epoch`` (epochs done, fractional), ``global_step`` (optimizer steps), ``skipped_steps``
  (steps DeepSpeed skipped on non-finite gradients),
  ``data_wait_share`` (share of step time spent waiting for batches), ``bad_videos`` and
  ``videos_tried`` (distinct videos the ranks' loaders met, all ranks together);
  with a checkpoint every ``checkpoint.every_steps`` steps;
* at each epoch end, with a checkpoint: the same plus ``val_clip_top1/5`` and
  ``val_video_top1/5``; after the last epoch also ``test_clip_top1/5`` and ``test_video_top1/5``.

Resuming: the engine loads the checkpoint and training goes on from its epoch and batch; the
sampler starts the epoch after the batches already done, so they are not loaded again.

Tracking: ``loop_config["tracker"]`` (a picklable :class:`~octvideo.train.tracking.Tracker`;
default :class:`NullTracker`) is called on rank 0 only: every report's metrics by global step,
each epoch's by epoch, the test's confusion matrix and per-class accuracy as figures, and the
training split's unreadable videos (URL -> reason, each once; with those its Kinetics CSV lists
but that have no file, which are skipped from the start, counted as ``missing_videos``) as
``bad_videos.json``. Past
``data.max_bad_fraction`` of the videos tried by all ranks, every rank stops at the epoch's end
with the same :class:`~octvideo.data.dataset.TooManyBadVideos`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from typing import Any

import deepspeed
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from octvideo.data import KineticsDataset, KineticsLoader, model_input
from octvideo.data.dataset import BadVideoTracker
from octvideo.data.storage import RetryPolicy
from octvideo.models import build_model
from octvideo.train.checkpoint import TrainState, restore, save_and_report
from octvideo.train.config import ExperimentConfig, ModelConfig, parse_config
from octvideo.train.evaluate import Evaluation, evaluate
from octvideo.train.optim import build_optimizer, build_scheduler
from octvideo.train.plots import plot_confusion_matrix, plot_per_class_accuracy
from octvideo.train.tracking import NullTracker, Tracker

logger = logging.getLogger(__name__)


def network_options(config: ModelConfig, num_classes: int) -> dict[str, Any]:
    """The ``build_model(config.name, **options)`` arguments of ``config`` with ``num_classes`` outputs."""
    options: dict[str, Any] = {
        "alpha": config.alpha,
        "octave_pool": list(config.octave_pool),
        "last_stage_alpha": config.last_stage_alpha,
        "num_classes": num_classes,
        "dropout": config.dropout,
    }
    if config.width is not None:
        options["width"] = config.width
    return options


def build_network(config: ModelConfig, num_classes: int) -> nn.Module:
    """The model of ``config`` (fresh weights) with ``num_classes`` outputs."""
    return build_model(config.name, **network_options(config, num_classes))


def deepspeed_config(config: ExperimentConfig) -> dict[str, Any]:
    """DeepSpeed's configuration dict for an experiment."""
    ds = config.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu"}
    options: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": config.optim.batch_size_per_worker,
        "gradient_accumulation_steps": config.optim.grad_accumulation,
        "zero_optimization": zero,
        "steps_per_print": 10**9,
    }
    if ds.precision != "fp32":
        options[ds.precision] = {"enabled": True}
        # DeepSpeed casts only parameters by default; batch norm needs its statistics in the
        # same dtype as its weights (on CPU at least).
        options["data_types"] = {"buffer_dtype": ds.precision}
    if ds.zero_stage and config.optim.optimizer == "sgd":
        # DeepSpeed lists only Adam-like optimizers as tested with ZeRO; SGD is element-wise, so
        # it works unchanged on the flat partitions ZeRO gives it.
        options["zero_allow_untested_optimizer"] = True
    if ds.offload_optimizer:
        options["zero_force_ds_cpu_optimizer"] = False  # keep the configured torch optimizer
    if config.optim.clip_grad_norm is not None:
        options["gradient_clipping"] = config.optim.clip_grad_norm
    return options


def _dataset(config: ExperimentConfig, manifest: str, mode: str) -> KineticsDataset:
    data, clip = config.data, config.data.clip
    return KineticsDataset(
        manifest,
        mode,
        root=data.root,
        num_frames=clip.num_frames,
        sampling_rate=clip.sampling_rate,
        target_fps=clip.target_fps,
        short_side_range=clip.train_short_side,
        eval_short_side=clip.eval_short_side,
        crop_size=clip.crop if mode == "train" else clip.eval_crop,
        flip_prob=clip.flip_prob,
        num_clips=clip.test_clips,
        num_crops=clip.test_crops,
        seed=config.seed,
        storage_options=data.storage_options,
        decode_threads=data.decode_threads,
        max_bad_fraction=data.max_bad_fraction,
        retry=RetryPolicy.for_outages_up_to(data.storage_timeout_s),
    )


class _Window:
    """Step timings and losses since the last report."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.micro_batches = self.clips = 0.0
        self.data_seconds = 0.0
        self.started = time.perf_counter()

    def summary(self, loader: KineticsLoader) -> dict[str, float]:
        """Metrics over all ranks (a collective call)."""
        elapsed = time.perf_counter() - self.started
        totals = torch.tensor(
            [float(self.loss_sum), self.micro_batches, self.clips, self.data_seconds, elapsed],
            dtype=torch.float64,
        )
        dist.all_reduce(totals)
        loss_sum, micro_batches, clips, data_seconds, seconds = totals.tolist()
        world = dist.get_world_size()
        videos = run_bad_videos(loader)
        return {
            "loss": loss_sum / max(micro_batches, 1.0),
            "clips_per_s": clips / max(seconds / world, 1e-9),
            "data_wait_share": data_seconds / max(seconds, 1e-9),
            "bad_videos": float(len(videos.reports)),
            "videos_tried": float(videos.num_tried),
        }


def run_bad_videos(loader: KineticsLoader) -> BadVideoTracker:
    """The bad videos that every rank's ``loader`` met and the videos they tried, merged: the
    run's view, which a rank's shard alone is not (a collective call)."""
    trackers: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(trackers, loader.tracker)
    return BadVideoTracker.merged(trackers)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function. ``loop_config``: ``config`` (an ExperimentConfig as a
    dict) and optional ``tracker``."""
    config = parse_config(loop_config["config"])
    logging.getLogger("fsspec").setLevel(logging.WARNING)  # not a line per cache block in the job's log
    tracker: Tracker = loop_config.get("tracker") or NullTracker()
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(config.seed)

    train_loader = KineticsLoader(
        _dataset(config, config.data.train_manifest, "train"),
        config.optim.batch_size_per_worker,
        num_workers=config.data.workers,
        rank=rank,
        world_size=world_size,
    )
    accumulation = config.optim.grad_accumulation
    steps_per_epoch = len(train_loader) // accumulation
    if steps_per_epoch < 1:
        raise ValueError(
            f"an epoch of {len(train_loader)} batches per worker is shorter than grad_accumulation={accumulation}; "
            "use fewer workers, a smaller batch or less accumulation"
        )
    batches_per_epoch = steps_per_epoch * accumulation  # an epoch ends on an optimizer step
    num_classes = config.model.num_classes or train_loader.dataset.manifest.num_classes
    model = build_network(config.model, num_classes)
    speed_ratio = getattr(model, "speed_ratio", None)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, config.optim),
        lr_scheduler=functools.partial(build_scheduler, config=config.optim, steps_per_epoch=steps_per_epoch),
        config=deepspeed_config(config),
        dist_init_required=False,  # reuse Ray Train's process group
    )
    dtype = next(engine.module.parameters()).dtype  # the model's input dtype
    checkpoint_retry = RetryPolicy.for_outages_up_to(config.checkpoint.storage_timeout_s)
    state = restore(engine, checkpoint_retry)
    logger.info(
        "worker %d of %d on node %s (%s) starts at step %d",
        rank, world_size, ray.get_runtime_context().get_node_id(), device, engine.global_steps,
    )

    def report(metrics: dict[str, float], checkpoint_state: TrainState | None) -> None:
        epochs_done = state.epoch + state.batch_in_epoch / batches_per_epoch
        metrics = {
            **metrics,
            "epoch": epochs_done,
            "global_step": float(engine.global_steps),
            "skipped_steps": float(engine.skipped_steps),
        }
        if rank == 0:
            tracker.log_metrics(metrics, engine.global_steps)
        if checkpoint_state is None:
            ray.train.report(metrics)
        else:
            save_and_report(engine, checkpoint_state, metrics, checkpoint_retry)

    def eval_loader(manifest: str, mode: str) -> KineticsLoader:
        dataset = _dataset(config, manifest, mode)
        views = dataset.views_per_video  # keep a video's views in one batch
        batch = views * max(1, config.optim.batch_size_per_worker // views)
        return KineticsLoader(dataset, batch, num_workers=config.data.workers, rank=rank, world_size=world_size)

    def run_eval(loader: KineticsLoader, prefix: str) -> tuple[dict[str, float], Evaluation]:
        engine.eval()
        evaluation = evaluate(engine, loader, num_classes, device=device, dtype=dtype, speed_ratio=speed_ratio)
        return {f"{prefix}_{name}": value for name, value in evaluation.metrics.items()}, evaluation

    val_loader = eval_loader(config.data.val_manifest, "val")
    window = _Window()
    every = config.checkpoint.every_steps
    if state.epoch >= config.optim.epochs:
        logger.info("the run's checkpoint is at its last epoch (%d): nothing to train", state.epoch)
    while state.epoch < config.optim.epochs:
        engine.train()
        train_loader.set_epoch(state.epoch, skip_batches=state.batch_in_epoch)
        batches = itertools.islice(iter(train_loader), batches_per_epoch - state.batch_in_epoch)
        window.reset()
        for index in range(state.batch_in_epoch, batches_per_epoch):
            waited = time.perf_counter()
            batch = next(batches)
            window.data_seconds += time.perf_counter() - waited
            logits = engine(model_input(batch["clip"].to(device), speed_ratio, dtype=dtype))
            loss = F.cross_entropy(logits.float(), batch["label"].to(device))
            engine.backward(loss)
            engine.step()
            window.loss_sum += loss.detach()  # a tensor: no device sync per step
            window.micro_batches += 1
            window.clips += len(batch["label"])
            if (index + 1) % accumulation or index + 1 == batches_per_epoch:
                continue
            step = engine.global_steps
            checkpoint_now = every is not None and step % every == 0
            if checkpoint_now or step % config.tracking.log_every_steps == 0:
                metrics = {**window.summary(train_loader), "lr": float(engine.get_lr()[0])}
                state = TrainState(step, state.epoch, index + 1)
                report(metrics, state if checkpoint_now else None)
                window.reset()
        metrics = {**window.summary(train_loader), "lr": float(engine.get_lr()[0])}
        bad_videos = run_bad_videos(train_loader)
        bad_videos.check(final=True)  # the run's share of bad videos, the same on every rank
        missing = train_loader.dataset.manifest.missing  # skipped from the start: not in the share
        metrics["missing_videos"] = float(len(missing))
        if rank == 0 and (bad_videos.reports or missing):
            tracker.log_bad_videos({**dict.fromkeys(missing, "not found"), **bad_videos.bad_videos})
        metrics.update(run_eval(val_loader, "val")[0])
        state = TrainState(engine.global_steps, state.epoch + 1, 0)
        if state.epoch == config.optim.epochs:
            test_manifest = config.data.test_manifest or config.data.val_manifest
            test_metrics, test = run_eval(eval_loader(test_manifest, "test"), "test")
            metrics.update(test_metrics)
            if rank == 0:
                class_names = train_loader.dataset.manifest.class_names
                tracker.log_figure(plot_confusion_matrix(test.confusion, class_names), "plots/test_confusion_matrix.png")
                tracker.log_figure(plot_per_class_accuracy(test.confusion, class_names), "plots/test_per_class_accuracy.png")
        if rank == 0:
            logger.info("epoch %d done: %s", state.epoch, metrics)
            tracker.log_epoch_metrics(metrics, state.epoch)
        report(metrics, state)
    tracker.flush()  # what a tracking outage held back, before this process ends
