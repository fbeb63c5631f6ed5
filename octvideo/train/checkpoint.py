"""DeepSpeed checkpoints of a training run: what one holds, saving and loading it in a local
folder, and the run's exported fp32 weights. No Ray here: Ray Train's reporting and upload of
these folders live in :mod:`octvideo.train.loop`, the Ray-free harness keeps them on disk.

Layout of a checkpoint directory (one per report, under ``{storage_path}/{name}/``)::

    latest, zero_to_fp32.py, zero_to_torch.py    # DeepSpeed's tag file and converters (rank 0)
    deepspeed/mp_rank_00_model_states.pt         # ZeRO 0-2 (rank 0): module, lr scheduler, client state
    deepspeed/zero_pp_rank_{r}_mp_rank_00_model_states.pt   # ZeRO-3, every rank: the same, module partitioned
    deepspeed/*zero_pp_rank_{r}_mp_rank_00_optim_states.pt  # ZeRO 1-3, every rank: its optimizer shard

Every rank saves into a folder of its own (or one shared folder); DeepSpeed names the files per
rank, so the union of the folders is the checkpoint. The training position
(:class:`TrainState`) rides in DeepSpeed's client state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

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


def save_engine(engine: Any, state: TrainState, folder: str) -> None:
    """Save ``engine`` (a DeepSpeed engine) with ``state`` into ``folder``; collective."""
    engine.save_checkpoint(folder, tag=TAG, client_state={_STATE_KEY: dataclasses.asdict(state)})


def load_engine(engine: Any, folder: str) -> TrainState:
    """Load a checkpoint folder into ``engine`` (module, optimizer shards, lr scheduler) and return
    its position; collective."""
    path, client_state = engine.load_checkpoint(folder, tag=TAG, load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"{folder} holds no DeepSpeed checkpoint under tag {TAG!r}")
    return TrainState(**client_state[_STATE_KEY])


def save_weights(state: Mapping[str, torch.Tensor], out: Any) -> None:
    """Write a plain fp32 ``state_dict`` (:func:`octvideo.train.engine.fp32_state_dict`) to a
    binary file object, loadable with ``torch.load(..., weights_only=True)``."""
    torch.save(dict(state), out)


def load_weights(file: Any) -> dict[str, torch.Tensor]:
    """What :func:`save_weights` wrote, from a binary file object."""
    return torch.load(file, map_location="cpu", weights_only=True)
