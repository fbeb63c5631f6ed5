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


def save_and_report(engine: Any, state: TrainState, metrics: Mapping[str, float]) -> None:
    """Save ``engine`` (a DeepSpeed engine) with ``state`` and report both with ``metrics``.
    Every rank must call it at the same point (it is collective)."""
    with tempfile.TemporaryDirectory(prefix="octvideo-ckpt-") as local:
        engine.save_checkpoint(local, tag=TAG, client_state={_STATE_KEY: dataclasses.asdict(state)})
        ray.train.report(dict(metrics), checkpoint=ray.train.Checkpoint.from_directory(local))


def restore(engine: Any) -> TrainState:
    """Load the run's latest checkpoint into ``engine`` (module, optimizer shards, lr scheduler)
    and return its position; a fresh :class:`TrainState` when the run has no checkpoint."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainState()
    with checkpoint.as_directory() as local:
        path, client_state = engine.load_checkpoint(local, tag=TAG, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{checkpoint} holds no DeepSpeed checkpoint under tag {TAG!r}")
    state = TrainState(**client_state[_STATE_KEY])
    logger.info("resumed from %s at %s", checkpoint.path, state)
    return state


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
