"""Ray Train's side of a training worker: the per-worker function of a ``TorchTrainer`` and the
:class:`~octvideo.train.trainer.Run` it gives the Ray-free :class:`~octvideo.train.trainer.Trainer`.

``train_loop_per_worker({"config": config_to_dict(config), "tracker": tracker})`` runs on every
worker, on the process group Ray Train created (NCCL on GPUs, gloo on CPUs). :class:`RayRun`
restores the run's latest checkpoint, reports metrics and checkpoints with ``ray.train.report``
(each rank saves into a local temporary folder; Ray Train copies all of them into one checkpoint
directory of the run, :func:`upload_checkpoint`), and writes the fp32 weights as
``model_fp32.pt`` in the run's folder. Run storage is a folder or an fsspec URL
(:func:`run_storage`); every transfer retries through storage outages.
"""

from __future__ import annotations

import errno
import functools
import io
import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import fsspec
import pyarrow
import pyarrow.fs
import ray
import ray.train
import torch

from octvideo.data import KineticsDataset
from octvideo.data.storage import (
    RetryPolicy,
    bounded_storage_options,
    filesystem,
    retry_call,
    retry_storage_call,
    upload_deadline_s,
    with_deadline,
)
from octvideo.train.checkpoint import TrainState, load_engine, save_engine, save_weights
from octvideo.train.config import ExperimentConfig, parse_config
from octvideo.train.pretrained import read_start, start_file
from octvideo.train.tracking import NullTracker
from octvideo.train.trainer import Trainer
from octvideo.train.worker_logs import quiet_library_logs

logger = logging.getLogger(__name__)

#: The exported weights, in the run's folder.
WEIGHTS_FILE = "model_fp32.pt"


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


def upload_checkpoint(checkpoint: ray.train.Checkpoint, checkpoint_dir_name: str, retry: RetryPolicy) -> ray.train.Checkpoint:
    """Ray Train's ``checkpoint_upload_fn``: copy this rank's files of ``checkpoint`` (a local
    folder) to the run's storage through fsspec, retrying transient errors under ``retry``,
    then check that every file arrived whole.

    Not Ray's default copy: through a pyarrow-wrapped fsspec filesystem, ``pyarrow.fs.copy_files``
    drops the error of a failed upload when the file is closed (seen with s3fs and the S3 server
    down), and the checkpoint would be registered without its files."""
    storage = ray.train.get_context().get_storage()
    destination = storage.build_checkpoint_path_from_name(checkpoint_dir_name)
    fs = _fsspec_filesystem(storage.storage_filesystem)
    sizes = {
        os.path.relpath(os.path.join(folder, name), checkpoint.path): os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(checkpoint.path) for name in names
    }

    def copy() -> None:
        deadline_s = upload_deadline_s(sum(sizes.values()), retry.max_total_sec)
        with_deadline(fs, deadline_s, fs.put, checkpoint.path.rstrip("/") + "/", destination, recursive=True)
        fs.invalidate_cache(destination)
        found = {os.path.relpath(path, destination): info["size"] for path, info in fs.find(destination, detail=True).items()}
        missing = sorted(name for name, size in sizes.items() if found.get(name) != size)
        if missing:
            raise OSError(errno.EIO, f"checkpoint files missing or short after upload to {destination}: {missing}")

    retry_storage_call(copy, retry, f"uploading checkpoint {destination}")
    return ray.train.Checkpoint(destination, filesystem=storage.storage_filesystem)


def _fsspec_filesystem(filesystem: pyarrow.fs.FileSystem) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem under a storage filesystem made by :func:`run_storage`."""
    if isinstance(filesystem, pyarrow.fs.PyFileSystem) and isinstance(filesystem.handler, pyarrow.fs.FSSpecHandler):
        return filesystem.handler.fs
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return fsspec.filesystem("file")
    raise TypeError(f"checkpoint storage on {filesystem.type_name!r} is not supported; use a folder or an fsspec URL")


def run_storage(
    storage_path: str, storage_options: Mapping[str, Any], retry: RetryPolicy
) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``RunConfig``'s ``storage_path`` and ``storage_filesystem`` for a folder or URL.

    A local folder goes to Ray as it is. A URL (``s3://``, ``gs://``, ...) goes through fsspec,
    like the training data: same credentials (environment or ``storage_options``), same endpoint
    settings (``AWS_ENDPOINT_URL`` included), wrapped as a pyarrow filesystem for Ray whose calls
    retry transient errors under ``retry`` (:class:`_RetryingHandler`)."""
    protocol, _ = fsspec.core.split_protocol(storage_path)
    if protocol in (None, "file", "local"):
        return os.path.abspath(fsspec.core.strip_protocol(storage_path)), None
    fs, path = filesystem(storage_path, bounded_storage_options(storage_path, storage_options, retry.max_total_sec))
    return path, pyarrow.fs.PyFileSystem(_RetryingHandler(fs, retry))


class _RetryingHandler(pyarrow.fs.FSSpecHandler):
    """Ray Train's view of the run storage, retrying through outages as the workers' transfers do.

    Ray Train's controller writes the run state (``checkpoint_manager_snapshot.json``) after every
    report: without retries, a few seconds of object-store outage at that moment end the run.
    A write is buffered and sent on close as one retried upload (the controller's files are small;
    checkpoints go through :func:`upload_checkpoint`); every other call is retried as a whole."""

    def __init__(self, fs: fsspec.AbstractFileSystem, retry: RetryPolicy) -> None:
        super().__init__(fs)
        self.retry = retry

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.PythonFile:
        return pyarrow.PythonFile(_RetriedUpload(self.fs, path, self.retry), mode="w")


def _retried(name: str) -> Any:
    call = getattr(pyarrow.fs.FSSpecHandler, name)

    @functools.wraps(call)
    def method(self: _RetryingHandler, *args: Any) -> Any:
        return retry_call(lambda: call(self, *args), self.retry, what=f"storage {name} {args[:1]}")

    return method


for _name in (
    "copy_file", "create_dir", "delete_dir", "delete_dir_contents", "delete_file", "delete_root_dir_contents",
    "get_file_info", "get_file_info_selector", "move", "open_input_file", "open_input_stream",
):
    setattr(_RetryingHandler, _name, _retried(_name))


class _RetriedUpload(io.BytesIO):
    """A file that uploads what was written to it on close, retrying transient errors."""

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, retry: RetryPolicy) -> None:
        super().__init__()
        self.fs, self.path, self.retry = fs, path, retry

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            deadline_s = upload_deadline_s(len(data), self.retry.max_total_sec)
            upload = functools.partial(with_deadline, self.fs, deadline_s, self.fs.pipe_file, self.path, data)
            retry_call(upload, self.retry, what=f"writing {self.path}")
        super().close()


