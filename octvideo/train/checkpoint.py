"""DeepSpeed checkpoints reported to Ray Train, resumed from, and consolidated to fp32 weights.

Layout of a checkpoint directory (one per report, under ``{storage_path}/{name}/``)::

    latest, zero_to_fp32.py, zero_to_torch.py    # DeepSpeed's tag file and converters (rank 0)
    deepspeed/mp_rank_00_model_states.pt         # ZeRO 0-2 (rank 0): module, lr scheduler, client state
    deepspeed/zero_pp_rank_{r}_mp_rank_00_model_states.pt   # ZeRO-3, every rank: the same, module partitioned
    deepspeed/*zero_pp_rank_{r}_mp_rank_00_optim_states.pt  # ZeRO 1-3, every rank: its optimizer shard

Every rank saves into its own local temporary directory and reports it in the same
``ray.train.report`` call; Ray Train copies all of them into one checkpoint directory (the
union of the files, which DeepSpeed already names per rank), so each rank's shards survive. The
training position (:class:`TrainState`) rides in DeepSpeed's client state.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import glob
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.fs
import ray.train
import torch

from octvideo.data.storage import RetryPolicy, StorageUnavailable, is_transient, retry_call

logger = logging.getLogger(__name__)

TAG = "deepspeed"
"""DeepSpeed's tag: the subfolder of a checkpoint that holds its files."""

_STATE_KEY = "octvideo_train_state"


@dataclass(frozen=True)
class TrainState:
    """Where training stands: optimizer steps done, the epoch under way, and how many of its
    batches are done (0 at an epoch's start)."""

    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0


def save_and_report(engine: Any, state: TrainState, metrics: Mapping[str, float], retry: RetryPolicy) -> None:
    """Save ``engine`` (a DeepSpeed engine) with ``state`` and report both with ``metrics``; the
    upload retries through storage outages under ``retry``. Every rank must call it at the same
    point (it is collective)."""
    with tempfile.TemporaryDirectory(prefix="octvideo-ckpt-") as local:
        engine.save_checkpoint(local, tag=TAG, client_state={_STATE_KEY: dataclasses.asdict(state)})
        ray.train.report(
            dict(metrics),
            checkpoint=ray.train.Checkpoint.from_directory(local),
            checkpoint_upload_fn=functools.partial(upload_checkpoint, retry=retry),
        )
    # Ray Train registers a reported checkpoint when its controller next polls the workers (every
    # 2 s); a failure before that would resume from the checkpoint before. Waiting for it bounds
    # what a failure loses to the steps since this checkpoint.
    ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)


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
        fs.put(checkpoint.path.rstrip("/") + "/", destination, recursive=True)
        fs.invalidate_cache(destination)
        found = {os.path.relpath(path, destination): info["size"] for path, info in fs.find(destination, detail=True).items()}
        missing = sorted(name for name, size in sizes.items() if found.get(name) != size)
        if missing:
            raise OSError(errno.EIO, f"checkpoint files missing or short after upload to {destination}: {missing}")

    _with_storage_retries(copy, retry, f"uploading checkpoint {destination}")
    return ray.train.Checkpoint(destination, filesystem=storage.storage_filesystem)


def restore(engine: Any, retry: RetryPolicy) -> TrainState:
    """Load the run's latest checkpoint into ``engine`` (module, optimizer shards, lr scheduler)
    and return its position; a fresh :class:`TrainState` when the run has no checkpoint. The
    download retries through storage outages under ``retry``."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with tempfile.TemporaryDirectory(prefix="octvideo-restore-") as local:
        _with_storage_retries(lambda: checkpoint.to_directory(local), retry, f"downloading checkpoint {checkpoint.path}")
        path, client_state = engine.load_checkpoint(local, tag=TAG, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{checkpoint} holds no DeepSpeed checkpoint under tag {TAG!r}")
    state = TrainState(**client_state[_STATE_KEY])
    logger.info("resumed from %s at %s", checkpoint.path, state)
    return state


def _with_storage_retries(fn: Any, retry: RetryPolicy, what: str) -> Any:
    try:
        return retry_call(fn, retry, what=what)
    except Exception as error:
        if is_transient(error):
            raise StorageUnavailable.after(what, retry.max_total_sec, error) from error
        raise


def _fsspec_filesystem(filesystem: pyarrow.fs.FileSystem) -> fsspec.AbstractFileSystem:
    """The fsspec filesystem under a storage filesystem made by :func:`run_storage`."""
    if isinstance(filesystem, pyarrow.fs.PyFileSystem) and isinstance(filesystem.handler, pyarrow.fs.FSSpecHandler):
        return filesystem.handler.fs
    if isinstance(filesystem, pyarrow.fs.LocalFileSystem):
        return fsspec.filesystem("file")
    raise TypeError(f"checkpoint storage on {filesystem.type_name!r} is not supported; use a folder or an fsspec URL")


def consolidated_state_dict(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """fp32 weights (and buffers) of a checkpoint directory as a plain ``state_dict``.

    ZeRO 2-3 (and ZeRO-1 in fp32): the fp32 master weights gathered from every rank's optimizer
    shard (DeepSpeed's ``zero_to_fp32``). ZeRO-0 keeps no master copy: the module's weights, cast
    to fp32. ZeRO-1 in bf16 saves DeepSpeed's BF16_Optimizer format, which ``zero_to_fp32``
    rejects (ValueError)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if glob.glob(os.path.join(checkpoint_dir, TAG, "*optim_states.pt")):
        state = get_fp32_state_dict_from_zero_checkpoint(checkpoint_dir, tag=TAG)
    else:
        module = torch.load(
            os.path.join(checkpoint_dir, TAG, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False
        )["module"]
        state = dict(module)
    return {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in state.items()}


def write_fp32_weights(
    checkpoint: ray.train.Checkpoint, state: Mapping[str, torch.Tensor], name: str = "model_fp32.pt"
) -> str:
    """Write ``state`` (:func:`consolidated_state_dict` of ``checkpoint``) next to the checkpoint,
    in the run directory, loadable with ``torch.load``; returns its path on the checkpoint's
    filesystem."""
    target = f"{os.path.dirname(checkpoint.path.rstrip('/'))}/{name}"
    with checkpoint.filesystem.open_output_stream(target) as out:
        torch.save(dict(state), out)
    logger.info("wrote consolidated fp32 weights (%d tensors) to %s", len(state), target)
    return target


def run_storage(storage_path: str, storage_options: Mapping[str, Any]) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """``RunConfig``'s ``storage_path`` and ``storage_filesystem`` for a folder or URL.

    A local folder goes to Ray as it is. A URL (``s3://``, ``gs://``, ...) goes through fsspec,
    like the training data: same credentials (environment or ``storage_options``), same endpoint
    settings (``AWS_ENDPOINT_URL`` included), wrapped as a pyarrow filesystem for Ray."""
    protocol, _ = fsspec.core.split_protocol(storage_path)
    if protocol in (None, "file", "local"):
        return os.path.abspath(fsspec.core.strip_protocol(storage_path)), None
    fs, path = fsspec.core.url_to_fs(storage_path, **storage_options)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))
