"""Ray Train's side of a training worker: the per-worker function of a ``TorchTrainer`` and the
:class:`~octvideo.train.trainer.Run` it gives the Ray-free :class:`~octvideo.train.trainer.Trainer`.

``train_loop_per_worker({"config": config_to_dict(config), "tracker": tracker})`` runs on every
worker, on the process group Ray Train created (NCCL on GPUs, gloo on CPUs). :class:`RayRun`
restores the run's latest checkpoint, reports metrics and checkpoints with ``ray.train.report``
(each rank saves into a local temporary folder; Ray Train copies all of them into one checkpoint
directory of the run, :func:`~octvideo.train.run_storage.upload_checkpoint`), and writes the fp32
weights as ``model_fp32.pt`` in the run's folder. Run storage is a folder or an fsspec URL
(:mod:`octvideo.train.run_storage`); every transfer retries through storage outages.
"""

from __future__ import annotations

import functools
import logging
import tempfile
from collections.abc import Mapping
from typing import Any

import ray
import ray.train
import torch

from octvideo.data import KineticsDataset
from octvideo.data.storage import RetryPolicy, retry_storage_call
from octvideo.train.checkpoint import TrainState, load_engine, save_engine, save_weights
from octvideo.train.config import ExperimentConfig, parse_config
from octvideo.train.pretrained import read_start, start_file
from octvideo.train.run_storage import WEIGHTS_FILE, upload_checkpoint
from octvideo.train.tracking import NullTracker
from octvideo.train.trainer import Trainer
from octvideo.train.worker_logs import quiet_library_logs

logger = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train's per-worker function. ``loop_config``: ``config`` (an ExperimentConfig as a
    dict) and optional ``tracker`` (called on rank 0)."""
    config = parse_config(loop_config["config"])
    quiet_library_logs(config.scaling.use_gpu)
    run = RayRun(RetryPolicy.for_outages_up_to(config.checkpoint.storage_timeout_s))
    tracker = loop_config.get("tracker") or NullTracker()
    Trainer(config, run, functools.partial(kinetics_dataset, config), tracker).fit()


def kinetics_dataset(config: ExperimentConfig, mode: str) -> KineticsDataset:
    """The experiment's dataset of split ``mode`` (the test split: the validation one if unset)."""
    data, clip = config.data, config.data.clip
    manifest = {"train": data.train_manifest, "val": data.val_manifest, "test": data.test_manifest or data.val_manifest}[mode]
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
        train_clips=clip.train_clips,
        train_crops=clip.train_crops,
        seed=config.seed,
        storage_options=data.storage_options,
        decode_threads=data.decode_threads,
        prefetch_videos=data.prefetch_videos,
        max_bad_fraction=data.max_bad_fraction,
        retry=RetryPolicy.for_outages_up_to(data.storage_timeout_s),
    )


class RayRun:
    """A :class:`~octvideo.train.trainer.Run` on Ray Train: reports, checkpoints in the run's
    storage, the fp32 weights next to them. Transfers retry through outages under ``retry``."""

    def __init__(self, retry: RetryPolicy) -> None:
        self.retry = retry
        self.node = ray.get_runtime_context().get_node_id()

    def start_weights(self, config: ExperimentConfig) -> dict[str, torch.Tensor] | None:
        if ray.train.get_checkpoint() is not None:
            return None  # resuming: the checkpoint has the weights
        url = start_file(config)
        weights = retry_storage_call(lambda: read_start(config), self.retry, f"reading {url}")
        logger.info("starting from the pretrained weights in %s", url)
        return weights

    def restore(self, engine: Any) -> TrainState | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with tempfile.TemporaryDirectory(prefix="octvideo-restore-") as local:
            retry_storage_call(lambda: checkpoint.to_directory(local), self.retry, f"downloading checkpoint {checkpoint.path}")
            state = load_engine(engine, local)
        logger.info("resumed from %s at %s", checkpoint.path, state)
        return state

    def report(self, metrics: Mapping[str, float], engine: Any, state: TrainState | None) -> None:
        if state is None:
            ray.train.report(dict(metrics))
            return
        with tempfile.TemporaryDirectory(prefix="octvideo-ckpt-") as local:
            save_engine(engine, state, local)
            ray.train.report(
                dict(metrics),
                checkpoint=ray.train.Checkpoint.from_directory(local),
                checkpoint_upload_fn=functools.partial(upload_checkpoint, retry=self.retry),
            )
        # Ray Train registers a reported checkpoint when its controller next polls the workers
        # (every 2 s); a failure before that would resume from the checkpoint before. Waiting
        # for it bounds what a failure loses to the steps since this checkpoint.
        ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)

    def write_weights(self, state: Mapping[str, torch.Tensor]) -> str:
        storage = ray.train.get_context().get_storage()
        target = f"{storage.experiment_fs_path}/{WEIGHTS_FILE}"

        def write() -> None:
            with storage.storage_filesystem.open_output_stream(target) as out:
                save_weights(state, out)

        retry_storage_call(write, self.retry, f"writing {target}")
        return target
